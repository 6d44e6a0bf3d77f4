"""Registry semantics on a real SQLite store: what every API call means, without HTTP."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
from typing import Any

import pytest

from podnet.api import sharedjson
from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.api.selectors import FieldSelector, LabelSelector
from podnet.apiserver.registry import (
    DeleteOptions,
    ListOptions,
    Registry,
    decode,
    encode,
    with_resource_version,
    without_managed_fields,
)
from podnet.apiserver.strategies.namespaces import finalize_namespaces
from podnet.config import ClusterConfig
from podnet.store import Store
from podnet.store.base import KeyValue

PODS = BY_PLURAL["pods"]
SERVICES = BY_PLURAL["services"]
CONFIGMAPS = BY_PLURAL["configmaps"]
DEPLOYMENTS = BY_PLURAL["deployments"]
NAMESPACES = BY_PLURAL["namespaces"]
NODES = BY_PLURAL["nodes"]


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]},
            },
        },
    }


async def expect_error(code: int, awaitable: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        await awaitable
    assert info.value.code == code, info.value.status()
    return info.value


@pytest.mark.asyncio
async def test_bootstrap_objects_exist(registry: Registry) -> None:
    names = [
        n["metadata"]["name"]
        for n in (await registry.list(NAMESPACES, None, ListOptions()))["items"]
    ]
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(names)
    svc = await registry.get(SERVICES, "default", "kubernetes")
    assert svc["spec"]["clusterIP"] == "10.96.0.1"
    assert svc["spec"]["ports"][0]["targetPort"] == 6443
    ep = await registry.get(BY_PLURAL["endpoints"], "default", "kubernetes")
    assert ep["subsets"][0]["addresses"] == [{"ip": "127.0.0.1"}]
    for ns in names:
        await registry.get(BY_PLURAL["serviceaccounts"], ns, "default")
        cm = await registry.get(CONFIGMAPS, ns, "kube-root-ca.crt")
        assert cm["data"]["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.asyncio
async def test_bootstrap_is_idempotent(registry: Registry) -> None:
    from podnet.apiserver.bootstrap import bootstrap

    before = await registry.get(SERVICES, "default", "kubernetes")
    await bootstrap(registry, "127.0.0.1", 6443)
    after = await registry.get(SERVICES, "default", "kubernetes")
    assert before == after


@pytest.mark.asyncio
async def test_create_sets_system_metadata_and_defaults(registry: Registry) -> None:
    created = await registry.create(PODS, "default", pod("web-1"))
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    assert created["status"]["phase"] == "Pending"
    assert created["spec"]["restartPolicy"] == "Always"
    fetched = await registry.get(PODS, "default", "web-1")
    assert fetched == created


@pytest.mark.asyncio
async def test_create_refuses_duplicates_missing_namespace_and_bad_names(
    registry: Registry,
) -> None:
    await registry.create(PODS, "default", pod("dup"))
    err = await expect_error(409, registry.create(PODS, "default", pod("dup")))
    assert err.reason == "AlreadyExists" and err.details["kind"] == "pods"
    err = await expect_error(404, registry.create(PODS, "nope", pod("x")))
    assert err.message == 'namespaces "nope" not found'
    err = await expect_error(422, registry.create(PODS, "default", pod("Bad_Name")))
    assert err.details["causes"][0]["field"] == "metadata.name"
    err = await expect_error(400, registry.create(PODS, "default", {**pod("k"), "kind": "Service"}))
    assert "kind" in err.message


@pytest.mark.asyncio
async def test_generate_name(registry: Registry) -> None:
    body = pod("")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "web-"
    created = await registry.create(PODS, "default", body)
    name = created["metadata"]["name"]
    assert name.startswith("web-") and len(name) == len("web-") + 5


@pytest.mark.asyncio
async def test_invalid_object_names_field_and_rule(registry: Registry) -> None:
    body = pod("noimage")
    body["spec"]["containers"][0]["image"] = ""
    err = await expect_error(422, registry.create(PODS, "default", body))
    assert err.reason == "Invalid" and err.details["kind"] == "Pod"
    assert any(c["field"] == "spec.containers[0].image" for c in err.details["causes"])


@pytest.mark.asyncio
async def test_dry_run_create_writes_nothing(registry: Registry) -> None:
    out = await registry.create(PODS, "default", pod("dry"), dry_run=True)
    assert out["metadata"]["name"] == "dry"
    await expect_error(404, registry.get(PODS, "default", "dry"))


@pytest.mark.asyncio
async def test_update_optimistic_concurrency_and_generation(registry: Registry) -> None:
    created = await registry.create(DEPLOYMENTS, "default", deployment("web"))
    assert created["metadata"]["generation"] == 1
    stale = dict(created)
    changed = {**created, "spec": {**created["spec"], "replicas": 3}}
    updated = await registry.update(DEPLOYMENTS, "default", "web", changed)
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    err = await expect_error(409, registry.update(DEPLOYMENTS, "default", "web", stale))
    assert err.reason == "Conflict" and "has been modified" in err.message
    # labels are metadata: no generation bump
    relabeled = {**updated, "metadata": {**updated["metadata"], "labels": {"x": "y"}}}
    relabeled = await registry.update(DEPLOYMENTS, "default", "web", relabeled)
    assert relabeled["metadata"]["generation"] == 2


@pytest.mark.asyncio
async def test_status_subresource_separates_spec_and_status(registry: Registry) -> None:
    created = await registry.create(DEPLOYMENTS, "default", deployment("s"))
    body = {**created, "status": {"replicas": 7}}
    main = await registry.update(DEPLOYMENTS, "default", "s", body)
    assert main.get("status", {}).get("replicas") is None  # main resource ignores status
    body = {
        **main,
        "status": {"replicas": 7, "observedGeneration": 1},
        "spec": {**main["spec"], "replicas": 9},
    }
    status = await registry.update(DEPLOYMENTS, "default", "s", body, subresource="status")
    assert status["status"]["replicas"] == 7
    assert status["spec"]["replicas"] == 1  # status update ignores spec
    assert status["metadata"]["generation"] == 1


@pytest.mark.asyncio
async def test_patch_types(registry: Registry) -> None:
    await registry.create(PODS, "default", pod("p"))
    merged = await registry.patch(
        PODS, "default", "p", "merge", {"metadata": {"labels": {"tier": "front"}}}
    )
    assert merged["metadata"]["labels"] == {"app": "web", "tier": "front"}
    strategic = await registry.patch(
        PODS,
        "default",
        "p",
        "strategic",
        {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
    )
    assert strategic["spec"]["containers"][0]["image"] == "busybox:1.36"
    assert strategic["spec"]["containers"][0]["name"] == "c"
    jsonp = await registry.patch(
        PODS, "default", "p", "json", [{"op": "remove", "path": "/metadata/labels/tier"}]
    )
    assert jsonp["metadata"]["labels"] == {"app": "web"}
    err = await expect_error(422, registry.patch(PODS, "default", "p", "apply", {}))
    assert err.message.endswith("fieldManager: Required value: is required for apply patch")
    err = await expect_error(
        409, registry.patch(PODS, "default", "p", "merge", {"metadata": {"resourceVersion": "1"}})
    )


@pytest.mark.asyncio
async def test_unchanged_update_keeps_resource_version(registry: Registry) -> None:
    created = await registry.create(
        CONFIGMAPS, "default", {"metadata": {"name": "c"}, "data": {"a": "1"}}
    )
    same = await registry.patch(CONFIGMAPS, "default", "c", "merge", {"data": {"a": "1"}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


@pytest.mark.asyncio
async def test_graceful_pod_deletion_waits_for_the_node(registry: Registry) -> None:
    await registry.create(PODS, "default", pod("unscheduled"))
    gone = await registry.delete(PODS, "default", "unscheduled", DeleteOptions())
    assert gone["metadata"]["name"] == "unscheduled"
    await expect_error(404, registry.get(PODS, "default", "unscheduled"))

    await registry.create(PODS, "default", pod("bound", nodeName="n1"))
    marked = await registry.delete(PODS, "default", "bound", DeleteOptions())
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    still = await registry.get(PODS, "default", "bound")
    assert still["metadata"]["deletionTimestamp"]
    # the node agent confirms with grace 0
    await registry.delete(PODS, "default", "bound", DeleteOptions(grace_period_seconds=0))
    await expect_error(404, registry.get(PODS, "default", "bound"))


@pytest.mark.asyncio
async def test_finalizers_hold_objects_until_removed(registry: Registry) -> None:
    await registry.create(
        CONFIGMAPS, "default", {"metadata": {"name": "held", "finalizers": ["example.com/x"]}}
    )
    marked = await registry.delete(
        CONFIGMAPS, "default", "held", DeleteOptions(propagation_policy="Foreground")
    )
    assert marked["metadata"]["finalizers"] == ["example.com/x", "foregroundDeletion"]
    assert marked["metadata"]["deletionTimestamp"]
    await registry.patch(CONFIGMAPS, "default", "held", "merge", {"metadata": {"finalizers": None}})
    await expect_error(404, registry.get(CONFIGMAPS, "default", "held"))


@pytest.mark.asyncio
async def test_delete_preconditions(registry: Registry) -> None:
    created = await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "pre"}})
    err = await expect_error(
        409, registry.delete(CONFIGMAPS, "default", "pre", DeleteOptions(precondition_uid="other"))
    )
    assert "Precondition failed: UID" in err.message
    await registry.delete(
        CONFIGMAPS, "default", "pre", DeleteOptions(precondition_uid=created["metadata"]["uid"])
    )


@pytest.mark.asyncio
async def test_namespace_termination_removes_contents(registry: Registry) -> None:
    await registry.create(NAMESPACES, None, {"metadata": {"name": "team"}})
    # a new namespace gets its default ServiceAccount and root CA ConfigMap
    await registry.get(BY_PLURAL["serviceaccounts"], "team", "default")
    await registry.create(CONFIGMAPS, "team", {"metadata": {"name": "x"}})
    deleting = await registry.delete(NAMESPACES, None, "team", DeleteOptions())
    assert deleting["status"]["phase"] == "Terminating"
    err = await expect_error(403, registry.create(CONFIGMAPS, "team", {"metadata": {"name": "y"}}))
    assert "being terminated" in err.message
    assert await finalize_namespaces(registry) is False
    await expect_error(404, registry.get(NAMESPACES, None, "team"))
    await expect_error(404, registry.get(CONFIGMAPS, "team", "x"))


@pytest.mark.asyncio
async def test_list_selectors_and_pagination(registry: Registry) -> None:
    for i in range(7):
        await registry.create(PODS, "default", pod(f"p{i}", {"app": "a" if i % 2 else "b"}))
    only_a = await registry.list(
        PODS, "default", ListOptions(label_selector=LabelSelector.parse("app=a"))
    )
    assert [p["metadata"]["name"] for p in only_a["items"]] == ["p1", "p3", "p5"]
    by_name = await registry.list(
        PODS, None, ListOptions(field_selector=FieldSelector.parse("metadata.name=p4", PODS))
    )
    assert [p["metadata"]["name"] for p in by_name["items"]] == ["p4"]

    page = await registry.list(PODS, "default", ListOptions(limit=3))
    names = [p["metadata"]["name"] for p in page["items"]]
    revision = page["metadata"]["resourceVersion"]
    await registry.create(PODS, "default", pod("p7"))  # after the first page: not seen
    while page["metadata"].get("continue"):
        page = await registry.list(
            PODS, "default", ListOptions(limit=3, continue_token=page["metadata"]["continue"])
        )
        assert page["metadata"]["resourceVersion"] == revision
        names += [p["metadata"]["name"] for p in page["items"]]
    assert names == [f"p{i}" for i in range(7)]
    err = await expect_error(
        410,
        registry.list(
            PODS,
            "default",
            ListOptions(limit=3, continue_token="eyJpZCI6ICJ4IiwgInJ2IjogMSwgInN0YXJ0IjogM30="),
        ),
    )
    assert err.reason == "Expired"


@pytest.mark.asyncio
async def test_a_continue_token_that_starts_before_the_list_is_malformed(
    registry: Registry,
) -> None:
    """A token whose start is not a key (edited by hand: a number, as the old offsets were)
    is a 400, not a page that slices the list somewhere else."""
    for i in range(5):
        await registry.create(PODS, "default", pod(f"p{i}"))
    page = await registry.list(PODS, "default", ListOptions(limit=2))
    token = page["metadata"]["continue"]
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    start = raw["start"]
    raw["start"] = -3
    edited = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()
    err = await expect_error(
        400, registry.list(PODS, "default", ListOptions(limit=2, continue_token=edited))
    )
    assert "continue" in err.message and "malformed" in err.message
    raw["start"] = start  # the real next page
    good = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()
    rest = await registry.list(PODS, "default", ListOptions(limit=2, continue_token=good))
    assert [p["metadata"]["name"] for p in rest["items"]] == ["p2", "p3"]


async def collect(events: Any, count: int, within: float = 5.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def run() -> None:
        async for event in events:
            out.append(event)
            if len(out) == count:
                return

    await asyncio.wait_for(run(), within)
    await events.aclose()
    return out


@pytest.mark.asyncio
async def test_watch_from_zero_then_live(registry: Registry) -> None:
    await registry.create(PODS, "default", pod("w1"))
    events = registry.watch(PODS, "default", "0", ListOptions())
    first = await events.__anext__()
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "w1"
    await registry.patch(PODS, "default", "w1", "merge", {"metadata": {"labels": {"z": "1"}}})
    await registry.delete(PODS, "default", "w1", DeleteOptions())
    rest = await collect(events, 2)
    assert [e["type"] for e in rest] == ["MODIFIED", "DELETED"]


def test_without_managed_fields_cuts_exactly_that_member_out_of_the_json() -> None:
    rng = random.Random(3)
    entry = {"manager": "m", "operation": "Update", "fieldsV1": {"f:a": {'k:{"x":"}]"}': {}}}}
    cut = 0
    for case in range(600):
        members: list[tuple[str, Any]] = [
            ("name", f"p{case}"),
            ("labels", {"a": 'b,}"c'}),
            ("annotations", {"managedFields": "[]", "é": "ü"}),
            ("uid", "u"),
            ("managedFields", [entry] * rng.randint(0, 2)),
        ]
        rng.shuffle(members)
        metadata = dict(members[: rng.randint(0, len(members))])
        obj = {"metadata": metadata, "spec": {"managedFields": [1]}, "status": {"x": 1}}
        kv = KeyValue("/registry/pods/default/p", encode(obj), 1, 7)
        served = with_resource_version(kv)
        expected = json.loads(served)
        expected["metadata"].pop("managedFields", None)
        got = without_managed_fields(served)
        assert json.loads(got) == expected, served
        if "managedFields" in metadata:
            cut += 1
            assert len(got) < len(served)
        else:
            assert got is served  # nothing to cut: given back as it is
        # JSON of another layout is given back whole (its reader decodes and drops them)
        other = json.dumps(obj, indent=1).encode()
        assert without_managed_fields(other) is other
    assert cut > 100


@pytest.mark.asyncio
async def test_watch_without_managed_fields(registry: Registry) -> None:
    await registry.create(PODS, "default", pod("m1"), manager="kubectl")
    plain = registry.watch(PODS, "default", "0", ListOptions())
    trimmed = registry.watch(PODS, "default", "0", ListOptions(), managed_fields=False)
    full, without = (await collect(plain, 1))[0], (await collect(trimmed, 1))[0]
    assert full["object"]["metadata"]["managedFields"]
    del full["object"]["metadata"]["managedFields"]
    assert without == full


@pytest.mark.asyncio
async def test_watch_from_resource_version_replays_exactly_later_events(
    registry: Registry,
) -> None:
    listed = await registry.list(CONFIGMAPS, "default", ListOptions())
    rv = listed["metadata"]["resourceVersion"]
    await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "a"}})
    await registry.patch(CONFIGMAPS, "default", "a", "merge", {"data": {"k": "v"}})
    await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "b"}})
    await registry.delete(CONFIGMAPS, "default", "a", DeleteOptions())
    await registry.delete(CONFIGMAPS, "default", "b", DeleteOptions())
    events = await collect(registry.watch(CONFIGMAPS, "default", rv, ListOptions()), 5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
        ("DELETED", "b"),
    ]


@pytest.mark.asyncio
async def test_watch_selector_leaving_is_deleted(registry: Registry) -> None:
    await registry.create(PODS, "default", pod("sel", {"app": "web"}))
    opts = ListOptions(label_selector=LabelSelector.parse("app=web"))
    events = registry.watch(PODS, "default", "0", opts)
    assert (await events.__anext__())["type"] == "ADDED"
    await registry.patch(PODS, "default", "sel", "merge", {"metadata": {"labels": {"app": "db"}}})
    await registry.patch(PODS, "default", "sel", "merge", {"metadata": {"labels": {"app": "web"}}})
    assert [e["type"] for e in await collect(events, 2)] == ["DELETED", "ADDED"]


@pytest.mark.asyncio
async def test_watch_bookmarks_and_timeout(registry: Registry) -> None:
    events = registry.watch(
        CONFIGMAPS, "kube-public", None, ListOptions(), bookmarks=True, duration=0.7
    )
    seen = [e async for e in events]
    assert seen[0]["type"] == "ADDED"  # kube-root-ca.crt
    bookmarks = [e for e in seen if e["type"] == "BOOKMARK"]
    assert bookmarks and bookmarks[0]["object"]["metadata"]["resourceVersion"]


@pytest.mark.asyncio
async def test_watch_compacted_is_410(registry: Registry) -> None:
    for i in range(3):
        await registry.create(CONFIGMAPS, "default", {"metadata": {"name": f"c{i}"}})
    current = await registry.store.current_revision()
    await registry.store.compact(current - 1)
    with pytest.raises(ApiError) as info:
        await collect(registry.watch(CONFIGMAPS, "default", "2", ListOptions()), 1)
    assert info.value.code == 410
    assert info.value.message.startswith("too old resource version: 2 (")


@pytest.mark.asyncio
async def test_binding_and_scale(registry: Registry) -> None:
    await registry.create(PODS, "default", pod("b"))
    status = await registry.bind("default", "b", {"target": {"kind": "Node", "name": "n1"}})
    assert status["status"] == "Success"
    bound = await registry.get(PODS, "default", "b")
    assert bound["spec"]["nodeName"] == "n1"
    err = await expect_error(409, registry.bind("default", "b", {"target": {"name": "n2"}}))
    assert 'already assigned to node "n1"' in err.message

    await registry.create(DEPLOYMENTS, "default", deployment("d", 2))
    scale = await registry.get_scale(DEPLOYMENTS, "default", "d")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"]["replicas"] == 2 and scale["status"]["selector"] == "app=d"
    scaled = await registry.patch_scale(
        DEPLOYMENTS, "default", "d", "merge", {"spec": {"replicas": 5}}
    )
    assert scaled["spec"]["replicas"] == 5
    assert (await registry.get(DEPLOYMENTS, "default", "d"))["spec"]["replicas"] == 5
    await expect_error(
        422, registry.update_scale(DEPLOYMENTS, "default", "d", {"spec": {"replicas": -1}})
    )


@pytest.mark.asyncio
async def test_delete_collection(registry: Registry) -> None:
    for i in range(3):
        await registry.create(
            CONFIGMAPS, "default", {"metadata": {"name": f"dc{i}", "labels": {"g": "1"}}}
        )
    out = await registry.delete_collection(
        CONFIGMAPS,
        "default",
        ListOptions(label_selector=LabelSelector.parse("g=1")),
        DeleteOptions(),
    )
    assert len(out["items"]) == 3
    left = await registry.list(
        CONFIGMAPS, "default", ListOptions(label_selector=LabelSelector.parse("g=1"))
    )
    assert left["items"] == []


@pytest.mark.asyncio
async def test_nodes_keep_status_on_create(registry: Registry) -> None:
    node = {
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }
    created = await registry.create(NODES, None, node)
    assert created["status"]["addresses"][0]["address"] == "127.0.0.1"
    assert "namespace" not in created["metadata"]


@pytest.mark.asyncio
async def test_raw_list_equals_decoded_list(registry: Registry) -> None:
    import json

    for i in range(3):
        await registry.create(PODS, "default", pod(f"r{i}"))
    raw = json.loads(await registry.list_json(PODS, "default"))
    decoded = await registry.list(PODS, "default", ListOptions())
    assert raw == decoded
    assert [p["metadata"]["resourceVersion"] for p in raw["items"]] == [
        p["metadata"]["resourceVersion"] for p in decoded["items"]
    ]


@pytest.mark.asyncio
async def test_system_namespaces_cannot_be_deleted(registry: Registry) -> None:
    err = await expect_error(403, registry.delete(NAMESPACES, None, "default", DeleteOptions()))
    assert "may not be deleted" in err.message


@pytest.mark.asyncio
async def test_strict_field_validation_on_update_counts_only_new_fields(
    registry: Registry,
) -> None:
    # an unknown field that got stored (Ignore) must not fail later strict updates...
    await registry.create(CONFIGMAPS, "default", {"metadata": {"name": "fv"}, "data": {"a": "b"}})
    patched = await registry.patch(
        CONFIGMAPS, "default", "fv", "merge", {"data": {"c": "d"}}, field_validation="Strict"
    )
    assert patched["data"] == {"a": "b", "c": "d"}
    # ...while a field the client adds is refused, as upstream's patcher words it: the patched
    # object (JSON and merge patches) or the patch (strategic) is the cause's value
    err = await expect_error(
        422,
        registry.patch(
            CONFIGMAPS, "default", "fv", "merge", {"dta": {"x": "y"}}, field_validation="Strict"
        ),
    )
    assert err.message.startswith(' "" is invalid: patch: Invalid value: "{')
    assert err.message.endswith('}": strict decoding error: unknown field "dta"')
    err = await expect_error(
        422,
        registry.patch(
            CONFIGMAPS, "default", "fv", "strategic", {"dta": {"x": 1e6}}, field_validation="Strict"
        ),
    )
    assert err.message == (
        ' "" is invalid: patch: Invalid value: "map[dta:map[x:1e+06]]": strict decoding error: '
        'unknown field "dta"'
    )
    err = await expect_error(
        400,
        registry.update(
            CONFIGMAPS,
            "default",
            "fv",
            {"metadata": {"name": "fv"}, "dta": {}},
            field_validation="Strict",
        ),
    )
    assert err.message == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
        'unknown field "dta"'
    )
    warnings: list[str] = []
    kept = await registry.patch(
        CONFIGMAPS,
        "default",
        "fv",
        "merge",
        {"dta": {"x": "y"}},
        field_validation="Warn",
        warnings=warnings,
    )
    assert "dta" not in kept and warnings == ['unknown field "dta"']


@pytest.mark.asyncio
async def test_servers_sharing_a_store_bootstrap_together(store: Store) -> None:
    """Three servers starting at once on one store: one creates the kubernetes Service, the
    others find its IP allocated (422) or its name taken (409) and start anyway (`podnet up
    --servers 3` lost a server to the 422 when their starts lined up)."""
    from podnet.apiserver.bootstrap import bootstrap

    registries = [
        Registry(store, ClusterConfig(), ca_pem=b"-----BEGIN CERTIFICATE-----\n") for _ in range(3)
    ]
    await asyncio.gather(*(bootstrap(r, f"127.0.0.{i}", 6443) for i, r in enumerate(registries, 1)))
    service = await registries[0].get(SERVICES, "default", "kubernetes")
    assert service["spec"]["clusterIP"] == ClusterConfig().kubernetes_service_ip


@pytest.mark.asyncio
async def test_a_watch_asked_for_during_shutdown_ends_at_once_and_starts_no_cache(
    registry: Registry,
) -> None:
    stop = asyncio.Event()
    stop.set()
    events = registry.watch(CONFIGMAPS, "default", "0", ListOptions(), stop=stop)
    assert [e async for e in events] == []
    assert CONFIGMAPS.storage_prefix(None) not in registry.watch_cache._cachers


@pytest.mark.asyncio
async def test_defaults_are_filled_into_the_writes_own_copy_never_the_callers(
    registry: Registry,
) -> None:
    """Defaults are filled in where the registry's own copy is (no further copy): the
    caller's body (a controller's object through LocalApi) stays as it was sent."""
    body = deployment("d")
    sent = copy.deepcopy(body)
    created = await registry.create(DEPLOYMENTS, "default", body)
    assert body == sent
    assert created["spec"]["revisionHistoryLimit"] == 10  # defaulted
    update = {**created, "spec": {**created["spec"], "replicas": 3}}
    update["spec"].pop("revisionHistoryLimit")
    update["spec"].pop("strategy")
    before = copy.deepcopy(update)
    updated = await registry.update(DEPLOYMENTS, "default", "d", update)
    assert update == before
    assert updated["spec"]["replicas"] == 3 and updated["spec"]["revisionHistoryLimit"] == 10
    assert updated["spec"]["strategy"]["type"] == "RollingUpdate"


@pytest.mark.parametrize(
    "stored",
    [
        {"metadata": {"name": "a", "uid": "u-1"}, "spec": {"x": [1, "y"]}},  # encode's layout
        {"metadata": {}, "data": {"k": "v"}},  # empty metadata, still spliced
        {"data": {"k": "v"}},  # no metadata at all
    ],
)
def test_with_resource_version_equals_a_decode_and_encode(stored: dict[str, Any]) -> None:
    for value in (encode(stored), json.dumps(stored).encode()):  # and a layout of another writer
        kv = KeyValue("/k", value, 3, 42)
        got = with_resource_version(kv)
        assert json.loads(got) == decode(kv)
        assert json.loads(got)["metadata"]["resourceVersion"] == "42"


def test_with_resource_version_of_another_layout_keeps_out_of_the_shared_strings() -> None:
    """A value not in `encode`'s layout (metadata not first) is decoded and dropped: its strings
    must not go through sharedjson's memo (2-3x json.loads's CPU, and it would evict the
    informers' shared strings for values seen once)."""
    value = b'{"kind":"Pod","metadata":{"name":"p","uid":"uid-seen-once-7f3a"},"spec":{}}'
    sharedjson._memo.pop("uid-seen-once-7f3a", None)
    got = with_resource_version(KeyValue("/k", value, 3, 9))
    assert got == (
        b'{"kind":"Pod","metadata":{"name":"p","uid":"uid-seen-once-7f3a","resourceVersion":"9"},'
        b'"spec":{}}'
    )
    assert "uid-seen-once-7f3a" not in sharedjson._memo


