"""SQLite driver specifics: restarts, several processes on one file, compaction, WAL, fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from podnet.store import (
    Compacted,
    KeyExists,
    KeyNotFound,
    KeyValue,
    SqliteOptions,
    SqliteStore,
    StoreUnavailable,
    WatchEvent,
)
from podnet.store.sqlite import event_from_row, prefix_upper_bound

pytestmark = pytest.mark.timeout(60)

QUIET = SqliteOptions(poll_interval=0.05, compact_interval=0, checkpoint_interval=0)


async def take(
    events: AsyncIterator[WatchEvent], count: int, within: float = 5.0
) -> list[WatchEvent]:
    taken: list[WatchEvent] = []

    async def pull() -> None:
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                return

    await asyncio.wait_for(pull(), within)
    return taken


def row_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM kv_log").fetchone()[0])


@pytest.mark.asyncio
async def test_restart_keeps_data_and_revision_counter(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, QUIET)
    kept = await store.create("/keep", b"1")
    doomed = await store.create("/doomed", b"x")
    gone = await store.delete("/doomed", doomed.mod_revision)
    await store.compact(gone.mod_revision)  # deletes the newest row (the tombstone) too
    await store.close()

    reopened = SqliteStore(path, QUIET)
    try:
        assert await reopened.current_revision() == gone.mod_revision
        assert await reopened.get("/keep") == kept
        assert await reopened.get("/doomed") is None
        assert await reopened.compact_revision() == gone.mod_revision
        fresh = await reopened.create("/fresh", b"y")
        assert fresh.mod_revision == gone.mod_revision + 1
    finally:
        await reopened.close()


@pytest.mark.asyncio
async def test_two_stores_on_one_file_see_each_others_writes_via_watch(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first, second = SqliteStore(path, QUIET), SqliteStore(path, QUIET)
    try:
        start = await second.current_revision()
        async with contextlib.aclosing(second.watch("/shared/", start)) as events:
            created = await first.create("/shared/a", b"from-first")
            (event,) = await take(events, 1)
            assert event == WatchEvent("PUT", created, None)
            mine = await second.update("/shared/a", b"from-second", created.mod_revision)
            assert (await take(events, 1))[0].kv == mine
        assert await first.get("/shared/a") == mine
    finally:
        await first.close()
        await second.close()


@pytest.mark.asyncio
async def test_compaction_deletes_superseded_and_deleted_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, QUIET)
    try:
        kv = await store.create("/k", b"0")
        for n in range(1, 10):
            kv = await store.update("/k", f"{n}".encode(), kv.mod_revision)
        tomb = await store.create("/tomb", b"x")
        await store.delete("/tomb", tomb.mod_revision)
        assert row_count(path) == 12
        await store.compact(await store.current_revision())
        assert row_count(path) == 1  # only the live value of /k remains
        assert await store.get("/k") == kv
        assert [item.key for item in (await store.list("/")).items] == ["/k"]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_compaction_keeps_previous_values_of_later_events(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", QUIET)
    try:
        one = await store.create("/k", b"1")
        two = await store.update("/k", b"2", one.mod_revision)
        await store.compact(two.mod_revision)
        three = await store.update("/k", b"3", two.mod_revision)
        gone = await store.delete("/k", three.mod_revision)
        async with contextlib.aclosing(store.watch("/", two.mod_revision)) as events:
            update, delete = await take(events, 2)
        assert update.prev == two and update.kv == three
        assert delete.prev == three and delete.kv == gone
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_compacting_ahead_of_a_live_watcher_never_loses_its_events(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", QUIET)
    try:
        start = await store.current_revision()
        async with contextlib.aclosing(store.watch("/", start)) as events:
            kv = await store.create("/k", b"0")
            got = await take(events, 1)  # the watcher has replayed: it is live
            for n in range(1, 5):
                kv = await store.update("/k", f"{n}".encode(), kv.mod_revision)
            await store.compact(kv.mod_revision)  # before the watcher has read them
            got += await take(events, 4)
        assert [e.kv.value for e in got] == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_compaction_by_another_process_ends_lagging_watchers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    slow = SqliteOptions(poll_interval=3600, compact_interval=0, checkpoint_interval=0)
    watcher_side, writer_side = SqliteStore(path, slow), SqliteStore(path, QUIET)
    try:
        start = await watcher_side.current_revision()
        events = watcher_side.watch("/", start)
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.1)  # subscribed, replayed nothing
        kv = await writer_side.create("/k", b"0")
        kv = await writer_side.update("/k", b"1", kv.mod_revision)
        await writer_side.compact(kv.mod_revision)
        await watcher_side._dispatch_new_rows()  # what its next poll tick would do
        with pytest.raises(Compacted):
            await asyncio.wait_for(pending, 5)
        await events.aclose()
    finally:
        await watcher_side.close()
        await writer_side.close()


@pytest.mark.asyncio
async def test_watcher_too_far_behind_ends_with_compacted(tmp_path: Path) -> None:
    options = SqliteOptions(
        poll_interval=0.05, compact_interval=0, checkpoint_interval=0, watch_queue_limit=5
    )
    store = SqliteStore(tmp_path / "state.db", options)
    try:
        start = await store.current_revision()
        async with contextlib.aclosing(store.watch("/", start)) as events:
            await store.create("/k", b"x")
            got = await take(events, 1)  # the watcher has replayed: it is live
            await asyncio.gather(*(store.create(f"/k{n}", b"x") for n in range(20)))
            await store._dispatch_new_rows()
            with pytest.raises(Compacted):
                while True:
                    got.append(await asyncio.wait_for(anext(events), 5))
        # a gap-free prefix of the 21 events (about the queue limit), then "re-list"
        assert [e.kv.mod_revision for e in got] == list(range(start + 1, start + 1 + len(got)))
        assert len(got) < 20
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_automatic_compaction_keeps_time_window_and_revision_floor(tmp_path: Path) -> None:
    options = SqliteOptions(
        compact_interval=0, checkpoint_interval=0, retention_seconds=300, retained_revisions=3
    )
    store = SqliteStore(tmp_path / "state.db", options)
    try:
        for n in range(10):
            await store.create(f"/k{n}", b"x")  # revisions 1..10
        assert await store.compact_automatically(now=1000.0) == 0  # nothing is 5 minutes old
        for n in range(10, 20):
            await store.create(f"/k{n}", b"x")  # revisions 11..20
        # at t=1300 the sample from t=1000 (revision 10) is exactly 5 minutes old
        assert await store.compact_automatically(now=1300.0) == 10
        # at t=1600 the sample from t=1300 is at revision 20, but 3 revisions must remain
        assert await store.compact_automatically(now=1600.0) == 17
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_checkpoint_truncates_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, QUIET)
    try:
        for n in range(50):
            await store.create(f"/k{n}", b"x" * 1000)
        wal = path.with_name("state.db-wal")
        assert wal.stat().st_size > 0
        await store.checkpoint()
        assert wal.stat().st_size == 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_closed_store_ends_watches_and_refuses_work(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", QUIET)
    events = store.watch("/", 0)
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.1)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("/k")


def test_unusable_location_is_an_actionable_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="writable"):
        SqliteStore(blocker / "state.db", QUIET)


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("/pods/") == "/pods0"
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"  # the surrogate block is skipped
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("") is None


def test_event_rows_decode_with_previous_values() -> None:
    assert event_from_row((5, "/k", 1, 0, 5, 0, b"v", None)) == WatchEvent(
        "PUT", KeyValue("/k", b"v", 5, 5), None
    )
    assert event_from_row((7, "/k", 0, 1, 5, 6, b"", b"old")) == WatchEvent(
        "DELETE", KeyValue("/k", b"old", 5, 7), KeyValue("/k", b"old", 5, 6)
    )


WRITER_PROCESS = """
import asyncio, sys
from pathlib import Path
from podnet.store import SqliteStore

