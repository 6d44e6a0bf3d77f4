"""The store contract (DESIGN.md contract 5, `podnet.store.base`), run unchanged on every driver.

Each test gets a fresh store (`each_store`, tests/conftest.py): a new in-memory store, a new
SQLite file, or a unique key prefix on the session's etcd.
Revisions are always taken from the store (never assumed to start at 1), because the etcd
server is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from podnet.store import (
    Compacted,
    EtcdStore,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    RevisionConflict,
    Store,
    WatchEvent,
)
from podnet.store.base import ListResult, list_pages

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(each_store: Store) -> Store:
    """The suite's `each_store`: every test here runs on every driver."""
    return each_store


async def take(
    events: AsyncIterator[WatchEvent], count: int, within: float = 5.0
) -> list[WatchEvent]:
    """The next `count` events, failing (not hanging) if they do not arrive in time."""
    taken: list[WatchEvent] = []

    async def pull() -> None:
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                return

    try:
        await asyncio.wait_for(pull(), within)
    except TimeoutError:
        pytest.fail(f"expected {count} events within {within}s, got {len(taken)}: {taken}")
    return taken


async def nothing_more(events: AsyncIterator[WatchEvent], wait: float = 0.3) -> None:
    try:
        extra = await asyncio.wait_for(anext(events), wait)
    except TimeoutError:
        return
    pytest.fail(f"unexpected extra event {extra}")


def summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


# -- revisions and CRUD ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_revisions_strictly_increase(store: Store) -> None:
    start = await store.current_revision()
    a = await store.create("/r/a", b"1")
    b = await store.create("/r/b", b"1")
    a2 = await store.update("/r/a", b"2", a.mod_revision)
    gone = await store.delete("/r/b", b.mod_revision)
    revisions = [a.mod_revision, b.mod_revision, a2.mod_revision, gone.mod_revision]
    assert start < revisions[0]
    assert revisions == sorted(set(revisions)), revisions
    assert await store.current_revision() == gone.mod_revision


@pytest.mark.asyncio
async def test_get_list_create_update_delete(store: Store) -> None:
    assert await store.get("/pods/default/web") is None
    created = await store.create("/pods/default/web", b'{"v":1}')
    assert created.create_revision == created.mod_revision
    assert await store.get("/pods/default/web") == created

    await store.create("/pods/default/db", b'{"v":1}')
    await store.create("/services/default/web", b"{}")
    listed = await store.list("/pods/")
    assert [kv.key for kv in listed.items] == ["/pods/default/db", "/pods/default/web"]
    assert listed.revision == await store.current_revision()

    updated = await store.update("/pods/default/web", b'{"v":2}', created.mod_revision)
    assert updated == KeyValue(
        "/pods/default/web", b'{"v":2}', created.create_revision, updated.mod_revision
    )
    assert await store.get("/pods/default/web") == updated

    deleted = await store.delete("/pods/default/web", updated.mod_revision)
    assert deleted.value == b'{"v":2}'
    assert deleted.create_revision == created.create_revision
    assert deleted.mod_revision > updated.mod_revision
    assert await store.get("/pods/default/web") is None
    assert [kv.key for kv in (await store.list("/pods/")).items] == ["/pods/default/db"]

    again = await store.create("/pods/default/web", b'{"v":3}')
    assert again.create_revision == again.mod_revision > deleted.mod_revision


@pytest.mark.asyncio
async def test_list_with_empty_prefix_sees_every_key(store: Store) -> None:
    for key in ("/a", "/b/c", "/b/d"):
        await store.create(key, b"x")
    assert [kv.key for kv in (await store.list("")).items] == ["/a", "/b/c", "/b/d"]


@pytest.mark.asyncio
async def test_list_pages_is_the_list_at_one_revision(store: Store) -> None:
    for index in range(7):
        await store.create(f"/pods/default/p{index}", b"v%d" % index)
    await store.create("/services/default/s", b"other kind")
    whole = await store.list("/pods/")
    pages = list_pages(store, "/pods/", 3)
    seen: list[KeyValue] = []
    revisions: set[int] = set()
    remaining: list[int] = []
    count = 0
    async with contextlib.aclosing(pages):
        async for page in pages:
            count += 1
            remaining.append(page.remaining)
            assert len(page.items) <= 3 or not isinstance(store, EtcdStore)
            if not seen:  # writes after the first page are not in the later ones
                await store.create("/pods/default/p9", b"late")
                await store.update("/pods/default/p6", b"changed", whole.items[6].mod_revision)
            seen += page.items
            revisions.add(page.revision)
    assert seen == whole.items
    assert revisions == {whole.revision}
    assert count == 3  # every driver reads page by page, a fresh list too
    assert remaining == [4, 1, 0]  # the keys after each page, at the list's revision


