"""An in-memory store driver: the whole store contract in a dict and an event log, no I/O.

What belongs here: `MemoryStore`, the driver behind `memory` URLs. Tests run the real registry
on it (`podnet.testing.api.InMemoryApi`), and `podnet server --store memory` gives a throwaway
cluster whose state dies with the process. It passes the same contract suite as SQLite and etcd
(`tests/unit/store/test_store_contract.py`).

Invariants (the `podnet.store.base` ones, kept by construction):
- `_revision` is the one global counter; every successful write takes the next value.
- `_events` holds every change above `_compact_revision`, in revision order, each with the value
  it superseded; compaction drops the events at or below the compact revision. A watch replays
  `_events` after its start revision and then follows new ones through one cursor, so it sees
  each change exactly once; a watch whose cursor falls below a compaction ends with `Compacted`.
- History is bounded like the other drivers' automatic compaction: past `history` events the
  older half is compacted away.
- Every operation yields to the event loop once before acting, as a real store's I/O would, so
  concurrent callers interleave the way they do against SQLite or etcd. The store belongs to
  one event loop (its watchers are woken on it).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator

from podnet.store.base import (
    Compacted,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    RevisionConflict,
    WatchEvent,
)


class MemoryStore:
    """`podnet.store.base.Store` in process memory (see the module docstring)."""

    def __init__(self, history: int = 10_000) -> None:
        self._history = history
        self._revision = 0
        self._compact_revision = 0
        self._data: dict[str, KeyValue] = {}
        self._events: list[WatchEvent] = []
        self._changed = asyncio.Event()  # replaced after every wake-up (one per change)
        self._closed = False

    # -- synchronous reads (tests peek with these; the async API is built on them) --------

    def read(self, key: str) -> KeyValue | None:
        """The current value of `key`, without waiting."""
        return self._data.get(key)

    def read_prefix(self, prefix: str) -> ListResult:
        """Every current value under `prefix`, sorted by key, without waiting."""
        items = sorted((kv for key, kv in self._data.items() if key.startswith(prefix)), key=_key)
        return ListResult(items, self._revision)

    # -- the Store contract --------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        await asyncio.sleep(0)
        return self.read(key)

    async def list(self, prefix: str) -> ListResult:
        await asyncio.sleep(0)
        return self.read_prefix(prefix)

    async def list_pages(
        self, prefix: str, page_size: int, start: str = "", revision: int = 0
    ) -> AsyncIterator[ListResult]:
        """`store.base.list_pages`: the keys >= `start` as they were at `revision` (the current
        values with the events after it undone), in pages; a compacted revision raises."""
        await asyncio.sleep(0)
        at = revision or self._revision
        if at > self._revision:
            raise FutureRevision(at, self._revision)
        if at < self._compact_revision:
            raise Compacted(at, self._compact_revision)
        low = max(prefix, start)
        state = {k: kv for k, kv in self._data.items() if k.startswith(prefix) and k >= low}
        later = self._events[bisect.bisect_right(self._events, at, key=_revision_of) :]
        for event in reversed(later):
            key = event.kv.key
            if key.startswith(prefix) and key >= low:
                if event.prev is None:
                    state.pop(key, None)
                else:
                    state[key] = event.prev
        items = sorted(state.values(), key=_key)
        for first in range(0, len(items), page_size) if items else [0]:
            page = items[first : first + page_size]
            yield ListResult(page, at, len(items) - first - len(page))

    async def current_revision(self) -> int:
        await asyncio.sleep(0)
        return self._revision

    async def create(self, key: str, value: bytes) -> KeyValue:
        await asyncio.sleep(0)
        if key in self._data:
            raise KeyExists(key)
        revision = self._next_revision()
        kv = KeyValue(key, value, revision, revision)
        self._write(WatchEvent("PUT", kv, None))
        return kv

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        await asyncio.sleep(0)
        current = self._current(key, expected_revision)
        kv = KeyValue(key, value, current.create_revision, self._next_revision())
        self._write(WatchEvent("PUT", kv, current))
        return kv

    async def delete(self, key: str, expected_revision: int | None = None) -> KeyValue:
        await asyncio.sleep(0)
        current = self._current(key, expected_revision)
        kv = KeyValue(key, current.value, current.create_revision, self._next_revision())
        self._write(WatchEvent("DELETE", kv, current))
        return kv

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        return self._watch(prefix, from_revision)

    async def _watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        await asyncio.sleep(0)
        cursor = from_revision
        while not self._closed:
            if cursor < self._compact_revision:
                raise Compacted(cursor, self._compact_revision)
            changed = self._changed
            start = bisect.bisect_right(self._events, cursor, key=_revision_of)
            pending = self._events[start:]
            for event in pending:
                cursor = event.kv.mod_revision
                if event.kv.key.startswith(prefix):
                    yield event
            if not pending:
                await changed.wait()

    async def compact(self, revision: int) -> None:
        await asyncio.sleep(0)
        self._compact(revision)

    async def close(self) -> None:
        self._closed = True
        self._wake()

    # -- internals -----------------------------------------------------------------------

    def _current(self, key: str, expected_revision: int | None) -> KeyValue:
        current = self._data.get(key)
        if current is None:
            raise KeyNotFound(key)
        if expected_revision is not None and current.mod_revision != expected_revision:
            raise RevisionConflict(key, expected_revision, current)
        return current

    def _compact(self, revision: int) -> None:
        revision = min(revision, self._revision)
        if revision <= self._compact_revision:
            return
        self._compact_revision = revision
        del self._events[: bisect.bisect_right(self._events, revision, key=_revision_of)]
        self._wake()  # a watcher left behind must learn it is compacted

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _write(self, event: WatchEvent) -> None:
        if event.type == "DELETE":
            del self._data[event.kv.key]
        else:
            self._data[event.kv.key] = event.kv
        self._events.append(event)
        if len(self._events) > self._history:
            self._compact(self._events[len(self._events) - self._history // 2 - 1].kv.mod_revision)
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _key(kv: KeyValue) -> str:
    return kv.key


def _revision_of(event: WatchEvent) -> int:
    return event.kv.mod_revision
