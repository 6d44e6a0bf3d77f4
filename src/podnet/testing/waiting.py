"""Waiting in tests without sleeping blindly: poll a condition until it holds or time runs out.

What belongs here: `eventually`, the one poll-with-deadline loop for async tests. The check may
be a plain function or a coroutine function; the failure names what was awaited.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


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
