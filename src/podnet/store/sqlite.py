"""The default store driver: one SQLite file in WAL mode, kine's one-table design.

What belongs here: the SQL schema, the reads and the compare-and-swap writes on it, the watch
fan-out, and the automatic compactor/checkpointer. Nothing above this module knows it is SQL.

The table (`kv_log`) is an append-only log of every write:

    id               INTEGER PRIMARY KEY AUTOINCREMENT   -- the revision of this write
    name             TEXT      -- the key
    created, deleted INTEGER   -- flags: this row created the key / is a tombstone
    create_revision  INTEGER   -- NULL on the creating row (it is the row's own id)
    prev_revision    INTEGER   -- id of the row this one supersedes (0 for a fresh key)
    value            BLOB      -- the new value (empty on tombstones)
    UNIQUE (name, prev_revision)

Invariants:
- The revision is the row id. The store's current revision is `sqlite_sequence.seq` (not
  `MAX(id)`): compaction may delete the newest row (a tombstone) and the revision must never go
  backwards. AUTOINCREMENT never reuses an id, so revisions strictly increase across restarts.
- Every write reads the key's latest row and appends a successor, inside `BEGIN IMMEDIATE` on
  the single writer connection (its own thread). Writes that queue up meanwhile share one
  transaction, each in its own SAVEPOINT (group commit): a refused write is undone alone, and
  no result is reported before COMMIT. `UNIQUE(name, prev_revision)` makes it impossible for
  two writers, even in two processes, to append two successors to the same revision.
- SQLite serialises writers, so ids become visible in commit order: a reader that sees row N+2
  has also seen N+1. That is why kine's "fill" rows are not needed here.
- A row's previous value is the row `prev_revision` points at. Compaction at R deletes rows
  whose successor has id <= R, and tombstones with id <= R, so for every event above the
  compact revision its previous row still exists; events never lose their `prev`.
- Watch subscribes to the live fan-out first, then replays history from one read snapshot, and
  drops live events at or below that snapshot: no gaps, no duplicates. A watcher the poller
  cannot serve any more (history compacted under it, or it fell too far behind) ends with
  `Compacted`, which the API turns into "410 Gone, re-list".
- The event loop never blocks on SQLite: writes go to the writer thread, reads to a small pool
  of reader threads, each with its own connection.

Durability: WAL with `synchronous=NORMAL` (no fsync per commit; a power cut may lose the last
transactions but never corrupts the file). The lab's state is rebuilt by controllers anyway.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import logging
import operator
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from podnet.private import touch_private
from podnet.store.base import (
    Compacted,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
    WatchEvent,
)
from podnet.store.compaction import CompactionPlanner, CompactionPolicy

T = TypeVar("T")
log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS kv_log_name_prev_revision ON kv_log (name, prev_revision);
CREATE INDEX IF NOT EXISTS kv_log_name_id ON kv_log (name, id);
CREATE TABLE IF NOT EXISTS kv_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO kv_meta (key, value) VALUES ('compact_revision', 0);
"""

