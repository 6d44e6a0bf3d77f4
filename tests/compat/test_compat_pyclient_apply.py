"""The official `kubernetes` Python client's utilities that read the server's words: the error
text `create_from_yaml` reports, byte for byte as upstream's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, utils

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
