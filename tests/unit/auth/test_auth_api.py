"""apiserver.auth through the real server (HTTPS, in this process): TokenRequest, a
ServiceAccount token held to RBAC, node credentials held to the Node authorizer, the review
APIs, and the admin kubeconfig staying cluster-admin."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from podnet.apiserver.local import LocalApi
from podnet.apiserver.server import ApiServer


class Client:
    def __init__(self, server: ApiServer, session: aiohttp.ClientSession, token: str) -> None:
        self.url, self.session, self.token = server.url, session, token

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json()


@pytest_asyncio.fixture
async def session(api_server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    assert api_server.credentials is not None
    context = ssl.create_default_context(cafile=str(api_server.credentials.ca_path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
        yield s


POD = {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


@pytest.mark.asyncio
async def test_service_account_token_is_held_to_rbac(
    api_server: ApiServer, session: aiohttp.ClientSession
) -> None:
    assert api_server.registry is not None and api_server.credentials is not None
    admin = Client(api_server, session, api_server.credentials.token)
    local = LocalApi(api_server.registry, api_server.stop_event)
    await local.create("serviceaccounts", {"metadata": {"name": "x"}}, "default")
    pod = await local.create(
        "pods", {**POD, "spec": {**POD["spec"], "serviceAccountName": "x"}}, "default"
    )
    # ServiceAccount admission mounted the token volume
    assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])

    code, issued = await admin.call(
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/x/token",
        {"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web"}}},
    )
    assert code == 201, issued
    assert issued["kind"] == "TokenRequest" and issued["status"]["expirationTimestamp"]
    sa = Client(api_server, session, issued["status"]["token"])

    code, who = await sa.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {})
    assert code == 201
    info = who["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:default:x"
    assert "system:serviceaccounts:default" in info["groups"]
    assert info["extra"]["authentication.kubernetes.io/pod-name"] == ["web"]

    code, status = await sa.call("GET", "/api/v1/namespaces/default/pods")
    assert code == 403
    assert status["message"] == (
        'pods is forbidden: User "system:serviceaccount:default:x" cannot list resource "pods" '
        'in API group "" in the namespace "default"'
    )
    await local.create(
        "rolebindings",
        {
            "metadata": {"name": "x-view"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "default"}],
        },
        "default",
    )
    await server_settles(sa, "/api/v1/namespaces/default/pods")
    code, listed = await sa.call("GET", "/api/v1/namespaces/default/pods")
    assert code == 200 and [p["metadata"]["name"] for p in listed["items"]] == ["web"]
    code, status = await sa.call("DELETE", "/api/v1/nodes/n1")
    assert code == 403 and 'cannot delete resource "nodes"' in status["message"]

    ssar = {"spec": {"resourceAttributes": {"verb": "delete", "resource": "nodes"}}}
    code, review = await sa.call(
        "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ssar
    )
    assert code == 201 and review["status"]["allowed"] is False
    code, rules = await sa.call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        {"spec": {"namespace": "default"}},
    )
    assert code == 201
    assert any(
        "pods" in r.get("resources", []) and "list" in r["verbs"]
        for r in rules["status"]["resourceRules"]
    )

    code, review = await admin.call(
        "POST", "/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": sa.token}}
    )
    assert code == 201 and review["status"]["authenticated"] is True
    # the token ends with its pod
    await local.delete("pods", "web", "default")
    code, _ = await sa.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {})
    assert code == 401


async def server_settles(client: Client, path: str) -> None:
    """The RBAC index follows a watch: wait (bounded) until the new binding is seen."""
    for _ in range(100):
        if (await client.call("GET", path))[0] == 200:
            return
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_node_credentials_and_the_admin(
    api_server: ApiServer, session: aiohttp.ClientSession
) -> None:
    assert api_server.auth is not None and api_server.credentials is not None
    admin = Client(api_server, session, api_server.credentials.token)
    code, who = await admin.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {})
    assert who["status"]["userInfo"]["groups"] == ["system:masters", "system:authenticated"]
    node = Client(api_server, session, api_server.auth.signer.issue_node_token("n1"))
    body = {"metadata": {"name": "n1"}}
    assert (await node.call("POST", "/api/v1/nodes", body))[0] == 201
    code, refused = await node.call("POST", "/api/v1/nodes", {"metadata": {"name": "n2"}})
    assert code == 403, refused
    assert (await admin.call("POST", "/api/v1/nodes", {"metadata": {"name": "n2"}}))[0] == 201
    assert (await node.call("PATCH", "/api/v1/nodes/n2", {}))[0] == 403  # before the body
    code, _ = await node.call("GET", "/api/v1/namespaces/default/secrets")
    assert code == 403
    code, _ = await node.call("GET", "/api/v1/pods")
    assert code == 200
    # cluster-admin still does anything
    assert (await admin.call("DELETE", "/api/v1/nodes/n2"))[0] == 200
