"""The one sync loop every agent component runs: upstream's BoundedFrequencyRunner on asyncio,
plus the full/partial rule kube-proxy and flannel share (DESIGN.md contract 3).

What belongs here: `TokenBucket` (pure arithmetic, tested without a clock) and `SyncRunner`,
which calls a component's `sync(full)` when asked. The proxy, flannel and any component that
programs the kernel from watched objects (the kubelet, NetworkPolicy) build
their loop from it; none of them sleeps, retries or decides "full or partial" by itself.

The contract (kube-proxy.md §5.2 and §5.3):
- Watch handlers record a change and call `request()`; nothing else. Requests coalesce: any
  number of them before a sync starts give one sync.
- `sync(full=True)` comes first, again after any failure (the failed attempt already drained
  the component's change trackers, so only a full sync knows the truth) and whenever
  `full_interval` has passed since the last successful full sync — then even with no request.
  Every other sync is `full=False`: a partial sync, an optimisation that must reach the state a
  full one would.
- Syncs start at most one per `min_interval` (start to start), with bursts of up to `burst`: a
  token bucket refilled with one token per `min_interval`. Only one sync is ever in flight.
- A sync that raises is logged through `podnet.retry.ThrottledLog` (the first failure of a
  streak at once with its traceback, repeats at most once per 30 s with a count, recovery
  once) and retried after a back-off (`podnet.retry.Backoff`, the project's one): `retry.initial`,
  doubled per consecutive failure up to `retry.cap`, each delay stretched by a random jitter
  so nodes that fail together do not retry in step. A request during the back-off is served
  at once (within the rate limit), as upstream's runner does: new work is not held back by an
  old failure.
- Nothing is programmed before the component's first full list: `loop(stop, after=listed)`
  starts syncing only once `listed` is set (a component may also just call `loop` later).
  `loop` returns when `stop` is set, after the sync in flight (if any) has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from podnet.retry import Backoff, Retry, ThrottledLog

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


class SyncRunner:
    """Calls `sync(full)` when asked, rate-limited, periodically full, retried with back-off."""

    def __init__(
        self,
        name: str,
        sync: Callable[[bool], Awaitable[None]],
        *,
        min_interval: float,
        full_interval: float,
        retry: Backoff,
        burst: int = 2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.sync = sync
        self.full_interval = full_interval
        self.retry = Retry(retry, rand)  # counts the failures in a row
        self.bucket = TokenBucket.full(min_interval, burst, time.monotonic())
        self.need_full = True  # until a full sync succeeds
        self.in_progress = False
        self.completed = 0  # successful syncs
        self.failures = 0  # failed syncs, in all
        self.last_error: str | None = None  # of the last sync; None after a success
        self._errors = ThrottledLog(log)
        self._wake = asyncio.Event()
        self._retry_at: float | None = None
        self._last_full: float | None = None  # when the last successful full sync started

    def request(self, full: bool = False) -> None:
        """Ask for a sync soon (non-blocking; coalesces with pending requests); `full`: the
        programmed state was lost, so the next sync must be a full one."""
        if full:
            self.need_full = True
        self._wake.set()

    def _due(self) -> float:
        """When the next sync runs if nothing asks for one."""
        if self._retry_at is not None:  # after a failure: the back-off decides
            return self._retry_at
        if self._last_full is None:
            return time.monotonic()
        return self._last_full + self.full_interval

    async def loop(self, stop: asyncio.Event, *, after: asyncio.Event | None = None) -> None:
        if after is not None:
            await _any_set((after, stop))
        while not stop.is_set():
            now = time.monotonic()
            due = self._due()
            if not self._wake.is_set() and now < due:
                await _any_set((stop, self._wake), due - now)
                if stop.is_set():
                    return
            # Wait for a token, and look again after the wait: asyncio fires a timer up to its
            # clock resolution early, and a sync must never take a token that is not there yet.
            while (delay := self.bucket.delay(time.monotonic())) > 0:
                await _any_set((stop,), delay)
                if stop.is_set():
                    return
            await self._run_once()

    async def _run_once(self) -> None:
        started = time.monotonic()
        self.bucket.take(started)
        self._wake.clear()
        self._retry_at = None
        full = self.need_full or (
            self._last_full is None or started - self._last_full >= self.full_interval
        )
        self.need_full = full  # a partial sync that fails makes the next one full
        self.in_progress = True
        try:
            await self.sync(full)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self.need_full = True
            self.last_error = str(exc)
            wait = self.retry.next()
            self._retry_at = time.monotonic() + wait
            self._errors.failed(
                "sync", "%s: %s sync failed: %s; retrying in %.1fs",
                self.name, "full" if full else "partial", exc, wait,
                level=logging.ERROR, exc_info=exc if self.retry.failures == 1 else None,
            )  # fmt: skip
        else:
            self.completed += 1
            if self.retry.failures:
                self._errors.recovered("sync", "%s: synced again", self.name)
            self.retry.reset()
            self.last_error = None
            self.need_full = False
            if full:
                self._last_full = started
        finally:
            self.in_progress = False


async def _any_set(events: tuple[asyncio.Event, ...], seconds: float | None = None) -> None:
    """Return when any of `events` is set, or after `seconds` (None: no limit)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
