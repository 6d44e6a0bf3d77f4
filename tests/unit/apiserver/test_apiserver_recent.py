"""The values a server last saw (`apiserver.recent`) and the registry's writes that start from
them: two registries on one SQLite store play two API servers, so one's values go stale."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.allocators import IP_PREFIX, PORT_PREFIX
from podnet.apiserver.recent import ENTRY_BYTES, RecentValues
from podnet.apiserver.registry import DeleteOptions, Registry, encode
from podnet.apiserver.strategies import Context, strategy_for
from podnet.apiserver.strategies.namespaces import finalize_namespaces
from podnet.config import ClusterConfig
from podnet.store import Store, open_store
from podnet.store.base import KeyValue

PODS = BY_PLURAL["pods"]
CONFIGMAPS = BY_PLURAL["configmaps"]
NAMESPACES = BY_PLURAL["namespaces"]
EVENTS = BY_PLURAL["events"]
SERVICES = BY_PLURAL["services"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A real store that counts the reads asked of it (what `recent` saves)."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.gets: list[str] = []

    async def get(self, key: str) -> KeyValue | None:
        self.gets.append(key)
        return await self.inner.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def kv(key: str, value: bytes, revision: int) -> KeyValue:
    return KeyValue(key, value, revision, revision)


def pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


@pytest_asyncio.fixture
async def other(store: Store) -> AsyncIterator[Registry]:
    """A second API server on the same store."""
    yield Registry(store, ClusterConfig(), ca_pem=b"-----BEGIN CERTIFICATE-----\n")


@pytest.mark.asyncio
async def test_values_are_bounded_and_newest_wins(store: Store) -> None:
    one = RecentValues(store)
    one.remember(kv("/a", b"1234", 5))
    cost = one.size  # the packed value and ENTRY_BYTES
    assert ENTRY_BYTES < cost < ENTRY_BYTES + 20
    recent = RecentValues(store, max_bytes=2 * cost + 5)
    recent.remember(kv("/a", b"1234", 5))
    recent.remember(kv("/a", b"12", 3))  # an older read finishing late
    assert recent.suggestion("/a") == kv("/a", b"1234", 5)
    recent.remember(kv("/b", b"1234", 6))
    assert recent.suggestion("/a") is not None  # used last: /b is the one to go
    recent.remember(kv("/c", b"1234", 7))
    assert (recent.suggestion("/b"), len(recent), recent.size) == (None, 2, 2 * cost)
    recent.forget("/a")
    assert (recent.suggestion("/a"), recent.size) == (None, cost)


def stored_pod(index: int) -> bytes:
    """A pod as the registry stores it, with what differs from pod to pod."""
    obj = pod(f"web-{index // 30}-{secrets.token_hex(5)}")
    obj["metadata"].update(
        namespace="scale",
        uid=f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}",
        labels={"app": f"web-{index // 30}", "pod-template-hash": secrets.token_hex(5)},
        creationTimestamp=f"2026-12-06T21:{index % 60:02d}:{index % 59:02d}Z",
    )
    obj["spec"]["nodeName"] = f"hollow-{index % 1000:04d}"
    obj["status"] = {
        "phase": "Running",
        "podIP": f"100.64.{index // 250}.{index % 250}",
        "conditions": [
            {
                "type": t,
                "status": "True",
                "lastTransitionTime": f"2026-12-06T21:{index % 60:02d}:01Z",
            }
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
    }
    return encode(obj)


@pytest.mark.asyncio
async def test_values_are_held_packed_and_given_back_exactly(store: Store) -> None:
    recent = RecentValues(store)
    values = {f"/registry/pods/scale/p{i}": stored_pod(i) for i in range(2000)}
    others = {
        "/registry/apps/deployments/scale/d": b'{"metadata":{"name":"d"},"spec":{}}',
        "/registry/namespaces/scale": b'{"metadata":{"name":"scale"}}',
        "/registry/discovery.k8s.io/endpointslices/scale/s": b"",
        "/registry/odd": bytes(range(256)) * 3,  # not JSON: still byte for byte
    }
    for revision, (key, value) in enumerate([*values.items(), *others.items()], start=10):
        recent.remember(KeyValue(key, value, 3, revision))
    for revision, (key, value) in enumerate([*values.items(), *others.items()], start=10):
        assert recent.suggestion(key) == KeyValue(key, value, 3, revision)
    raw = sum(len(v) for v in values.values())
    assert len(recent) == len(values) + len(others)
    packed = recent.size - len(recent) * ENTRY_BYTES
    assert packed < raw / 4, (packed, raw)  # pods of one kind are mostly the same bytes


@pytest.mark.asyncio
async def test_lookup_trusts_a_value_only_while_young(store: Store) -> None:
    clock = Clock()
    counting = CountingStore(store)
    recent = RecentValues(counting, clock=clock)  # type: ignore[arg-type]
    written = await store.create("/ns/a", b"{}")
    recent.remember(written)
    assert await recent.lookup("/ns/a", max_age=1.0) == written
    assert counting.gets == []
    await store.delete("/ns/a")
    clock.now += 0.5
    assert await recent.lookup("/ns/a", max_age=1.0) == written  # within its age: trusted
    clock.now += 0.6
    assert await recent.lookup("/ns/a", max_age=1.0) is None  # older: read, and gone
    assert counting.gets == ["/ns/a"]
    assert recent.suggestion("/ns/a") is None
    assert await recent.lookup("/ns/missing") is None  # absence is never held
    assert await recent.lookup("/ns/missing") is None
    assert counting.gets == ["/ns/a", "/ns/missing", "/ns/missing"]


class HeldStore(CountingStore):
    """Reads wait for `release`, so several can be in flight at once."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.release = asyncio.Event()

    async def get(self, key: str) -> KeyValue | None:
        self.gets.append(key)
        await self.release.wait()
        return await self.inner.get(key)


