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
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.testing.ha import HaControlPlane, Watcher, Writer
from podnet.testing.waiting import eventually

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaControlPlane]:
    with HaControlPlane(Path(tmp_path_factory.mktemp("ha"))) as started:
        yield started


@pytest.mark.asyncio
async def test_losing_the_leader_server_and_an_etcd_member(plane: HaControlPlane) -> None:
    leader = await plane.leader()
    assert leader is not None, "no server holds the controllers' Lease"
    namespace = f"ha-{secrets.token_hex(3)}"
    async with plane.client(leader) as api, plane.client(leader) as watch_api:
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
