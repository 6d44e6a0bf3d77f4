"""An unfiltered LIST is read from the store and sent a page at a time (etcd: one range read
per page, all at one revision), and is the same list the decoded path gives."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from podnet.api.resources import BY_PLURAL
from podnet.api.selectors import FieldSelector
from podnet.apiserver import registry as registry_module
from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.registry import ListOptions, Registry
from podnet.config import ClusterConfig
from podnet.store import open_store

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]

PODS = BY_PLURAL["pods"]
TOKEN = "test-token"  # conftest's API_TOKEN, which `client` accepts
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x"}]}}


@pytest_asyncio.fixture
async def registry(etcd_url: str, tmp_path: Path) -> AsyncIterator[Registry]:
    """conftest's `registry` (and so its `client`), on etcd, with seven pods in default."""
    store = open_store(f"{etcd_url}/list-{secrets.token_hex(4)}", tmp_path)
    reg = Registry(store, ClusterConfig(), ca_pem=b"x", bookmark_interval=0.2)
    try:
        await bootstrap(reg, "127.0.0.1", 6443)
        for index in range(7):
            await reg.create(PODS, "default", pod(f"p{index}"))
        yield reg
    finally:
        await reg.close()
        await store.close()


@pytest.mark.asyncio
async def test_pieces_are_pages_of_the_list_at_one_revision(registry: Registry) -> None:
    decoded = await registry.list(PODS, "default", ListOptions())
    pieces = registry.list_json_pieces(PODS, "default", page_size=3)
    got: list[bytes] = []
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            if not got:  # a write after the first page is not in the list
                await registry.create(PODS, "default", pod("late"))
            got.append(piece)
    assert len(got) == 4  # 3 + 3 + 1 pods, then the closing bracket
    listed = json.loads(b"".join(got))
    assert listed["items"] == decoded["items"]  # not "late"
    # etcd's revision is the whole cluster's: other writers may move it meanwhile
    assert int(listed["metadata"]["resourceVersion"]) >= int(decoded["metadata"]["resourceVersion"])
    assert listed["kind"] == decoded["kind"] == "PodList"


@pytest.mark.asyncio
async def test_empty_list_is_valid_json(registry: Registry) -> None:
    listed = json.loads(await registry.list_json(PODS, "kube-public"))
    assert listed["items"] == [] and listed["kind"] == "PodList"
    assert int(listed["metadata"]["resourceVersion"]) > 0


@pytest.mark.asyncio
async def test_http_list_is_streamed_in_chunks(
    registry: Registry,
    client: TestClient[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
    http10_get: Any,
) -> None:
    monkeypatch.setattr(registry_module, "LIST_PAGE_SIZE", 2)
    for path in ("/api/v1/namespaces/default/pods", "/api/v1/pods"):
        resp = await client.get(path, headers=AUTH)
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        body = await resp.json()
        namespace = "default" if "namespaces" in path else None
        decoded = await registry.list(PODS, namespace, ListOptions())
        assert body["items"] == decoded["items"] and len(body["items"]) == 7
        # etcd's revision is the whole cluster's: other writers may move it meanwhile
        revision = int(body["metadata"]["resourceVersion"])
        assert revision <= int(decoded["metadata"]["resourceVersion"])
        assert body["kind"] == "PodList"
    # HTTP/1.0 has no chunks: the same pages, the body ending where the connection closes
    answer = await http10_get(client.port, "/api/v1/namespaces/default/pods", TOKEN)
    assert answer.status_line == "HTTP/1.0 200 OK", answer
    assert "transfer-encoding" not in answer.headers, answer.headers
    listed = json.loads(answer.body)
    assert [p["metadata"]["name"] for p in listed["items"]] == [f"p{i}" for i in range(7)]


@pytest.mark.asyncio
async def test_a_selected_list_is_read_a_page_at_a_time(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = await registry.list(PODS, "default", ListOptions())
    monkeypatch.setattr(registry_module, "LIST_PAGE_SIZE", 2)
    wanted = {"p1", "p4", "p6"}  # on three different pages of two
    refused = ",".join(f"metadata.name!={name}" for name in ("p0", "p2", "p3", "p5"))
    selector = FieldSelector.parse(refused, PODS)
    selected = await registry.list(PODS, "default", ListOptions(field_selector=selector))
    assert [p["metadata"]["name"] for p in selected["items"]] == sorted(wanted)
    assert selected["items"] == [p for p in everything["items"] if p["metadata"]["name"] in wanted]
    paged = await registry.list(PODS, "default", ListOptions(limit=2))
    assert paged["items"] == everything["items"][:2]
    assert paged["metadata"]["remainingItemCount"] == 5