@pytest.mark.asyncio
async def test_lookups_that_miss_together_share_one_read(store: Store) -> None:
    clock = Clock()
    held = HeldStore(store)
    recent = RecentValues(held, clock=clock)  # type: ignore[arg-type]
    written = await store.create("/ns/a", b"{}")
    recent.remember(written)
    clock.now += 2.0  # aged out: the next look-ups read the store
    waiters = [asyncio.ensure_future(recent.lookup("/ns/a")) for _ in range(5)]
    await asyncio.sleep(0)
    waiters[0].cancel()  # a cancelled waiter does not cancel the read the others wait for
    await asyncio.sleep(0)
    held.release.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == [written] * 4 and held.gets == ["/ns/a"]
    assert await recent.lookup("/ns/a") == written and held.gets == ["/ns/a"]  # held again
    await recent.get("/ns/a")  # a plain read is never shared
    assert held.gets == ["/ns/a", "/ns/a"]
    await store.delete("/ns/a")
    clock.now += 2.0
    missing = await asyncio.gather(recent.lookup("/ns/a"), recent.lookup("/ns/a"))
    assert missing == [None, None] and held.gets == ["/ns/a"] * 3


@pytest.mark.asyncio
async def test_writes_start_from_what_the_server_saw(store: Store) -> None:
    counting = CountingStore(store)
    registry = Registry(counting, ClusterConfig(), ca_pem=b"x")  # type: ignore[arg-type]
    await registry.create(NAMESPACES, None, {"metadata": {"name": "n"}})
    await registry.create(CONFIGMAPS, "n", {"metadata": {"name": "c"}, "data": {"v": "0"}})
    counting.gets.clear()
    for value in ("1", "2"):
        await registry.patch(CONFIGMAPS, "n", "c", "merge", {"data": {"v": value}})
    await registry.create(CONFIGMAPS, "n", {"metadata": {"name": "d"}})
    assert counting.gets == []  # neither the object nor its namespace was read
    assert (await registry.get(CONFIGMAPS, "n", "c"))["data"] == {"v": "2"}


