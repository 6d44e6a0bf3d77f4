"""Components come back by themselves (#19 item 3) in a real lab: the lab's supervisor restarts a
killed agent (its node is Ready again) and a killed API server, and counts the restarts.

Marks: root + slow. One two-node lab for the module (userspace proxy mode, the mode whose data
path lives in the agent's process tree), always taken down.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from podnet import procs
from podnet.lab import Lab, LabSpec
from podnet.lab.lab import _list_nodes, _node_ready

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

T = TypeVar("T")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(name=f"t19r{secrets.token_hex(2)}", nodes=2, proxy_mode="userspace")
    lab = Lab.up(spec, merge_kubeconfig=False, timeout=120)
    try:
        yield lab
    finally:
        lab.down()


def poll(what: str, get: Callable[[], T | None], seconds: float = 60.0) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = get()
        except Exception as exc:  # the API may be restarting
            value, last = None, exc
        else:
            last = None
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last error: {last})"
        time.sleep(0.1)


def recorded(lab: Lab, label: str) -> procs.Recorded:
    found = [r for r in procs.recorded(lab.state_dir / "pids") if r.label == label]
    assert found and procs.is_alive(found[0]), f"{label} is not running"
    return found[0]


def test_a_killed_agent_comes_back_and_its_node_is_ready(lab: Lab) -> None:
    agent = recorded(lab, "agent-node1")
    before = lab.status().nodes[0].agent_restarts
    os.kill(agent.pid, signal.SIGKILL)

    def restarted() -> procs.Recorded | None:
        node1 = lab.status().nodes[0]
        new = recorded(lab, "agent-node1") if node1.agent_alive else None
        return new if new is not None and new.pid != agent.pid else None

    new = poll("the supervisor to restart the agent", restarted)
    assert lab.status().nodes[0].agent_restarts == before + 1
    started = time.time()  # heartbeats have one-second resolution: one after this is new

    def ready_again() -> bool | None:
        nodes = asyncio.run(_list_nodes(lab.kubeconfig))
        return _node_ready(nodes["node1"], since=started + 1) or None

    poll("node1 to post Ready from the new agent", ready_again)
    assert recorded(lab, "agent-node1") == new
    assert lab.status().healthy


def test_a_killed_server_comes_back(lab: Lab) -> None:
    server = recorded(lab, "server")
    before = lab.status().server_restarts
    os.kill(server.pid, signal.SIGKILL)
    nodes = poll("the API to answer again", lambda: asyncio.run(_list_nodes(lab.kubeconfig)))
    assert set(nodes) == {"node1", "node2"}
    status = lab.status()
    assert status.server_alive and status.server_restarts == before + 1
    assert recorded(lab, "server").pid != server.pid
    unit = lab.supervisor.status()["units"]["server"]
    assert unit["last_exit"] == "killed by SIGKILL"
