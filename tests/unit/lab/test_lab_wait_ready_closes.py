"""`podnet up` runs `lab._watch_nodes` in its own `asyncio.run`, in the caller's process (the
lab e2e tests call `Lab.up` in theirs): when it returns, its watch connection to the API server
must be closed already — one whose TLS shutdown was left to finish after the loop ended is a
socket the garbage collector reports as unclosed, later, in some other test."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

from podnet.api.client import HttpApi
from podnet.lab.lab import _node_ready, _watch_nodes
from podnet.lab.spec import LabError
from podnet.testing.server import ServerProcess


def node(name: str, ready: bool) -> dict[str, Any]:
    status = "True" if ready else "False"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": status}]},
    }


def test_the_watch_connection_is_closed_when_the_wait_returns(
    podnet_server: ServerProcess,
) -> None:
    kubeconfig = podnet_server.kubeconfig
    name = f"wc-{time.monotonic_ns()}"

    async def create() -> None:
        async with HttpApi.from_kubeconfig(kubeconfig) as api:
            await api.create("nodes", node(name, ready=False))

    async def make_ready() -> None:
        async with HttpApi.from_kubeconfig(kubeconfig) as api:
            current = await api.get("nodes", name)
            current["status"] = node(name, ready=True)["status"]
            await api.update("nodes", current, subresource="status")

    asyncio.run(create())
    watching = threading.Event()

    def on_count(seen: str) -> None:
        if seen == "0/1 nodes Ready":
            watching.set()

    def writer() -> None:
        watching.wait(30)
        time.sleep(0.3)  # the follower is on its watch by now: the Ready event arrives there
        asyncio.run(make_ready())

    thread = threading.Thread(target=writer)
    thread.start()

    def ready(nodes: dict[str, dict[str, Any]]) -> set[str]:
        return {n for n, obj in nodes.items() if n == name and _node_ready(obj)}

    try:
        asyncio.run(
            _watch_nodes(kubeconfig, {}, lambda: None, ready, time.monotonic() + 30, LabError,
                         on_count, 1)
        )  # fmt: skip
    finally:
        thread.join()
    # an unclosed transport or socket is reported here (warnings are errors in this suite)
    gc.collect()