@pytest.mark.asyncio
async def test_list_pages_goes_on_from_a_key_at_an_old_revision(store: Store) -> None:
    """A continued LIST: the keys from `start` as they were at the first page's revision
    (later creates, updates and deletes unseen), with the keys left after each page; once that
    revision is compacted, `Compacted`."""
    for index in range(6):
        await store.create(f"/pods/default/p{index}", b"v%d" % index)
    await store.create("/pods/other/q", b"next prefix")
    before = await store.list("/pods/default/")
    await store.create("/pods/default/p35", b"late")
    await store.update("/pods/default/p4", b"changed", before.items[4].mod_revision)
    await store.delete("/pods/default/p5")
    pages = list_pages(store, "/pods/default/", 2, "/pods/default/p3", before.revision)
    seen: list[KeyValue] = []
    remaining: list[int] = []
    async with contextlib.aclosing(pages):
        async for page in pages:
            assert page.revision == before.revision
            seen += page.items
            remaining.append(page.remaining)
    assert seen == before.items[3:]
    assert remaining[0] == 1 and remaining[-1] == 0
    await store.compact(await store.current_revision())
    with pytest.raises(Compacted):
        async for _ in list_pages(store, "/pods/default/", 2, "/pods/default/p3", before.revision):
            pass


@pytest.mark.asyncio
async def test_list_pages_at_a_revision_not_reached_raises_future_revision(store: Store) -> None:
    """A revision newer than the store's (a continue token of another store's, or edited) has
    no state to read: `FutureRevision` from every driver, never the current state passed off
    as that revision's nor an error of the driver's own."""
    await store.create("/pods/default/p0", b"v")
    current = await store.current_revision()
    ahead = current + 1_000_000
    for start in ("", "/pods/default/p0"):
        with pytest.raises(FutureRevision) as raised:
            async for _ in list_pages(store, "/pods/", 2, start, ahead):
                pass
        assert raised.value.requested == ahead
        assert current <= raised.value.current < ahead  # etcd: shared, it may have moved on
        assert str(raised.value) == (
            f"revision {ahead} is newer than the store's current revision {raised.value.current}"
        )


@pytest.mark.asyncio
async def test_list_pages_stopped_early_closes_the_drivers_reader(store: Store) -> None:
    """A caller that stops after one page closes the driver's generator at once (its etcd
    response or SQLite read is not left to the garbage collector)."""
    for index in range(5):
        await store.create(f"/pods/default/p{index}", b"v")
    revision = await store.current_revision()
    paged = getattr(store, "list_pages", None)
    if paged is None:
        pytest.skip("this driver has no paged reads")
    closed: list[bool] = []

    async def watched(*args: object) -> AsyncIterator[ListResult]:
        inner = paged(*args)
        try:
            async for page in inner:
                yield page
        finally:
            await inner.aclose()
            closed.append(True)

    with pytest.MonkeyPatch.context() as patcher:
        patcher.setattr(store, "list_pages", watched)
        pages = list_pages(store, "/pods/", 2, "/pods/default/p0", revision)
        async with contextlib.aclosing(pages):
            async for _ in pages:
                break
        assert closed == [True]


@pytest.mark.asyncio
async def test_create_existing_key_raises_key_exists(store: Store) -> None:
    await store.create("/k", b"1")
    with pytest.raises(KeyExists) as raised:
        await store.create("/k", b"2")
    assert raised.value.key == "/k"
    assert (await store.get("/k") or pytest.fail("key vanished")).value == b"1"


@pytest.mark.asyncio
async def test_update_or_delete_missing_key_raises_key_not_found(store: Store) -> None:
    with pytest.raises(KeyNotFound):
        await store.update("/missing", b"x", 1)
    with pytest.raises(KeyNotFound):
        await store.delete("/missing")
    kv = await store.create("/was", b"x")
    await store.delete("/was")
    with pytest.raises(KeyNotFound):
        await store.update("/was", b"y", kv.mod_revision)
    with pytest.raises(KeyNotFound):
        await store.update("/missing", b"x", 0)  # 0 must never mean "create"
    assert await store.get("/missing") is None


@pytest.mark.asyncio
async def test_stale_update_raises_conflict_with_current_value(store: Store) -> None:
    first = await store.create("/k", b"1")
    second = await store.update("/k", b"2", first.mod_revision)
    with pytest.raises(RevisionConflict) as raised:
        await store.update("/k", b"3", first.mod_revision)
    assert raised.value.expected == first.mod_revision
    assert raised.value.current == second
    assert await store.get("/k") == second


@pytest.mark.asyncio
async def test_concurrent_updaters_exactly_one_wins(store: Store) -> None:
    base = await store.create("/contended", b"0")

    async def updater(n: int) -> KeyValue | RevisionConflict:
        try:
            return await store.update("/contended", f"{n}".encode(), base.mod_revision)
        except RevisionConflict as conflict:
            return conflict

    results = await asyncio.gather(*(updater(n) for n in range(1, 11)))
    winners = [r for r in results if isinstance(r, KeyValue)]
    losers = [r for r in results if isinstance(r, RevisionConflict)]
    assert len(winners) == 1, results
    assert len(losers) == 9
    assert await store.get("/contended") == winners[0]


