"""`podnet.retry`: back-off arithmetic, a call's failure count, and throttled failure logs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from podnet.retry import Backoff, Retry, ThrottledLog, first_of, sleep_or_stop


@pytest.mark.parametrize(
    ("failures", "rand", "expected"),
    [
        (1, 0.0, 0.2),  # the first failure waits `initial`
        (2, 0.0, 0.4),
        (3, 0.0, 0.8),
        (4, 0.0, 1.0),  # capped
        (50, 0.0, 1.0),
        (10_000, 0.0, 1.0),  # no overflow however long the outage
        (1, 0.5, 0.22),  # jitter stretches by up to 20 %
        (4, 0.999, 1.0 * 1.1998),
        (0, 0.0, 0.2),  # "no failure yet" is treated as the first
    ],
)
def test_backoff_delays(failures: int, rand: float, expected: float) -> None:
    assert Backoff(0.2, 1.0).delay(failures, rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0.0, "cap": 1.0}, "0 < initial <= cap"),
        ({"initial": 2.0, "cap": 1.0}, "0 < initial <= cap"),
        ({"initial": 1.0, "cap": 1.0, "factor": 0.5}, "factor >= 1"),
        ({"initial": 1.0, "cap": 1.0, "jitter": -0.1}, "jitter >= 0"),
    ],
)
def test_backoff_refuses_delays_that_could_spin(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_retry_counts_failures_and_resets() -> None:
    retry = Retry(Backoff(1.0, 8.0, jitter=0.5), rand=lambda: 1.0)
    assert [retry.next() for _ in range(5)] == [1.5, 3.0, 6.0, 12.0, 12.0]
    assert retry.failures == 5
    retry.reset()
    assert retry.next() == 1.5


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttled_log_writes_first_then_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.retry"), interval=30.0, clock=clock)
    caplog.set_level(logging.INFO, "test.retry")
    written = []
    for _ in range(800):  # a failure every 0.125 s for 100 s
        written.append(throttled.failed("api", "update failed: %s", "refused"))
        clock.now += 0.125
    throttled.failed("other", "another call failed")  # a different key is not held back
    throttled.recovered("api", "update works again")
    throttled.recovered("never-failed", "not logged")
    assert sum(written) == 4  # at 0, 30, 60 and 90 s
    assert [r.getMessage() for r in caplog.records] == [
        "update failed: refused",
        "update failed: refused (and 239 more like it since the last report)",
        "update failed: refused (and 239 more like it since the last report)",
        "update failed: refused (and 239 more like it since the last report)",
        "another call failed",
        "update works again (after 800 failure(s) over 100.0s)",
    ]
    assert [r.levelno for r in caplog.records[:5]] == [logging.WARNING] * 5
    assert caplog.records[-1].levelno == logging.INFO


def test_throttled_log_starts_over_after_recovery_or_forget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.retry"), clock=clock)
    caplog.set_level(logging.INFO, "test.retry")
    assert throttled.failed("k", "down")
    throttled.recovered("k", "up")
    assert throttled.failed("k", "down again")  # a new outage is reported at once
    throttled.forget("k")
    assert throttled.failed("k", "down once more")
    assert [r.getMessage() for r in caplog.records] == [
        "down",
        "up (after 1 failure(s) over 0.0s)",
        "down again",
        "down once more",
    ]


@pytest.mark.asyncio
async def test_sleep_or_stop_returns_when_stopped() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    await asyncio.wait_for(sleep_or_stop(stop, 600.0), 60)  # long before the 600 s
    await sleep_or_stop(stop, -1.0)  # a negative wait is no wait


@pytest.mark.asyncio
async def test_first_of_returns_on_any_event_and_leaves_no_waiter() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    waiting = asyncio.ensure_future(first_of(a, b))
    await asyncio.sleep(0)
    assert not waiting.done()
    b.set()
    await asyncio.wait_for(waiting, 60)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.sleep(0)  # the cancelled waits finish
    assert all(t.done() for t in others)
