"""`podnet.api.reflector.reflect` against the real registry in memory (`memory_api`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from podnet.api.errors import forbidden, gone, service_unavailable
from podnet.api.interface import Obj
from podnet.api.reflector import reflect
from podnet.testing.api import InMemoryApi


@pytest.fixture
def memory_api() -> InMemoryApi:
    """Bookmarks every 0.2 s: the reflector looks at `stop` between events, so a quiet watch
    must still deliver something for it to end promptly."""
    return InMemoryApi(bookmark_interval=0.2)


class Recorder:
    def __init__(self) -> None:
        self.lists: list[list[str]] = []
        self.events: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def replace(self, items: list[Obj]) -> None:
        self.lists.append(sorted(i["metadata"]["name"] for i in items))
        self.changed.set()

    def apply(self, kind: str, obj: Obj) -> None:
        self.events.append((kind, obj["metadata"]["name"]))
        self.changed.set()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def cm(name: str, value: str) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"v": value}}  # fmt: skip


async def run_reflector(api: Any, rec: Recorder, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(
        reflect(api, "configmaps", replace=rec.replace, apply=rec.apply, stop=stop,
                field_selector="metadata.namespace=default", first_delay=0.01, who="test")
    )  # fmt: skip


@pytest.mark.asyncio
async def test_lists_then_applies_every_change(memory_api: InMemoryApi) -> None:
    api = memory_api
    await api.create("configmaps", cm("before", "1"), "default")
    rec, stop = Recorder(), asyncio.Event()
    task = await run_reflector(api, rec, stop)
    try:
        await rec.until(lambda: bool(rec.lists))
        assert rec.lists == [["before", "kube-root-ca.crt"]]
        await api.create("configmaps", cm("after", "1"), "default")
        await api.patch("configmaps", "after", {"data": {"v": "2"}}, "default")
        await api.delete("configmaps", "before", "default")
        await rec.until(lambda: len(rec.events) == 3)
        assert rec.events == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "before")]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_recovers_from_unreachable_server_and_expired_watch(
    memory_api: InMemoryApi,
) -> None:
    api = memory_api
    api.fail_next("list", "configmaps", ConnectionRefusedError("connection refused"))
    api.fail_next("watch", "configmaps", gone("too old resource version: 1 (2)"))
    rec, stop = Recorder(), asyncio.Event()
    task = await run_reflector(api, rec, stop)
    try:
        # the refused list is retried; the expired watch re-lists at once
        await rec.until(lambda: len(rec.lists) == 2)
        await api.create("configmaps", cm("late", "1"), "default")
        await rec.until(lambda: rec.events == [("ADDED", "late")])
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_a_failed_watch_resumes_from_its_version_without_a_relist(
    memory_api: InMemoryApi,
) -> None:
    """A server failover (connection dropped, then a 503 while the new server settles) costs
    no re-list and loses no event; a watch the server refuses with a 4xx starts over."""
    api = memory_api
    rec, stop = Recorder(), asyncio.Event()
    task = await run_reflector(api, rec, stop)
    try:
        await rec.until(lambda: len(rec.lists) == 1)
        api.fail_next("watch", "configmaps", ConnectionResetError("connection reset by peer"))
        api.fail_next("watch", "configmaps", service_unavailable("etcd leader changed"))
        api.disconnect_watches()
        await api.create("configmaps", cm("during", "1"), "default")
        await rec.until(lambda: rec.events == [("ADDED", "during")])
        assert len(rec.lists) == 1
        api.fail_next("watch", "configmaps", forbidden("watch forbidden"))
        api.disconnect_watches()
        await rec.until(lambda: len(rec.lists) == 2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


class EndsAtOnce:
    """A server whose watches end immediately with no event."""

    def __init__(self, api: InMemoryApi) -> None:
        self.api = api
        self.watches = 0

    async def list(self, *args: Any, **kwargs: Any) -> Obj:
        return await self.api.list(*args, **kwargs)

    async def _empty(self) -> AsyncIterator[Obj]:
        self.watches += 1
        return
        yield {}

    def watch(self, *args: Any, **kwargs: Any) -> AsyncIterator[Obj]:
        return self._empty()


@pytest.mark.asyncio
async def test_does_not_spin_on_watches_that_end_at_once(memory_api: InMemoryApi) -> None:
    api = EndsAtOnce(memory_api)
    rec, stop = Recorder(), asyncio.Event()
    task = await run_reflector(api, rec, stop)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(rec.lists) == 1  # resumed from the list's version, never re-listed
    assert 1 <= api.watches <= 7, api.watches  # about one re-open per 0.1 s, not thousands


@pytest.mark.asyncio
async def test_lists_in_pages_and_transforms_what_it_keeps(memory_api: InMemoryApi) -> None:
    api = memory_api
    for i in range(5):
        await api.create("configmaps", cm(f"cm-{i}", str(i)), "default")
    rec, stop = Recorder(), asyncio.Event()
    kept: list[Obj] = []

    def transform(obj: Obj) -> Obj:
        kept.append({"metadata": {"name": obj["metadata"]["name"]}})
        return kept[-1]

    task = asyncio.create_task(
        reflect(api, "configmaps", replace=rec.replace, apply=rec.apply, stop=stop,
                field_selector="metadata.namespace=default", page_size=2, transform=transform)
    )  # fmt: skip
    try:
        await rec.until(lambda: bool(rec.lists))
        assert rec.lists == [["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "kube-root-ca.crt"]]
        assert len(kept) == 6  # every item went through the transform
        lists = [c for c in api.calls if c.verb == "list"]
        # 6 items, 2 per page, then an empty page: the other namespaces' keys follow the last
        # match, and a paged LIST under a selector stops at `limit` matches (as upstream's)
        assert len(lists) == 4
        await api.create("configmaps", cm("after", "1"), "default")
        await rec.until(lambda: rec.events == [("ADDED", "after")])
        assert len(kept) == 6  # watch events are applied as they come
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
