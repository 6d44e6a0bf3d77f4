"""A rate-limited sync loop: upstream's BoundedFrequencyRunner on asyncio.

What belongs here: `TokenBucket` (pure: the rate limit arithmetic, tested without a clock)
and `BoundedFrequencyRunner`, which runs one async function when asked.

Semantics (kube-proxy.md §5.2): requests coalesce (many `run()` calls before the function
starts give one run); runs are limited by a token bucket refilling one token per
`min_interval` with at most `burst` tokens; the function runs at least every `max_interval`;
when it raises, it runs again after `retry_interval` (sooner if asked). Only one run is ever
in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TokenBucket:
    interval: float  # seconds per token
    burst: int
    tokens: float
    last: float

    @classmethod
    def full(cls, interval: float, burst: int, now: float) -> TokenBucket:
        return cls(interval, burst, float(burst), now)

    def _refill(self, now: float) -> None:
        if self.interval <= 0:
            self.tokens = float(self.burst)
        elif now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) / self.interval)
        self.last = max(self.last, now)

    def delay(self, now: float) -> float:
        """Seconds until a token is available (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.interval

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


class BoundedFrequencyRunner:
    def __init__(
        self,
        name: str,
        fn: Callable[[], Awaitable[None]],
        min_interval: float,
        max_interval: float,
        burst: int = 2,
        retry_interval: float | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.max_interval = max_interval
        self.retry_interval = max_interval if retry_interval is None else retry_interval
        self.bucket = TokenBucket.full(min_interval, burst, time.monotonic())
        self._wake = asyncio.Event()
        self._retry_at: float | None = None
        self._last_run = time.monotonic()
        self.runs = 0
        self.failures = 0

    def run(self) -> None:
        """Ask for a run soon (non-blocking; coalesces with pending requests)."""
        self._wake.set()

    async def _sleep(self, seconds: float, stop: asyncio.Event, wake: bool) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if wake:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(
                waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    async def loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            due = self._last_run + self.max_interval
            if self._retry_at is not None:
                due = min(due, self._retry_at)
            if not self._wake.is_set() and now < due:
                await self._sleep(due - now, stop, wake=True)
                if stop.is_set():
                    return
            delay = self.bucket.delay(time.monotonic())
            if delay > 0:
                await self._sleep(delay, stop, wake=False)
                if stop.is_set():
                    return
            self.bucket.take(time.monotonic())
            self._wake.clear()
            self._retry_at = None
            self._last_run = time.monotonic()
            self.runs += 1
            try:
                await self.fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                self._retry_at = time.monotonic() + self.retry_interval
                log.exception("%s: run failed; retrying in %.1fs", self.name, self.retry_interval)
