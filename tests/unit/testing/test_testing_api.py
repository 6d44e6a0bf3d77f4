"""`InMemoryApi` side by side with `LocalApi(Registry)` on SQLite: one script of API calls, the
same answers (objects, errors, watch events, revisions) from both; then its test controls."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from podnet.api.errors import ApiError, not_found
from podnet.api.interface import Api, Obj
from podnet.apiserver.bootstrap import SYSTEM_NAMESPACES
from podnet.apiserver.local import LocalApi
from podnet.apiserver.registry import Registry
from podnet.config import ClusterConfig
from podnet.store import SqliteStore
from podnet.testing.api import Call, InMemoryApi

pytestmark = pytest.mark.timeout(30)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
Transcript = list[tuple[str, Any]]


def pod(name: str, labels: dict[str, str] | None = None, node: str | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


async def answer(call: Awaitable[Obj]) -> Any:
    """The object a call returns, or the error's (code, reason, message)."""
    try:
        return await call
    except ApiError as exc:
        return ("error", exc.code, exc.reason, exc.message)


async def events(api: Api, resource: str, rv: str, count: int, **kw: Any) -> Any:
    stream = api.watch(resource, resource_version=rv, allow_bookmarks=False, **kw)
    taken: list[Obj] = []
    try:
        async with asyncio.timeout(5):
            async for event in stream:
                taken.append(event)
                if len(taken) == count:
                    break
    except ApiError as exc:
        return ("error", exc.code, exc.reason)
    return [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
            for e in taken]  # fmt: skip


