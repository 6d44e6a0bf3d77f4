"""Warm starts: the lab's supervisor forks its units from an interpreter that has already
imported them, instead of starting a new Python that imports podnet again.

What belongs here: `Preloaded` (import the units' modules once, note what was imported),
`Preloaded.fork` (start one unit as a forked child running `python -m MODULE ARGS`) and
`set_cmdline` (the child's /proc/<pid>/cmdline made to read as that command line).

Why: on this project's 2-core machine a new interpreter importing the API server costs about
1 s of CPU and each agent 0.4 s, paid again for every unit, all at once, in `podnet up`; a fork
of a process that has them costs milliseconds. It is the zygote of Android and of the kubelet
launcher (`agent/kubelet/zygote.py`), applied to the lab's own processes. The imports come in
stages, the server's first: `podnet up` forks the server as soon as those are in and the
agents' are imported while it starts (`LATER_STAGES`).

Invariants:
- A forked unit is indistinguishable from a spawned one to everyone else: its own session,
  stdin from /dev/null, stdout and stderr into its log, no other descriptor of the supervisor
  (its socket, pidfds, event loop) left open, default signal dispositions, no logging handler
  of the supervisor, `sys.argv` and /proc/<pid>/cmdline those of the command it stands for.
- Only `python -m podnet.…` units of this very interpreter are forked, and only while no source
  file of an imported podnet module changed since the preload (an edited checkout is run as
  written, not as imported); otherwise the caller spawns as before. A fork is an
  optimisation, never a dependency.
- Modules are imported on the main thread only, never while a unit is being forked; the
  supervisor's own worker threads import nothing before a fault is set (`supervisor.py`).
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
from collections.abc import Mapping, Sequence
from pathlib import Path

from podnet.agent.flannel import registry as flannel_registry
from podnet.agent.proxy import registry as proxy_registry

log = logging.getLogger(__name__)

# imported before the supervisor answers: the command's entry points (each unit's command
# imports its machinery inside the function it runs) and the API server, the first unit
UNIT_MODULES = ("podnet.cli.main", "podnet.cli.server", "podnet.apiserver.server")
# what `podnet agent` imports, and the backends and proxy modes an agent builds (their
# registries import them on first use)
AGENT_MODULES = (
    "podnet.cli.agent",
    "podnet.agent.main",
    "podnet.agent.context",
    "podnet.api.client",
    *flannel_registry.MODULES,
    *proxy_registry.MODULES,
)
# imported a stage at a time once the supervisor started a unit (`load_next`), or a module at
# a time while it has nothing else to do (`load_one`): the agents' while the server starts,
# then what the supervisor's fault expiry uses
LATER_STAGES = (AGENT_MODULES, ("podnet.lab.faults", "podnet.lab.lab"))
# sub-command -> the modules its units are forked with (imported first if need be)
NEEDS = {"agent": AGENT_MODULES}
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
    """This interpreter with the units' modules imported; forks units from it.

    `modules` are imported at once; `stages` one by one (`load_next`) or a module at a time
    (`load_one`). A unit running `python -m MODULE SUBCOMMAND …` is forked once the modules
    `needs[SUBCOMMAND]` names are in (imported then if need be); what else it uses it imports
    itself."""

    def __init__(
        self,
        modules: Sequence[str] = UNIT_MODULES,
        package: str = _PACKAGE,
        stages: Sequence[Sequence[str]] = LATER_STAGES,
        needs: Mapping[str, Sequence[str]] = NEEDS,
    ) -> None:
        self.package = package  # only `python -m <package>.…` units are forked
        self.sources: dict[str, float] = {}
        self.stages = [tuple(stage) for stage in stages]  # not imported yet, in order
        self.needs = needs
        self._load(modules)

    def _load(self, modules: Sequence[str]) -> None:
        if all(name in sys.modules for name in modules):
            return
        for name in modules:
            importlib.import_module(name)
        self.sources = {**_sources(self.package), **self.sources}  # edits before now count

    def load_next(self) -> bool:
        """Import the next stage (call it from the main thread); False once all are in."""
        if not self.stages:
            return False
        self._load(self.stages.pop(0))
        return True

    def load_one(self) -> bool:
        """Import the next module of the stages (main thread); False once all are in."""
        while self.stages and not self.stages[0]:
            self.stages.pop(0)
        if not self.stages:
            return False
        first, *rest = self.stages[0]
        self.stages[0] = tuple(rest)
        self._load((first,))
        return True

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
        self._load(self.needs.get(argv[3], ()) if len(argv) > 3 else ())
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
