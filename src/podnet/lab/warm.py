"""Warm starts: the lab's supervisor forks its units from an interpreter that has already
imported them, instead of starting a new Python that imports podnet again.

What belongs here: `Preloaded` (import the units' modules once, note what was imported),
`Preloaded.fork` (start one unit as a forked child running `python -m MODULE ARGS`) and
`set_cmdline` (the child's /proc/<pid>/cmdline made to read as that command line).

Why: on this project's 2-core machine a new interpreter importing the API server costs about
1 s of CPU and each agent 0.4 s, paid again for every unit, all at once, in `podnet up`; a fork
of a process that has them costs milliseconds. It is the zygote of Android and of the kubelet
launcher (`agent/kubelet/zygote.py`), applied to the lab's own processes.

Invariants:
- A forked unit is indistinguishable from a spawned one to everyone else: its own session,
  stdin from /dev/null, stdout and stderr into its log, no other descriptor of the supervisor
  (its socket, pidfds, event loop) left open, default signal dispositions, no logging handler
  of the supervisor, `sys.argv` and /proc/<pid>/cmdline those of the command it stands for.
- Only `python -m podnet.…` units of this very interpreter are forked, and only while no source
  file of an imported podnet module changed since the preload (an edited checkout is run as
  written, not as imported); otherwise the caller spawns as before. A fork is an
  optimisation, never a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import runpy
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from podnet.agent.flannel import registry as flannel_registry
from podnet.agent.proxy import registry as proxy_registry

log = logging.getLogger(__name__)

# what `podnet server` and `podnet agent` import before they do anything (their commands
# import the machinery inside the function they run)
UNIT_MODULES = (
    "podnet.cli.main",
    "podnet.cli.agent",
    "podnet.apiserver.server",
    "podnet.agent.main",
    "podnet.agent.context",
    "podnet.api.client",
    # the backends and proxy modes an agent builds (their registries import them on first use)
    *flannel_registry.MODULES,
    *proxy_registry.MODULES,
    # what the supervisor's own tick imports on a worker thread: imported here, before any
    # fork, no thread can hold a module's import lock while a unit is forked
    "podnet.lab.faults",
    "podnet.lab.lab",
)
_PACKAGE = "podnet"

# prctl(2) PR_SET_MM / PR_SET_MM_MAP: the process's memory map, its argument area included
# (the map variant needs no CAP_SYS_RESOURCE; CRIU restores processes with it)
_PR_SET_MM = 35
_PR_SET_MM_MAP = 14
_KEEP_EXE = 0xFFFFFFFF  # exe_fd -1: leave /proc/self/exe alone
_kept: list[ctypes.Array[ctypes.c_char]] = []  # the memory /proc/self/cmdline points into


class _MmMap(ctypes.Structure):
    """struct prctl_mm_map (linux/prctl.h)."""

    _fields_ = [
        *((name, ctypes.c_uint64) for name in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
            "start_stack", "arg_start", "arg_end", "env_start", "env_end",
        )),
        ("auxv", ctypes.c_void_p),
        ("auxv_size", ctypes.c_uint32),
        ("exe_fd", ctypes.c_uint32),
    ]  # fmt: skip


def set_cmdline(argv: Sequence[str]) -> bool:
    """Point this process's /proc/self/cmdline at `argv` (what `ps` and /proc readers see),
    keeping the rest of its memory map as it is; False where the kernel refuses."""
    data = b"\0".join(os.fsencode(a) for a in argv) + b"\0"
    buffer = ctypes.create_string_buffer(data, len(data))
    stat = Path("/proc/self/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 on (comm may hold spaces)

    def field(number: int) -> int:  # proc(5) numbering
        return int(fields[number - 3])

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_long]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]  # fmt: skip
    mm = _MmMap(
        start_code=field(26), end_code=field(27), start_data=field(45), end_data=field(46),
        start_brk=field(47), brk=libc.sbrk(0) or 0, start_stack=field(28),
        arg_start=ctypes.addressof(buffer), arg_end=ctypes.addressof(buffer) + len(data),
        env_start=field(50), env_end=field(51), auxv=None, auxv_size=0, exe_fd=_KEEP_EXE,
    )  # fmt: skip
    if libc.prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.addressof(mm), ctypes.sizeof(mm), 0) != 0:
        return False
    _kept.append(buffer)
    return True


def _sources(prefix: str) -> dict[str, float]:
    """Source file -> mtime of every imported module under `prefix`."""
    found: dict[str, float] = {}
    for name, module in list(sys.modules.items()):
        if name != prefix and not name.startswith(prefix + "."):
            continue
        path = getattr(module, "__file__", None)
        if path:
            with contextlib.suppress(OSError):
                found[path] = Path(path).stat().st_mtime
    return found


class Preloaded:
    """This interpreter with the units' modules imported; forks units from it."""

    def __init__(self, modules: Sequence[str] = UNIT_MODULES, package: str = _PACKAGE) -> None:
        for name in modules:
            importlib.import_module(name)
        self.package = package  # only `python -m <package>.…` units are forked
        self.sources = _sources(package)

    def current(self) -> bool:
        """No imported podnet source file changed since the preload."""
        for path, mtime in self.sources.items():
            try:
                if Path(path).stat().st_mtime != mtime:
                    return False
            except OSError:
                return False
        return True

    def can_fork(self, argv: Sequence[str]) -> bool:
        return (
            len(argv) >= 3
            and argv[0] == sys.executable
            and argv[1] == "-m"
            and argv[2].startswith(self.package + ".")
            and self.current()
        )

    def fork(self, argv: Sequence[str], out: int) -> int:
        """Start `python -m MODULE ARGS` (`argv`) as a forked child in a session of its own,
        writing to `out`; returns its pid. Call it from the main thread."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write the supervisor's buffered lines again
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            _become(argv, out)
            # the module was imported by the preload (that is the point): runpy says so
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int | None):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            # what the interpreter does when a `python -m` ends, without unwinding into the
            # supervisor's frames below this one
            with contextlib.suppress(BaseException):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def _become(argv: Sequence[str], out: int) -> None:
    """In the forked child: shed the supervisor, take on the unit's identity."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # a new interpreter's stdio on the new descriptors (the caller's may have been replaced)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    asyncio.set_event_loop(None)  # the supervisor's; the unit makes its own
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    set_cmdline(argv)
    sys.argv = [argv[2], *argv[3:]]