# Statements are spelled out in full (no string building), one per shape. An event row is the
# write plus the value it superseded (NULL for creations); prefixes become `name >= ? AND
# name < ?` ranges (or just `>=` when the prefix has no upper bound, e.g. the empty prefix).
# (Lists are sorted by name in Python: an ORDER BY here makes SQLite sort the values too.)
LIST_SQL = """
SELECT k.id, k.name, COALESCE(k.create_revision, k.id), k.value FROM kv_log AS k
JOIN (SELECT MAX(id) AS id FROM kv_log WHERE name >= ? AND name < ? GROUP BY name) AS m
  ON k.id = m.id
WHERE k.deleted = 0
"""
LIST_UNBOUNDED_SQL = """
SELECT k.id, k.name, COALESCE(k.create_revision, k.id), k.value FROM kv_log AS k
JOIN (SELECT MAX(id) AS id FROM kv_log WHERE name >= ? GROUP BY name) AS m ON k.id = m.id
WHERE k.deleted = 0
"""
# A paged list at revision R: each key's newest row at or below R, a page of names at a time
# in name order (the (name, id) index gives them without a sort and stops at the LIMIT), and
# the distinct names left after the first page (from the same index; keys deleted at R but not
# yet compacted count too: `remaining` is upstream's estimate). Counted once per list, not per
# page: a count reads every name left, so one per page made a 60-page list quadratic (474 ms
# of counting against 250 ms of reading for 30,000 pods); later pages subtract what they read
# and ask only whether a name is left (`MORE_AT_SQL`, one index seek).
PAGE_AT_SQL = """
SELECT name, MAX(id) FROM kv_log WHERE name >= ? AND name < ? AND id <= ?
GROUP BY name ORDER BY name LIMIT ?
"""
PAGE_AT_UNBOUNDED_SQL = """
SELECT name, MAX(id) FROM kv_log WHERE name >= ? AND id <= ? GROUP BY name ORDER BY name LIMIT ?
"""
COUNT_AT_SQL = """
SELECT COUNT(DISTINCT name) FROM kv_log WHERE name >= ? AND name < ? AND id <= ?
"""
COUNT_AT_UNBOUNDED_SQL = """
SELECT COUNT(DISTINCT name) FROM kv_log WHERE name >= ? AND id <= ?
"""
MORE_AT_SQL = """
SELECT 1 FROM kv_log WHERE name >= ? AND name < ? AND id <= ? LIMIT 1
"""
MORE_AT_UNBOUNDED_SQL = """
SELECT 1 FROM kv_log WHERE name >= ? AND id <= ? LIMIT 1
"""
VALUES_BY_ID_SQL = """
SELECT id, COALESCE(create_revision, id), deleted, value FROM kv_log
WHERE id IN (SELECT value FROM json_each(?))
"""
REPLAY_SQL = """
SELECT k.id, k.name, k.created, k.deleted, COALESCE(k.create_revision, k.id), k.prev_revision,
       k.value, p.value
FROM kv_log AS k LEFT JOIN kv_log AS p ON p.id = k.prev_revision AND k.created = 0
WHERE k.id > ? AND k.name >= ? AND k.name < ? ORDER BY k.id
"""
REPLAY_UNBOUNDED_SQL = """
SELECT k.id, k.name, k.created, k.deleted, COALESCE(k.create_revision, k.id), k.prev_revision,
       k.value, p.value
FROM kv_log AS k LEFT JOIN kv_log AS p ON p.id = k.prev_revision AND k.created = 0
WHERE k.id > ? AND k.name >= ? ORDER BY k.id
"""
POLL_SQL = """
SELECT k.id, k.name, k.created, k.deleted, COALESCE(k.create_revision, k.id), k.prev_revision,
       k.value, p.value
FROM kv_log AS k LEFT JOIN kv_log AS p ON p.id = k.prev_revision AND k.created = 0
WHERE k.id > ? ORDER BY k.id LIMIT ?
"""
COMPACT_SQL = """
DELETE FROM kv_log WHERE id IN (
  SELECT prev_revision FROM kv_log WHERE id > ? AND id <= ? AND prev_revision != 0
  UNION
  SELECT id FROM kv_log WHERE id > ? AND id <= ? AND deleted = 1
)
"""

EventRow = tuple[int, str, int, int, int, int, bytes, bytes | None]
LatestRow = tuple[int, int, int, bytes]  # id, create_revision, deleted, value

COMPACT_CHUNK_REVISIONS = 10_000  # one compaction transaction covers at most this many revisions
POLL_BATCH = 1_000
WRITE_GROUP_LIMIT = 128  # writes committed together at most
MMAP_BYTES = 256 * 1024 * 1024
CACHE_KIB = 32 * 1024  # per connection


