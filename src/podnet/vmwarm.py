"""Inside a VM node: a warm Python, which imports once what the host's in-guest Python calls
need and runs each call in a fork of itself.

The host runs Python in a VM node's guest for `podnet trace` and `podnet graph` (`python -m
podnet.trace.guest`) and for `podnet fault` (`python -c ...` around `podnet.kernel.qdisc`
and `NftRunner`). Under software emulation (TCG) a fresh interpreter spends 8-10 s importing
pyroute2 and podnet's kernel modules before it reads a single route, on every call. The guest
supervisor (`podnet.vmguest`) starts this process at the first such call (not at boot,
where it would compete with the node's agent for the one CPU); it imports `BASE` (pyroute2,
which every such call imports) before that call and `WARM` after answering it, before it
reads the next request, so no call waits for imports it would not make itself. Per request it
forks: the child runs the call as `python -m MODULE ARGS` or `python -c CODE ARGS` would
(`sys.argv`, `__main__`, `SystemExit`), with its stdin, stdout and stderr on files, in a
session of its own; the parent waits (killing the child's session past the request's
timeout) and answers with its exit code and output.

Protocol: one JSON object per line on stdin, one answer per line on stdout (raw fds 0 and 1,
never `sys.stdin`/`sys.stdout`, whose buffers a child would inherit):
    {"args": ["-m", "podnet.trace.guest", "{...}"], "stdin": "", "timeout": 60}
        -> {"returncode": 0, "stdout": "...", "stderr": "..."}, {"timeout": true} (the call
           was killed past its timeout) or {"error": "..."}
It exits when its stdin closes (the supervisor is gone).

What belongs here: the standard library only at import time (the supervisor starts this
module; `BASE` and `WARM` are imported in `main`), the fork-and-run of one call.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback
from typing import Any, NoReturn

# what every in-guest call imports (the bulk of their imports: ~0.33 s of ~0.35-0.38 s on the
# host), imported before the first call; then what the host's calls import besides, imported
# after the first answer (a call needing more imports the rest itself)
BASE = ("pyroute2",)
WARM = ("podnet.kernel.qdisc", "podnet.kernel.rules", "podnet.trace.snapshot")


def preload(names: tuple[str, ...]) -> None:
    for name in names:
        with contextlib.suppress(Exception):  # the call that needs it reports the failure
            importlib.import_module(name)


def _exit_code(code: object) -> int:
    """What `python` exits with for `sys.exit(code)` (a non-int is printed, exit 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(args: list[str], stdin_fd: int, out_fd: int, err_fd: int) -> NoReturn:
    code = 1
    try:
        os.setsid()
        # signal dispositions stay as Python set them at start (SIGPIPE ignored, SIGINT as
        # KeyboardInterrupt), as in a fresh interpreter: the warm Python changes none
        for fd, std in ((stdin_fd, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(fd, std)
        mode, target, *rest = args
        try:
            if mode == "-m":
                sys.argv = [target, *rest]
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                sys.argv = ["-c", *rest]
                exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()  # what the interpreter's exit runs (os._exit below does not)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
    finally:
        os._exit(code)


def run_call(args: list[str], stdin: str, timeout: float) -> dict[str, Any]:
    """Fork and run one call (`args`: what follows the interpreter, `-m MODULE ...` or `-c
    CODE ...`); its exit code and output, or an error past `timeout` seconds."""
    if len(args) < 2 or args[0] not in ("-m", "-c"):
        return {"error": "a warm call is -m MODULE ARGS or -c CODE ARGS"}
    with (
        tempfile.TemporaryFile() as stdin_file,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        stdin_file.write(stdin.encode())
        stdin_file.seek(0)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(args, stdin_file.fileno(), out.fileno(), err.fileno())
        deadline = time.monotonic() + timeout
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
            elif time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"timeout": True}
            else:
                time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):  # what it left running in its session
            os.killpg(pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        return {
            "returncode": os.waitstatus_to_exitcode(status),
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def _answer(line: bytes) -> bytes:
    try:
        request = json.loads(line)
        args = request["args"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("args is a list of strings")
        answer = run_call(args, str(request.get("stdin") or ""), float(request["timeout"]))
    except (ValueError, KeyError, TypeError) as exc:
        answer = {"error": f"bad request: {exc}"}
    except OSError as exc:
        answer = {"error": f"cannot run the call: {exc}"}
    return json.dumps(answer).encode() + b"\n"


def main() -> int:
    preload(BASE)
    warmed = False
    buffer = b""
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return 0
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            answer = _answer(line)
            view = memoryview(answer)
            while view:
                view = view[os.write(1, view) :]
            if not warmed:  # after the first answer, in the time until the next call
                preload(WARM)
                warmed = True


if __name__ == "__main__":
    sys.exit(main())
