"""A store watch cut by the loss of a store member (StoreUnavailable mid-stream, as when the
etcd member a server watched through dies) is resumed from its last revision: the API watch
goes on with every event exactly once; a store that stays away ends it with the error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from podnet.api.resources import BY_PLURAL
from podnet.apiserver import registry as registry_module
from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.registry import ListOptions, Registry
from podnet.config import ClusterConfig
from podnet.store.base import StoreUnavailable, WatchEvent
from podnet.store.memory import MemoryStore

CONFIGMAPS = BY_PLURAL["configmaps"]


class FlakyWatchStore(MemoryStore):
    """A memory store whose watches break after `events_before_break` events, `breaks` times."""

    def __init__(self, events_before_break: int, breaks: int) -> None:
        super().__init__()
        self.events_before_break = events_before_break
        self.breaks = breaks
        self.watches: list[int] = []  # the revision each store watch started from

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        self.watches.append(from_revision)
        return self._flaky(prefix, from_revision)

    async def _flaky(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        delivered = 0
        async for event in super().watch(prefix, from_revision):
            if self.breaks and delivered == self.events_before_break:
                self.breaks -= 1
                raise StoreUnavailable("etcd at 127.0.0.1:1 is unreachable (Socket closed)")
            delivered += 1
            yield event


async def _names(events: AsyncIterator[dict[str, Any]], count: int) -> list[str]:
    names = []
    async for event in events:
        names.append(event["object"]["metadata"]["name"])
        if len(names) == count:
            break
    return names


@pytest.mark.asyncio
async def test_a_broken_store_watch_resumes_from_its_revision() -> None:
    store = FlakyWatchStore(events_before_break=2, breaks=2)
    registry = Registry(store, ClusterConfig(), ca_pem=b"")
    await bootstrap(registry, "127.0.0.1", 6443)
    for i in range(6):
        await registry.create(CONFIGMAPS, "default", {"metadata": {"name": f"c{i}"}})
    start = int(
        (await registry.list(CONFIGMAPS, "default", ListOptions()))["items"][0]["metadata"][
            "resourceVersion"
        ]
    )
    watch = registry.watch(CONFIGMAPS, "default", str(start), ListOptions())
    assert await asyncio.wait_for(_names(watch, 5), 10) == ["c1", "c2", "c3", "c4", "c5"]
    assert store.watches == [start, start + 2, start + 4]  # resumed where each left off


@pytest.mark.asyncio
async def test_a_store_that_stays_away_ends_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "WATCH_RESUME_SECONDS", 0.05)
    monkeypatch.setattr(registry_module, "WATCH_RESUME_DELAY", 0.01)
    store = FlakyWatchStore(events_before_break=0, breaks=1_000_000)
    registry = Registry(store, ClusterConfig(), ca_pem=b"")
    await bootstrap(registry, "127.0.0.1", 6443)
    await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "c0"}})
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(
            _names(registry.watch(CONFIGMAPS, "default", "1", ListOptions()), 1), 10
        )
