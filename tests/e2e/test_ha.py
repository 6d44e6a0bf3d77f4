"""Three API servers on a three-member etcd cluster survive the loss of one of each (#15).

One plane (`podnet.testing.ha.HaControlPlane`: real etcd members, real `podnet server`
processes, controllers leader-elected) serves a steady stream of writes and a watch while the
test SIGKILLs the server holding the controllers' Lease — the one both clients are talking to —
and then the etcd leader. Checked: no acknowledged write is lost, the watcher (the agents' own
`reflect` loop) sees every object added exactly once and never re-lists (it resumes from its
resourceVersion on another server), writes go on after each kill, and the controllers move
to a surviving server. How long the writes stop is measured by benchmarks/ha.py, not here.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from podnet.api.client import HttpApi
from podnet.api.errors import ApiError
from podnet.api.reflector import reflect
from podnet.testing.ha import HaControlPlane
from podnet.testing.waiting import eventually

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaControlPlane]:
    with HaControlPlane(Path(tmp_path_factory.mktemp("ha"))) as started:
        yield started


def client_on(plane: HaControlPlane, index: int) -> HttpApi:
    """A client that knows every server and starts on server `index`."""
    first = plane.servers[index]
    others = [server.url for server in plane.servers]
    return HttpApi(first.url, first.token, first.ca_path.read_bytes(), servers=others)


class Writer:
    """Creates ConfigMaps one after another; retries a name until the store confirms it."""

    def __init__(self, api: HttpApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.acked: list[str] = []
        self.retries = 0

    async def run(self, stop: asyncio.Event) -> None:
        index = 0
        while not stop.is_set():
            name = f"cm-{index}"
            body = {"metadata": {"name": name}, "data": {"n": str(index)}}
            try:
                await self.api.create("configmaps", body, self.namespace)
            except ApiError as error:
                if error.code != 409:  # 409: an earlier, cut-off attempt was applied
                    self.retries += 1
                    await asyncio.sleep(0.05)
                    continue
            except (aiohttp.ClientError, TimeoutError):
                self.retries += 1  # cut off after sending: maybe applied; ask again
                continue
            self.acked.append(name)
            index += 1


class Watcher:
    """The agents' own list+watch loop (`reflect`) on ConfigMaps, counting what it is fed."""

    def __init__(self, api: HttpApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.added: Counter[str] = Counter()
        self.lists = 0  # a failover must not cost a re-list

    def replace(self, items: list[dict[str, object]]) -> None:
        self.lists += 1

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "ADDED":
            self.added[obj["metadata"]["name"]] += 1

    async def run(self, stop: asyncio.Event) -> None:
        await reflect(
            self.api, "configmaps", replace=self.replace, apply=self.apply, stop=stop,
            namespace=self.namespace,
        )  # fmt: skip


@pytest.mark.asyncio
async def test_losing_the_leader_server_and_an_etcd_member(plane: HaControlPlane) -> None:
    leader = await plane.leader()
    assert leader is not None, "no server holds the controllers' Lease"
    namespace = f"ha-{secrets.token_hex(3)}"
    async with client_on(plane, leader) as api, client_on(plane, leader) as watch_api:
        await api.create("namespaces", {"metadata": {"name": namespace}})
        writer = Writer(api, namespace)
        watcher = Watcher(watch_api, namespace)
        stop, stop_watching = asyncio.Event(), asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop_watching))
        await eventually(lambda: watcher.lists == 1, 10, "the watcher's first list")
        writing = asyncio.create_task(writer.run(stop))
        try:
            await eventually(lambda: len(writer.acked) >= 20, 10, "writes before the kill")
            plane.kill_server(leader)
            acked_at_kill = len(writer.acked)
            await eventually(lambda: len(writer.acked) >= acked_at_kill + 20, 10, "writes go on")
            etcd_leader = plane.etcd.leader()
            assert etcd_leader is not None
            plane.kill_etcd(etcd_leader)
            acked_at_kill = len(writer.acked)
            await eventually(lambda: len(writer.acked) >= acked_at_kill + 20, 15, "writes go on")
            stop.set()
            await writing
            await eventually(
                lambda: set(writer.acked) <= set(watcher.added) or watcher.lists > 1,
                10,
                "the watcher to see every acknowledged write",
            )
        finally:
            stop.set()
            stop_watching.set()
            watching.cancel()
            writing.cancel()
        assert api.server != plane.servers[leader].url  # the client did fail over
        stored = {
            cm["metadata"]["name"] for cm in (await api.list("configmaps", namespace))["items"]
        }
        assert set(writer.acked) <= stored, "acknowledged writes were lost"
        assert watcher.lists == 1, "the watch re-listed instead of resuming from its version"
        assert watch_api.server != plane.servers[leader].url  # the watch failed over too
        twice = {name: n for name, n in watcher.added.items() if n != 1}
        assert not twice, f"events seen more than once: {twice}"

        # the controllers' Lease expires (15 s) and a surviving server's controllers take over
        async def new_leader() -> bool:
            now = await plane.leader()
            return now is not None and now != leader

        await eventually(new_leader, 30, "a surviving server to lead the controllers", 0.5)
        await api.create(
            "deployments",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "agnhost"}]},
                    },
                },
            },
            namespace,
        )

        async def replicaset_made() -> bool:
            return bool((await api.list("replicasets", namespace))["items"])

        await eventually(replicaset_made, 15, "the new leader's deployment controller", 0.2)
