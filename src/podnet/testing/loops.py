"""Event loops for tests that check what a coroutine asks of its loop.

What belongs here: `NoResolverLoop`, the agent's loop (uvloop) with its resolver made to fail,
for the dials that must never need it (`podnet.dial`: uvloop resolves on its thread pool).
"""

from __future__ import annotations

from typing import Any

import uvloop


class NoResolverLoop(uvloop.Loop):
    """uvloop's loop whose `getaddrinfo` fails the test with what was asked."""

    async def getaddrinfo(self, *args: object, **kwargs: object) -> Any:
        raise AssertionError(f"a dial resolved {args}: uvloop sends that to its thread pool")
