"""BoundedFrequencyRunner semantics: token bucket, coalescing, periodic runs, retry."""

from __future__ import annotations

import asyncio

import pytest

from podnet.agent.proxy.runner import BoundedFrequencyRunner, TokenBucket


def test_token_bucket_allows_burst_then_one_per_interval() -> None:
    bucket = TokenBucket.full(interval=1.0, burst=2, now=0.0)
    assert bucket.delay(0.0) == 0
    bucket.take(0.0)
    assert bucket.delay(0.0) == 0
    bucket.take(0.0)
    assert bucket.delay(0.0) == pytest.approx(1.0)
    assert bucket.delay(0.4) == pytest.approx(0.6)
    assert bucket.delay(1.0) == 0
    assert bucket.delay(10.0) == 0 and bucket.tokens == 2  # never more than the burst


@pytest.mark.asyncio
async def test_requests_coalesce_and_are_rate_limited() -> None:
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def fn() -> None:
        runs.append(loop.time())
        await asyncio.sleep(0.01)

    runner = BoundedFrequencyRunner("t", fn, min_interval=0.2, max_interval=60, burst=1)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.loop(stop))
    for _ in range(10):
        runner.run()
    await asyncio.sleep(0.05)
    assert len(runs) == 1  # ten requests, one run
    for _ in range(5):
        runner.run()
    await asyncio.sleep(0.3)
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.19
    stop.set()
    await task


@pytest.mark.asyncio
async def test_runs_periodically_and_retries_after_failure() -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("restore failed")

    runner = BoundedFrequencyRunner("t", fn, min_interval=0, max_interval=0.5, retry_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.loop(stop))
    runner.run()
    await asyncio.sleep(0.15)
    assert calls == 2 and runner.failures == 1  # the retry came well before max_interval
    await asyncio.sleep(0.5)
    assert calls == 3  # the periodic run
    stop.set()
    await task
