"""The shared informer: list then watch, events to handlers, label and controller indexes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from podnet.api.resources import BY_PLURAL
from podnet.controllers.informer import Informer
from podnet.testing.api import InMemoryApi
from podnet.testing.waiting import eventually

pytestmark = pytest.mark.timeout(10)


def pod(name: str, labels: dict[str, str], owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "rs",
                "uid": owner,
                "controller": True,
            }
        ]
    return {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "x"}]}}


@pytest.mark.asyncio
async def test_informer_events_and_indexes(memory_api: InMemoryApi) -> None:
    await memory_api.create("namespaces", {"metadata": {"name": "ns"}})
    await memory_api.create("pods", pod("a", {"app": "web", "tier": "fe"}, owner="rs-1"), "ns")
    inf = Informer(memory_api, "pods")
    seen: list[tuple[str, str]] = []
    inf.add_handler(
        lambda kind, old, new: seen.append((kind, (new or old or {})["metadata"]["name"]))
    )
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 2)
        assert seen == [("ADDED", "a")]
        await memory_api.create("pods", pod("b", {"app": "web"}), "ns")
        await memory_api.patch("pods", "a", {"metadata": {"labels": {"tier": None}}}, "ns")
        await memory_api.delete("pods", "b", "ns")

        async def caught_up() -> bool:
            return len(seen) == 4

        await eventually(caught_up, what="4 events")
        assert seen == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        assert [p["metadata"]["name"] for p in inf.select("ns", {"app": "web"})] == ["a"]
        assert inf.select("ns", {"app": "web", "tier": "fe"}) == []  # label removed
        assert inf.select("other", {"app": "web"}) == []
        assert inf.select("ns", {}) == []  # an empty Service selector selects nothing
        assert [p["metadata"]["name"] for p in inf.controlled_by("rs-1")] == ["a"]
        assert inf.uncontrolled("ns") == []
        await memory_api.patch("pods", "a", {"metadata": {"ownerReferences": None}}, "ns")

        async def released() -> bool:
            return [p["metadata"]["name"] for p in inf.uncontrolled("ns")] == ["a"]

        await eventually(released, what="index follows the owner change")
        assert inf.controlled_by("rs-1") == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_informer_objects_carry_no_managed_fields(memory_api: InMemoryApi) -> None:
    await memory_api.create("namespaces", {"metadata": {"name": "ns"}})
    pods = BY_PLURAL["pods"]
    # as a kubectl or kubelet request does: a write with a field manager is tracked
    await memory_api.registry.create(pods, "ns", pod("a", {"app": "web"}), manager="kubectl")
    assert (await memory_api.get("pods", "a", "ns"))["metadata"].get("managedFields")
    inf = Informer(memory_api, "pods")
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 2)
        await memory_api.registry.create(pods, "ns", pod("b", {"app": "web"}), manager="kubectl")
        await eventually(lambda: inf.get("ns/b") is not None, what="b in the cache")
        for name in ("a", "b"):  # from the list and from the watch
            cached = inf.get(f"ns/{name}")
            assert cached is not None and "managedFields" not in cached["metadata"]
            assert cached["metadata"]["labels"] == {"app": "web"}
            stored = await memory_api.get("pods", name, "ns")
            assert stored["metadata"]["managedFields"]  # the store keeps them
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
