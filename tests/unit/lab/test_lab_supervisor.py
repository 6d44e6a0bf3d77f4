"""The lab's supervisor with small real processes instead of a server and agents: restarts with
back-off and counts, stops on purpose stay stopped, pid records follow, a new supervisor adopts
what runs. (A whole lab under supervision: tests/e2e/test_lab_resilience.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from podnet import procs
from podnet.lab.spec import PLAN_FILE
from podnet.lab.supervisor import Supervisor, SupervisorClient, SupervisorError
from podnet.testing.waiting import eventually

pytestmark = pytest.mark.asyncio

SCRIPTS = {
    "server": ["sleep", "60"],
    "agent-node1": ["sh", "-c", "exit 3"],  # crashes at once, every time
}


class ScriptSupervisor(Supervisor):
    """The real supervisor; only its units' commands differ."""

    def labels(self) -> list[str]:
        return list(SCRIPTS)

    def command(self, label: str) -> tuple[list[str], Path, str | None]:
        return SCRIPTS[label], self.state_dir / f"{label}.log", None


class Running:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.client = SupervisorClient(state_dir)
        self.task: asyncio.Task[None] | None = None
        self.supervisor: ScriptSupervisor | None = None

    async def start(self) -> None:
        self.supervisor = ScriptSupervisor(self.state_dir, "python")
        self.task = asyncio.create_task(self.supervisor.run())
        await eventually(self.client.socket_path.exists, what="the supervisor's socket")

    async def stop(self) -> None:
        assert self.supervisor is not None and self.task is not None
        self.supervisor.stop_event.set()
        await self.task

    async def call(self, method: Callable[..., dict[str, Any]], *args: str) -> dict[str, Any]:
        return await asyncio.to_thread(method, *args)

    async def unit(self, label: str) -> dict[str, Any]:
        units: dict[str, dict[str, Any]] = (await self.call(self.client.status))["units"]
        return units[label]

    async def until(self, label: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def holds() -> bool:
            seen.update(await self.unit(label))
            return check(seen)

        await eventually(holds, timeout=10, what=f"{label} to be restarted", interval=0.05)
        return seen


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    (tmp_path / PLAN_FILE).write_text("{}")  # the supervisor exits when the plan goes
    lab = Running(tmp_path)
    await lab.start()
    try:
        yield lab
    finally:
        if lab.task is not None and not lab.task.done():
            await lab.stop()
        procs.stop_all(tmp_path / "pids", grace_seconds=1)


def recorded_pid(state_dir: Path, label: str) -> int | None:
    found = [r for r in procs.recorded(state_dir / "pids") if r.label == label]
    return found[0].pid if found and procs.is_alive(found[0]) else None


async def test_a_killed_unit_is_restarted_and_counted(running: Running) -> None:
    first = (await running.call(running.client.start, "server"))["units"]["server"]["pid"]
    assert recorded_pid(running.state_dir, "server") == first
    os.kill(first, signal.SIGKILL)
    unit = await running.until("server", lambda u: u["pid"] not in (None, first))
    assert unit["restarts"] == 1 and unit["last_exit"] == "killed by SIGKILL"
    assert recorded_pid(running.state_dir, "server") == unit["pid"]
    saved = running.client.saved_status()["units"]["server"]
    assert saved["pid"] == unit["pid"] and saved["restarts"] == 1


async def test_a_unit_stopped_on_purpose_stays_stopped(running: Running) -> None:
    pid = (await running.call(running.client.start, "server"))["units"]["server"]["pid"]
    stopped = (await running.call(running.client.stop, "server"))["units"]["server"]
    assert stopped["pid"] is None and not stopped["wanted"]
    assert stopped["last_exit"] == "killed by SIGTERM"
    assert procs.process_start_time(pid) is None
    assert recorded_pid(running.state_dir, "server") is None
    await asyncio.sleep(0.5)  # longer than the first restart delay
    unit = await running.unit("server")
    assert unit["pid"] is None and unit["restarts"] == 0


async def test_a_crashing_unit_backs_off(running: Running) -> None:
    await running.call(running.client.start, "agent-node1")
    await asyncio.sleep(1.0)
    unit = await running.unit("agent-node1")
    # delays 0.2, 0.4, 0.8 s (+ up to 20 %): at most three restarts in the first second
    assert 1 <= unit["restarts"] <= 3, unit
    assert unit["last_exit"] == "exit code 3"
    stopped = (await running.call(running.client.stop, "agent-node1"))["units"]["agent-node1"]
    assert not stopped["restart_pending"]


async def test_a_new_supervisor_adopts_running_units(running: Running) -> None:
    pid = (await running.call(running.client.start, "server"))["units"]["server"]["pid"]
    await running.stop()
    assert recorded_pid(running.state_dir, "server") == pid  # the unit outlived it
    await running.start()
    assert (await running.unit("server"))["pid"] == pid
    os.kill(pid, signal.SIGKILL)
    unit = await running.until("server", lambda u: u["pid"] not in (None, pid))
    assert unit["restarts"] == 1 and "status unknown" in unit["last_exit"]


async def test_requests_are_checked(running: Running) -> None:
    with pytest.raises(SupervisorError, match="unknown unit 'agent-node9'; valid: server"):
        await running.call(running.client.start, "agent-node9")
    with pytest.raises(SupervisorError, match="unknown op 'reboot'"):
        await asyncio.to_thread(running.client.request, {"op": "reboot"})


async def test_a_forked_childs_sigterm_does_not_stop_the_supervisor(running: Running) -> None:
    """A periodic task may fork: clearing a `podnet fault bandwidth --for` fault removes the
    tbf through pyroute2's NetNS, which forks a child per namespace socket and SIGTERMs it
    when done. The child inherits the supervisor's signal handling (and, with asyncio's
    add_signal_handler, its wakeup socket); its SIGTERM must not end the supervisor, while a
    SIGTERM to the supervisor itself still does."""
    assert running.supervisor is not None and running.task is not None
    exits: list[int] = []

    def fork_and_terminate_the_child() -> None:
        pid = os.fork()
        if pid == 0:  # the child: SIGTERM to itself, as pyroute2's ChildProcess.stop sends
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(0)
        exits.append(os.waitpid(pid, 0)[1])

    running.supervisor.tick.append(fork_and_terminate_the_child)
    task = running.task
    await eventually(
        lambda: len(exits) >= 3 or task.done(), timeout=10, what="three ticks that forked"
    )
    assert not task.done(), f"a forked child's SIGTERM stopped the supervisor ({len(exits)})"
    running.supervisor.tick.clear()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running.task, 10)


async def test_a_request_to_a_supervisor_that_is_gone_says_how_to_start_it(
    running: Running,
) -> None:
    """The supervisor stopped (no socket), or killed (its socket file stays, nobody listens):
    `podnet fault`, `add-node` and the rest say it is not running and how to start it again,
    not just "Connection refused"."""
    await running.stop()
    lab = running.state_dir.name
    for how in ("stopped", "killed"):
        if how == "killed":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:  # what a kill leaves
                dead.bind(str(running.client.socket_path))
        with pytest.raises(SupervisorError) as gone:
            await running.call(running.client.status)
        message = str(gone.value)
        assert message.startswith(f"the supervisor of lab {lab} is not running"), message
        assert f"`podnet supervise --name {lab}` starts it again" in message