@pytest.mark.asyncio
async def test_delete_with_expected_revision(store: Store) -> None:
    first = await store.create("/k", b"1")
    second = await store.update("/k", b"2", first.mod_revision)
    with pytest.raises(RevisionConflict) as raised:
        await store.delete("/k", first.mod_revision)
    assert raised.value.current == second
    assert await store.get("/k") == second
    deleted = await store.delete("/k", second.mod_revision)
    assert deleted.value == b"2"
    await store.create("/unconditional", b"x")
    assert (await store.delete("/unconditional")).value == b"x"


@pytest.mark.asyncio
async def test_concurrent_creates_of_distinct_keys_all_succeed(store: Store) -> None:
    created = await asyncio.gather(*(store.create(f"/many/{n:03}", b"x") for n in range(200)))
    revisions = [kv.mod_revision for kv in created]
    assert len(set(revisions)) == 200
    listed = await store.list("/many/")
    assert len(listed.items) == 200
    assert {kv.mod_revision for kv in listed.items} == set(revisions)


# -- watch ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_watch_replays_exactly_later_events_then_live_ones(store: Store) -> None:
    a = await store.create("/w/a", b"a1")
    start = a.mod_revision
    a2 = await store.update("/w/a", b"a2", a.mod_revision)
    b = await store.create("/w/b", b"b1")
    await store.create("/other/x", b"x")
    gone = await store.delete("/w/a", a2.mod_revision)

    async with contextlib.aclosing(store.watch("/w/", start)) as events:
        replayed = await take(events, 3)
        assert summary(replayed) == [
            ("PUT", "/w/a", b"a2", a2.mod_revision),
            ("PUT", "/w/b", b"b1", b.mod_revision),
            ("DELETE", "/w/a", b"a2", gone.mod_revision),
        ]
        assert replayed[0].prev == a
        assert replayed[1].prev is None
        assert replayed[2].prev == a2

        c = await store.create("/w/c", b"c1")
        c2 = await store.update("/w/c", b"c2", c.mod_revision)
        await store.create("/other/y", b"y")
        live = await take(events, 2)
        assert summary(live) == [
            ("PUT", "/w/c", b"c1", c.mod_revision),
            ("PUT", "/w/c", b"c2", c2.mod_revision),
        ]
        assert live[1].prev == c
        await nothing_more(events)


@pytest.mark.asyncio
async def test_watch_from_current_revision_sees_only_new_events(store: Store) -> None:
    await store.create("/w/old", b"x")
    now = await store.current_revision()
    async with contextlib.aclosing(store.watch("/w/", now)) as events:
        fresh = await store.create("/w/new", b"y")
        assert summary(await take(events, 1)) == [("PUT", "/w/new", b"y", fresh.mod_revision)]
        await nothing_more(events)


@pytest.mark.asyncio
async def test_watch_on_prefix_sees_only_that_prefix(store: Store) -> None:
    start = await store.current_revision()
    async with contextlib.aclosing(store.watch("/pods/", start)) as events:
        await store.create("/podsx/a", b"no")  # shares the string "/pods" but not "/pods/"
        await store.create("/services/a", b"no")
        mine = await store.create("/pods/a", b"yes")
        assert summary(await take(events, 1)) == [("PUT", "/pods/a", b"yes", mine.mod_revision)]
        await nothing_more(events)


@pytest.mark.asyncio
async def test_live_events_from_concurrent_writers_arrive_in_revision_order(store: Store) -> None:
    start = await store.current_revision()
    async with contextlib.aclosing(store.watch("/burst/", start)) as events:
        created = await asyncio.gather(*(store.create(f"/burst/{n}", b"x") for n in range(50)))
        got = await take(events, 50)
    revisions = [e.kv.mod_revision for e in got]
    assert revisions == sorted(kv.mod_revision for kv in created)


@pytest.mark.asyncio
async def test_watch_from_compacted_revision_raises_compacted(store: Store) -> None:
    first = await store.create("/c/k", b"1")
    second = await store.update("/c/k", b"2", first.mod_revision)
    third = await store.update("/c/k", b"3", second.mod_revision)
    await store.compact(second.mod_revision)

    with pytest.raises(Compacted) as raised:
        async with contextlib.aclosing(store.watch("/c/", first.mod_revision)) as events:
            await anext(events)
    assert raised.value.requested == first.mod_revision
    assert raised.value.compact_revision == second.mod_revision

    # From the compact revision on, history is intact, previous values included.
    async with contextlib.aclosing(store.watch("/c/", second.mod_revision)) as events:
        (after,) = await take(events, 1)
    assert after == WatchEvent("PUT", third, second)
    assert await store.get("/c/k") == third
