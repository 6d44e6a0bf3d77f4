"""The values this API server last read or wrote, per store key: the start of its writes and
the source of its admission look-ups (upstream: the cacher's object behind GuaranteedUpdate,
the listers behind NamespaceLifecycle and ServiceAccount admission).

What belongs here: `RecentValues`, a bounded most-recently-used map from store key to the last
`KeyValue` the registry saw for it, with the time it was seen. Nothing here decides what a
value means.

Why: without it an update cost two store round trips (read the current value, then the
compare-and-swap) and a pod create three (namespace, service account, create); on etcd each is
a gRPC call and, for reads, a quorum read. Upstream's etcd3 store starts GuaranteedUpdate from
the watch cache's copy of the object and reads etcd only when the compare-and-swap says that
copy was stale; the failed transaction already carries the current value.

Invariants:
- A value handed out may be stale (another server wrote since): a caller either checks it by
  a compare-and-swap on its `mod_revision` (`suggestion`) or accepts it only younger than
  `max_age` seconds (`lookup`, which reads the store otherwise). Absence is never cached: a key
  not held is read from the store.
- Memory is bounded by `max_bytes` of values (least recently used dropped first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from podnet.store.base import KeyValue, Store

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
LOOKUP_MAX_AGE = 1.0
"""Seconds an admission look-up (namespace exists and is not terminating, service account
exists) may trust a held value: the order of an informer's lag upstream."""


class RecentValues:
    def __init__(
        self,
        store: Store,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.clock = clock
        self._values: OrderedDict[str, tuple[KeyValue, float]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def size(self) -> int:
        """Bytes of values held."""
        return self._bytes

    def remember(self, kv: KeyValue) -> None:
        """`kv` is the key's value in the store as of now (just read or written)."""
        held = self._values.get(kv.key)
        if held is not None and held[0].mod_revision > kv.mod_revision:
            return  # a later value was seen meanwhile (writes finish out of order)
        self.forget(kv.key)
        self._values[kv.key] = (kv, self.clock())
        self._bytes += len(kv.value)
        while self._bytes > self.max_bytes and len(self._values) > 1:
            _, (dropped, _) = self._values.popitem(last=False)
            self._bytes -= len(dropped.value)

    def forget(self, key: str) -> None:
        """The key was deleted (or its value is unknown)."""
        held = self._values.pop(key, None)
        if held is not None:
            self._bytes -= len(held[0].value)

    def suggestion(self, key: str) -> KeyValue | None:
        """The last value seen, however old: a start for a compare-and-swap, which fails
        (carrying the current value) if it is stale."""
        held = self._values.get(key)
        if held is None:
            self.misses += 1
            return None
        self.hits += 1
        self._values.move_to_end(key)
        return held[0]

    async def lookup(self, key: str, max_age: float = LOOKUP_MAX_AGE) -> KeyValue | None:
        """The key's value seen at most `max_age` seconds ago, else read from the store (and
        remembered); None: the store does not have the key."""
        held = self._values.get(key)
        if held is not None and self.clock() - held[1] <= max_age:
            self.hits += 1
            self._values.move_to_end(key)
            return held[0]
        self.misses += 1
        return await self.get(key)

    async def get(self, key: str) -> KeyValue | None:
        """Read the key from the store, remembering what it holds."""
        kv = await self.store.get(key)
        if kv is None:
            self.forget(key)
        else:
            self.remember(kv)
        return kv
