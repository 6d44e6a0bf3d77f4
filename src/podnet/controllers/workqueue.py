"""A work queue of object keys with per-key dedup, delayed adds and exponential back-off.

What belongs here: `WorkQueue`, the asyncio equivalent of client-go's rate-limited work queue.

Invariants (the same as client-go's):
- A key is queued at most once, however many times it is added before a worker takes it.
- A key is processed by at most one worker at a time: adding a key that is being processed
  marks it dirty, and `done()` re-queues it, so the latest state is always reconciled again.
- `retry(key)` re-adds after `base * 2**failures` (capped, jittered: `podnet.retry.Backoff`);
  `forget(key)` resets the count after a success.
- A key queued wakes one idle worker, not all of them (asyncio.Queue's getters): with one
  shared Event each key woke every idle worker (16 in the Endpoints controllers), and all but
  one went back to sleep: ~50 us of CPU per key (benchmarks/endpoints.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable

from podnet.retry import Backoff


class WorkQueue:
    def __init__(
        self,
        base_delay: float = 0.005,
        max_delay: float = 30.0,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.backoff = Backoff(base_delay, max_delay)
        self.rand = rand
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()  # idle workers, first come first

    def add(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def add_after(self, key: str, delay: float) -> None:
        """Add `key` after `delay` seconds; an earlier pending timer for the key wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        when = loop.time() + delay
        if existing is not None:
            if existing.when() <= when:
                return
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: str) -> float:
        """Re-add with exponential back-off; returns the delay used."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        delay = self.backoff.delay(n, self.rand())
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> str:
        while not self._queue:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if self._queue and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the key goes to another worker
                raise
        key = self._queue.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