@pytest.mark.asyncio
async def test_a_stale_start_loses_no_write(registry: Registry, other: Registry) -> None:
    await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "c"}, "data": {"a": "0"}})
    await other.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"b": "1"}})
    patched = await registry.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "2"}})
    assert patched["data"] == {"a": "2", "b": "1"}
    # "nothing changed" on the stale value is no answer: the store's value differs
    back = await registry.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "2"}})
    assert back["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    await other.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "0"}})
    again = await registry.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "2"}})
    assert again["data"] == {"a": "2", "b": "1"}
    assert int(again["metadata"]["resourceVersion"]) > int(patched["metadata"]["resourceVersion"])


@pytest.mark.asyncio
async def test_a_status_patch_on_a_stale_start_keeps_the_rest_as_stored(
    registry: Registry, other: Registry
) -> None:
    """A kubelet's status merge patch is merged into the loop's own copy of the held pod (no
    further copy) and the pod's status strategy keeps everything else from the stored value
    by reference: neither may leak into a retry from the store's value, nor into what the
    other server wrote meanwhile."""
    await registry.create(PODS, "default", pod("p"))
    await other.patch(PODS, "default", "p", "merge", {"metadata": {"labels": {"by": "other"}}})
    ready = [{"type": "Ready", "status": "True"}]
    status = {"phase": "Running", "podIP": "10.0.0.5", "conditions": ready}
    body = {
        "metadata": {"labels": {"by": "kubelet"}},
        "spec": {"nodeName": "elsewhere"},
        "status": status,
    }
    patched = await registry.patch(
        PODS, "default", "p", "merge", body, subresource="status", manager="kubelet"
    )
    stored = await other.get(PODS, "default", "p")
    assert patched == stored
    assert stored["metadata"]["labels"] == {"by": "other"}  # the stale start lost nothing
    assert "nodeName" not in stored["spec"]  # /status changes the status only
    assert stored["status"]["podIP"] == "10.0.0.5"
    assert stored["status"]["conditions"] == status["conditions"]
    managers = [(f["manager"], f.get("subresource")) for f in stored["metadata"]["managedFields"]]
    assert ("kubelet", "status") in managers
    status["conditions"][0]["status"] = "False"  # the body is not shared with what was stored
    body["metadata"]["labels"]["by"] = "changed"
    again = await registry.patch(
        PODS, "default", "p", "merge", {"status": {"phase": "Running"}}, subresource="status"
    )
    assert again["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    assert (await other.get(PODS, "default", "p"))["status"]["conditions"][0]["status"] == "True"


@pytest.mark.asyncio
async def test_a_stale_start_is_checked_before_refusing(
    registry: Registry, other: Registry
) -> None:
    created = await registry.create(
        CONFIGMAPS, "default", {"metadata": {"name": "c"}, "data": {"a": "0"}}
    )
    updated = await other.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "1"}})
    # the client read from the other server: its resourceVersion is the store's, not ours
    body = {**updated, "data": {"a": "2"}}
    result = await registry.update(CONFIGMAPS, "default", "c", body)
    assert result["data"] == {"a": "2"}
    stale = {**created, "data": {"a": "3"}}
    with pytest.raises(ApiError) as info:
        await registry.update(CONFIGMAPS, "default", "c", stale)
    assert info.value.code == 409
    # a pod bound here, then deleted and created again unbound there: binding it here works
    await registry.create(PODS, "default", pod("p"))
    await registry.bind("default", "p", {"target": {"name": "n1"}})
    await other.delete(PODS, "default", "p", DeleteOptions(grace_period_seconds=0))
    await other.create(PODS, "default", pod("p"))
    await registry.bind("default", "p", {"target": {"name": "n2"}})
    assert (await other.get(PODS, "default", "p"))["spec"]["nodeName"] == "n2"
    with pytest.raises(ApiError) as info:
        await other.bind("default", "p", {"target": {"name": "n3"}})
    assert 'already assigned to node "n2"' in info.value.message


