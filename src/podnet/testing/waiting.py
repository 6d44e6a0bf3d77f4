"""Waiting in tests without sleeping blindly: poll a condition until it holds or time runs out.

What belongs here: `eventually`, the one poll-with-deadline loop for async tests (the check may
be a plain function or a coroutine function), and `poll`, its synchronous twin for tests that
drive a lab from plain functions and want the value found. Failures name what was awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the polling, not for one call
    what: str = "the condition",
    interval: float = 0.01,
) -> None:
    """Return once `check()` is true; AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def poll(
    what: str,
    get: Callable[[], T | None],
    seconds: float = 60.0,
    *,
    interval: float = 0.1,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """`get()` until it returns something other than None, and return that; AssertionError
    after `seconds`. Exceptions of the `tolerate` types (say, the API restarting) count as
    None, and the last one is named in the failure."""
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while True:
        try:
            value = get()
        except tolerate as exc:
            value, last = None, exc
        else:
            last = None
        if value is not None:
            return value
        why = f" (last error: {last})" if last is not None else ""
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}{why}"
        time.sleep(interval)