@pytest.mark.asyncio
async def test_namespace_finalizer_never_drops_the_finalizer_of_a_namespace_created_again(
    registry: Registry,
) -> None:
    """Two API servers run the namespace finalizer. Between one pass's read of a terminating
    namespace and its write, the other's pass finalizes it (it is removed) and a client creates
    the name again: the late write must not drop the new namespace's finalizer, or deleting the
    new one would remove it at once with its contents left behind."""
    await registry.create(NAMESPACES, None, {"metadata": {"name": "again"}})
    await registry.delete(NAMESPACES, None, "again", DeleteOptions())

    class RacedBackend:
        """The registry, with the other server's pass and the re-create landing just before
        this pass writes."""

        def __getattr__(self, attr: str) -> Any:
            return getattr(registry, attr)

        async def rewrite(self, res: Any, ns: Any, name: str, mutate: Any) -> Any:
            assert await finalize_namespaces(registry) is False  # the other server's pass
            await registry.create(NAMESPACES, None, {"metadata": {"name": name}})
            return await registry.rewrite(res, ns, name, mutate)

    assert await finalize_namespaces(RacedBackend()) is False  # type: ignore[arg-type]
    recreated = await registry.get(NAMESPACES, None, "again")
    assert recreated["spec"]["finalizers"] == ["kubernetes"]
    await registry.create(CONFIGMAPS, "again", {"metadata": {"name": "kept"}})
    await registry.delete(NAMESPACES, None, "again", DeleteOptions())
    await registry.get(NAMESPACES, None, "again")  # Terminating until emptied, not gone at once


