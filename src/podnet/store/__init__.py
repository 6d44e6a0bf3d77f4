"""podnet.store: open a `Store` from a URL (DESIGN.md contract 5).

What belongs here: the registry of store drivers keyed by URL scheme, and URL parsing. The
contract itself lives in `base.py`; the drivers in `sqlite.py`, `etcd.py` and `memory.py`.

URLs:
- `sqlite` or `sqlite://`           -> `<state_dir>/state.db`
- `sqlite:///abs/path/state.db`     -> that file
- `sqlite://relative/state.db`      -> relative to `<state_dir>`
- `etcd://HOST:PORT[,HOST:PORT...][/key/prefix]`, e.g. `etcd://127.0.0.1:2379/podnet`: every
  key lives under the prefix, so several clusters can share one etcd.
- `memory` or `memory://`           -> a fresh store in process memory (gone when it exits)

Invariant: an unknown scheme or a malformed URL is a `ValueError` that says what is accepted.

The etcd driver (aetcd, grpc, protobuf: a fifth of a second to import) is imported when an
etcd store is opened or `EtcdStore` is first named, not with this package: the lab's and the
agents' light uses (`etcd_health`, the store's types) must not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from podnet.lazy import lazy_names
from podnet.store.base import (
    Compacted,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    RevisionConflict,
    Store,
    StoreError,
    StoreOpener,
    StoreUnavailable,
    ValueTooLarge,
    WatchEvent,
)
from podnet.store.compaction import CompactionPlanner, CompactionPolicy
from podnet.store.memory import MemoryStore
from podnet.store.sqlite import SqliteOptions, SqliteStore

__all__ = [
    "STORE_DRIVERS",
    "Compacted",
    "CompactionPlanner",
    "CompactionPolicy",
    "EtcdStore",
    "FutureRevision",
    "KeyExists",
    "KeyNotFound",
    "KeyValue",
    "ListResult",
    "MemoryStore",
    "RevisionConflict",
    "SqliteOptions",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "ValueTooLarge",
    "WatchEvent",
    "open_store",
    "parse_etcd_url",
    "sqlite_path",
]

if TYPE_CHECKING:
    from podnet.store.etcd import EtcdStore

__getattr__ = lazy_names(__name__, {"EtcdStore": ("podnet.store.etcd", "EtcdStore")})


def sqlite_path(url: str, state_dir: Path) -> Path:
    """The database file a `sqlite` URL names (see the module docstring)."""
    rest = url.removeprefix("sqlite").removeprefix(":").removeprefix("//")
    if not rest:
        return Path(state_dir) / "state.db"
    path = Path(rest)
    return path if path.is_absolute() else Path(state_dir) / path


def parse_etcd_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """`etcd://h1:p1,h2:p2/prefix` -> ([(h1, p1), (h2, p2)], "/prefix")."""
    rest = url.removeprefix("etcd://")
    hosts, slash, prefix = rest.partition("/")
    endpoints: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"bad etcd endpoint {item!r} in {url!r}: expected "
                "etcd://HOST:PORT[,HOST:PORT...][/key/prefix], e.g. etcd://127.0.0.1:2379/podnet"
            )
        endpoints.append((host, int(port)))
    return endpoints, (slash + prefix).rstrip("/")


def _open_sqlite(url: str, state_dir: str) -> Store:
    return SqliteStore(sqlite_path(url, Path(state_dir)))


def _open_etcd(url: str, state_dir: str) -> Store:
    from podnet.store.etcd import EtcdStore

    endpoints, prefix = parse_etcd_url(url)
    return EtcdStore(endpoints, key_prefix=prefix)


def _open_memory(url: str, state_dir: str) -> Store:
    if url.removeprefix("memory").removeprefix(":").removeprefix("//"):
        raise ValueError(f"bad memory store {url!r}: it takes no path, use 'memory'")
    return MemoryStore()


STORE_DRIVERS: dict[str, StoreOpener] = {
    "sqlite": _open_sqlite,
    "etcd": _open_etcd,
    "memory": _open_memory,
}
"""URL scheme -> opener(url, state_dir). One explicit dict, no import-time registration."""


def open_store(url: str, state_dir: Path) -> Store:
    """Open the store a URL names; `state_dir` holds local files (the SQLite database)."""
    scheme = url.split(":", 1)[0]
    opener = STORE_DRIVERS.get(scheme)
    if opener is None:
        valid = ", ".join(sorted(STORE_DRIVERS))
        raise ValueError(
            f"unknown store {url!r}: the scheme must be one of {valid} "
            "(e.g. 'sqlite', 'sqlite:///var/lib/podnet/state.db', 'etcd://127.0.0.1:2379/podnet', "
            "'memory')"
        )
    return opener(url, str(state_dir))
