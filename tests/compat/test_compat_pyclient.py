"""The official `kubernetes` Python client against a real `podnet server` (SQLite and etcd)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from podnet.testing.server import ServerProcess

# the client's own ApiException still calls urllib3's deprecated getheaders()
pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning")


def release(ws_client: Any) -> None:
    """Close an exec stream. websocket-client's close() is a no-op once the server has closed
    the connection (as it must after the status frame), leaving the socket open; shutdown()
    really closes it."""
    ws_client.close()
    ws_client.sock.shutdown()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"py-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_configmap_crud_and_conflict(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"a": "1"})
    )
    assert created.metadata.uid
    read = core.read_namespaced_config_map("cm", namespace)
    assert read.data == {"a": "1"}
    read.data = {"a": "2"}
    core.replace_namespaced_config_map("cm", namespace, read)
    read.data = {"a": "3"}  # stale resourceVersion
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("cm", namespace, read)
    assert conflict.value.status == 409
    patched = core.patch_namespaced_config_map("cm", namespace, {"data": {"b": "x"}})
    assert patched.data == {"a": "2", "b": "x"}
    listed = core.list_namespaced_config_map(namespace)
    assert "cm" in [c.metadata.name for c in listed.items]
    core.delete_namespaced_config_map("cm", namespace)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("cm", namespace)
    assert missing.value.status == 404


def test_watch_from_list_resource_version(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    rv = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w1"))
    )
    core.patch_namespaced_config_map("w1", namespace, {"data": {"k": "v"}})
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w2"))
    )
    core.delete_namespaced_config_map("w1", namespace)
    core.delete_namespaced_config_map("w2", namespace)
    seen = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_config_map, namespace, resource_version=rv, timeout_seconds=2
        )
    ]
    assert seen == [
        ("ADDED", "w1"),
        ("MODIFIED", "w1"),
        ("ADDED", "w2"),
        ("DELETED", "w1"),
        ("DELETED", "w2"),
    ]


def test_invalid_object_is_422_with_causes(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="")]),
    )
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod(namespace, pod)
    assert info.value.status == 422
    assert "spec.containers[0].image" in info.value.body


def test_deployment_scale_subresource(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                },
            },
        },
    )
    scale = apps.read_namespaced_deployment_scale("d", namespace)
    assert scale.spec.replicas == 1
    apps.patch_namespaced_deployment_scale("d", namespace, {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment("d", namespace).spec.replicas == 4


def test_wrong_token_is_401(podnet_server: ServerProcess, tmp_path: Path) -> None:
    doc = yaml.safe_load(podnet_server.kubeconfig.read_text())
    doc["users"][0]["user"]["token"] = "wrong"
    wrong = tmp_path / "kubeconfig"
    wrong.write_text(yaml.safe_dump(doc))
    with (
        config.new_client_from_config(config_file=str(wrong)) as bad,
        pytest.raises(ApiException) as info,
    ):
        client.CoreV1Api(bad).list_namespace()
    assert info.value.status == 401


def test_exec_and_logs_through_the_relay(
    api: client.ApiClient, namespace: str, standin_agent: Any
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "ex"},
            "spec": {
                "nodeName": standin_agent.node_name,
                "containers": [{"name": "main", "image": "busybox"}],
            },
        },
    )
    core.patch_namespaced_pod_status("ex", namespace, {"status": {"phase": "Running"}})
    hello = stream(
        core.connect_get_namespaced_pod_exec,
        "ex",
        namespace,
        command=["sh", "-c", "echo hi; echo oops >&2"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        _preload_content=False,
    )
    try:
        hello.run_forever(timeout=10)
        assert hello.read_stdout() == "hi\n"
        assert hello.read_stderr() == "oops\n"
        assert hello.returncode == 0
    finally:
        release(hello)
    failing = stream(
        core.connect_get_namespaced_pod_exec,
        "ex",
        namespace,
        command=["sh", "-c", "exit 5"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        _preload_content=False,
    )
    try:
        failing.run_forever(timeout=10)
        assert failing.returncode == 5
    finally:
        release(failing)
    logs = core.read_namespaced_pod_log("ex", namespace, tail_lines=2)
    assert logs == "main line 2\nmain line 3\n"


def test_list_in_pages_with_continue(api: client.ApiClient, namespace: str) -> None:
    """The official client pages with `limit` and `_continue` (the server's token, upstream's
    format), sees the first page's revision throughout and gets remainingItemCount."""
    core = client.CoreV1Api(api)
    for index in range(5):
        core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{index}"))
        )
    deadline = time.monotonic() + 30  # the server publishes kube-root-ca.crt on its own
    while True:
        try:
            core.read_namespaced_config_map("kube-root-ca.crt", namespace)
            break
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    page = core.list_namespaced_config_map(namespace, limit=2)
    first_rv = page.metadata.resource_version
    assert page.metadata.remaining_item_count == 4  # with kube-root-ca.crt
    core.create_namespaced_config_map(  # after the first page: not in the later ones
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="page-25"))
    )
    names = [cm.metadata.name for cm in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_config_map(
            namespace, limit=2, _continue=page.metadata._continue
        )
        assert page.metadata.resource_version == first_rv
        names += [cm.metadata.name for cm in page.items]
    assert names == ["kube-root-ca.crt"] + [f"page-{index}" for index in range(5)]