@pytest.mark.asyncio
async def test_namespace_finalizer_leaves_the_contents_of_a_namespace_created_again(
    registry: Registry,
) -> None:
    """As above, with the other server's pass and the re-create landing while this pass is
    about to empty the namespace: what is in it now is the new namespace's, and stays."""
    await registry.create(NAMESPACES, None, {"metadata": {"name": "again"}})
    await registry.delete(NAMESPACES, None, "again", DeleteOptions())
    content_prefix = CONFIGMAPS.storage_prefix("again")
    raced: list[str] = []

    class RacedStore:
        def __getattr__(self, attr: str) -> Any:
            return getattr(registry.store, attr)

        async def list(self, prefix: str) -> Any:
            if prefix == content_prefix and not raced:
                raced.append(prefix)
                assert await finalize_namespaces(registry) is False  # the other server's pass
                await registry.create(NAMESPACES, None, {"metadata": {"name": "again"}})
                await registry.create(CONFIGMAPS, "again", {"metadata": {"name": "fresh"}})
            return await registry.store.list(prefix)

    class RacedBackend:
        store = RacedStore()

        def __getattr__(self, attr: str) -> Any:
            return getattr(registry, attr)

    assert await finalize_namespaces(RacedBackend()) is False  # type: ignore[arg-type]
    assert raced
    await registry.get(CONFIGMAPS, "again", "fresh")
    await registry.get(BY_PLURAL["serviceaccounts"], "again", "default")
    assert (await registry.get(NAMESPACES, None, "again"))["status"]["phase"] == "Active"


