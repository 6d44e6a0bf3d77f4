"""The watch cache's store watch cut by the loss of a store member (StoreUnavailable
mid-stream, as when the etcd member a server watched through dies) is resumed from its last
revision: the API watch goes on with every event exactly once; a store that stays away ends it
with the error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from podnet.api.client import HttpApi
from podnet.api.resources import BY_PLURAL
from podnet.apiserver import watchcache
from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.registry import ListOptions, Registry
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.config import ClusterConfig
from podnet.store.base import StoreUnavailable, WatchEvent
from podnet.store.memory import MemoryStore

CONFIGMAPS = BY_PLURAL["configmaps"]


class FlakyWatchStore(MemoryStore):
    """A memory store whose watches break, as when the etcd member they were on dies: right
    after delivering a revision in `break_after` or a change of a key in `break_after_keys`
    (once each), or at once while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.break_after: set[int] = set()
        self.break_after_keys: set[str] = set()
        self.down = False
        self.watches: list[int] = []  # the revision each store watch started from

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        self.watches.append(from_revision)
        return self._flaky(prefix, from_revision)

    async def _flaky(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        lost = StoreUnavailable("etcd at 127.0.0.1:1 is unreachable (Socket closed)")
        if self.down:
            raise lost
        async for event in super().watch(prefix, from_revision):
            yield event
            if event.kv.mod_revision in self.break_after or event.kv.key in self.break_after_keys:
                self.break_after.discard(event.kv.mod_revision)
                self.break_after_keys.discard(event.kv.key)
                raise lost


async def _names(events: AsyncIterator[dict[str, Any]], count: int) -> list[str]:
    names = []
    async for event in events:
        names.append(event["object"]["metadata"]["name"])
        if len(names) == count:
            break
    return names


@pytest.mark.asyncio
async def test_a_broken_store_watch_resumes_from_its_revision() -> None:
    store = FlakyWatchStore()
    registry = Registry(store, ClusterConfig(), ca_pem=b"")
    await bootstrap(registry, "127.0.0.1", 6443)
    for i in range(6):
        await registry.create(CONFIGMAPS, "default", {"metadata": {"name": f"c{i}"}})
    start = int(
        (await registry.list(CONFIGMAPS, "default", ListOptions()))["items"][0]["metadata"][
            "resourceVersion"
        ]
    )
    store.break_after = {start + 1, start + 3}
    watch = registry.watch(CONFIGMAPS, "default", str(start), ListOptions())
    assert await asyncio.wait_for(_names(watch, 5), 10) == ["c1", "c2", "c3", "c4", "c5"]
    # the cache's one store watch started from the beginning of history (the window's reach)
    # and resumed after the last revision it had each time
    assert store.watches == [0, start + 1, start + 3]


@pytest.mark.asyncio
async def test_a_store_that_stays_away_ends_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchcache, "WATCH_RESUME_SECONDS", 0.05)
    monkeypatch.setattr(watchcache, "WATCH_RESUME_DELAY", 0.01)
    store = FlakyWatchStore()
    store.down = True
    registry = Registry(store, ClusterConfig(), ca_pem=b"")
    await bootstrap(registry, "127.0.0.1", 6443)
    await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "c0"}})
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(
            _names(registry.watch(CONFIGMAPS, "default", "1", ListOptions()), 1), 10
        )


@pytest.mark.asyncio
async def test_api_watches_over_http_go_on_through_a_broken_store_watch(tmp_path: Path) -> None:
    store = FlakyWatchStore()
    server = ApiServer(
        ServerOptions(
            tmp_path / "state",
            store_url="memory",
            listen=parse_listen(["127.0.0.1:0"]),
            controllers=False,
        ),
        store=store,
    )
    await server.start()
    try:
        assert server.credentials is not None
        async with HttpApi.from_kubeconfig(server.credentials.kubeconfig_path) as api:
            start = (await api.list("configmaps", "default"))["metadata"]["resourceVersion"]
            watches = [api.watch("configmaps", "default", resource_version=start) for _ in range(3)]
            # the member the cache's store watch is on dies twice, right after h1 and h4
            store.break_after_keys = {
                "/registry/configmaps/default/h1",
                "/registry/configmaps/default/h4",
            }
            opened = len(store.watches)
            for i in range(9):
                await api.create("configmaps", {"metadata": {"name": f"h{i}"}}, "default")
            for watch in watches:
                assert await asyncio.wait_for(_names(watch, 9), 20) == [f"h{i}" for i in range(9)]
                await watch.aclose()  # type: ignore[attr-defined]
            assert not store.break_after_keys and len(store.watches) == opened + 2
    finally:
        await server.stop()