@dataclass(frozen=True, slots=True)
class SqliteOptions:
    """Tuning knobs; the defaults suit the lab."""

    poll_interval: float = 0.25
    """How often to look for writes made by other processes (own writes wake watchers at once)."""
    compact_interval: float = 60.0
    """How often the automatic compactor runs; 0 disables it."""
    retention_seconds: float = 300.0
    """The compactor keeps at least this much history (kube-apiserver keeps 5 minutes)..."""
    retained_revisions: int = 1_000
    """...and at least this many revisions, whichever is more."""
    checkpoint_interval: float = 30.0
    """How often to run `PRAGMA wal_checkpoint(TRUNCATE)` so the WAL file stays small."""
    watch_queue_limit: int = 100_000
    """A watcher this many events behind is ended with Compacted (its client re-lists)."""
    busy_timeout_ms: int = 30_000
    reader_threads: int = 2

    @property
    def compaction(self) -> CompactionPolicy:
        return CompactionPolicy(
            self.compact_interval, self.retention_seconds, self.retained_revisions
        )


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound).

    SQLite compares TEXT bytewise and UTF-8 preserves code-point order, so bumping the last
    code point gives an index-friendly `name >= prefix AND name < bound` range.
    """
    chars = builtins.list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:  # skip the surrogate block, which UTF-8 cannot encode
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def event_from_row(row: EventRow) -> WatchEvent:
    revision, name, created, deleted, create_revision, prev_revision, value, prev_value = row
    if created:
        return WatchEvent("PUT", KeyValue(name, value, revision, revision), None)
    assert prev_value is not None, f"row {revision} of {name!r} lost its previous row"
    prev = KeyValue(name, prev_value, create_revision, prev_revision)
    if deleted:
        return WatchEvent("DELETE", KeyValue(name, prev_value, create_revision, revision), prev)
    return WatchEvent("PUT", KeyValue(name, value, create_revision, revision), prev)


def _read_current_revision(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'kv_log'").fetchone()
    return int(row[0]) if row else 0


def _read_compact_revision(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM kv_meta WHERE key = 'compact_revision'").fetchone()
    return int(row[0])


def _read_latest(conn: sqlite3.Connection, name: str) -> LatestRow | None:
    row = conn.execute(
        "SELECT id, COALESCE(create_revision, id), deleted, value FROM kv_log"
        " WHERE name = ? ORDER BY id DESC LIMIT 1",
        (name,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3])


def _read_rows_after(
    conn: sqlite3.Connection, after: int
) -> tuple[int, int, builtins.list[EventRow]]:
    """(compact revision, current revision, the next POLL_BATCH rows above `after`)."""
    rows = conn.execute(POLL_SQL, (after, POLL_BATCH)).fetchall()
    return _read_compact_revision(conn), _read_current_revision(conn), rows


def _live(name: str, latest: LatestRow | None) -> KeyValue | None:
    if latest is None or latest[2]:
        return None
    return KeyValue(name, latest[3], latest[1], latest[0])


def _append(
    conn: sqlite3.Connection,
    name: str,
    *,
    created: bool,
    deleted: bool,
    create_revision: int | None,
    prev_revision: int,
    value: bytes,
    on_conflict: Callable[[], StoreError],
) -> int:
    """Append one row and return its id, the new revision.

    Under BEGIN IMMEDIATE no other writer can append between our read and this insert, so the
    UNIQUE(name, prev_revision) check is a second line of defence (e.g. against a foreign
    writer): if it fires, someone else already superseded `prev_revision`.
    """
    try:
        cursor = conn.execute(
            "INSERT INTO kv_log (name, created, deleted, create_revision, prev_revision, value)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, int(created), int(deleted), create_revision, prev_revision, value),
        )
    except sqlite3.IntegrityError:
        raise on_conflict() from None
    assert cursor.lastrowid is not None
    return cursor.lastrowid


class _Subscriber:
    """One watch's live feed. Items: events, then maybe an error or None (store closed)."""

    __slots__ = ("_wakeup", "closed", "items", "limit", "prefix")

    def __init__(self, prefix: str, limit: int) -> None:
        self.prefix = prefix
        self.limit = limit
        self.items: deque[WatchEvent | StoreError | None] = deque()
        self.closed = False
        self._wakeup = asyncio.Event()

    def offer(self, event: WatchEvent, current_revision: int) -> None:
        if self.closed or not event.kv.key.startswith(self.prefix):
            return
        if len(self.items) >= self.limit:
            # Too slow to keep up: same remedy as lost history (410 Gone, re-list).
            self.end(Compacted(event.kv.mod_revision - 1, current_revision))
            return
        self.items.append(event)
        self._wakeup.set()

    def end(self, reason: StoreError | None) -> None:
        if not self.closed:
            self.closed = True
            self.items.append(reason)
            self._wakeup.set()

    async def next(self) -> WatchEvent | StoreError | None:
        while not self.items:
            self._wakeup.clear()
            await self._wakeup.wait()
        return self.items.popleft()


