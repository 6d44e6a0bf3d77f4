"""The lab's supervisor: one small long-lived process per lab that keeps its API server and
node agents running, as systemd keeps a real host's services running.

    podnet supervise --name LAB --foreground      (started by `podnet up`, in the background)

What belongs here: the supervisor process (`Supervisor`, `main`) and its client
(`SupervisorClient`, used by `podnet.lab.Lab`). The units are the lab's `server` and one
`agent-<node>` per node (a VM node's is its qemu, `podnet.lab.vmrun`, whose guest runs the
agent); their argv comes from the lab's plan (`lab.json`), re-read at every
start, so `podnet proxy-mode` only rewrites the plan and restarts the agents.

Shape (why a process and not `up` itself): `podnet up` returns, and nothing else of podnet lives
on the host to notice a dead server or agent (their parent would be init). The supervisor is
that parent. It talks JSON lines on `<state>/supervisor.sock` (mode 0600):

    {"op": "start", "units": [...]}   start now (clears the unit's back-off), wait for the pid
    {"op": "stop", "units": [...]}    stop on purpose: SIGTERM, grace, SIGKILL; never restarted
    {"op": "status"}                  every unit: wanted, pid, restarts, how it last ended

and writes the same status to `<state>/supervisor.json` after every change, which `podnet
status` reads even when the supervisor is gone.

Invariants:
- A unit that exits without having been stopped through the socket is started again after a
  back-off (`podnet.retry.Backoff`: 0.2 s doubling to 10 s, jittered); a unit that ran for
  `RESET_AFTER` seconds starts over at 0.2 s. Every restart is counted and logged.
- Every process is recorded (`podnet.procs`, pid + start time) under the label `podnet down`
  and the rest of the lab already use (`pids/server.pid`, `pids/agent-<node>.pid`) before the
  start is reported, and a pid is only signalled while its start time matches.
- SIGTERM ends the supervisor at once and leaves its units running: `podnet down` stops the
  supervisor first (so nothing is restarted behind its back), then the agents, containers and
  server by their recorded pids, as before. The supervisor never leaves a process it started
  unrecorded, so `down` finds everything even after `kill -9` of the supervisor.
- A supervisor started while units already run (it died and was started again) adopts them
  through pidfds: it notices their exit and restarts them, though it cannot know their exit
  status.
- The supervisor is nobody's subreaper: the containers' shims, which the agents double-fork,
  still belong to init, as they would without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podnet import procs
from podnet.lab import ha, vm
from podnet.lab.prestart import GO
from podnet.lab.spec import (
    FAULTS_FILE,
    PLAN_FILE,
    LabError,
    LabPlan,
    agent_argv,
    hollow_argv,
    load_plan,
)
from podnet.lab.warm import Preloaded
from podnet.private import FILE_MODE, private_dir, write_private
from podnet.retry import Backoff, Retry

log = logging.getLogger("podnet.supervisor")

SOCKET_NAME = "supervisor.sock"
STATUS_NAME = "supervisor.json"
LOG_NAME = "supervisor.log"
LABEL = "supervisor"
RESTART_BACKOFF = Backoff(initial=0.2, cap=10.0)
RESET_AFTER = 10.0  # a unit that ran this long restarts at the initial delay again
STOP_GRACE = 5.0
REQUEST_TIMEOUT = 30.0
TICK_SECONDS = 0.5


HOLLOW = "hollow"  # the unit of `podnet up --hollow-nodes N`


def unit_argv(plan: LabPlan, label: str, python: str) -> list[str]:
    """The command line of one unit of the lab, from its plan."""
    control_plane = ha.unit_argv(plan, label, python)  # the servers and etcd members
    if control_plane is not None:
        return control_plane
    if label == HOLLOW and plan.hollow_nodes:
        return hollow_argv(plan, python)
    if label.startswith("agent-"):
        node = plan.node(label.removeprefix("agent-"))
        if node.vm:  # the VM is the unit; its guest runs the agent
            return vm.runner_argv(plan, node, python)
        return agent_argv(plan, node, python)
    raise LabError(f"lab {plan.name!r} has no unit {label!r}")


def unit_log(plan: LabPlan, label: str) -> Path:
    control_plane = ha.unit_log(plan, label)
    if control_plane is not None:
        return control_plane
    if label == "server":
        return Path(plan.server_log)
    if label == HOLLOW:
        return Path(plan.state_dir) / "hollow.log"
    node = plan.node(label.removeprefix("agent-"))
    return vm.VmPaths.of(plan.state_dir, node.name).qemu_log if node.vm else Path(node.log)


def unit_labels(plan: LabPlan) -> list[str]:
    return [
        *ha.labels(plan),
        "server",
        *(f"agent-{n.name}" for n in plan.nodes),
        *([HOLLOW] * bool(plan.hollow_nodes)),
    ]


def describe_exit(returncode: int | None) -> str:
    """`exit code 1`, `killed by SIGKILL`, or that nobody could know."""
    if returncode is None:
        return "exited (status unknown: adopted, not started by this supervisor)"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(eq=False)
class Unit:
    label: str
    wanted: bool = False
    rec: procs.Recorded | None = None
    child: bool = False  # started by this supervisor (False: adopted), so waitpid works
    pidfd: int | None = None
    started: float = 0.0  # monotonic
    started_at: str | None = None
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: str | None = None
    retry: Retry = field(default_factory=lambda: Retry(RESTART_BACKOFF))
    pending: asyncio.TimerHandle | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.pidfd is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "wanted": self.wanted,
            "pid": self.rec.pid if self.rec is not None and self.running else None,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "restart_pending": self.pending is not None,
        }


class Supervisor:
    def __init__(self, state_dir: Path, python: str, warm: Preloaded | None = None) -> None:
        self.state_dir = state_dir
        self.python = python
        self.warm = warm  # forks units from this interpreter where it can (`warm.py`)
        self.pids = state_dir / "pids"
        self.units: dict[str, Unit] = {}
        self.stop_event = asyncio.Event()
        self.tick: list[Callable[[], None]] = []  # called every TICK_SECONDS (fault expiry)

    def plan(self) -> LabPlan:
        plan = load_plan(self.state_dir)
        if plan is None:
            raise LabError(f"{self.state_dir} holds no lab plan any more")
        return plan

    def labels(self) -> list[str]:
        return unit_labels(self.plan())

    def command(self, label: str) -> tuple[list[str], Path, str | None]:
        """The unit's argv, log file and the namespace it runs in (None: the host's), from the
        plan as it is now."""
        plan = self.plan()
        return (
            unit_argv(plan, label, self.python),
            unit_log(plan, label),
            ha.unit_netns(plan, label),
        )

    def unit(self, label: str) -> Unit:
        if label not in self.labels():
            raise LabError(f"unknown unit {label!r}; valid: {', '.join(self.labels())}")
        return self.units.setdefault(label, Unit(label))

    # -- processes -------------------------------------------------------------------

    def adopt_running(self) -> None:
        """Watch the units recorded as running (a previous supervisor started them)."""
        labels = set(self.labels())
        for rec in procs.recorded(self.pids):
            if rec.label not in labels or not procs.is_alive(rec):
                continue
            unit = self.units.setdefault(rec.label, Unit(rec.label))
            with contextlib.suppress(ProcessLookupError):
                self._watch(unit, rec, child=False)
                unit.wanted = True
                unit.started = time.monotonic()
                log.info("adopted %s (pid %d)", rec.label, rec.pid)

    def _watch(self, unit: Unit, rec: procs.Recorded, *, child: bool) -> None:
        pidfd = os.pidfd_open(rec.pid)
        if not procs.is_alive(rec):  # it exited (or the pid was reused) before the pidfd
            os.close(pidfd)
            if not child:
                raise ProcessLookupError(rec.pid)
            pidfd = os.pidfd_open(rec.pid)  # our own child: a zombie until reaped, still ours
        unit.rec, unit.child, unit.pidfd = rec, child, pidfd
        unit.exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit, unit)

    def start(self, unit: Unit) -> None:
        if unit.pending is not None:
            unit.pending.cancel()
            unit.pending = None
        if unit.running:
            return
        argv, log_path, namespace = self.command(unit.label)
        private_dir(log_path.parent)
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(out, FILE_MODE)
        try:
            if namespace is not None:
                pid = self._spawn_in(namespace, argv, out)
            elif self.warm is not None and self.warm.can_fork(argv):
                pid = self.warm.fork(argv, out)
            else:
                pid = self._spawn(argv, out)
        finally:
            os.close(out)
        # our child, waited for only in _on_exit: one that exited at once is still recorded
        # (a zombie keeps its start time), and its exit is handled as any other
        rec = procs.record(self.pids, unit.label, pid, own_child=True)
        unit.started = time.monotonic()
        unit.started_at = _now()
        self._watch(unit, rec, child=True)
        log.info("started %s (pid %d): %s", unit.label, pid, " ".join(argv[2:5]))
        self.save()

    @staticmethod
    def _spawn(argv: list[str], out: int) -> int:
        # every descriptor of this process is close-on-exec (Python's default, pidfds too),
        # so the unit inherits only these three
        return os.posix_spawnp(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,
        )

    @classmethod
    def _spawn_in(cls, namespace: str, argv: list[str], out: int) -> int:
        """Spawn from a thread inside the namespace: the child starts there (an etcd member)."""
        from podnet.kernel import netns  # pyroute2: only for a unit that has a namespace

        try:
            return netns.call_in(namespace, lambda: cls._spawn(argv, out))
        except netns.NetnsError as exc:
            raise LabError(f"{exc}; `podnet down` and `podnet up` build it again") from exc

    def _on_exit(self, unit: Unit) -> None:
        assert unit.pidfd is not None
        asyncio.get_running_loop().remove_reader(unit.pidfd)
        os.close(unit.pidfd)
        unit.pidfd = None
        code: int | None = None
        if unit.child and unit.rec is not None:
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(unit.rec.pid, 0)  # the pidfd said it exited
                code = os.waitstatus_to_exitcode(status)
        unit.last_exit = describe_exit(code)
        unit.last_exit_at = _now()
        if unit.rec is not None and procs.process_start_time(unit.rec.pid) is None:
            # the record still names the dead process; `start` replaces it, `stop` drops it
            current = next((r for r in procs.recorded(self.pids) if r.label == unit.label), None)
            if current is not None and current.pid == unit.rec.pid:
                procs.forget(current)
        unit.exited.set()
        if unit.wanted:
            ran = time.monotonic() - unit.started
            if ran >= RESET_AFTER:
                unit.retry.reset()
            delay = unit.retry.next()
            log.warning(
                "%s %s after %.1f s; restarting it in %.2f s",
                unit.label,
                unit.last_exit,
                ran,
                delay,
            )
            unit.pending = asyncio.get_running_loop().call_later(delay, self._restart, unit)
        else:
            log.info("%s stopped (%s)", unit.label, unit.last_exit)
        self.save()

    def _restart(self, unit: Unit) -> None:
        unit.pending = None
        if not unit.wanted or unit.running:
            return
        unit.restarts += 1
        try:
            self.start(unit)
        except (OSError, LabError) as exc:
            log.error("restarting %s failed: %s", unit.label, exc)
            unit.pending = asyncio.get_running_loop().call_later(
                unit.retry.next(), self._restart, unit
            )
            self.save()

    async def stop(self, unit: Unit, grace: float) -> None:
        unit.wanted = False
        if unit.pending is not None:
            unit.pending.cancel()
            unit.pending = None
        if unit.running and unit.rec is not None:
            rec = unit.rec
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                if procs.is_alive(rec):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rec.pid, sig)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await unit.exited.wait()
                if unit.exited.is_set():
                    break
        for rec in procs.recorded(self.pids):
            if rec.label == unit.label and not procs.is_alive(rec):
                procs.forget(rec)
        self.save()

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "updated_at": _now(),
            "units": {label: u.to_json() for label, u in sorted(self.units.items())},
        }

    def save(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # `down` removed the state dir
            write_private(
                self.state_dir / STATUS_NAME, json.dumps(self.status(), indent=2).encode() + b"\n"
            )

    # -- control socket ----------------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        labels = request.get("units") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            return {"ok": False, "error": "units must be a list of unit names"}
        try:
            units = [self.unit(label) for label in labels]
        except LabError as exc:
            return {"ok": False, "error": str(exc)}
        if op == "start":
            for unit in units:
                unit.wanted = True
                unit.retry.reset()
                try:
                    self.start(unit)
                except (OSError, LabError) as exc:
                    return {"ok": False, "error": f"starting {unit.label}: {exc}"}
            if self.warm is not None:  # the next stage of the preload, once this answer is out
                asyncio.get_running_loop().call_soon(self._preload_next)
        elif op == "stop":
            grace = float(request.get("grace", STOP_GRACE))
            await asyncio.gather(*(self.stop(unit, grace) for unit in units))
        elif op != "status":
            return {"ok": False, "error": f"unknown op {op!r}; valid: start, stop, status"}
        return {"ok": True, **self.status()}

    def _preload_next(self) -> None:
        assert self.warm is not None
        try:
            self.warm.load_next()
        except Exception:
            log.exception("cannot preload the units' modules; forked units import them")

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                answer: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                answer = await self.handle(request)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        own_pid = os.getpid()

        def on_signal(_signum: int, _frame: object) -> None:
            # not loop.add_signal_handler: a periodic task may fork (pyroute2's NetNS forks a
            # child per namespace socket and SIGTERMs it when done, as clearing a bandwidth
            # fault does), the child shares the loop's wakeup socket, and its SIGTERM would
            # stop this supervisor. A plain handler runs in the process the signal is for; the
            # pid check ignores a forked copy (as the agent does, `cli/agent.py`).
            if os.getpid() == own_pid:
                loop.call_soon_threadsafe(self.stop_event.set)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.adopt_running()
        path = self.state_dir / SOCKET_NAME
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self.serve_client, path=str(path))
        path.chmod(0o600)
        self.save()
        log.info("supervising lab in %s (pid %d)", self.state_dir, os.getpid())
        try:
            while not self.stop_event.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_SECONDS):
                        await self.stop_event.wait()
                if not self.state_dir.joinpath(PLAN_FILE).exists():
                    log.info("the lab's plan is gone (podnet down); exiting")
                    break
                if self.warm is not None and self.state_dir.joinpath(FAULTS_FILE).exists():
                    # a fault is set: what its expiry imports comes in here, on this thread,
                    # never on the worker thread while a unit may be forked
                    while self.warm.stages:
                        self._preload_next()
                for callback in self.tick:
                    try:  # on a thread: a task may ask this supervisor (the socket must answer)
                        await asyncio.to_thread(callback)
                    except Exception:
                        log.exception("periodic task failed")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.close()
            path.unlink(missing_ok=True)
            for unit in self.units.values():
                if unit.pending is not None:
                    unit.pending.cancel()
                if unit.pidfd is not None:
                    loop.remove_reader(unit.pidfd)
                    os.close(unit.pidfd)
            log.info("supervisor exiting; the units keep running")


# -- client ------------------------------------------------------------------------------


class SupervisorError(LabError):
    """The supervisor could not be reached or refused a request."""


class SupervisorClient:
    """Talks to a lab's supervisor over its socket (blocking; the lab code is synchronous)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def socket_path(self) -> Path:
        return self.state_dir / SOCKET_NAME

    def record(self) -> procs.Recorded | None:
        rec = next((r for r in procs.recorded(self.state_dir / "pids") if r.label == LABEL), None)
        return rec if rec is not None and procs.is_alive(rec) else None

    def request(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if self.record() is None:  # killed or stopped: nobody listens on the socket
                lab = self.state_dir.name
                raise SupervisorError(
                    f"the supervisor of lab {lab} is not running (no process behind "
                    f"{self.socket_path}): `podnet supervise --name {lab}` starts it again; it "
                    "adopts the components that still run"
                ) from exc
            raise SupervisorError(
                f"the lab's supervisor ({self.socket_path}) did not answer: {exc}"
            ) from exc
        except OSError as exc:
            raise SupervisorError(
                f"the lab's supervisor ({self.socket_path}) did not answer: {exc}"
            ) from exc
        finally:
            sock.close()
        try:
            answer: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise SupervisorError(f"the lab's supervisor answered {data!r}") from exc
        if not answer.get("ok"):
            raise SupervisorError(f"the lab's supervisor refused: {answer.get('error')}")
        return answer

    def start(self, *units: str) -> dict[str, Any]:
        return self.request({"op": "start", "units": list(units)})

    def stop(self, *units: str, grace: float = STOP_GRACE) -> dict[str, Any]:
        return self.request(
            {"op": "stop", "units": list(units), "grace": grace}, timeout=grace + REQUEST_TIMEOUT
        )

    def status(self) -> dict[str, Any]:
        return self.request({"op": "status"})

    def saved_status(self) -> dict[str, Any]:
        """The last status the supervisor wrote (also when it no longer runs)."""
        try:
            data = json.loads((self.state_dir / STATUS_NAME).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def wait_ready(self, deadline: float, alive: Callable[[], bool]) -> None:
        """Until the socket answers; `alive` says whether the supervisor still runs."""
        while True:
            try:
                self.status()
                return
            except SupervisorError as exc:
                if not alive():
                    log_path = self.state_dir / LOG_NAME
                    raise SupervisorError(f"the lab's supervisor exited; see {log_path}") from exc
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def _await_go(state_dir: Path) -> bool:
    """`podnet up` started this supervisor before it planned the lab (`prestart.py`): wait
    for its word on stdin, then log into the lab's state directory; False: it called us off."""
    if sys.stdin.buffer.readline() != GO:
        return False
    log_fd = os.open(state_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.fchmod(log_fd, FILE_MODE)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, onto in ((null, 0), (log_fd, 1), (log_fd, 2)):
        os.dup2(fd, onto)
    os.close(null)
    os.close(log_fd)
    return True


def run_supervisor(state_dir: Path, python: str, when_planned: bool = False) -> int:
    """The supervisor process's main (`podnet supervise --foreground`); `when_planned`: wait
    for `podnet up`'s word on stdin first (`prestart.py`), importing meanwhile."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def expire_faults() -> None:
        # on a worker thread: nothing may be imported here while a unit is forked (which
        # could catch it half-done); until a fault is set, nothing is, and then the loop has
        # imported what this uses (`Supervisor.run`)
        if not (state_dir / FAULTS_FILE).exists():
            return
        from podnet.lab import faults
        from podnet.lab.lab import Lab

        plan = load_plan(state_dir)
        if plan is not None:
            for fault in faults.expire_due(Lab(plan)):
                log.info("fault %s ran its time and is cleared", fault.describe())

    failed: Exception | None = None
    try:  # before the socket answers: `podnet up` starts the units right after
        warm: Preloaded | None = Preloaded()
    except Exception as exc:
        warm, failed = None, exc
    if when_planned:
        # until `up` gives the word, import what the units will need next, a module at a time
        while warm is not None and not select.select([sys.stdin], [], [], 0)[0]:
            try:
                if not warm.load_one():
                    break
            except Exception:
                break  # the unit that needs it imports it itself (and says what failed)
        if not _await_go(state_dir):
            return 0
    if failed is not None:
        log.error("cannot preload the units' modules; starting them as new processes",
                  exc_info=failed)  # fmt: skip

    async def run() -> None:
        supervisor = Supervisor(state_dir, python, warm)
        supervisor.tick.append(expire_faults)  # `podnet fault ... --for`
        await supervisor.run()

    asyncio.run(run())
    return 0
