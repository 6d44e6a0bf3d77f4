"""`podnet up` waits for Ready nodes on a watch (`lab._watch_nodes`), against a real API
server in this process: it reports each new count and returns on the event that makes the
last node Ready, stops at once when `check` raises (a process died), and says which nodes
were late once the deadline passes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from podnet.api.client import HttpApi
from podnet.apiserver.server import ApiServer
from podnet.lab.lab import _node_ready, _watch_nodes
from podnet.lab.spec import LabError

pytestmark = pytest.mark.asyncio


def node(name: str, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def kubeconfig(server: ApiServer) -> Path:
    assert server.credentials is not None
    return server.credentials.kubeconfig_path


def ready(nodes: dict[str, dict[str, Any]]) -> set[str]:
    return {n for n, obj in nodes.items() if n.startswith("w-") and _node_ready(obj)}


async def test_it_returns_on_the_event_that_makes_the_last_node_ready(
    api_server: ApiServer,
) -> None:
    async with HttpApi.from_kubeconfig(kubeconfig(api_server)) as api:
        for name in ("w-1", "w-2"):
            await api.create("nodes", node(name, ready=False))
        seen: list[str] = []
        nodes: dict[str, dict[str, Any]] = {}
        waiting = asyncio.create_task(
            _watch_nodes(kubeconfig(api_server), nodes, lambda: None, ready,
                         time.monotonic() + 30, lambda why: LabError(why), seen.append, 2)
        )  # fmt: skip
        # make each node Ready only once the wait reported the count before it: waiting on
        # `ready(nodes)` instead read the follower's copy, which lags the server, and made
        # w-2 Ready before the w-1 event was seen (both then arrived in one wake-up, 0 -> 2)
        for done, name in enumerate(("w-1", "w-2")):
            while f"{done}/2 nodes Ready" not in seen:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            current = await api.get("nodes", name)
            current["status"] = node(name, ready=True)["status"]
            await api.update("nodes", current, subresource="status")
        await asyncio.wait_for(waiting, 10)
    assert seen == ["0/2 nodes Ready", "1/2 nodes Ready", "2/2 nodes Ready"]


async def test_a_dead_process_or_the_deadline_ends_the_wait(api_server: ApiServer) -> None:
    def died() -> None:
        raise LabError("the agent of w-1 exited")

    with pytest.raises(LabError, match="the agent of w-1 exited"):
        await _watch_nodes(kubeconfig(api_server), {}, died, ready, time.monotonic() + 30,
                           LabError, lambda _: None, 1)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(LabError, match="late"):
        await _watch_nodes(kubeconfig(api_server), {}, lambda: None, ready,
                           time.monotonic() + 0.3, lambda why: LabError(f"late{why}"),
                           lambda _: None, 1)  # fmt: skip
    assert time.monotonic() - started < 5
