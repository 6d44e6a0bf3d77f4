"""managedFields through the registry: every write is tracked for its manager, server-side
apply creates, merges, conflicts (409) and forces, a client may replace managedFields, the
kubectl client-side → server-side upgrade, and the request rules of an apply."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.apiserver import managed
from podnet.apiserver.registry import Registry

DEPLOYMENTS = BY_PLURAL["deployments"]


def deployment(replicas: int = 1, image: str = "busybox") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }


def managers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["manager"]: e for e in obj["metadata"].get("managedFields", [])}


async def refused(code: int, awaitable: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        await awaitable
    assert raised.value.code == code, raised.value.message
    return raised.value


@pytest.mark.asyncio
async def test_writes_are_tracked_per_manager(registry: Registry) -> None:
    created = await registry.create(DEPLOYMENTS, "default", deployment(), manager="kubectl-create")
    entry = managers(created)["kubectl-create"]
    assert (entry["operation"], entry["apiVersion"]) == ("Update", "apps/v1")
    assert "f:replicas" in entry["fieldsV1"]["f:spec"]
    assert "f:progressDeadlineSeconds" in entry["fieldsV1"]["f:spec"]  # defaults count
    edited = copy.deepcopy(created)
    edited["spec"]["replicas"] = 4
    updated = await registry.update(DEPLOYMENTS, "default", "web", edited, manager="kubectl-edit")
    found = managers(updated)
    assert found["kubectl-edit"]["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in found["kubectl-create"]["fieldsV1"]["f:spec"]
    # an unchanged write writes nothing, so no new time and no new resourceVersion
    again = await registry.update(DEPLOYMENTS, "default", "web", updated, manager="other")
    assert again["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    # writes without a manager (in-process components) keep what is stored
    scaled = await registry.patch(
        DEPLOYMENTS, "default", "web", "merge", {"spec": {"paused": True}}
    )
    assert scaled["metadata"]["managedFields"] == updated["metadata"]["managedFields"]
    # a client that sends managedFields replaces them (how kubectl upgrades client-side apply)
    mine = [{"manager": "me", "operation": "Apply", "apiVersion": "apps/v1",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:paused": {}}}}]  # fmt: skip
    replaced = await registry.patch(
        DEPLOYMENTS,
        "default",
        "web",
        "json",
        [{"op": "replace", "path": "/metadata/managedFields", "value": mine}],
        manager="kubectl",
    )
    assert [e["manager"] for e in replaced["metadata"]["managedFields"]] == ["me"]
    # [{}] is upstream's documented way to clear them; [] changes nothing
    kept = await registry.patch(
        DEPLOYMENTS, "default", "web", "merge", {"metadata": {"managedFields": []}}, manager="x"
    )
    assert kept["metadata"]["managedFields"] == replaced["metadata"]["managedFields"]
    cleared = await registry.patch(
        DEPLOYMENTS, "default", "web", "merge", {"metadata": {"managedFields": [{}]}}, manager="x"
    )
    assert "managedFields" not in cleared["metadata"]
    # ownership never fails a write: a keyless list item is validation's 422
    keyless = deployment()
    keyless["metadata"]["name"] = "keyless"
    del keyless["spec"]["template"]["spec"]["containers"][0]["name"]
    err = await refused(422, registry.create(DEPLOYMENTS, "default", keyless, manager="m"))
    assert "spec.template.spec.containers[0].name: Required value" in err.message


@pytest.mark.asyncio
async def test_server_side_apply_create_conflict_force(registry: Registry) -> None:
    created = await registry.patch(
        DEPLOYMENTS, "default", "web", "apply", deployment(), manager="ci"
    )
    assert created["spec"]["revisionHistoryLimit"] == 10  # created, defaulted
    assert managers(created)["ci"]["operation"] == "Apply"
    await registry.patch(
        DEPLOYMENTS, "default", "web", "merge", {"spec": {"replicas": 5}}, manager="hpa"
    )
    err = await refused(
        409,
        registry.patch(DEPLOYMENTS, "default", "web", "apply", deployment(2), manager="ci"),
    )
    assert err.status()["message"] == (
        'Apply failed with 1 conflict: conflict with "hpa" using apps/v1: .spec.replicas'
    )
    dry = await registry.patch(
        DEPLOYMENTS, "default", "web", "apply", deployment(2), dry_run=True, manager="ci",
        force=True,
    )  # fmt: skip
    assert dry["spec"]["replicas"] == 2
    assert (await registry.get(DEPLOYMENTS, "default", "web"))["spec"]["replicas"] == 5
    forced = await registry.patch(
        DEPLOYMENTS, "default", "web", "apply", deployment(2, "nginx"), manager="ci", force=True
    )
    assert forced["spec"]["replicas"] == 2
    assert forced["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx"
    assert "hpa" not in managers(forced)


@pytest.mark.asyncio
async def test_apply_request_rules(registry: Registry) -> None:
    err = await refused(422, registry.patch(DEPLOYMENTS, "default", "web", "apply", deployment()))
    assert err.message.endswith("fieldManager: Required value: is required for apply patch")
    body = deployment()
    body["metadata"]["managedFields"] = []
    err = await refused(
        400, registry.patch(DEPLOYMENTS, "default", "web", "apply", body, manager="m")
    )
    assert err.message == "metadata.managedFields must be nil"
    twice = deployment()
    twice["spec"]["template"]["spec"]["containers"].append({"name": "c", "image": "x"})
    err = await refused(
        400, registry.patch(DEPLOYMENTS, "default", "web", "apply", twice, manager="m")
    )
    assert err.message == (
        "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): "
        '.spec.template.spec.containers: duplicate entries for key [name="c"]'
    )
    unknown = deployment()
    unknown["spec"]["foo"] = 1
    unknown["spec"]["template"]["spec"]["containers"][0]["bar"] = 2
    err = await refused(
        400, registry.patch(DEPLOYMENTS, "default", "web", "apply", unknown, manager="m")
    )
    assert err.message == (
        "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): errors:\n"
        "  .spec.foo: field not declared in schema\n"
        '  .spec.template.spec.containers[name="c"].bar: field not declared in schema'
    )


@pytest.mark.asyncio
async def test_kubectl_upgrades_client_side_apply_without_conflicts(registry: Registry) -> None:
    """The object a client-side `kubectl apply` made (last-applied annotation, fields owned
    by kubectl-client-side-apply) takes `kubectl apply --server-side` of the same config
    without conflicts, and the annotation follows what the server-side apply applied."""
    body = deployment()
    last = managed.last_applied(body)
    body["metadata"]["annotations"] = {managed.LAST_APPLIED: last}
    await registry.create(DEPLOYMENTS, "default", body, manager="kubectl-client-side-apply")
    applied = await registry.patch(
        DEPLOYMENTS, "default", "web", "apply", deployment(3), manager="kubectl"
    )
    assert applied["spec"]["replicas"] == 3
    annotation = applied["metadata"]["annotations"][managed.LAST_APPLIED]
    assert json.loads(annotation)["spec"]["replicas"] == 3 and annotation.endswith("}\n")
    # another manager gets no such pass
    await registry.patch(
        DEPLOYMENTS, "default", "web", "merge", {"spec": {"replicas": 4}}, manager="edit"
    )
    await refused(
        409,
        registry.patch(DEPLOYMENTS, "default", "web", "apply", deployment(1), manager="kubectl"),
    )