@pytest.mark.asyncio
async def test_a_patch_never_writes_into_the_stored_objects_decode(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every patch but a merge patch of the main resource is made on the loop's one decode of
    # the stored object (`old`), which later steps compare with: no step may write into it
    olds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    updated = Registry._updated

    def watched(
        self: Registry, res: Any, strategy: Any, ctx: Any, kv: Any, old: dict[str, Any], *rest: Any
    ) -> dict[str, Any]:
        olds.append((old, copy.deepcopy(old)))
        return updated(self, res, strategy, ctx, kv, old, *rest)

    monkeypatch.setattr(Registry, "_updated", watched)
    await registry.create(PODS, "default", pod("kept", nodeName="n1"), manager="kubectl")
    await registry.create(DEPLOYMENTS, "default", deployment("d"), manager="kubectl")
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-07T12:00:00Z"}
    patches: list[tuple[Any, str, str, Any, str | None, str]] = [
        (
            PODS,
            "kept",
            "merge",
            {"status": {"phase": "Running", "conditions": [ready]}},
            "status",
            "Ignore",
        ),
        (
            PODS,
            "kept",
            "merge",
            {"status": {"podIP": "10.0.0.9", "qosClass": None}},
            "status",
            "Ignore",
        ),
        (
            PODS,
            "kept",
            "merge",
            {"metadata": {"labels": {"x": "y"}}, "status": {"reason": "r"}},
            "status",
            "Strict",
        ),
        (PODS, "kept", "merge", {"status": None}, "status", "Ignore"),
        (
            PODS,
            "kept",
            "strategic",
            {"status": {"conditions": [dict(ready, status="False")]}},
            "status",
            "Ignore",
        ),
        (
            PODS,
            "kept",
            "json",
            [{"op": "add", "path": "/status/message", "value": "m"}],
            "status",
            "Ignore",
        ),
        (PODS, "kept", "merge", {"metadata": {"labels": {"x": "z"}}}, None, "Strict"),
        (PODS, "kept", "strategic", {"metadata": {"labels": {"x": "w"}}}, None, "Ignore"),
        (
            PODS,
            "kept",
            "json",
            [{"op": "add", "path": "/metadata/labels/v", "value": "1"}],
            None,
            "Ignore",
        ),
        (
            DEPLOYMENTS,
            "d",
            "merge",
            {"status": {"replicas": 1, "conditions": [ready]}},
            "status",
            "Ignore",
        ),
        (DEPLOYMENTS, "d", "merge", {"status": {"replicas": 2}}, "status", "Warn"),
    ]
    for res, name, patch_type, body, subresource, validation in patches:
        before = await registry.get(res, "default", name)
        written = await registry.patch(
            res,
            "default",
            name,
            patch_type,
            copy.deepcopy(body),
            subresource,
            field_validation=validation,
            manager="writer",
        )
        assert olds and all(old == snapshot for old, snapshot in olds), (patch_type, body)
        olds.clear()
        stored = await registry.get(res, "default", name)
        assert stored == written
        if subresource == "status":  # only the status changed
            assert {k: v for k, v in stored.items() if k not in ("status", "metadata")} == {
                k: v for k, v in before.items() if k not in ("status", "metadata")
            }
            assert stored["metadata"].get("labels") == before["metadata"].get("labels")
    pod_now = await registry.get(PODS, "default", "kept")
    assert pod_now["status"]["conditions"] == [dict(ready, status="False")]
    assert pod_now["status"]["message"] == "m" and "podIP" not in pod_now["status"]
    assert pod_now["metadata"]["labels"] == {"app": "web", "x": "w", "v": "1"}
    assert pod_now["spec"]["nodeName"] == "n1"
    managers = {entry["manager"] for entry in pod_now["metadata"]["managedFields"]}
    assert managers == {"kubectl", "writer"}
    deployment_now = await registry.get(DEPLOYMENTS, "default", "d")
    assert deployment_now["status"]["replicas"] == 2
    assert deployment_now["status"]["conditions"] == [ready]


@pytest.mark.asyncio
async def test_a_patch_walks_the_fields_it_names(registry: Registry) -> None:
    # a merge or strategic patch re-checks (types, unknown fields) only the top-level fields
    # it names: the others are the stored object's; what it names answers as before
    await registry.create(PODS, "default", pod("walk"))
    error = await expect_error(
        400,
        registry.patch(
            PODS,
            "default",
            "walk",
            "merge",
            {"spec": {"nodeName": 5}, "status": {"phase": "Running"}},
            subresource="status",
        ),
    )
    assert "PodSpec.spec.nodeName of type string" in error.message
    error = await expect_error(
        422,  # upstream's word for a strategic patch's strict decoding error
        registry.patch(
            PODS,
            "default",
            "walk",
            "strategic",
            {"spec": {"bogus": 1}, "status": {"phase": "Running"}},
            subresource="status",
            field_validation="Strict",
        ),
    )
    assert 'unknown field "spec.bogus"' in error.message
    warnings: list[str] = []
    patched = await registry.patch(
        PODS,
        "default",
        "walk",
        "merge",
        {"metadata": {"labelz": {"a": "b"}, "labels": {"x": "y"}}},
        field_validation="Warn",
        warnings=warnings,
    )
    assert warnings == ['unknown field "metadata.labelz"']
    assert "labelz" not in patched["metadata"] and patched["metadata"]["labels"]["x"] == "y"
    status = await registry.patch(
        PODS, "default", "walk", "merge", {"status": {"phase": "Running"}}, subresource="status"
    )
    assert status["status"]["phase"] == "Running"
    # a top-level directive of a strategic patch may change any field: the whole is walked
    await expect_error(
        400,
        registry.patch(
            PODS,
            "default",
            "walk",
            "strategic",
            {"$patch": "replace", "metadata": {"name": "walk"}, "spec": {"nodeName": 5}},
        ),
    )
