"""The HTTP layer: routing, auth, discovery, content negotiation, errors, watch framing."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from podnet.apiserver.handlers import MAX_BODY_BYTES
from podnet.apiserver.registry import Registry
from podnet.apiserver.strategies.namespaces import finalize_namespaces

TOKEN = "test-token"  # conftest's API_TOKEN, which `client` accepts
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TABLE_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


def pod_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


async def status_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert body["kind"] == "Status", body
    assert body["code"] == resp.status
    return body


@pytest.mark.asyncio
async def test_auth(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/namespaces/default/pods")
    assert resp.status == 401
    assert (await status_of(resp))["reason"] == "Unauthorized"
    resp = await client.get("/api/v1/pods", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    # public paths answer anonymous callers, but a wrong token is refused even there
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/version")).status == 200
    assert (await client.get("/readyz", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/api/v1/pods", headers=AUTH)).status == 200


@pytest.mark.asyncio
async def test_discovery(client: TestClient[Any, Any]) -> None:
    version = await (await client.get("/version")).json()
    assert version["major"] == "1" and version["minor"] == "32"
    apis = await (await client.get("/apis", headers=AUTH)).json()
    assert {g["name"] for g in apis["groups"]} == {
        "apps",
        "batch",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "networking.k8s.io",
        "policy",
        "autoscaling",
        "rbac.authorization.k8s.io",
        "apiregistration.k8s.io",
        "authentication.k8s.io",
        "authorization.k8s.io",
    }
    core = await (await client.get("/api/v1", headers=AUTH)).json()
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["shortNames"] == ["po"]
    assert "watch" in by_name["pods"]["verbs"]
    assert by_name["pods/exec"]["kind"] == "PodExecOptions"
    eviction = by_name["pods/eviction"]  # what `kubectl drain` looks for
    assert (eviction["group"], eviction["version"], eviction["kind"]) == (
        "policy",
        "v1",
        "Eviction",
    )
    apps = await (await client.get("/apis/apps/v1", headers=AUTH)).json()
    scale = {r["name"]: r for r in apps["resources"]}["deployments/scale"]
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    resp = await client.get("/apis/nope/v1", headers=AUTH)
    assert resp.status == 404 and (await status_of(resp))["reason"] == "NotFound"


@pytest.mark.asyncio
async def test_crud_round_trip_and_errors(client: TestClient[Any, Any]) -> None:
    base = "/api/v1/namespaces/default/pods"
    resp = await client.post(base, json=pod_body("web"), headers=AUTH)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    resp = await client.get(f"{base}/web", headers=AUTH)
    assert (await resp.json())["metadata"]["uid"] == created["metadata"]["uid"]
    resp = await client.post(base, json=pod_body("web"), headers=AUTH)
    assert resp.status == 409 and (await status_of(resp))["reason"] == "AlreadyExists"
    resp = await client.get(f"{base}/nope", headers=AUTH)
    status = await status_of(resp)
    assert status["message"] == 'pods "nope" not found'
    assert status["details"] == {"name": "nope", "kind": "pods"}
    resp = await client.put(f"{base}/other", json={**created}, headers=AUTH)
    assert resp.status == 400 and "does not match the name" in (await status_of(resp))["message"]
    resp = await client.post(
        base, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 400 and "not valid JSON" in (await status_of(resp))["message"]
    resp = await client.post(
        base,
        data=io.BytesIO(b"x" * (MAX_BODY_BYTES + 10)),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status == 413
    resp = await client.patch(
        f"{base}/web", data=b"{}", headers={**AUTH, "Content-Type": "application/apply-patch+yaml"}
    )
    assert resp.status == 422  # an apply names its fieldManager
    resp = await client.patch(
        f"{base}/web",
        json={"metadata": {"labels": {"a": "b"}}},
        headers={**AUTH, "Content-Type": "application/merge-patch+json"},
    )
    assert resp.status == 200 and (await resp.json())["metadata"]["labels"] == {"a": "b"}
    resp = await client.delete(
        f"{base}/web",
        json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        headers=AUTH,
    )
    assert resp.status == 200
    assert (await client.get(f"{base}/web", headers=AUTH)).status == 404


@pytest.mark.asyncio
async def test_yaml_body_and_dry_run(client: TestClient[Any, Any]) -> None:
    yaml_body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  k: v\n"
    resp = await client.post(
        "/api/v1/namespaces/default/configmaps?dryRun=All",
        data=yaml_body,
        headers={**AUTH, "Content-Type": "application/yaml"},
    )
    assert resp.status == 201
    assert (await client.get("/api/v1/namespaces/default/configmaps/y", headers=AUTH)).status == 404


@pytest.mark.asyncio
async def test_table_output(client: TestClient[Any, Any]) -> None:
    await client.post("/api/v1/namespaces/default/pods", json=pod_body("t1"), headers=AUTH)
    resp = await client.get(
        "/api/v1/namespaces/default/pods", headers={**AUTH, "Accept": TABLE_ACCEPT}
    )
    table = await resp.json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["rows"][0]["cells"][0] == "t1"
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert table["metadata"]["resourceVersion"]
    single = await (
        await client.get(
            "/api/v1/namespaces/default/pods/t1", headers={**AUTH, "Accept": TABLE_ACCEPT}
        )
    ).json()
    assert single["kind"] == "Table" and len(single["rows"]) == 1


async def read_events(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        line = await asyncio.wait_for(resp.content.readline(), 5)
        if not line:
            break
        events.append(json.loads(line))
    return events


@pytest.mark.asyncio
async def test_watch_stream(client: TestClient[Any, Any]) -> None:
    listed = await (await client.get("/api/v1/namespaces/default/configmaps", headers=AUTH)).json()
    rv = listed["metadata"]["resourceVersion"]
    resp = await client.get(
        f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=5",
        headers=AUTH,
    )
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    await client.post(
        "/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "w"}}, headers=AUTH
    )
    await client.delete("/api/v1/namespaces/default/configmaps/w", headers=AUTH)
    events = await read_events(resp, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w"),
        ("DELETED", "w"),
    ]
    resp.close()


@pytest.mark.asyncio
async def test_legacy_watch_path_and_table_events(client: TestClient[Any, Any]) -> None:
    await client.post("/api/v1/namespaces/default/pods", json=pod_body("lw"), headers=AUTH)
    resp = await client.get(
        "/api/v1/watch/namespaces/default/pods/lw?timeoutSeconds=3",
        headers={**AUTH, "Accept": TABLE_ACCEPT},
    )
    events = await read_events(resp, 1)
    assert events[0]["type"] == "ADDED" and events[0]["object"]["kind"] == "Table"
    resp.close()


@pytest.mark.asyncio
async def test_watch_too_old_is_an_error_event(
    client: TestClient[Any, Any], registry: Registry
) -> None:
    for i in range(3):
        await client.post(
            "/api/v1/namespaces/default/configmaps",
            json={"metadata": {"name": f"o{i}"}},
            headers=AUTH,
        )
    await registry.store.compact(await registry.store.current_revision() - 1)
    resp = await client.get(
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=3", headers=AUTH
    )
    assert resp.status == 200
    (event,) = await read_events(resp, 1)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    assert event["object"]["message"].startswith("too old resource version: 3 (")


@pytest.mark.asyncio
async def test_binding_scale_and_status_routes(client: TestClient[Any, Any]) -> None:
    await client.post("/api/v1/namespaces/default/pods", json=pod_body("b"), headers=AUTH)
    resp = await client.post(
        "/api/v1/namespaces/default/pods/b/binding",
        json={
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "b"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
        },
        headers=AUTH,
    )
    assert resp.status == 201
    pod = await (await client.get("/api/v1/namespaces/default/pods/b/status", headers=AUTH)).json()
    assert pod["spec"]["nodeName"] == "n1"
    pod["status"]["phase"] = "Running"
    resp = await client.put("/api/v1/namespaces/default/pods/b/status", json=pod, headers=AUTH)
    assert (await resp.json())["status"]["phase"] == "Running"
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }
    resp = await client.post(
        "/apis/apps/v1/namespaces/default/deployments", json=deploy, headers=AUTH
    )
    assert resp.status == 201, await resp.text()
    resp = await client.patch(
        "/apis/apps/v1/namespaces/default/deployments/d/scale",
        json={"spec": {"replicas": 4}},
        headers={**AUTH, "Content-Type": "application/merge-patch+json"},
    )
    assert (await resp.json())["spec"]["replicas"] == 4


@pytest.mark.asyncio
async def test_unknown_paths_and_methods(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/namespaces/default/widgets", headers=AUTH)
    assert resp.status == 404 and (await status_of(resp))["reason"] == "NotFound"
    resp = await client.post("/api/v1/nodes/n1/status", json={}, headers=AUTH)
    assert resp.status == 405
    resp = await client.get("/api/v1/namespaces/default/pods/x/portforward", headers=AUTH)
    assert resp.status == 404


@pytest.mark.asyncio
async def test_field_validation(client: TestClient[Any, Any]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fv"},
        "data": {"a": "b"},
        "dta": {"typo": "x"},
    }
    base = "/api/v1/namespaces/default/configmaps"
    resp = await client.post(f"{base}?fieldValidation=Strict", json=body, headers=AUTH)
    assert resp.status == 400
    assert 'unknown field "dta"' in (await status_of(resp))["message"]
    resp = await client.post(base, json=body, headers=AUTH)  # default Warn: dropped + warning
    assert resp.status == 201
    assert "dta" not in await resp.json()
    assert 'unknown field \\"dta\\"' in resp.headers["Warning"] or "dta" in resp.headers["Warning"]


@pytest.mark.asyncio
async def test_eviction_refused_by_a_budget_says_when_to_retry(
    client: TestClient[Any, Any],
) -> None:
    base = "/api/v1/namespaces/default/pods"
    body = pod_body("guarded")
    body["metadata"]["labels"] = {"app": "guarded"}
    assert (await client.post(base, json=body, headers=AUTH)).status == 201
    running = {"status": {"phase": "Running"}}
    resp = await client.patch(
        f"{base}/guarded/status",
        data=json.dumps(running),
        headers={**AUTH, "Content-Type": "application/merge-patch+json"},
    )
    assert resp.status == 200
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "guard"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }
    resp = await client.post(
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets", json=budget, headers=AUTH
    )
    assert resp.status == 201
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "guarded"}}
    resp = await client.post(f"{base}/guarded/eviction", json=eviction, headers=AUTH)
    # no disruption controller runs here: the budget's status is older than its spec
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "10"
    status = await status_of(resp)
    assert status["reason"] == "TooManyRequests"
    assert "is still being processed by the server" in status["message"]
    resp = await client.get(f"{base}/guarded/eviction", headers=AUTH)
    assert resp.status == 405


@pytest.mark.asyncio
async def test_an_http10_watch_is_not_chunked_and_ends_at_close(
    client: TestClient[Any, Any], http10_get: Any
) -> None:
    """HTTP/1.0 has no chunked encoding: a watch for such a client sends its events as they are
    and ends the body by closing the connection (it was a 500, aiohttp refusing chunks)."""
    await client.post("/api/v1/namespaces/default/pods", json=pod_body("old"), headers=AUTH)
    answer = await http10_get(
        client.port, "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1", TOKEN
    )
    assert answer.status_line == "HTTP/1.0 200 OK", answer
    assert "transfer-encoding" not in answer.headers, answer.headers
    assert "content-length" not in answer.headers, answer.headers
    events = [json.loads(line) for line in answer.body.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "old")]


@pytest.mark.asyncio
async def test_namespace_finalize_subresource_clears_a_stuck_namespace(
    client: TestClient[Any, Any],
) -> None:
    """PUT /api/v1/namespaces/NAME/finalize (what `kubectl replace --raw` tools send to clear
    spec.finalizers of a namespace stuck Terminating) writes spec.finalizers; status is kept."""
    base = "/api/v1/namespaces"
    body = {"metadata": {"name": "stuck"}, "spec": {"finalizers": ["example.com/held"]}}
    assert (await client.post(base, json=body, headers=AUTH)).status == 201
    assert (await client.delete(f"{base}/stuck", headers=AUTH)).status == 200
    ns = await (await client.get(f"{base}/stuck", headers=AUTH)).json()
    assert ns["status"]["phase"] == "Terminating"
    resp = await client.get(f"{base}/stuck/finalize", headers=AUTH)
    assert resp.status == 405 and (await status_of(resp))["reason"] == "MethodNotAllowed"

    ns["spec"]["finalizers"] = ["example.com/held", "example.com/other"]
    ns["status"] = {"phase": "Active"}  # not taken: status is the server's
    resp = await client.put(f"{base}/stuck/finalize", json=ns, headers=AUTH)
    assert resp.status == 200, await resp.text()
    written = await resp.json()
    assert written["spec"]["finalizers"] == ["example.com/held", "example.com/other"]
    assert written["status"]["phase"] == "Terminating"

    written["spec"]["finalizers"] = ["not qualified"]
    resp = await client.put(f"{base}/stuck/finalize", json=written, headers=AUTH)
    assert resp.status == 422 and (await status_of(resp))["reason"] == "Invalid"

    # (no namespace finalizer runs here: the namespace has nothing but example.com entries)
    written["spec"]["finalizers"] = []
    resp = await client.put(f"{base}/stuck/finalize", json=written, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await client.get(f"{base}/stuck", headers=AUTH)).status == 404
    gone = {"metadata": {"name": "gone"}, "spec": {"finalizers": []}}
    resp = await client.put(f"{base}/gone/finalize", json=gone, headers=AUTH)
    assert resp.status == 404 and (await status_of(resp))["reason"] == "NotFound"


@pytest.mark.asyncio
async def test_only_finalize_changes_a_namespaces_spec_finalizers(
    client: TestClient[Any, Any], registry: Registry
) -> None:
    """Upstream's namespace strategy: create appends the `kubernetes` finalizer to whatever was
    asked; a plain PUT, every kind of PATCH and an apply keep spec.finalizers as stored (the
    rest of the write is taken); only PUT namespaces/NAME/finalize changes them, and a
    finalize body that leaves the emptied list out empties it."""
    base = "/api/v1/namespaces"
    body = {"metadata": {"name": "kept"}, "spec": {"finalizers": ["example.com/held"]}}
    resp = await client.post(base, json=body, headers=AUTH)
    assert resp.status == 201, await resp.text()
    held = ["example.com/held", "kubernetes"]
    assert (await resp.json())["spec"]["finalizers"] == held

    ns = await (await client.get(f"{base}/kept", headers=AUTH)).json()
    ns["spec"]["finalizers"] = []
    ns["metadata"]["labels"]["team"] = "a"
    resp = await client.put(f"{base}/kept", json=ns, headers=AUTH)
    assert resp.status == 200, await resp.text()
    put = await resp.json()
    assert put["spec"]["finalizers"] == held and put["metadata"]["labels"]["team"] == "a"
    del put["spec"]  # a body without spec does not drop them either
    resp = await client.put(f"{base}/kept", json=put, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["spec"] == {"finalizers": held}
    patches = [
        ("application/merge-patch+json", {"spec": {"finalizers": None}}),
        ("application/strategic-merge-patch+json", {"spec": {"finalizers": ["example.com/x"]}}),
        ("application/json-patch+json", [{"op": "remove", "path": "/spec/finalizers"}]),
        ("application/json-patch+json", [{"op": "replace", "path": "/spec", "value": {}}]),
    ]
    for content_type, patch in patches:
        resp = await client.patch(
            f"{base}/kept", data=json.dumps(patch), headers={**AUTH, "Content-Type": content_type}
        )
        assert resp.status == 200, (content_type, await resp.text())
        assert (await resp.json())["spec"]["finalizers"] == held, (content_type, patch)
    applied = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kept"},
               "spec": {"finalizers": ["example.com/applied"]}}  # fmt: skip
    resp = await client.patch(
        f"{base}/kept?fieldManager=tool&force=true",  # the create's manager owns them
        data=json.dumps(applied),
        headers={**AUTH, "Content-Type": "application/apply-patch+yaml"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["spec"]["finalizers"] == held
    stored = await (await client.get(f"{base}/kept", headers=AUTH)).json()
    assert stored["spec"]["finalizers"] == held

    # /finalize takes them; a body without spec.finalizers (how `omitempty` writes []) empties
    stored["spec"]["finalizers"] = ["kubernetes"]
    resp = await client.put(f"{base}/kept/finalize", json=stored, headers=AUTH)
    assert resp.status == 200, await resp.text()
    written = await resp.json()
    assert written["spec"]["finalizers"] == ["kubernetes"]
    del written["spec"]["finalizers"]
    resp = await client.put(f"{base}/kept/finalize", json=written, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert not (await resp.json())["spec"].get("finalizers")

    # a plain update of a namespace without finalizers does not bring one back
    again = await (await client.get(f"{base}/kept", headers=AUTH)).json()
    again["spec"]["finalizers"] = ["kubernetes"]
    resp = await client.put(f"{base}/kept", json=again, headers=AUTH)
    assert resp.status == 200 and not (await resp.json())["spec"].get("finalizers")


@pytest.mark.asyncio
async def test_the_namespace_finalizer_still_removes_a_deleted_namespace(
    client: TestClient[Any, Any], registry: Registry
) -> None:
    """The server's own namespace finalizer drops `kubernetes` from the store directly, so a
    plain update that cannot change spec.finalizers does not hold a namespace forever."""
    base = "/api/v1/namespaces"
    assert (await client.post(base, json={"metadata": {"name": "go"}}, headers=AUTH)).status == 201
    cm = {"metadata": {"name": "c"}, "data": {"k": "v"}}
    assert (await client.post(f"{base}/go/configmaps", json=cm, headers=AUTH)).status == 201
    assert (await client.delete(f"{base}/go", headers=AUTH)).status == 200
    ns = await (await client.get(f"{base}/go", headers=AUTH)).json()
    assert ns["spec"]["finalizers"] == ["kubernetes"] and ns["status"]["phase"] == "Terminating"
    for _ in range(5):
        if not await finalize_namespaces(registry):
            break
    assert (await client.get(f"{base}/go", headers=AUTH)).status == 404
