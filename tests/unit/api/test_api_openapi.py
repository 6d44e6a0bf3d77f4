"""The OpenAPI v3 documents, checked with the same logic kubectl 1.32 runs on them
(cli-runtime `supportsQueryParamV3`, kubectl `gvkSupportsPatchOpenAPIV3` and
`buildStrategicMergePatchFromOpenAPIV3`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from podnet.api import openapi
from podnet.api.resources import GROUP_VERSIONS, RESOURCES, Resource


def _gvk(res: Resource) -> dict[str, str]:
    return {"group": res.group, "version": res.version, "kind": res.kind}


def _patch_ops_for(doc: dict[str, Any], gvk: dict[str, str]) -> list[dict[str, Any]]:
    return [
        item["patch"]
        for item in doc["paths"].values()
        if "patch" in item and item["patch"].get("x-kubernetes-group-version-kind") == gvk
    ]


def test_index_lists_every_group_version_with_content_hash() -> None:
    index = openapi.v3_index()
    assert set(index["paths"]) == {
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/discovery.k8s.io/v1",
        "apis/coordination.k8s.io/v1",
        "apis/networking.k8s.io/v1",
        "apis/policy/v1",
        "apis/autoscaling/v2",
        "apis/rbac.authorization.k8s.io/v1",
        "apis/apiregistration.k8s.io/v1",
        "apis/authentication.k8s.io/v1",
        "apis/authorization.k8s.io/v1",
    }
    assert len(index["paths"]) == len(GROUP_VERSIONS)
    for key, entry in index["paths"].items():
        raw = openapi.v3_document_bytes(key)
        assert raw is not None
        assert entry["serverRelativeURL"] == (
            f"/openapi/v3/{key}?hash={hashlib.sha512(raw).hexdigest().upper()}"
        )


def test_document_lookup_forms_and_unknown_group_version() -> None:
    assert openapi.v3_document("v1") == openapi.v3_document("api/v1")
    assert openapi.v3_document("apps/v1") == openapi.v3_document("/apis/apps/v1")
    assert openapi.v3_document("storage.k8s.io/v1") is None
    assert openapi.v3_hash("storage.k8s.io/v1") is None
    assert openapi.v3_document_bytes("v1") == openapi.v3_document_bytes("v1")  # deterministic


@pytest.mark.parametrize("res", [r for r in RESOURCES if "patch" in r.verbs], ids=lambda r: r.kind)
def test_every_patch_operation_offers_field_validation(res: Resource) -> None:
    """kubectl picks server-side validation iff the first PATCH op for the GVK it meets (Go map
    order, so: every one of them) lists the `fieldValidation` query parameter."""
    doc = openapi.v3_document(res.group_version)
    assert doc is not None
    ops = _patch_ops_for(doc, _gvk(res))
    assert ops, f"no PATCH operation tagged with {_gvk(res)}"
    for op in ops:
        names = {(p["name"], p["in"]) for p in op["parameters"]}
        assert ("fieldValidation", "query") in names
        # kubectl's gvkSupportsPatchOpenAPIV3 looks for the SMP media type
        assert "application/strategic-merge-patch+json" in op["requestBody"]["content"]


def test_create_and_replace_accept_field_validation_too() -> None:
    doc = openapi.v3_document("v1")
    assert doc is not None
    pods = doc["paths"]["/api/v1/namespaces/{namespace}/pods"]
    assert {"fieldValidation", "fieldManager", "dryRun"} <= {
        p["name"] for p in pods["post"]["parameters"]
    }
    item = doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]
    assert item["put"]["x-kubernetes-action"] == "put"
    assert item["get"]["operationId"] == "readCoreV1NamespacedPod"
    nodes = doc["paths"]["/api/v1/nodes/{name}"]
    assert [p["name"] for p in nodes["parameters"]] == ["name", "pretty"]


def test_scale_subresource_carries_autoscaling_gvk() -> None:
    doc = openapi.v3_document("apps/v1")
    assert doc is not None
    scale = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]
    assert scale["patch"]["x-kubernetes-group-version-kind"] == {
        "group": "autoscaling",
        "version": "v1",
        "kind": "Scale",
    }
    # pods/exec, pods/log and pods/binding are not patchable objects: no path for them
    core = openapi.v3_document("v1")
    assert core is not None
    assert not [p for p in core["paths"] if p.endswith(("/exec", "/log", "/binding"))]


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


@pytest.mark.parametrize("gv", GROUP_VERSIONS)
def test_components_hold_upstreams_schema_of_every_served_kind(gv: str) -> None:
    """kubectl explain finds a kind by the GVK tag of a component schema; every reference in
    the document resolves inside it."""
    doc = openapi.v3_document(gv)
    assert doc is not None
    schemas = doc["components"]["schemas"]
    tagged = {
        (g["group"], g["version"], g["kind"])
        for s in schemas.values()
        for g in s.get("x-kubernetes-group-version-kind", [])
    }
    for res in RESOURCES:
        if res.group_version == gv:
            assert (res.group, res.version, res.kind) in tagged
    prefix = "#/components/schemas/"
    for ref in _refs(doc):
        assert ref.startswith(prefix) and ref[len(prefix) :] in schemas, ref


def test_pod_schema_is_upstreams() -> None:
    doc = openapi.v3_document("v1")
    assert doc is not None
    schemas = doc["components"]["schemas"]
    spec = schemas["io.k8s.api.core.v1.PodSpec"]
    assert spec["required"] == ["containers"]
    containers = spec["properties"]["containers"]
    assert containers["description"].startswith("List of containers belonging to the pod.")
    assert containers["items"] == {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}
    assert (containers["x-kubernetes-list-type"], containers["x-kubernetes-list-map-keys"]) == (
        "map",
        ["name"],
    )
    assert (
        containers["x-kubernetes-patch-strategy"],
        containers["x-kubernetes-patch-merge-key"],
    ) == (
        "merge",
        "name",
    )
    port = schemas["io.k8s.api.core.v1.ContainerPort"]["properties"]["containerPort"]
    assert (port["type"], port["format"]) == ("integer", "int32")
    target = schemas["io.k8s.api.core.v1.ServicePort"]["properties"]["targetPort"]
    assert target["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString"}
    ]
    int_or_string = schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]
    assert int_or_string["format"] == "int-or-string" and "type" not in int_or_string
    assert int_or_string["oneOf"] == [{"type": "integer"}, {"type": "string"}]
    # the JSON-Schema converter's pinned apiVersion/kind enums are not upstream's
    assert "enum" not in schemas["io.k8s.api.core.v1.Pod"]["properties"]["kind"]


def test_scale_schema_is_in_every_document_with_a_scale_path() -> None:
    for gv in ("apps/v1", "v1"):
        doc = openapi.v3_document(gv)
        assert doc is not None
        assert "io.k8s.api.autoscaling.v1.Scale" in doc["components"]["schemas"]


def test_documents_are_openapi_3_json() -> None:
    for gv in GROUP_VERSIONS:
        raw = openapi.v3_document_bytes(gv)
        assert raw is not None
        doc = json.loads(raw)
        assert doc["openapi"] == "3.0.0"
        assert doc["info"]["version"] == "v1.32.0"
        for path, item in doc["paths"].items():
            assert path.startswith(("/api/v1/", "/apis/"))
            for method in ("get", "put", "post", "patch", "delete"):
                if method in item:
                    assert item[method]["responses"]["401"] == {"description": "Unauthorized"}


def test_returned_documents_are_copies() -> None:
    doc = openapi.v3_document("v1")
    assert doc is not None
    doc["paths"].clear()
    index = openapi.v3_index()
    index["paths"].clear()
    assert openapi.v3_document("v1")["paths"]  # type: ignore[index]
    assert openapi.v3_index()["paths"]
