"""`HttpApi.list` in pages (`limit` / `continue`) against a real `podnet server` process: what
the cluster DNS's reflectors use to list 10k objects one page at a time."""

from __future__ import annotations

import pytest

from podnet.api.client import HttpApi
from podnet.testing.server import ServerProcess


@pytest.mark.asyncio
async def test_pages_follow_the_continue_token_to_the_end(podnet_server: ServerProcess) -> None:
    server = podnet_server
    async with HttpApi(server.url, server.token, server.ca_path.read_bytes()) as api:
        for i in range(5):
            await api.create("configmaps", {"metadata": {"name": f"page-{i}"}}, "default")
        names: list[str] = []
        token: str | None = None
        pages = 0
        while True:
            listed = await api.list("configmaps", "default", limit=2, continue_token=token)
            pages += 1
            assert len(listed["items"]) <= 2
            names += [o["metadata"]["name"] for o in listed["items"]]
            token = listed["metadata"].get("continue")
            if not token:
                break
        assert sorted(n for n in names if n.startswith("page-")) == [f"page-{i}" for i in range(5)]
        assert pages == -(-len(names) // 2)  # every page full but the last
