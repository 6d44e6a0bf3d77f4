"""Paged LISTs (`Registry.list` with `limit` / `continue`) on every store driver: a continued
list is a fresh store read from the token's key at its revision (upstream's), so the server
keeps nothing between pages, another registry on the same store continues it, selectors
apply across pages, and a compacted revision answers 410 Expired with upstream's message."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.api.selectors import FieldSelector, LabelSelector
from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.registry import ListOptions, Registry
from podnet.config import ClusterConfig
from podnet.store import Store

PODS = BY_PLURAL["pods"]


@pytest.fixture
def store(each_store: Store) -> Store:
    """The suite's `each_store`: every test here runs on every driver."""
    return each_store


@pytest_asyncio.fixture
async def registry(store: Store) -> AsyncIterator[Registry]:
    reg = Registry(store, ClusterConfig(), ca_pem=b"-----BEGIN CERTIFICATE-----\n")
    await bootstrap(reg, "127.0.0.1", 6443)
    yield reg
    await reg.close()


def pod(name: str, app: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def names(page: dict[str, Any]) -> list[str]:
    return [p["metadata"]["name"] for p in page["items"]]


async def all_pages(registry: Registry, namespace: str | None, opts: ListOptions) -> list[Any]:
    pages = [await registry.list(PODS, namespace, opts)]
    while token := pages[-1]["metadata"].get("continue"):
        pages.append(
            await registry.list(
                PODS,
                namespace,
                ListOptions(opts.label_selector, opts.field_selector, opts.limit, token),
            )
        )
    return pages


@pytest.mark.asyncio
async def test_pages_are_the_list_at_its_revision_and_any_registry_continues(
    registry: Registry, store: Store
) -> None:
    for i in range(7):
        await registry.create(PODS, "default", pod(f"p{i}", "a"))
    first = await registry.list(PODS, "default", ListOptions(limit=3))
    assert names(first) == ["p0", "p1", "p2"]
    assert first["metadata"]["remainingItemCount"] == 4
    token = first["metadata"]["continue"]
    # upstream's token: unpadded URL-safe base64 JSON, the key after the last one returned
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert raw == {"v": "meta.k8s.io/v1", "rv": int(first["metadata"]["resourceVersion"]),
                   "start": "p2\u0000"}  # fmt: skip
    await registry.create(PODS, "default", pod("p25", "a"))  # after the first page: unseen
    await registry.delete(PODS, "default", "p4")  # deleted after the first page: still seen
    other = Registry(store, ClusterConfig())  # another server (or this one restarted)
    second = await other.list(PODS, "default", ListOptions(limit=3, continue_token=token))
    assert names(second) == ["p3", "p4", "p5"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert second["metadata"]["remainingItemCount"] == 1
    last = await registry.list(
        PODS, "default", ListOptions(limit=3, continue_token=second["metadata"]["continue"])
    )
    assert names(last) == ["p6"]
    assert "continue" not in last["metadata"] and "remainingItemCount" not in last["metadata"]
    # a limit equal to what is left ends the list without a token
    exact = await registry.list(PODS, "default", ListOptions(limit=7))
    assert "continue" not in exact["metadata"]


@pytest.mark.asyncio
async def test_selectors_apply_across_pages(registry: Registry) -> None:
    for i in range(9):
        await registry.create(PODS, "default", pod(f"p{i}", "a" if i % 3 == 0 else "b"))
    await registry.create(PODS, "kube-system", pod("k0", "a", "kube-system"))
    selector = LabelSelector.parse("app=a")
    pages = await all_pages(registry, None, ListOptions(label_selector=selector, limit=2))
    assert [names(p) for p in pages] == [["p0", "p3"], ["p6", "k0"]]
    # upstream gives no remainingItemCount under a selector (unknown without reading on)
    assert all("remainingItemCount" not in p["metadata"] for p in pages)
    assert len({p["metadata"]["resourceVersion"] for p in pages}) == 1
    by_field = FieldSelector.parse("metadata.namespace=default", PODS)
    pages = await all_pages(registry, None, ListOptions(field_selector=by_field, limit=4))
    assert [names(p) for p in pages] == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"],
                                         ["p8"]]  # fmt: skip
    # keys remain after the last match: a token, then an empty last page (as upstream's)
    pages = await all_pages(
        registry, "default", ListOptions(label_selector=LabelSelector.parse("app=a"), limit=3)
    )
    assert [names(p) for p in pages] == [["p0", "p3", "p6"], []]


@pytest.mark.asyncio
async def test_a_compacted_or_edited_token(registry: Registry, store: Store) -> None:
    for i in range(5):
        await registry.create(PODS, "default", pod(f"p{i}", "a"))
    first = await registry.list(PODS, "default", ListOptions(limit=2))
    token = first["metadata"]["continue"]
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for edit in ({"start": "../kube-system/x"}, {"start": "/x"}, {"start": ""}, {"rv": 0},
                 {"rv": "7"}, {"v": "v2"}):  # fmt: skip
        edited = base64.urlsafe_b64encode(json.dumps(raw | edit).encode()).decode()
        with pytest.raises(ApiError) as bad:
            await registry.list(PODS, "default", ListOptions(limit=2, continue_token=edited))
        assert bad.value.code == 400 and "malformed" in bad.value.message, edit
    # a revision the store has not reached: a token of another cluster's, or edited
    ahead = await store.current_revision() + 1_000_000
    edited = base64.urlsafe_b64encode(json.dumps(raw | {"rv": ahead}).encode()).decode()
    with pytest.raises(ApiError) as bad:
        await registry.list(PODS, "default", ListOptions(limit=2, continue_token=edited))
    assert bad.value.code == 400 and bad.value.reason == "BadRequest"
    assert bad.value.message.startswith(
        f"invalid value for continue: the token's resourceVersion {ahead} is newer than the "
        "storage's current "
    )
    # an older podnet's snapshot token: gone with that server, so the client re-lists
    old = base64.urlsafe_b64encode(b'{"id": "x", "rv": 1, "start": 3}').decode()
    with pytest.raises(ApiError) as expired:
        await registry.list(PODS, "default", ListOptions(limit=2, continue_token=old))
    assert expired.value.code == 410
    changed = await registry.get(PODS, "default", "p3")
    changed["metadata"]["labels"]["app"] = "changed"  # its listed version is compacted away
    await registry.update(PODS, "default", "p3", changed)
    await store.compact(await store.current_revision())
    with pytest.raises(ApiError) as expired:
        await registry.list(PODS, "default", ListOptions(limit=2, continue_token=token))
    assert expired.value.code == 410 and expired.value.reason == "Expired"
    assert expired.value.message.startswith(
        "The provided continue parameter is too old to display a consistent list result."
    )
