"""The official `kubernetes` Python client's utilities that read the server's words: the error
text `create_from_yaml` reports, byte for byte as upstream's; server-side apply
(application/apply-patch+yaml, the dynamic client's server_side_apply) and its 409."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, utils
from kubernetes.dynamic import DynamicClient

# the client's own ApiException still calls urllib3's deprecated getheaders()
pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning")


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"pya-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_create_from_yaml_conflict_text_is_upstreams(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    # the scenario of the client's own e2e test (test_create_from_multi_resource_yaml_with_
    # conflict): the second document names a Service that exists
    manifest = tmp_path / "conflict.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: mock-2\n"
        "spec:\n  ports:\n  - port: 99\n  selector:\n    app: mock-2\n"
    )
    utils.create_from_yaml(api, str(manifest), namespace=namespace)
    with pytest.raises(utils.FailToCreateError) as failure:
        utils.create_from_yaml(api, str(manifest), namespace=namespace)
    assert str(failure.value) == (
        'Error from server (Conflict): {"kind":"Status","apiVersion":"v1","metadata":{},'
        '"status":"Failure","message":"services \\"mock-2\\" already exists",'
        '"reason":"AlreadyExists","details":{"name":"mock-2","kind":"services"},"code":409}\n'
    )


def _deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "py"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "py"}},
            "template": {
                "metadata": {"labels": {"app": "py"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }


def _apply(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> Any:
    """PATCH application/apply-patch+yaml through the client's own request path (its typed
    patch_* methods always pick the first patch type they list)."""
    return api.call_api(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/py",
        "PATCH",
        query_params=[("fieldManager", "py-apply")],
        header_params={
            "Content-Type": "application/apply-patch+yaml",
            "Accept": "application/json",
        },
        body=body,
        response_type="object",
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )


def test_server_side_apply_from_the_python_client(api: client.ApiClient, namespace: str) -> None:
    created = _apply(api, namespace, _deployment(1))
    entry = created["metadata"]["managedFields"][0]
    assert (entry["manager"], entry["operation"]) == ("py-apply", "Apply")
    client.AppsV1Api(api).patch_namespaced_deployment(
        "py", namespace, {"spec": {"replicas": 3}}, field_manager="scaler"
    )
    with pytest.raises(client.ApiException) as refused:
        _apply(api, namespace, _deployment(2))
    assert refused.value.status == 409
    causes = json.loads(refused.value.body)["details"]["causes"]
    assert causes == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "scaler" using apps/v1',
            "field": ".spec.replicas",
        }
    ]
    # the dynamic client's server_side_apply, forced
    dynamic = DynamicClient(api)
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    applied = deployments.server_side_apply(
        body=_deployment(2), namespace=namespace, field_manager="py-apply", force_conflicts=True
    )
    assert applied.spec.replicas == 2
    assert [e.manager for e in applied.metadata.managedFields] == ["py-apply"]
