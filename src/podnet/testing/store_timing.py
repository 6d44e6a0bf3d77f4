"""Timing of a store driver on its own (no API server): creates, updates, lists, watch delay.

What belongs here: one measuring routine any benchmark can call on any `Store`, and a small
command line (`python -m podnet.testing.store_timing`) that prints a table for both drivers.
The API benchmark (`benchmarks/store.py`) measures the store through the API; this measures
the layer underneath, so regressions can be placed.

Method: with one watcher consuming every event of the prefix (the API server always has
watchers), create N keys one after another, then update each once, then run `concurrency`
updaters at once; every operation is timed individually. "Watch delay" is from issuing a
write to its event reaching the watcher (so it includes the write itself). Values are
`value_size` bytes, about the size of a pod's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from podnet.store import Store, open_store


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        ordered = sorted(seconds)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

        return cls(
            len(ordered),
            statistics.fmean(ordered) * 1000,
            pick(0.50),
            pick(0.99),
            ordered[-1] * 1000,
        )


@dataclass(frozen=True, slots=True)
class StoreTiming:
    driver: str
    keys: int
    create: Latency
    update: Latency
    concurrent_update: Latency
    list_all: Latency
    watch_delay: Latency


async def measure_store(
    store: Store,
    driver: str,
    keys: int,
    value_size: int = 1500,
    concurrency: int = 16,
    prefix: str = "/timing/",
) -> StoreTiming:
    value = b"x" * value_size
    issued_at: dict[int, float] = {}  # revision -> when its write was issued
    arrived_at: dict[int, float] = {}  # revision -> when the watcher got its event
    start_revision = await store.current_revision()
    expected_events = 2 * keys + keys  # creates, updates, concurrent updates

    async def watcher() -> None:
        seen = 0
        events = store.watch(prefix, start_revision)
        try:
            async for event in events:
                arrived_at[event.kv.mod_revision] = time.perf_counter()
                seen += 1
                if seen == expected_events:
                    return
        finally:
            close = getattr(events, "aclose", None)  # drivers return async generators
            if close is not None:
                await close()

    watching = asyncio.create_task(watcher())
    await asyncio.sleep(0.1)  # let the watch subscribe

    revisions: dict[str, int] = {}
    creates: list[float] = []
    for n in range(keys):
        key = f"{prefix}{n:06}"
        began = time.perf_counter()
        kv = await store.create(key, value)
        creates.append(time.perf_counter() - began)
        issued_at[kv.mod_revision] = began
        revisions[key] = kv.mod_revision

    updates: list[float] = []
    for key, revision in revisions.items():
        began = time.perf_counter()
        kv = await store.update(key, value, revision)
        updates.append(time.perf_counter() - began)
        issued_at[kv.mod_revision] = began
        revisions[key] = kv.mod_revision

    concurrent: list[float] = []
    queue = list(revisions.items())

    async def updater() -> None:
        while queue:
            key, revision = queue.pop()
            began = time.perf_counter()
            kv = await store.update(key, value, revision)
            concurrent.append(time.perf_counter() - began)
            issued_at[kv.mod_revision] = began

    await asyncio.gather(*(updater() for _ in range(concurrency)))

    await asyncio.wait_for(watching, 120)  # before listing: a big list may hold the loop
    delays = [arrived_at[revision] - issued for revision, issued in issued_at.items()]
    lists: list[float] = []
    for _ in range(5):
        began = time.perf_counter()
        listed = await store.list(prefix)
        lists.append(time.perf_counter() - began)
        assert len(listed.items) == keys
    return StoreTiming(
        driver,
        keys,
        Latency.of(creates),
        Latency.of(updates),
        Latency.of(concurrent),
        Latency.of(lists),
        Latency.of(delays),
    )


def _row(timing: StoreTiming) -> str:
    def cell(latency: Latency) -> str:
        return f"{latency.mean_ms:7.2f} {latency.p99_ms:7.2f}"

    return (
        f"{timing.driver:7} {timing.keys:6} | {cell(timing.create)} | {cell(timing.update)} | "
        f"{cell(timing.concurrent_update)} | {cell(timing.list_all)} | {cell(timing.watch_delay)}"
    )


async def _run(drivers: list[str], sizes: list[int], json_path: Path | None) -> None:
    from podnet.testing.etcd import EtcdServer

    print(
        "driver    keys |  create mean/p99 |  update mean/p99 | 16x update mean/p99 |"
        "   list mean/p99 |  watch delay mean/p99   (ms)"
    )
    results: list[StoreTiming] = []
    for driver in drivers:
        for keys in sizes:
            with contextlib.ExitStack() as stack:
                state_dir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="podnet-store-timing-")
                )
                if driver == "etcd":
                    url = stack.enter_context(EtcdServer()).store_url + "/timing"
                else:
                    url = "sqlite"
                store = open_store(url, Path(state_dir))
                try:
                    timing = await measure_store(store, driver, keys)
                finally:
                    await store.close()
            results.append(timing)
            print(_row(timing), flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--drivers", default="sqlite,etcd")
    parser.add_argument("--keys", default="1000,10000")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    asyncio.run(
        _run(
            args.drivers.split(","),
            [int(n) for n in args.keys.split(",")],
            args.json,
        )
    )


if __name__ == "__main__":
    main()