async def scenario(api: Api, compact: Callable[[], Awaitable[None]]) -> Transcript:
    """Every kind of call the components make, with the answers recorded."""
    out: Transcript = []
    ns = "default"
    start = (await api.list("pods", ns))["metadata"]["resourceVersion"]
    out.append(("create", await answer(api.create("pods", pod("a", {"app": "web"}), ns))))
    out.append(("create b", await answer(api.create("pods", pod("b", {"app": "db"}), ns))))
    out.append(("exists", await answer(api.create("pods", pod("a"), ns))))
    out.append(("invalid", await answer(api.create("pods", {"metadata": {"name": "x"}}, ns))))
    out.append(("no ns", await answer(api.create("pods", pod("a"), "nowhere"))))
    out.append(("get", await answer(api.get("pods", "a", ns))))
    out.append(("missing", await answer(api.get("pods", "zz", ns))))
    out.append(("labels", await answer(api.list("pods", ns, label_selector="app in (web)"))))
    out.append(("fields", await answer(api.list("pods", field_selector="metadata.name=b"))))
    merged = api.patch("pods", "a", {"metadata": {"labels": {"tier": "fe"}}}, ns)
    out.append(("merge patch", await answer(merged)))
    strategic = {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    out.append(("strategic", await answer(api.patch("pods", "a", strategic, ns, "strategic"))))
    json_patch = [{"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}}]
    out.append(("json patch", await answer(api.patch("pods", "b", json_patch, ns, "json"))))
    stale = await api.get("pods", "b", ns)
    stale["metadata"]["resourceVersion"] = start
    out.append(("stale update", await answer(api.update("pods", stale, ns))))
    status = {"status": {"phase": "Running", "podIP": "10.244.0.5"}}
    out.append(("status", await answer(api.patch("pods", "b", status, ns, subresource="status"))))
    binding = {"metadata": {"name": "a"}, "target": {"kind": "Node", "name": "n1"}}
    out.append(("bind", await answer(api.create("pods", binding, ns, subresource="binding"))))
    out.append(("bind again", await answer(api.create("pods", binding, ns, "binding"))))
    out.append(("graceful", await answer(api.delete("pods", "a", ns, grace_period_seconds=7))))
    out.append(("at once", await answer(api.delete("pods", "a", ns, grace_period_seconds=0))))
    uid = (await api.get("pods", "b", ns))["metadata"]["uid"]
    out.append(("wrong uid", await answer(api.delete("pods", "b", ns, uid=uid + "x"))))
    kept = {"metadata": {"name": "kept", "finalizers": ["example.com/keep"]}}
    out.append(("finalized", await answer(api.create("configmaps", kept, ns))))
    out.append(("deleting", await answer(api.delete("configmaps", "kept", ns))))
    unblock = {"metadata": {"finalizers": None}}
    out.append(("finalizer off", await answer(api.patch("configmaps", "kept", unblock, ns))))
    ports = [{"port": 80, "nodePort": 30080}]  # chosen: the allocators pick at random
    svc = {"metadata": {"name": "web"}, "spec": {"ports": ports, "type": "NodePort"}}
    svc["spec"]["clusterIP"] = "10.96.0.50"
    out.append(("service", await answer(api.create("services", svc, ns))))
    deploy = {
        "metadata": {"name": "d"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": pod("x")["spec"]},
        },
    }
    out.append(("deployment", await answer(api.create("deployments", deploy, ns))))
    out.append(("foreground", await answer(api.delete("deployments", "d", ns, None, "Foreground"))))
    out.append(("scale", await answer(api.get("deployments", "d", ns, "scale"))))
    out.append(("replay", await events(api, "pods", start, 7)))
    out.append(("filtered", await events(api, "pods", start, 2, label_selector="app=db")))
    await compact()
    out.append(("expired", await events(api, "pods", start, 1)))
    return out


def normalized(transcript: Transcript) -> str:
    """uids and token volume names are random: number them in order of appearance."""
    text = repr(transcript)
    for volume in dict.fromkeys(re.findall(r"kube-api-access-[a-z0-9]{5}", text)):
        text = text.replace(volume, "kube-api-access-x")
    uids: dict[str, str] = {}
    for uid in re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text):
        uids.setdefault(uid, f"uid-{len(uids)}")
    for uid, label in uids.items():
        text = text.replace(uid, label)
    return text


@pytest.mark.asyncio
async def test_in_memory_api_answers_exactly_like_local_api_on_sqlite(tmp_path: Path) -> None:
    config = ClusterConfig()
    memory = InMemoryApi(config, clock=lambda: NOW)

    store = SqliteStore(tmp_path / "state.db")
    try:
        registry = Registry(store, config, clock=lambda: NOW)
        local = LocalApi(registry)
        for name in SYSTEM_NAMESPACES:  # what InMemoryApi seeds
            await local.create("namespaces", {"metadata": {"name": name}})

        async def compact_sqlite() -> None:  # as InMemoryApi.compact: what a restart forgets
            await store.compact(await store.current_revision())
            await registry.close()

        on_sqlite = await scenario(local, compact_sqlite)
    finally:
        await store.close()
    in_memory = await scenario(memory, memory.compact)
    assert normalized(in_memory) == normalized(on_sqlite)
    # and the script meant something: errors and objects both occurred
    codes = [a[1] for _, a in on_sqlite if isinstance(a, tuple) and a[0] == "error"]
    assert codes == [409, 422, 404, 404, 409, 409, 409, 410]


# -- the test controls ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_calls_are_recorded_and_seeding_is_not() -> None:
    api = InMemoryApi()
    await api.put("pods", {**pod("a"), "status": {"phase": "Running"}}, "apps")
    assert api.calls == []
    assert api.peek("namespaces", "apps") is not None  # put created the namespace
    assert (api.peek("pods", "a", "apps") or {})["status"]["phase"] == "Running"
    await api.get("pods", "a", "apps")
    with pytest.raises(ApiError):  # the uid precondition fails
        await api.delete("pods", "a", "apps", grace_period_seconds=0, uid="u")
    assert api.calls == [
        Call("get", "pods", "apps", "a"),
        Call("delete", "pods", "apps", "a", grace_period_seconds=0, uid="u"),
    ]
    assert api.writes() == api.calls[1:]
    assert api.peek("pods", "a", "apps") is not None
    await api.remove("pods", "a", "apps")
    assert api.peek_list("pods") == []


@pytest.mark.asyncio
async def test_fail_next_fails_once() -> None:
    api = InMemoryApi()
    api.fail_next("list", "pods", not_found("pods", "x"))
    with pytest.raises(ApiError) as raised:
        await api.list("pods")
    assert raised.value.code == 404
    assert (await api.list("pods"))["items"] == []


@pytest.mark.asyncio
async def test_hold_makes_calls_wait_until_release() -> None:
    api = InMemoryApi()
    api.hold("list", "services")
    listing = asyncio.ensure_future(api.list("services"))
    await asyncio.sleep(0.05)
    assert not listing.done()
    api.release("list", "services")
    assert (await asyncio.wait_for(listing, 2))["items"] == []


@pytest.mark.asyncio
async def test_disconnect_then_compact_makes_a_resumed_watch_410() -> None:
    api = InMemoryApi()
    rv = (await api.list("configmaps", "default"))["metadata"]["resourceVersion"]

    async def first_event(stream: AsyncIterator[Obj]) -> Obj:
        async for event in stream:
            return event
        return {"type": "ENDED"}

    watching = asyncio.ensure_future(first_event(api.watch("configmaps", "default", rv)))
    await asyncio.sleep(0.05)
    api.disconnect_watches()
    assert await asyncio.wait_for(watching, 2) == {"type": "ENDED"}
    await api.put("configmaps", {"metadata": {"name": "c", "namespace": "default"}})
    await api.compact()
    with pytest.raises(ApiError) as raised:
        await first_event(api.watch("configmaps", "default", rv))
    assert raised.value.code == 410
    with contextlib.suppress(asyncio.CancelledError):
        watching.cancel()
