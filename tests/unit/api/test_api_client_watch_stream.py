"""`HttpApi.watch` reads the server's stream of JSON lines: many events arrive in one chunk
and one event may span chunks; each is yielded once, whole, in order."""

from __future__ import annotations

import asyncio

import pytest

from podnet.api.client import HttpApi
from podnet.testing.server import ServerProcess


@pytest.mark.asyncio
async def test_a_backlog_of_events_comes_out_whole_and_in_order(
    podnet_server: ServerProcess,
) -> None:
    server = podnet_server
    async with HttpApi(server.url, server.token, server.ca_path.read_bytes()) as api:
        start = (await api.list("configmaps", "default"))["metadata"]["resourceVersion"]
        big = "x" * 20_000  # larger than one read: an event split over chunks
        names = [f"stream-{i:03d}" for i in range(200)]
        for i, name in enumerate(names):
            data = {"v": big if i % 20 == 0 else str(i)}
            await api.create("configmaps", {"metadata": {"name": name}, "data": data}, "default")
        seen: list[str] = []
        # opened only now: the 200 events are a backlog the server sends in large writes
        async with asyncio.timeout(30):
            async for event in api.watch("configmaps", "default", resource_version=start):
                if event["type"] == "BOOKMARK":
                    continue
                obj = event["object"]
                if obj["metadata"]["name"].startswith("stream-"):
                    seen.append(obj["metadata"]["name"])
                    i = len(seen) - 1
                    assert obj["data"]["v"] == (big if i % 20 == 0 else str(i))
                if len(seen) == len(names):
                    break
        assert seen == names
