"""The token cleaner against `InMemoryApi`, on a clock the test moves: expired bootstrap tokens
go, tokens without an expiration and other Secrets stay, a token is deleted when it expires."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from podnet.apiserver.auth import bootstrap as bt
from podnet.config import ClusterConfig
from podnet.controllers.manager import ControllerManager
from podnet.testing.api import InMemoryApi
from podnet.testing.waiting import eventually

pytestmark = pytest.mark.timeout(30)
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.asyncio
async def test_expired_tokens_are_deleted_when_they_expire() -> None:
    clock = Clock(NOW)
    api = InMemoryApi(clock=clock)
    expired = bt.token_secret("aaaaaa.0123456789abcdef", NOW - timedelta(hours=1))
    forever = bt.token_secret("bbbbbb.0123456789abcdef", None)
    soon = bt.token_secret("cccccc.0123456789abcdef", NOW + timedelta(seconds=30))
    unparseable = bt.token_secret("dddddd.0123456789abcdef", None)
    unparseable["data"]["expiration"] = "dG9tb3Jyb3c="  # "tomorrow": expired, as upstream
    other = {**expired, "type": "Opaque", "metadata": {"name": "not-a-token"}}
    elsewhere = bt.token_secret("eeeeee.0123456789abcdef", NOW - timedelta(hours=1))
    elsewhere["metadata"]["namespace"] = "default"
    for secret in (expired, forever, soon, unparseable, other):
        await api.create("secrets", secret, bt.NAMESPACE)
    await api.create("secrets", elsewhere, "default")  # only kube-system's are tokens

    manager = ControllerManager(api, ClusterConfig(), only=["tokencleaner"], clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop))
    try:

        def names() -> set[str]:
            return {s["metadata"]["name"] for s in api.peek_list("secrets", bt.NAMESPACE)}

        await eventually(
            lambda: names() == {"bootstrap-token-bbbbbb", "bootstrap-token-cccccc", "not-a-token"},
            what="the expired and unparseable tokens are deleted",
        )
        clock.now += timedelta(seconds=31)  # `soon` is looked at again when it expires
        manager.controllers["tokencleaner"].queue.add(f"{bt.NAMESPACE}/bootstrap-token-cccccc")
        await eventually(
            lambda: names() == {"bootstrap-token-bbbbbb", "not-a-token"},
            what="the token that expired is deleted",
        )
        assert api.peek("secrets", "bootstrap-token-eeeeee", "default") is not None
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
