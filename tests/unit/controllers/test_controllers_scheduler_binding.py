"""The scheduler decides pod after pod while bindings are written in the background: a burst
of pods is still spread evenly (assumed pods count at once), and a binding that fails is
forgotten and retried (InMemoryApi with slow bindings, the first of one pod failing)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from podnet.api.errors import service_unavailable
from podnet.config import ClusterConfig
from podnet.controllers.manager import ControllerManager
from podnet.testing.api import InMemoryApi
from podnet.testing.standin_kubelet import add_node
from podnet.testing.waiting import eventually

Obj = dict[str, Any]
pytestmark = pytest.mark.timeout(30)


class SlowBindings(InMemoryApi):
    """Each binding takes a while; the first binding of `failing` answers 503."""

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing
        self.in_flight = 0
        self.most_in_flight = 0
        self.attempts: dict[str, int] = {}

    async def create(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        if subresource != "binding":
            return await super().create(resource, obj, namespace, subresource)
        name = obj["metadata"]["name"]
        self.attempts[name] = self.attempts.get(name, 0) + 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            if name == self.failing and self.attempts[name] == 1:
                raise service_unavailable("etcd is unreachable")
            return await super().create(resource, obj, namespace, subresource)
        finally:
            self.in_flight -= 1


@pytest.mark.asyncio
async def test_bindings_in_the_background_spread_and_retry() -> None:
    api = SlowBindings(failing="p7")
    for node in ("n1", "n2", "n3"):
        await add_node(api, node)
    manager = ControllerManager(api, ClusterConfig(), only=["scheduler"])
    stop = asyncio.Event()
    running = asyncio.create_task(manager.run(stop))
    try:
        for i in range(30):
            pod = {
                "metadata": {"name": f"p{i}"},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            }
            await api.create("pods", pod, "default")

        placed: dict[str, str] = {}

        async def bound() -> bool:
            pods = (await api.list("pods", "default"))["items"]
            placed.update({p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods})
            return all(placed.values())

        await eventually(bound, 10, "every pod bound")
        per_node = {n: list(placed.values()).count(n) for n in ("n1", "n2", "n3")}
        assert per_node == {"n1": 10, "n2": 10, "n3": 10}
        assert api.attempts["p7"] == 2  # failed once, retried
        assert all(n == 1 for name, n in api.attempts.items() if name != "p7")
        assert api.most_in_flight > 1  # bindings overlapped
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await running