@pytest.mark.asyncio
async def test_deleted_elsewhere_is_not_found(registry: Registry, other: Registry) -> None:
    await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "c"}})
    await other.delete(CONFIGMAPS, "default", "c")
    with pytest.raises(ApiError) as info:
        await registry.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "1"}})
    assert info.value.code == 404
    assert registry.recent.suggestion(registry._key(CONFIGMAPS, "default", "c")) is None


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}], **spec}}


async def allocated(registry: Registry, prefix: str) -> set[str]:
    return {kv.key.removeprefix(prefix) for kv in (await registry.store.list(prefix)).items}


@pytest.mark.asyncio
async def test_a_stale_start_releases_nothing_the_service_holds(
    registry: Registry, other: Registry
) -> None:
    """An update computed on a stale Service asks for the node port / IP the stored Service
    holds; its failed compare-and-swap must not roll that reservation back."""
    await registry.create(SERVICES, "default", service("np"))
    node_port = {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}
    await other.patch(SERVICES, "default", "np", "merge", {"spec": node_port})
    labelled = {"metadata": {"labels": {"a": "b"}}, "spec": node_port}
    await registry.patch(SERVICES, "default", "np", "merge", labelled)
    assert "30080" in await allocated(registry, PORT_PREFIX)
    with pytest.raises(ApiError) as info:
        await other.create(SERVICES, "default", service("np2", **node_port))
    assert info.value.code == 422 and "already allocated" in info.value.message

    await registry.create(
        SERVICES, "default", service("en", type="ExternalName", externalName="a.b")
    )
    to_ip = {"type": "ClusterIP", "externalName": None}
    ip = (await other.patch(SERVICES, "default", "en", "merge", {"spec": to_ip}))["spec"][
        "clusterIP"
    ]
    await registry.patch(SERVICES, "default", "en", "merge", {"spec": {**to_ip, "clusterIP": ip}})
    assert ip in await allocated(registry, IP_PREFIX)


@pytest.mark.asyncio
async def test_a_namespace_created_again_elsewhere_takes_content(
    registry: Registry, other: Registry
) -> None:
    """This server saw the namespace terminating a moment ago; another removed it and created
    it again: the refusal is checked on the store's value, not answered from the held one."""
    await registry.create(NAMESPACES, None, {"metadata": {"name": "z"}})
    await registry.delete(NAMESPACES, None, "z")
    with pytest.raises(ApiError) as info:
        await other.create(CONFIGMAPS, "z", {"metadata": {"name": "early"}})
    assert info.value.code == 403 and "being terminated" in info.value.message
    while await finalize_namespaces(other):
        pass
    await other.create(NAMESPACES, None, {"metadata": {"name": "z"}})
    await registry.create(CONFIGMAPS, "z", {"metadata": {"name": "c"}})


@pytest.mark.asyncio
async def test_a_finalizer_dropped_on_a_stale_copy_spares_the_new_object(
    registry: Registry, other: Registry
) -> None:
    """Held here: the old object, deleting, with a finalizer. Elsewhere it went away and one
    of the same name was created: dropping the finalizer must not delete the new one."""
    body = {"metadata": {"name": "f", "finalizers": ["x.io/y"]}, "data": {"v": "old"}}
    await registry.create(CONFIGMAPS, "default", body)
    await registry.delete(CONFIGMAPS, "default", "f")
    await other.patch(CONFIGMAPS, "default", "f", "merge", {"metadata": {"finalizers": None}})
    new = await other.create(CONFIGMAPS, "default", {**body, "data": {"v": "new"}})
    await registry.patch(CONFIGMAPS, "default", "f", "merge", {"metadata": {"finalizers": None}})
    kept = await other.get(CONFIGMAPS, "default", "f")
    assert kept["metadata"]["uid"] == new["metadata"]["uid"] and kept["data"] == {"v": "new"}
    assert "deletionTimestamp" not in kept["metadata"]


