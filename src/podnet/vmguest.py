"""Inside a VM node: the guest supervisor, which runs the node's agent and answers the host.

busybox init (PID 1 of the guest) respawns it as `python -m podnet.vmguest VM_ENV`
(`podnet.lab.vminit` explains the boot). It
- starts `podnet agent` as the host asked in the node's agent file (JSON `{"argv": [...],
  "env": {...}}`, read through the host's root), its output going to the agent log port, and
  restarts it when it exits, after 1 s doubling to 30 s (what systemd's Restart= does for a
  real node's kubelet); every exit is logged there too;
- answers the host on the control port, one JSON object per line each way, every response
  repeating its request's `id`:
    {"op": "exec", "argv": [...], "stdin": "...", "timeout": 60}
        -> {"ok": true, "returncode": 0, "stdout": "...", "stderr": "..."}
    {"op": "status"} -> {"ok": true, "release": "6.1.0-…", "uptime": 12.5, "agent": {...}}
  and errors as {"ok": false, "error": "..."}.
- keeps a warm Python (`podnet.vmwarm`, started by the first call it serves): an exec of this
  same interpreter as `python -m MODULE ...` or `python -c CODE ...` (what `podnet trace`,
  `graph` and `fault` run here) goes to a fork of it, which has already imported pyroute2
  and podnet's kernel modules, instead of a fresh interpreter that spends seconds importing
  them under emulation; the answer is the same. Where it is gone or breaks, the call runs as a plain
  exec, and the warm Python is started again for the next one.

Why here and not in podnet.lab: `python -m podnet.lab.vmguest` would first import the
`podnet.lab` package (the whole lab machinery), which costs seconds under software
emulation. This module imports the standard library only.

The control port is a virtio-serial port; its host end is a unix socket in the lab's
private state dir (only root on the host can reach it). When no host client is connected
the port polls as hung up: the supervisor then waits, drops any half-read request, and
gives up writing a response after a few seconds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PORTS_DIR = Path("/sys/class/virtio-ports")
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
STOP_GRACE = 10.0
WRITE_TIMEOUT = 5.0
EXEC_TIMEOUT = 60.0
WARM_MARGIN = 15.0  # seconds a warm call may take past its timeout: the first call waits
# for the warm Python's imports (what a fresh interpreter spends too)


def parse_vm_env(text: str) -> dict[str, str]:
    """vm.env (rendered by `podnet.lab.vminit.render_vm_env`: KEY=shell-quoted value)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            words = shlex.split(value)
            out[key] = words[0] if words else ""
    return out


def find_port(name: str, ports: Path = PORTS_DIR) -> Path:
    """/dev/vportNpM of the virtio-serial port called `name`."""
    for entry in sorted(ports.iterdir()) if ports.is_dir() else ():
        with contextlib.suppress(OSError):
            if (entry / "name").read_text().strip() == name:
                return Path("/dev") / entry.name
    raise FileNotFoundError(f"no virtio-serial port named {name!r} under {ports}")


def say(message: str) -> None:
    print(f"podnet-vm supervisor: {message}", file=sys.stderr, flush=True)


class Agent:
    """The node's agent process: started, restarted with back-off, stopped on request."""

    def __init__(self, log_fd: int) -> None:
        self.log_fd = log_fd
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.exits = 0
        self.last_exit: int | None = None
        self.restart_at: float | None = None
        self.backoff = RESTART_FIRST
        self.wanted = False

    def log(self, message: str) -> None:
        say(message)
        with contextlib.suppress(OSError):
            os.write(self.log_fd, f"podnet-vm supervisor: {message}\n".encode())

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        self.stop()
        self.argv, self.env, self.wanted = argv, env, True
        self.backoff = RESTART_FIRST
        self._spawn()

    def _spawn(self) -> None:
        self.restart_at = None
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=self.log_fd,
                stderr=self.log_fd,
                start_new_session=True,
            )
        except OSError as exc:
            self.log(f"cannot start the agent ({exc}); retrying in {self.backoff:.0f} s")
            self._schedule_restart()
            return
        self.started_at = time.monotonic()
        self.log(f"agent started (pid {self.proc.pid})")

    def _schedule_restart(self) -> None:
        self.restart_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, RESTART_MAX)

    def stop(self) -> None:
        self.wanted = False
        self.restart_at = None
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.log(f"agent stopped (exit {proc.returncode})")

    def poll(self) -> None:
        """Notice an exit and restart when its back-off has passed."""
        if self.proc is not None and (code := self.proc.poll()) is not None:
            self.proc = None
            self.exits += 1
            self.last_exit = code
            if time.monotonic() - self.started_at > RESTART_MAX:
                self.backoff = RESTART_FIRST  # it ran for a while: not a crash loop
            self.log(f"agent exited with {code}; restarting in {self.backoff:.0f} s")
            self._schedule_restart()
        if self.wanted and self.restart_at is not None and time.monotonic() >= self.restart_at:
            self._spawn()

    def status(self) -> dict[str, Any]:
        alive = self.proc is not None and self.proc.poll() is None
        return {
            "alive": alive,
            "pid": self.proc.pid if alive and self.proc is not None else None,
            "exits": self.exits,
            "last_exit": self.last_exit,
        }


