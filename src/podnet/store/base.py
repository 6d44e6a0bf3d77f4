"""The store contract (DESIGN.md contract 5): a narrow, revisioned key-value store with watch.

What belongs here: the value types, the `Store` protocol every driver implements, the errors a
driver may raise, and the registry that opens a store from a URL. Nothing here does I/O.

Invariants every driver keeps:
- One global revision counter. Every successful create/update/delete takes the next revision;
  `KeyValue.mod_revision` is the revision of the write that produced that value.
- `update` and `delete` are compare-and-swap on the key's `mod_revision`: a stale expectation
  raises `RevisionConflict` carrying the current value, never a silent overwrite.
- `watch(prefix, from_revision)` yields every change with revision > from_revision, in revision
  order, with no gaps and no duplicates; if history before `from_revision` is compacted it
  raises `Compacted` (the API answers 410 Gone and clients re-list).
- `list_pages` at a revision the store has not reached raises `FutureRevision` (no state to
  read: a continue token of another store, or edited; the API answers 400).
- Values are opaque bytes to the store (the API server stores JSON).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change. For DELETE, `kv.value` is the last value and `kv.mod_revision` the delete's."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[KeyValue]
    revision: int  # the store revision the list was read at
    remaining: int = 0  # a page of `list_pages`: keys of the range after its last one


class StoreError(Exception):
    """Base of every store error."""


class KeyExists(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} already exists")
        self.key = key


class KeyNotFound(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} not found")
        self.key = key


class RevisionConflict(StoreError):
    def __init__(self, key: str, expected: int, current: KeyValue | None) -> None:
        have = current.mod_revision if current else "deleted"
        super().__init__(f"key {key!r}: expected revision {expected}, store has {have}")
        self.key = key
        self.expected = expected
        self.current = current


class Compacted(StoreError):
    """The requested revision is older than the retained history."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted (oldest available {compact_revision})"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class FutureRevision(StoreError):
    """The requested revision is newer than the store's current one: it has no such state."""

    def __init__(self, requested: int, current: int) -> None:
        super().__init__(
            f"revision {requested} is newer than the store's current revision {current}"
        )
        self.requested = requested
        self.current = current


class StoreUnavailable(StoreError):
    """The backing database cannot be reached; the message says which and how to fix it."""


class ValueTooLarge(StoreError):
    """The backing database refuses a write this large (etcd: --max-request-bytes, 1.5 MiB by
    default); the API answers 413, as upstream does for etcd's "request is too large"."""


class Store(Protocol):
    """What the API server needs from storage, and nothing more."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def list(self, prefix: str) -> ListResult: ...

    async def create(self, key: str, value: bytes) -> KeyValue:
        """Raises KeyExists."""
        ...

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        """Raises KeyNotFound, RevisionConflict."""
        ...

    async def delete(self, key: str, expected_revision: int | None = None) -> KeyValue:
        """Returns the deleted value (mod_revision = the delete's revision).

        Raises KeyNotFound, RevisionConflict.
        """
        ...

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        """Events with revision > from_revision. Raises Compacted (at first iteration)."""
        ...

    async def current_revision(self) -> int: ...

    async def compact(self, revision: int) -> None:
        """Forget history at or below `revision` (current values are kept)."""
        ...

    async def close(self) -> None: ...


StoreOpener = Callable[[str, str], "Store"]
"""(url, state_dir) -> Store. Drivers register one under their URL scheme."""


async def list_pages(
    store: Store, prefix: str, page_size: int, start: str = "", revision: int = 0
) -> AsyncGenerator[ListResult, None]:
    """`store.list(prefix)` as pages of at most `page_size` keys in key order, all at one
    revision: the keys >= `start` (a key under `prefix`; "" = from the first) at `revision`
    (0 = the current one; a compacted one raises `Compacted`, one the store has not reached
    `FutureRevision`), each page with the number of
    keys after it (`remaining`). Upstream's paged LIST: a continued list is a fresh range
    read from its last key at the first page's revision, so nothing is kept between pages.
    Drivers implement it as `list_pages` (etcd: a range read per page; SQLite and memory:
    from their history); a driver without it can only read the current revision.

    The driver's generator is closed when the caller stops early (`aclosing`), so an etcd
    range response or a SQLite read is never left to the garbage collector."""
    paged = getattr(store, "list_pages", None)
    if paged is not None:
        pages: AsyncGenerator[ListResult, None] = paged(prefix, page_size, start, revision)
        async with contextlib.aclosing(pages):
            async for part in pages:
                yield part
        return
    whole = await store.list(prefix)
    if revision > whole.revision:
        raise FutureRevision(revision, whole.revision)
    if revision and revision != whole.revision:
        raise Compacted(revision, whole.revision)  # no history to read an older state from
    items = [kv for kv in whole.items if kv.key >= start]
    for first in range(0, len(items), page_size) if items else [0]:
        page = items[first : first + page_size]
        yield ListResult(page, whole.revision, max(0, len(items) - first - len(page)))