@pytest.mark.etcd
@pytest.mark.asyncio
async def test_two_servers_on_one_etcd(etcd_url: str, tmp_path: Path) -> None:
    """The HA lab's case: two registries on one etcd key prefix, one's values stale."""
    url = f"{etcd_url}/recent-{secrets.token_hex(4)}"
    stores = [open_store(url, tmp_path), open_store(url, tmp_path)]
    try:
        a, b = (Registry(s, ClusterConfig(), ca_pem=b"x") for s in stores)
        await a.create(NAMESPACES, None, {"metadata": {"name": "default"}})
        await a.create(CONFIGMAPS, "default", {"metadata": {"name": "c"}, "data": {"a": "0"}})
        seen = await b.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"b": "1"}})
        test_b = [{"op": "test", "path": "/data/b", "value": "1"}]
        patched = await a.patch(
            CONFIGMAPS,
            "default",
            "c",
            "json",
            [*test_b, {"op": "add", "path": "/data/a", "value": "2"}],
        )
        assert patched["data"] == {"a": "2", "b": "1"}
        with pytest.raises(ApiError) as info:  # the client's resourceVersion is stale
            await a.update(CONFIGMAPS, "default", "c", {**seen, "data": {}})
        assert info.value.code == 409
        seen = await b.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "0"}})
        # current for the client though stale here; then the same change again: a no-op
        # only once the store's value shows it
        done = await a.update(CONFIGMAPS, "default", "c", {**seen, "data": {"x": "1"}})
        await b.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"x": "0"}})
        again = await a.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"x": "1"}})
        assert again["data"] == {"x": "1"}
        assert int(again["metadata"]["resourceVersion"]) > int(done["metadata"]["resourceVersion"])
        assert (await b.get(CONFIGMAPS, "default", "c")) == again
    finally:
        for s in stores:
            await s.close()


@pytest.mark.asyncio
async def test_a_lost_update_releases_nothing_the_winner_took(
    registry: Registry, other: Registry
) -> None:
    """Two updates of one Service add the same node port: the first reserves it, the second
    finds it the Service's own and wins the write; the first's rollback must leave it."""
    stored = await registry.create(SERVICES, "default", service("s"))
    node_port = {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30090}]}
    strategy, ctx = strategy_for(SERVICES), Context(SERVICES, registry)
    first = {**stored, "spec": {**stored["spec"], **node_port}}
    finish = await strategy.begin_update(ctx, first, stored)  # reserves 30090
    await other.patch(SERVICES, "default", "s", "merge", {"spec": node_port})  # wins
    await finish(False)  # the first's compare-and-swap failed
    assert "30090" in await allocated(registry, PORT_PREFIX)


@pytest.mark.asyncio
async def test_events_are_not_held(store: Store) -> None:
    counting = CountingStore(store)
    registry = Registry(counting, ClusterConfig(), ca_pem=b"x")  # type: ignore[arg-type]
    await registry.create(NAMESPACES, None, {"metadata": {"name": "n"}})
    event = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Pod", "namespace": "n", "name": "p"},
        "reason": "Scheduled",
        "message": "assigned",
        "type": "Normal",
        "count": 1,
    }
    await registry.create(EVENTS, "n", event)
    assert registry.recent.suggestion("/registry/events/n/e1") is None
    assert not [key for key in registry.recent._values if key.startswith("/registry/events/")]
    patched = await registry.patch(EVENTS, "n", "e1", "merge", {"count": 2})
    assert patched["count"] == 2
    assert counting.gets[-1] == "/registry/events/n/e1"  # read from the store, then written
    assert registry.recent.suggestion("/registry/events/n/e1") is None