@dataclass(slots=True)
class _WriteRequest:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    in_transaction: bool


def _settle(future: asyncio.Future[Any], ok: bool, outcome: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(outcome)
    else:
        future.set_exception(outcome)


class _GroupCommitWriter:
    """The one thread that writes. Writes queued meanwhile are committed together.

    Each write runs in its own SAVEPOINT inside a shared `BEGIN IMMEDIATE` transaction, in
    arrival order, so a refused write (KeyExists, RevisionConflict...) is undone alone and later
    writes of the group see earlier ones exactly as if each had committed by itself. Results are
    handed back only after COMMIT. One commit per group instead of per write cuts the WAL
    traffic (each commit rewrites the table, index and sqlite_sequence pages it touched).
    """

    def __init__(self, conn: sqlite3.Connection, max_group: int) -> None:
        self._conn = conn
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_WriteRequest | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="podnet-sqlite-writer", daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], in_transaction: bool = True
    ) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_WriteRequest(fn, loop, future, in_transaction))
        return future

    def stop(self) -> None:
        """Finish every queued write, then end the thread (blocking)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        backlog: deque[_WriteRequest | None] = deque()  # taken from the queue, not yet run
        while True:
            request = backlog.popleft() if backlog else self._queue.get()
            if request is None:
                return
            if not request.in_transaction:
                self._deliver([request], [self._run_alone(request)])
                continue
            group = [request]
            while len(group) < self._max_group:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None or not following.in_transaction:
                    backlog.append(following)
                    break
                group.append(following)
            self._deliver(group, self._run_group(group))

    def _run_alone(self, request: _WriteRequest) -> tuple[bool, Any]:
        try:
            return True, request.fn(self._conn)
        except Exception as error:
            return False, error

    def _run_group(self, group: list[_WriteRequest]) -> list[tuple[bool, Any]]:
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in group:
                conn.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, request.fn(conn)))
                except sqlite3.Error:
                    raise  # the database itself failed: the whole group fails
                except Exception as refused:
                    conn.execute("ROLLBACK TO write")
                    outcomes.append((False, refused))
                conn.execute("RELEASE write")
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):  # some errors already rolled back
                conn.execute("ROLLBACK")
            return [(False, error)] * len(group)
        return outcomes

    @staticmethod
    def _deliver(group: list[_WriteRequest], outcomes: list[tuple[bool, Any]]) -> None:
        for request, (ok, outcome) in zip(group, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
                request.loop.call_soon_threadsafe(_settle, request.future, ok, outcome)


class SqliteStore:
    """`Store` on one SQLite file. Safe to share the file between processes."""

    def __init__(self, path: Path, options: SqliteOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options or SqliteOptions()
        writer: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            touch_private(self.path)  # -wal and -shm take the database file's mode
            writer = self._connect()
            writer.execute("PRAGMA journal_mode=WAL")
            writer.executescript(SCHEMA)
            self._last_seen = _read_current_revision(writer)
        except (OSError, sqlite3.Error) as error:
            if writer is not None:
                writer.close()
            raise self._unavailable(error) from error
        self._writer_connection = writer
        self._writer = _GroupCommitWriter(writer, WRITE_GROUP_LIMIT)
        self._reader_pool = ThreadPoolExecutor(
            self.options.reader_threads, thread_name_prefix="podnet-sqlite-reader"
        )
        self._reader_local = threading.local()
        self._reader_connections: builtins.list[sqlite3.Connection] = []
        self._reader_connections_lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._dispatch_lock: asyncio.Lock | None = None
        self._compaction_planner = CompactionPlanner(self.options.compaction)
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self.options.busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Reading values through mmap and a larger page cache halves a 10k-object list.
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return conn

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"SQLite store {self.path}: {error}. Check that the directory exists and is "
            "writable, the disk is not full, and no other program holds a long write lock."
        )

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._reader_local.conn = conn
            with self._reader_connections_lock:
                self._reader_connections.append(conn)
        return conn

    def _ensure_started(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"SQLite store {self.path} is closed")
        if self._wake is not None:
            return
        self._wake = asyncio.Event()
        self._dispatch_lock = asyncio.Lock()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="sqlite-watch-poller"))
        if self.options.compaction.interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._compact_loop(), name="sqlite-compactor"))
        if self.options.checkpoint_interval > 0:
            self._tasks.append(
                asyncio.create_task(self._checkpoint_loop(), name="sqlite-checkpointer")
            )

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._ensure_started()

        def run() -> T:
            conn = self._reader()
            conn.execute("BEGIN")  # one snapshot for every statement of fn
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)
        except sqlite3.Error as error:
            raise self._unavailable(error) from error

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._ensure_started()
        try:
            result = await self._writer.submit(fn)
        except sqlite3.Error as error:
            raise self._unavailable(error) from error
        assert self._wake is not None
        self._wake.set()
        return result

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        return await self._read(lambda conn: _live(key, _read_latest(conn, key)))

    async def list(self, prefix: str) -> ListResult:
        bound = prefix_upper_bound(prefix)

        def read(conn: sqlite3.Connection) -> ListResult:
            revision = _read_current_revision(conn)
            if bound is None:
                rows = conn.execute(LIST_UNBOUNDED_SQL, (prefix,)).fetchall()
            else:
                rows = conn.execute(LIST_SQL, (prefix, bound)).fetchall()
            rows.sort(key=operator.itemgetter(1))
            items = [KeyValue(name, value, create, rev) for rev, name, create, value in rows]
            return ListResult(items, revision)

        return await self._read(read)

    async def list_pages(
        self, prefix: str, page_size: int, start: str = "", revision: int = 0
    ) -> AsyncIterator[ListResult]:
        """`store.base.list_pages` from the log: each key's row at `revision` (kept until
        compaction passes it: a row goes only once a successor at or below the compact
        revision exists), one read (one snapshot) per page; a revision below the compact
        revision raises `Compacted`. A fresh list (no revision) is read the same way, at the
        revision its first page's read sees: a page of a 30,000-pod list is never the whole
        list's rows at once, whether a LIST asked for `limit` or is sent in pieces."""
        bound = prefix_upper_bound(prefix)
        at = revision
        left = -1  # names after the last page read (-1: not counted yet)

        def read_page(conn: sqlite3.Connection, low: str) -> tuple[ListResult, str | None]:
            nonlocal at, left
            if not at:
                at = _read_current_revision(conn)
            elif at > (current := _read_current_revision(conn)):
                raise FutureRevision(at, current)
            compacted = _read_compact_revision(conn)
            if at < compacted:
                raise Compacted(at, compacted)
            items: builtins.list[KeyValue] = []
            scanned = 0  # names read, tombstones included
            while True:  # tombstones are skipped: read on until the page is full or the end
                want = page_size - len(items)
                if bound is None:
                    keys = conn.execute(PAGE_AT_UNBOUNDED_SQL, (low, at, want)).fetchall()
                else:
                    keys = conn.execute(PAGE_AT_SQL, (low, bound, at, want)).fetchall()
                scanned += len(keys)
                ids = [row_id for _, row_id in keys]
                rows = conn.execute(VALUES_BY_ID_SQL, (json.dumps(ids),)).fetchall()
                found = {row[0]: row for row in rows}
                for name, row_id in keys:
                    _, create, deleted, value = found[row_id]
                    if not deleted:
                        items.append(KeyValue(name, value, create, row_id))
                if len(keys) < want:
                    return ListResult(items, at, 0), None
                low = keys[-1][0] + "\0"
                if len(items) >= page_size:
                    break
            if left < 0:
                if bound is None:
                    (counted,) = conn.execute(COUNT_AT_UNBOUNDED_SQL, (low, at)).fetchone()
                else:
                    (counted,) = conn.execute(COUNT_AT_SQL, (low, bound, at)).fetchone()
                left = int(counted)
            else:
                if bound is None:
                    more = conn.execute(MORE_AT_UNBOUNDED_SQL, (low, at)).fetchone()
                else:
                    more = conn.execute(MORE_AT_SQL, (low, bound, at)).fetchone()
                # the estimate less what this page read; never 0 while a name is left
                left = max(left - scanned, 1) if more else 0
            return ListResult(items, at, left), low if left else None

        low: str | None = max(prefix, start)
        while low is not None:
            page, low = await self._read(functools.partial(read_page, low=low))
            yield page

    async def current_revision(self) -> int:
        return await self._read(_read_current_revision)

    # -- writes ---------------------------------------------------------------------------------

    async def create(self, key: str, value: bytes) -> KeyValue:
        def write(conn: sqlite3.Connection) -> KeyValue:
            latest = _read_latest(conn, key)
            if latest is not None and not latest[2]:
                raise KeyExists(key)
            revision = _append(
                conn,
                key,
                created=True,
                deleted=False,
                create_revision=None,
                prev_revision=latest[0] if latest else 0,
                value=value,
                on_conflict=lambda: KeyExists(key),
            )
            return KeyValue(key, value, revision, revision)

        return await self._write(write)

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        def write(conn: sqlite3.Connection) -> KeyValue:
            current = _live(key, _read_latest(conn, key))
            if current is None:
                raise KeyNotFound(key)
            if current.mod_revision != expected_revision:
                raise RevisionConflict(key, expected_revision, current)
            revision = _append(
                conn,
                key,
                created=False,
                deleted=False,
                create_revision=current.create_revision,
                prev_revision=current.mod_revision,
                value=value,
                on_conflict=lambda: RevisionConflict(key, expected_revision, None),
            )
            return KeyValue(key, value, current.create_revision, revision)

        return await self._write(write)

    async def delete(self, key: str, expected_revision: int | None = None) -> KeyValue:
        def write(conn: sqlite3.Connection) -> KeyValue:
            current = _live(key, _read_latest(conn, key))
            if current is None:
                raise KeyNotFound(key)
            if expected_revision is not None and current.mod_revision != expected_revision:
                raise RevisionConflict(key, expected_revision, current)
            revision = _append(
                conn,
                key,
                created=False,
                deleted=True,
                create_revision=current.create_revision,
                prev_revision=current.mod_revision,
                value=b"",
                on_conflict=lambda: RevisionConflict(key, current.mod_revision, None),
            )
            return KeyValue(key, current.value, current.create_revision, revision)

        return await self._write(write)

    # -- watch ----------------------------------------------------------------------------------

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        return self._watch(prefix, from_revision)

    async def _watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        self._ensure_started()
        subscriber = _Subscriber(prefix, self.options.watch_queue_limit)
        self._subscribers.add(subscriber)  # subscribe first, then replay: no gap between them
        try:
            bound = prefix_upper_bound(prefix)

            def replay(conn: sqlite3.Connection) -> tuple[int, int, builtins.list[EventRow]]:
                compact_revision = _read_compact_revision(conn)
                snapshot = _read_current_revision(conn)
                if from_revision < compact_revision:
                    return compact_revision, snapshot, []
                if bound is None:
                    rows = conn.execute(REPLAY_UNBOUNDED_SQL, (from_revision, prefix)).fetchall()
                else:
                    rows = conn.execute(REPLAY_SQL, (from_revision, prefix, bound)).fetchall()
                return compact_revision, snapshot, rows

            compact_revision, snapshot, rows = await self._read(replay)
            if from_revision < compact_revision:
                raise Compacted(from_revision, compact_revision)
            for row in rows:
                yield event_from_row(row)
            seen = max(from_revision, snapshot)
            while True:
                item = await subscriber.next()
                if item is None:
                    return
                if isinstance(item, StoreError):
                    raise item
                if item.kv.mod_revision > seen:
                    seen = item.kv.mod_revision
                    yield item
        finally:
            subscriber.closed = True
            self._subscribers.discard(subscriber)

    async def _poll_loop(self) -> None:
        assert self._wake is not None
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races
        # with its own timeout, and close() would then wait for this task forever.
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch_new_rows()
            except StoreUnavailable:
                await asyncio.sleep(self.options.poll_interval)  # transient; retried next tick
            except Exception as error:
                # A bug must not leave watchers hanging: end them (clients re-watch) and go on.
                log.exception(
                    "SQLite watch poller failed; ending %d watches", len(self._subscribers)
                )
                for subscriber in builtins.list(self._subscribers):
                    subscriber.end(StoreError(f"SQLite store {self.path}: watch failed: {error}"))

    async def _dispatch_new_rows(self) -> None:
        """Hand every row above `_last_seen` to the live subscribers, in revision order."""
        assert self._dispatch_lock is not None
        async with self._dispatch_lock:
            while True:
                after = self._last_seen
                if not self._subscribers:
                    revision = await self._read(_read_current_revision)
                    if not self._subscribers:  # nobody subscribed meanwhile: nothing to deliver
                        self._last_seen = max(after, revision)
                        return
                    continue

                compact_revision, current, rows = await self._read(
                    functools.partial(_read_rows_after, after=after)
                )
                if compact_revision > after:
                    # Another process compacted history these watchers had not seen yet.
                    for subscriber in builtins.list(self._subscribers):
                        subscriber.end(Compacted(after, compact_revision))
                    self._last_seen = compact_revision
                    continue
                for row in rows:
                    event = event_from_row(row)
                    for subscriber in builtins.list(self._subscribers):
                        subscriber.offer(event, current)
                if rows:
                    self._last_seen = rows[-1][0]
                if len(rows) < POLL_BATCH:
                    return

    # -- compaction -----------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        # Deliver everything up to now to local watchers first, so compaction never deletes a
        # row one of them has not seen; then never compact past what they have seen.
        self._ensure_started()
        await self._dispatch_new_rows()
        target = min(revision, self._last_seen)

        def compact_chunk(conn: sqlite3.Connection) -> bool:
            done = _read_compact_revision(conn)
            if done >= target:
                return True
            upto = min(target, done + COMPACT_CHUNK_REVISIONS)
            conn.execute(COMPACT_SQL, (done, upto, done, upto))
            conn.execute("UPDATE kv_meta SET value = ? WHERE key = 'compact_revision'", (upto,))
            return upto >= target

        while not await self._write(compact_chunk):
            pass

    async def compact_revision(self) -> int:
        """The revision at or below which history is gone (0: nothing compacted yet)."""
        return await self._read(_read_compact_revision)

    async def checkpoint(self) -> None:
        """Move the WAL into the database file and truncate the WAL to zero bytes."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

        self._ensure_started()
        try:
            await self._writer.submit(run, in_transaction=False)
        except sqlite3.Error as error:
            raise self._unavailable(error) from error

    async def compact_automatically(self, now: float | None = None) -> int:
        """One step of the automatic compactor; returns the compact revision afterwards."""
        now = time.monotonic() if now is None else now
        target = self._compaction_planner.observe(now, await self.current_revision())
        if target is not None:
            await self.compact(target)
        return await self.compact_revision()

    async def _compact_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.options.compaction.interval_seconds)
            with contextlib.suppress(StoreUnavailable):
                await self.compact_automatically()

    async def _checkpoint_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.options.checkpoint_interval)
            with contextlib.suppress(StoreUnavailable):
                await self.checkpoint()

    # -- lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for subscriber in builtins.list(self._subscribers):
            subscriber.end(None)

        def shut_down() -> None:
            self._reader_pool.shutdown(wait=True)
            self._writer.stop()
            with contextlib.suppress(sqlite3.Error):
                self._writer_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            for conn in [*self._reader_connections, self._writer_connection]:
                conn.close()

        await asyncio.to_thread(shut_down)