async def main() -> None:
    store = SqliteStore(Path(sys.argv[1]))
    await asyncio.gather(*(store.create(f"/mp/other-{n:03}", b"x") for n in range(100)))
    await store.close()

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_writers_in_two_processes_interleave_without_gaps(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, QUIET)
    try:
        start = await store.current_revision()
        async with contextlib.aclosing(store.watch("/mp/", start)) as events:
            pulling = asyncio.ensure_future(take(events, 200, within=30))
            await asyncio.sleep(0.1)
            other = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER_PROCESS, str(path)
            )
            mine = await asyncio.gather(
                *(store.create(f"/mp/mine-{n:03}", b"x") for n in range(100))
            )
            assert await asyncio.wait_for(other.wait(), 30) == 0
            got = await pulling
        revisions = [e.kv.mod_revision for e in got]
        assert revisions == list(range(start + 1, start + 201))  # every write, in order, once
        assert {kv.mod_revision for kv in mine} <= set(revisions)
        assert len((await store.list("/mp/other-")).items) == 100
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_refused_write_in_a_commit_group_undoes_only_itself(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", QUIET)
    try:
        start = await store.current_revision()
        # Submitted in one loop step, these share a commit group on the writer thread.
        results = await asyncio.gather(
            store.create("/g/a", b"1"),
            store.create("/g/a", b"again"),
            store.update("/g/a", b"2", start + 1),  # sees the first create of its group
            store.delete("/g/missing"),
            store.create("/g/b", b"1"),
            return_exceptions=True,
        )
        created, duplicate, updated, missing, other = results
        assert isinstance(duplicate, KeyExists)
        assert isinstance(missing, KeyNotFound)
        assert isinstance(created, KeyValue) and created.mod_revision == start + 1
        assert isinstance(updated, KeyValue) and updated.mod_revision == start + 2
        assert isinstance(other, KeyValue) and other.mod_revision == start + 3
        assert await store.current_revision() == start + 3  # refusals took no revision
        assert await store.get("/g/a") == updated
    finally:
        await store.close()
