"""How podnet waits before trying a failed call again, and how it reports repeated failures.

What belongs here: `Backoff` (exponential, capped, jittered delays: client-go's `wait.Backoff`;
pure arithmetic), `Retry` (one call's failure count over a `Backoff`), `ThrottledLog` (the first
failure is logged at once, repeats at most once per interval with a count, recovery once), and
the waits that end early: `sleep_or_stop` (on a stop event) and `first_of` (on any of several).
Every retry loop in the project uses these, so none can spin while the API server is down, and
agents that failed together do not come back in lock-step.

Invariants:
- The n-th failure in a row waits `min(cap, initial * factor**(n-1))`, stretched by at most
  `jitter` of itself; never less, never zero.
- `ThrottledLog` emits at most one line per key per `interval` (plus one on recovery), however
  often a failure repeats; no failure goes uncounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: `initial * factor**(n-1)` for the n-th consecutive failure, at most `cap`,
    stretched by up to `jitter` (a fraction) at random, so callers that failed together do not
    retry in step."""

    initial: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError(f"back-off: need 0 < initial <= cap, got {self.initial}, {self.cap}")
        if self.factor < 1 or self.jitter < 0:
            raise ValueError(f"back-off: need factor >= 1 and jitter >= 0: {self}")

    def delay(self, failures: int, rand: float) -> float:
        """The wait after `failures` (>= 1) failures in a row; `rand` is uniform in [0, 1)."""
        steps = min(max(failures, 1) - 1, 64)  # 2**64 outgrows any cap; no float overflow
        return min(self.cap, self.initial * self.factor**steps) * (1 + self.jitter * rand)


@dataclass(slots=True)
class Retry:
    """The consecutive failures of one call, and how long to wait before trying it again."""

    backoff: Backoff
    rand: Callable[[], float] = field(default=random.random, repr=False)
    failures: int = 0

    def next(self) -> float:
        """Count one more failure; the delay before the next try."""
        self.failures += 1
        return self.backoff.delay(self.failures, self.rand())

    def reset(self) -> None:
        """The call succeeded: the next failure waits `initial` again."""
        self.failures = 0


@dataclass(slots=True)
class _Repeats:
    first: float  # when the current run of failures began
    logged: float  # when a line was last emitted
    held: int = 0  # failures not logged since then
    total: int = 0


class ThrottledLog:
    """Log a failure that repeats without flooding: one line at once, then at most one per
    `interval` per key saying how many were held back, and one line when it works again."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._repeats: dict[str, _Repeats] = {}

    def failed(
        self,
        key: str,
        msg: str,
        *args: object,
        level: int = logging.WARNING,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Record one failure of `key`; log `msg % args` (with `exc_info`'s traceback) unless
        one was logged recently. True when a line was written."""
        now = self.clock()
        seen = self._repeats.get(key)
        if seen is None:
            self._repeats[key] = _Repeats(first=now, logged=now, total=1)
            self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)
            return True
        seen.total += 1
        if now - seen.logged < self.interval:
            seen.held += 1
            return False
        held, seen.held, seen.logged = seen.held, 0, now
        if held:
            msg, args = msg + " (and %d more like it since the last report)", (*args, held)
        self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)
        return True

    def recovered(self, key: str, msg: str, *args: object) -> None:
        """`key` works again: if it had failed, say so once (with the count and duration)."""
        seen = self._repeats.pop(key, None)
        if seen is not None:
            self.logger.info(msg + " (after %d failure(s) over %.1fs)", *args, seen.total,
                             self.clock() - seen.first, stacklevel=2)  # fmt: skip

    def forget(self, key: str) -> None:
        """`key` is gone (e.g. its object was deleted): drop its count without a line."""
        self._repeats.pop(key, None)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, but return as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0.0)):
            await stop.wait()


async def first_of(*events: asyncio.Event) -> None:
    """Return once any of `events` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
