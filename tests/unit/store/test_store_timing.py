"""The store timing helper measures every operation it performs (kept working for benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.store import SqliteOptions, SqliteStore
from podnet.testing.store_timing import Latency, measure_store


def test_latency_summary_uses_nearest_rank_percentiles() -> None:
    summary = Latency.of([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(51.0)
    assert summary.p99_ms == pytest.approx(100.0)
    assert summary.max_ms == pytest.approx(100.0)
    assert summary.mean_ms == pytest.approx(50.5)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_measure_store_times_every_write_and_its_watch_event(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", SqliteOptions(compact_interval=0))
    try:
        timing = await measure_store(store, "sqlite", keys=50, value_size=100, concurrency=4)
    finally:
        await store.close()
    assert (timing.create.count, timing.update.count, timing.concurrent_update.count) == (
        50,
        50,
        50,
    )
    assert timing.watch_delay.count == 150
    assert timing.list_all.count == 5
    assert 0 < timing.create.p50_ms <= timing.create.p99_ms <= timing.create.max_ms
