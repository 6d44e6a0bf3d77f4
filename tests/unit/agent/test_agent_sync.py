"""The agents' shared sync runner: token bucket, back-off, coalescing, full/partial, retries."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from podnet.agent.sync import SyncRunner, TokenBucket
from podnet.retry import Backoff


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


async def until(what: Callable[[], bool], message: str) -> None:
    """Poll (the runner has no event for every counter) with a deadline."""
    try:
        async with asyncio.timeout(5):
            while not what():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within 5 s: {message}") from None


class Harness:
    """A runner around a sync function that records `full` and fails when told to."""

    def __init__(self, **kw: float) -> None:
        self.calls: list[bool] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None  # when set, syncs wait for it
        settings = {"min_interval": 0.0, "full_interval": 60.0, "initial": 0.05, "cap": 0.05}
        settings.update(kw)
        self.runner = SyncRunner(
            "t",
            self.sync,
            min_interval=settings["min_interval"],
            full_interval=settings["full_interval"],
            retry=Backoff(settings["initial"], settings["cap"], jitter=0.0),
        )
        self.stop = asyncio.Event()

    async def sync(self, full: bool) -> None:
        self.calls.append(full)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("restore failed")


@pytest_asyncio.fixture
async def started() -> AsyncIterator[Harness]:
    h = Harness()
    task = asyncio.create_task(h.runner.loop(h.stop))
    try:
        yield h
    finally:
        h.stop.set()
        await task


@pytest.mark.asyncio
async def test_full_first_partial_after_and_full_again_after_a_failure(started: Harness) -> None:
    h, r = started, started.runner
    await until(lambda: r.completed == 1, "the first sync runs unasked")
    r.request()
    await until(lambda: r.completed == 2, "a requested sync")
    h.fail_next = 1
    r.request()
    await until(lambda: r.failures == 1 and r.completed == 3, "a retry after the failure")
    assert r.last_error is None and not r.need_full
    assert h.calls == [True, False, False, True]  # the failed partial is retried as a full


@pytest.mark.asyncio
async def test_requests_coalesce_and_are_rate_limited() -> None:
    h = Harness(min_interval=0.2)
    # Burst 1 from here, full now: the first sync takes the only token, and no delay before it
    # (a loaded machine) can bank a second one (the runner's own bucket would refill to 2).
    h.runner.bucket = TokenBucket.full(interval=0.2, burst=1, now=time.monotonic())
    starts: list[float] = []  # when the runner took each sync's token, on its own clock
    sync = h.sync

    async def timed(full: bool) -> None:
        starts.append(h.runner.bucket.last)  # `take(started)` has just set it to `started`
        await sync(full)

    h.runner.sync = timed
    h.gate = asyncio.Event()
    task = asyncio.create_task(h.runner.loop(h.stop))
    await until(lambda: h.runner.in_progress, "the first sync starts")
    for _ in range(10):
        h.runner.request()  # while a sync is in flight: one more sync, not ten
    h.gate.set()
    await until(lambda: h.runner.completed == 2, "the coalesced sync")
    assert h.calls == [True, False]
    # It waited for a token: at most one start per min_interval, start to start, however late
    # the machine ran either sync (delays only stretch this gap). The factor is the float
    # rounding of the refill arithmetic, not time.
    assert starts[1] - starts[0] >= 0.2 * (1 - 1e-9), starts
    h.stop.set()
    await task


@pytest.mark.asyncio
async def test_failures_back_off_and_are_reported() -> None:
    h = Harness(initial=0.02, cap=0.08)
    h.fail_next = 4
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    sync = h.sync

    async def timed(full: bool) -> None:
        starts.append(loop.time())
        await sync(full)

    h.runner.sync = timed
    task = asyncio.create_task(h.runner.loop(h.stop))
    await until(lambda: h.runner.failures >= 2, "two failures")
    assert h.runner.last_error == "restore failed" and h.runner.need_full
    await until(lambda: h.runner.completed == 1, "success after four failures")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(round(g, 2) >= want for g, want in zip(gaps, (0.02, 0.04, 0.08, 0.08), strict=True))
    assert h.calls == [True] * 5 and h.runner.last_error is None
    h.stop.set()
    await task


@pytest.mark.asyncio
async def test_a_failure_repeated_on_every_request_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="podnet.agent.sync")
    h = Harness(initial=5.0, cap=5.0)  # retries far away: only requests run syncs
    h.fail_next = 20
    task = asyncio.create_task(h.runner.loop(h.stop))
    for n in range(1, 21):
        h.runner.request()  # like node events arriving while the kernel refuses
        await until(lambda n=n: h.runner.failures >= n, f"failure {n}")
    h.runner.request()
    await until(lambda: h.runner.completed == 1, "the sync after the failures")
    h.stop.set()
    await task
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "podnet.agent.sync"]
    assert len(lines) == 2, lines
    assert lines[0][0] == "ERROR" and "t: full sync failed: restore failed" in lines[0][1]
    assert caplog.records[0].exc_info is not None  # the first one with its traceback
    assert lines[1][0] == "INFO" and lines[1][1].startswith("t: synced again (after 20 failure")


@pytest.mark.asyncio
async def test_a_full_sync_runs_every_full_interval_unasked() -> None:
    h = Harness(full_interval=0.1)
    task = asyncio.create_task(h.runner.loop(h.stop))
    await until(lambda: h.runner.completed == 3, "two periodic syncs")
    assert h.calls == [True, True, True]
    h.stop.set()
    await task


@pytest.mark.asyncio
async def test_nothing_runs_before_the_first_list() -> None:
    h = Harness()
    listed = asyncio.Event()
    task = asyncio.create_task(h.runner.loop(h.stop, after=listed))
    h.runner.request()
    await asyncio.sleep(0.05)
    assert h.calls == []
    listed.set()
    await until(lambda: h.calls == [True], "the first sync once listed")
    h.stop.set()
    await task