class WarmPython:
    """The warm Python (`podnet.vmwarm`): one process, started by the first call and again
    when a call finds it gone; `call` answers a Python exec of `python` as `handle` does."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""

    def start(self) -> None:
        self.buffer = b""
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "podnet.vmwarm"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            say(f"no warm Python ({exc.strerror}): Python calls start their own")
            self.proc = None

    def takes(self, argv: list[str]) -> bool:
        """Whether `argv` is this interpreter running `-m MODULE` or `-c CODE`."""
        return (
            len(argv) >= 3
            and argv[1] in ("-m", "-c")
            and (argv[0] == self.python or os.path.realpath(argv[0]) == self.python)
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def call(self, argv: list[str], stdin: str, timeout: float) -> dict[str, Any] | None:
        """The answer to a Python exec (`takes(argv)`), or None where the warm Python could
        not be asked (the caller runs `argv` itself)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            return None
        request = {"args": argv[1:], "stdin": stdin, "timeout": timeout}
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            self.stop()
            return None
        deadline = time.monotonic() + timeout + WARM_MARGIN
        fd = proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                return {"ok": False, "error": f"{argv[0]} did not finish within {timeout:g} s"}
            ready, _, _ = select.select([fd], [], [], left)
            chunk = os.read(fd, 1 << 16) if ready else b"-"
            if not chunk:  # it died: this call runs as a plain exec
                self.stop()
                return None
            if ready:
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            answer = json.loads(line)
        except ValueError:
            self.stop()
            return None
        if answer.get("timeout"):
            return {"ok": False, "error": f"{argv[0]} did not finish within {timeout:g} s"}
        if "error" in answer:
            return {"ok": False, "error": str(answer["error"])}
        return {"ok": True, **answer}


def handle(request: dict[str, Any], agent: Agent, warm: WarmPython | None = None) -> dict[str, Any]:
    op = request.get("op")
    if op == "exec":
        argv = request.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            return {"ok": False, "error": "exec needs argv: a non-empty list of strings"}
        timeout = float(request.get("timeout") or EXEC_TIMEOUT)
        if warm is not None and warm.takes(argv):
            answer = warm.call(argv, request.get("stdin") or "", timeout)
            if answer is not None:
                return answer
        try:
            done = subprocess.run(
                argv,
                input=request.get("stdin") or "",
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"{argv[0]} did not finish within {timeout:g} s"}
        except OSError as exc:
            return {"ok": False, "error": f"cannot run {argv[0]}: {exc.strerror}"}
        return {
            "ok": True,
            "returncode": done.returncode,
            "stdout": done.stdout,
            "stderr": done.stderr,
        }
    if op == "status":
        return {
            "ok": True,
            "release": os.uname().release,
            "uptime": float(Path("/proc/uptime").read_text().split()[0]),
            "agent": agent.status(),
        }
    return {"ok": False, "error": f"unknown op {op!r}: exec or status"}


def _write_all(fd: int, data: bytes) -> bool:
    deadline = time.monotonic() + WRITE_TIMEOUT
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            select.select([], [fd], [], 0.2)
        except OSError:
            return False
    return True


def serve(port: Path, agent: Agent, warm: WarmPython | None = None) -> None:
    fd = os.open(port, os.O_RDWR | os.O_NONBLOCK)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buffer = b""
    while True:
        agent.poll()
        events = dict(poller.poll(500))
        mask = events.get(fd, 0)
        if mask & select.POLLIN:
            try:
                buffer += os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                _answer(fd, line, agent, warm)
        elif mask & select.POLLHUP:
            buffer = b""  # the host hung up: whatever it half-sent is void
            time.sleep(0.2)


def _answer(fd: int, line: bytes, agent: Agent, warm: WarmPython | None) -> None:
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
    except ValueError as exc:
        response: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
        request = {}
    else:
        try:
            response = handle(request, agent, warm)
        except Exception as exc:  # an answer, whatever happened, or the host waits forever
            response = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    response["id"] = request.get("id")
    if not _write_all(fd, json.dumps(response).encode() + b"\n"):
        say(f"the host went away before the answer to {request.get('op')!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m podnet.vmguest VM_ENV", file=sys.stderr)
        return 2
    settings = parse_vm_env(Path(argv[0]).read_text())
    log_fd = os.open(find_port(settings["AGENT_LOG_PORT"]), os.O_WRONLY)
    agent = Agent(log_fd)
    try:
        spec = json.loads(Path(settings["AGENT_FILE"]).read_text())
        agent.start(list(spec["argv"]), dict(spec.get("env") or {}))
    except (OSError, ValueError, KeyError) as exc:
        agent.log(f"no agent started: {settings.get('AGENT_FILE')}: {exc}")
    warm = WarmPython()

    def on_term(*_: object) -> None:
        agent.stop()
        warm.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        serve(find_port(settings["CONTROL_PORT"]), agent, warm)
    except OSError as exc:
        if exc.errno != errno.EINTR:
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
