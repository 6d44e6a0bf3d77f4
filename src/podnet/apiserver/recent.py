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

Values are held compressed (zlib, raw deflate at level 1) against a dictionary per kind:
the first value the server saw of that kind (as upstream's etcd3 store can be given a
transformer for values at rest). Objects of one kind are mostly the same bytes, so a pod's
3.5 KB of JSON is held in a few hundred bytes, and every pod of a 30,000-pod cluster fits
in the bound with room to spare (uncompressed, 64 MiB held about 18,000 and the rest were
read again from the store before their next write). Packing costs ~20 us per value
remembered, unpacking ~3 us per value handed out.

Invariants:
- A value handed out may be stale (another server wrote since): a caller either checks it by
  a compare-and-swap on its `mod_revision` (`suggestion`) or accepts it only younger than
  `max_age` seconds (`lookup`, which reads the store otherwise). Absence is never cached: a key
  not held is read from the store.
- A value handed out is byte for byte the value remembered (the dictionary an entry was
  packed against stays with the entry).
- Memory is bounded by `max_bytes`, counting each entry's packed value and `ENTRY_BYTES` for
  the entry itself (least recently used dropped first).
- Events are not held (`NOT_HELD`): the controllers' recorder creates each once and nothing
  writes it again, yet each pod brings two (Scheduled, and its ReplicaSet's SuccessfulCreate),
  so at 30,000 pods they were about two entries of three, pushing out the pods whose status
  writes the values are for. A client that does update an Event pays one store read.
- Look-ups of one key that miss together share one store read (every create in a namespace
  looks its namespace up: when the held value ages out under a stream of creates, each of
  those in flight used to read the store). `get` never shares: it is a read that starts now.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable

from podnet.api.resources import BY_PLURAL
from podnet.store.base import KeyValue, Store

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ENTRY_BYTES = 400
"""What one entry costs besides its packed value (its key, the entry, the map's slot): counted
against `max_bytes` so many small values cannot outgrow it."""
NOT_HELD = (BY_PLURAL["events"].storage_prefix(None),)
"""Key prefixes whose values are not held (see the module docstring)."""
LOOKUP_MAX_AGE = 1.0
"""Seconds an admission look-up (namespace exists and is not terminating, service account
exists) may trust a held value: the order of an informer's lag upstream."""
_DICTIONARY_BYTES = 32 * 1024  # deflate's window: a longer dictionary is not used
_LEVEL = 1


class _Codec:
    """Packs one kind's values against its dictionary."""

    __slots__ = ("dictionary",)

    def __init__(self, dictionary: bytes) -> None:
        self.dictionary = dictionary[-_DICTIONARY_BYTES:]

    def pack(self, value: bytes) -> bytes:
        packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                                  self.dictionary)  # fmt: skip
        return packer.compress(value) + packer.flush()

    def unpack(self, packed: bytes) -> bytes:
        unpacker = zlib.decompressobj(-15, self.dictionary)
        return unpacker.decompress(packed) + unpacker.flush()


class _Entry:
    __slots__ = ("codec", "create_revision", "mod_revision", "packed", "seen")

    def __init__(self, kv: KeyValue, codec: _Codec, seen: float) -> None:
        self.packed = codec.pack(kv.value)
        self.create_revision = kv.create_revision
        self.mod_revision = kv.mod_revision
        self.seen = seen
        self.codec = codec

    @property
    def cost(self) -> int:
        return len(self.packed) + ENTRY_BYTES

    def kv(self, key: str) -> KeyValue:
        value = self.codec.unpack(self.packed)
        return KeyValue(key, value, self.create_revision, self.mod_revision)


_GROUPED = frozenset(
    res.storage_prefix(None) for res in BY_PLURAL.values() if res.group
)  # /registry/GROUP/PLURAL/ (the other kinds' keys are /registry/PLURAL/...)


def _kind(key: str) -> str:
    """The kind's part of a store key (what shares a dictionary)."""
    parts = key.split("/", 4)
    grouped = "/".join(parts[:4]) + "/"
    return grouped if grouped in _GROUPED else "/".join(parts[:3]) + "/"


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
        self._values: OrderedDict[str, _Entry] = OrderedDict()
        self._codecs: dict[str, _Codec] = {}
        self._bytes = 0
        self._reading: dict[str, asyncio.Task[KeyValue | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def size(self) -> int:
        """Bytes counted against `max_bytes` (packed values and `ENTRY_BYTES` each)."""
        return self._bytes

    def remember(self, kv: KeyValue) -> None:
        """`kv` is the key's value in the store as of now (just read or written)."""
        if kv.key.startswith(NOT_HELD):
            return
        held = self._values.get(kv.key)
        if held is not None and held.mod_revision > kv.mod_revision:
            return  # a later value was seen meanwhile (writes finish out of order)
        self.forget(kv.key)
        kind = _kind(kv.key)
        codec = self._codecs.get(kind)
        if codec is None:
            codec = self._codecs[kind] = _Codec(kv.value)
        entry = _Entry(kv, codec, self.clock())
        self._values[kv.key] = entry
        self._bytes += entry.cost
        while self._bytes > self.max_bytes and len(self._values) > 1:
            _, dropped = self._values.popitem(last=False)
            self._bytes -= dropped.cost

    def forget(self, key: str) -> None:
        """The key was deleted (or its value is unknown)."""
        held = self._values.pop(key, None)
        if held is not None:
            self._bytes -= held.cost

    def suggestion(self, key: str) -> KeyValue | None:
        """The last value seen, however old: a start for a compare-and-swap, which fails
        (carrying the current value) if it is stale."""
        held = self._values.get(key)
        if held is None:
            self.misses += 1
            return None
        self.hits += 1
        self._values.move_to_end(key)
        return held.kv(key)

    async def lookup(self, key: str, max_age: float = LOOKUP_MAX_AGE) -> KeyValue | None:
        """The key's value seen at most `max_age` seconds ago, else read from the store (and
        remembered); None: the store does not have the key."""
        held = self._values.get(key)
        if held is not None and self.clock() - held.seen <= max_age:
            self.hits += 1
            self._values.move_to_end(key)
            return held.kv(key)
        self.misses += 1
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self.get(key))
            reading.add_done_callback(lambda done: self._done_reading(key, done))
        return await asyncio.shield(reading)

    def _done_reading(self, key: str, done: asyncio.Task[KeyValue | None]) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone

    async def get(self, key: str) -> KeyValue | None:
        """Read the key from the store, remembering what it holds."""
        kv = await self.store.get(key)
        if kv is None:
            self.forget(key)
        else:
            self.remember(kv)
        return kv
