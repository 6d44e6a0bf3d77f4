"""Memory driver specifics: bounded history, a watcher left behind by compaction, close."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from podnet.store import Compacted, MemoryStore

pytestmark = pytest.mark.timeout(10)


@pytest.mark.asyncio
async def test_history_is_bounded_by_compacting_the_older_half() -> None:
    store = MemoryStore(history=4)
    first = await store.create("/k/0", b"x")
    for n in range(1, 10):
        await store.create(f"/k/{n}", b"x")
    with pytest.raises(Compacted) as raised:
        async with contextlib.aclosing(store.watch("/k/", first.mod_revision)) as events:
            await anext(events)
    assert raised.value.compact_revision > first.mod_revision
    recent = await store.current_revision() - 2
    async with contextlib.aclosing(store.watch("/k/", recent)) as events:
        replayed = [await anext(events), await anext(events)]
    assert [e.kv.key for e in replayed] == ["/k/8", "/k/9"]
    assert len((await store.list("/k/")).items) == 10  # values stay, only history goes


@pytest.mark.asyncio
async def test_a_watcher_that_fell_behind_a_compaction_ends_with_compacted() -> None:
    store = MemoryStore()
    start = await store.current_revision()
    async with contextlib.aclosing(store.watch("/k/", start)) as events:
        await store.create("/k/a", b"x")
        assert (await anext(events)).kv.key == "/k/a"
        await store.create("/k/b", b"x")  # not consumed yet
        await store.compact(await store.current_revision())
        with pytest.raises(Compacted):
            await anext(events)


@pytest.mark.asyncio
async def test_close_ends_every_watch() -> None:
    store = MemoryStore()
    async with contextlib.aclosing(store.watch("", 0)) as events:
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.01)
        await store.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 2)
