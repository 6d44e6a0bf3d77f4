"""The real kubectl 1.32 binary against a real `podnet server` process (SQLite and etcd).

`kubectl` is the fixture from this directory's conftest: it runs the binary in the test's own
namespace with a per-test discovery cache.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.kubectl

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  containers:
  - name: main
    image: {image}
    ports:
    - containerPort: 80
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: web}}
  ports:
  - name: http
    port: 80
    targetPort: 8080
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: {image}
"""


def configmap(name: str, **data: str) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    )


def test_discovery_and_version(kubectl: Any) -> None:
    resources = kubectl("api-resources").stdout
    for expected in ("pods", "deployments", "endpointslices", "leases", "po ", "deploy"):
        assert expected in resources
    version = kubectl("version", "-o", "json").stdout
    assert json.loads(version)["serverVersion"]["minor"] == "32"


def test_create_get_jsonpath_yaml_and_table(kubectl: Any) -> None:
    out = kubectl("create", "-f", "-", stdin=POD.format(name="web-1", image="nginx:1.25"))
    assert "pod/web-1 created" in out.stdout
    name = kubectl("get", "pod", "web-1", "-o", "jsonpath={.metadata.name}").stdout
    assert name == "web-1"
    doc = yaml.safe_load(kubectl("get", "pod", "web-1", "-o", "yaml").stdout)
    assert doc["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert doc["metadata"]["uid"]
    table = kubectl("get", "pods").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table[1].split()[:3] == ["web-1", "0/1", "Pending"]
    wide = kubectl("get", "pods", "-o", "wide").stdout.splitlines()[0].split()
    assert "IP" in wide and "NODE" in wide
    shown = kubectl("get", "pods", "--show-labels").stdout
    assert "app=web" in shown


def test_get_watch_sees_a_change(kubectl: Any) -> None:
    kubectl("create", "-f", "-", stdin=configmap("watched", a="1"))
    watcher = kubectl.popen(
        "get",
        "configmap",
        "watched",
        "-w",
        "-o",
        'jsonpath={.data.a}{"\\n"}',
        "--request-timeout=30s",
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.put(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        seen.append(lines.get(timeout=15))  # the GET; the watch starts right after it
        # kubectl drops the first event of its resourceVersion=0 watch, so a change made
        # before the watch is established goes unseen: keep changing until one shows
        for value in range(2, 12):
            kubectl(
                "patch",
                "configmap",
                "watched",
                "--type=merge",
                "-p",
                json.dumps({"data": {"a": str(value)}}),
            )
            try:
                seen.append(lines.get(timeout=1.5))
                break
            except queue.Empty:
                continue
    finally:
        watcher.terminate()
        watcher.wait(10)
        reader.join(5)
        assert watcher.stdout is not None and watcher.stderr is not None
        err = watcher.stderr.read()
        watcher.stdout.close()
        watcher.stderr.close()
    assert seen[0] == "1" and len(seen) == 2 and int(seen[1]) >= 2, (seen, err)


def test_describe_pod_and_service(kubectl: Any) -> None:
    kubectl("create", "-f", "-", stdin=POD.format(name="desc", image="busybox"))
    kubectl("create", "-f", "-", stdin=SERVICE.format(name="desc-svc"))
    pod = kubectl("describe", "pod", "desc").stdout
    assert "Name:" in pod and "desc" in pod and "busybox" in pod
    svc = kubectl("describe", "service", "desc-svc").stdout
    assert "desc-svc" in svc and "IP:" in svc and "80/TCP" in svc
    svc_table = kubectl("get", "svc", "desc-svc").stdout.splitlines()
    assert svc_table[0].split()[:3] == ["NAME", "TYPE", "CLUSTER-IP"]


def test_apply_twice_then_changed(kubectl: Any) -> None:
    manifest = DEPLOYMENT.format(name="app", replicas=1, image="nginx:1.25")
    assert "deployment.apps/app created" in kubectl("apply", "-f", "-", stdin=manifest).stdout
    assert "deployment.apps/app unchanged" in kubectl("apply", "-f", "-", stdin=manifest).stdout
    changed = DEPLOYMENT.format(name="app", replicas=2, image="nginx:1.26")
    assert "deployment.apps/app configured" in kubectl("apply", "-f", "-", stdin=changed).stdout
    got = json.loads(kubectl("get", "deploy", "app", "-o", "json").stdout)
    assert got["spec"]["replicas"] == 2
    assert got["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.26"
    assert got["metadata"]["generation"] == 2
    svc = SERVICE.format(name="app-svc")
    kubectl("apply", "-f", "-", stdin=svc)
    assert "unchanged" in kubectl("apply", "-f", "-", stdin=svc).stdout


def test_patch_merge_strategic_json(kubectl: Any) -> None:
    kubectl("create", "-f", "-", stdin=POD.format(name="patched", image="busybox:1.35"))
    kubectl(
        "patch", "pod", "patched", "--type=merge", "-p", '{"metadata":{"labels":{"tier":"front"}}}'
    )
    kubectl(
        "patch",
        "pod",
        "patched",
        "-p",
        '{"spec":{"containers":[{"name":"main","image":"busybox:1.36"}]}}',
    )
    kubectl(
        "patch",
        "pod",
        "patched",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/metadata/labels/app"}]',
    )
    got = json.loads(kubectl("get", "pod", "patched", "-o", "json").stdout)
    assert got["metadata"]["labels"] == {"tier": "front"}
    assert got["spec"]["containers"][0]["image"] == "busybox:1.36"
    assert got["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]


def test_scale_deployment(kubectl: Any) -> None:
    kubectl("create", "-f", "-", stdin=DEPLOYMENT.format(name="sc", replicas=1, image="nginx"))
    assert "scaled" in kubectl("scale", "deployment", "sc", "--replicas=3").stdout
    assert kubectl("get", "deploy", "sc", "-o", "jsonpath={.spec.replicas}").stdout == "3"


def test_delete(kubectl: Any) -> None:
    kubectl("create", "-f", "-", stdin=POD.format(name="gone", image="busybox"))
    assert 'pod "gone" deleted' in kubectl("delete", "pod", "gone").stdout
    missing = kubectl("get", "pod", "gone", check=False)
    assert missing.returncode != 0 and 'pods "gone" not found' in missing.stderr
    kubectl("create", "-f", "-", stdin=configmap("c1", a="b"))
    kubectl("label", "configmap", "c1", "group=x")
    kubectl("create", "-f", "-", stdin=configmap("c2", a="b"))
    kubectl("delete", "configmaps", "-l", "group=x")
    names = kubectl("get", "configmaps", "-o", "name").stdout.split()
    assert "configmap/c2" in names and "configmap/c1" not in names


def test_invalid_manifest_names_the_field(kubectl: Any) -> None:
    bad = POD.format(name="bad", image='""')
    result = kubectl("create", "-f", "-", stdin=bad, check=False)
    assert result.returncode != 0
    assert "is invalid" in result.stderr and "spec.containers[0].image" in result.stderr
    typo = POD.format(name="typo", image="busybox").replace("containers:", "contaners:")
    strict = kubectl("create", "-f", "-", stdin=typo, check=False)
    assert strict.returncode != 0 and 'unknown field "spec.contaners"' in strict.stderr
    bad_name = kubectl("create", "-f", "-", stdin=configmap("Bad_Name"), check=False)
    assert bad_name.returncode != 0 and "metadata.name" in bad_name.stderr


def test_wrong_token_is_401(kubectl: Any, tmp_path: Any) -> None:
    config = yaml.safe_load(kubectl.server.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "wrong"
    wrong = tmp_path / "wrong-kubeconfig"
    wrong.write_text(yaml.safe_dump(config))
    result = kubectl("get", "pods", kubeconfig=wrong, check=False)
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr or "must be logged in" in result.stderr


def test_exec_through_the_relay(kubectl: Any, running_pod: Callable[[str], str]) -> None:
    running_pod("ex")
    result = kubectl(
        "exec", "ex", "-c", "main", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False
    )
    assert result.stdout == "out\n"
    assert "err" in result.stderr
    assert result.returncode == 3
    ok = kubectl("exec", "ex", "--", "echo", "hello")
    assert ok.stdout == "hello\n"
    piped = kubectl("exec", "-i", "ex", "--", "cat", stdin="through stdin\n")
    assert piped.stdout == "through stdin\n"
    bad = kubectl("exec", "ex", "-c", "nope", "--", "true", check=False)
    assert bad.returncode != 0 and "container nope is not valid for pod ex" in bad.stderr


def test_logs_through_the_relay(kubectl: Any, running_pod: Callable[[str], str]) -> None:
    running_pod("lg")
    logs = kubectl("logs", "lg", "-c", "side").stdout
    assert logs == "side line 1\nside line 2\nside line 3\n"
    assert kubectl("logs", "lg", "-c", "main", "--tail=1").stdout == "main line 3\n"
    followed = kubectl("logs", "-f", "lg", "-c", "main").stdout
    assert followed.count("line") == 3


def test_logs_for_an_http10_client_end_at_close(
    kubectl: Any, running_pod: Callable[[str], str]
) -> None:
    """HTTP/1.0 has no chunked encoding: the relayed log comes as it is, its end where the
    connection closes (it was a 500, aiohttp refusing chunks for HTTP/1.0)."""
    running_pod("lg10")
    server = kubectl.server
    path = f"/api/v1/namespaces/{kubectl.namespace}/pods/lg10/log?container=side&follow=true"
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw,
        server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.0\r\nAuthorization: Bearer {server.token}\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *headers = head.decode("latin-1").lower().split("\r\n")
    assert status == "http/1.0 200 ok", answer
    assert not any(h.startswith("transfer-encoding:") for h in headers), headers
    assert body == b"side line 1\nside line 2\nside line 3\n"


def test_typed_create_commands_send_protobuf(kubectl: Any) -> None:
    """`kubectl create <generator>` encodes with protobuf; the server decodes those bodies."""
    kubectl("create", "deployment", "gen", "--image=nginx:1.25", "--port=80", "--replicas=2")
    kubectl("create", "service", "nodeport", "gen-svc", "--tcp=80:8080")
    kubectl("create", "configmap", "gen-cm", "--from-literal=k=v")
    kubectl("create", "secret", "generic", "gen-secret", "--from-literal=k=v")
    kubectl("create", "serviceaccount", "gen-sa")
    deploy = json.loads(kubectl("get", "deploy", "gen", "-o", "json").stdout)
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert deploy["spec"]["replicas"] == 2
    assert (container["image"], container["ports"][0]["containerPort"]) == ("nginx:1.25", 80)
    svc = json.loads(kubectl("get", "svc", "gen-svc", "-o", "json").stdout)
    assert svc["spec"]["type"] == "NodePort"
    assert 30000 <= svc["spec"]["ports"][0]["nodePort"] <= 32767
    assert kubectl("get", "cm", "gen-cm", "-o", "jsonpath={.data.k}").stdout == "v"
    assert kubectl("get", "secret", "gen-secret", "-o", "jsonpath={.data.k}").stdout == "dg=="
    kubectl("get", "sa", "gen-sa")


def test_a_stuck_namespace_is_cleared_through_finalize(kubectl: Any) -> None:
    """What tools for namespaces stuck Terminating do: read the namespace, empty
    spec.finalizers, `kubectl replace --raw /api/v1/namespaces/NAME/finalize`."""
    name = f"{kubectl.namespace}-stuck"
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {"finalizers": ["kubernetes", "example.com/held"]},
    }
    kubectl("create", "-f", "-", stdin=json.dumps(manifest))
    kubectl("delete", "namespace", name, "--wait=false")
    deadline = time.monotonic() + 20
    while True:  # the server's namespace finalizer empties it and drops its own entry
        ns = json.loads(kubectl("get", "namespace", name, "-o", "json").stdout)
        if ns["spec"]["finalizers"] == ["example.com/held"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ns["spec"]["finalizers"] == ["example.com/held"], ns
    assert ns["status"]["phase"] == "Terminating"  # held by example.com/held
    ns["spec"]["finalizers"] = []
    kubectl("replace", "--raw", f"/api/v1/namespaces/{name}/finalize", "-f", "-",
            stdin=json.dumps(ns))  # fmt: skip
    gone = kubectl("get", "namespace", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone


def test_namespace_finalizers_change_only_through_finalize(kubectl: Any) -> None:
    """kubectl patch (merge, json, strategic), replace and apply of a Namespace leave
    spec.finalizers as the server set them at create (upstream's namespace strategy); the
    server's namespace finalizer still removes the namespace after a delete."""
    name = f"{kubectl.namespace}-fin"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                "spec": {"finalizers": ["example.com/extra"]}}  # fmt: skip
    kubectl("create", "-f", "-", stdin=json.dumps(manifest))
    kept = ["example.com/extra", "kubernetes"]

    def finalizers() -> list[str]:
        out = kubectl("get", "namespace", name, "-o", "jsonpath={.spec.finalizers}").stdout
        return list(json.loads(out or "[]"))

    assert finalizers() == kept
    kubectl("patch", "namespace", name, "--type=merge", "-p", '{"spec":{"finalizers":null}}')
    kubectl("patch", "namespace", name, "--type=json",
            "-p", '[{"op":"replace","path":"/spec/finalizers","value":[]}]')  # fmt: skip
    kubectl("patch", "namespace", name, "-p", '{"spec":{"finalizers":["example.com/other"]}}')
    assert finalizers() == kept
    ns = json.loads(kubectl("get", "namespace", name, "-o", "json").stdout)
    ns["spec"]["finalizers"] = []
    ns["metadata"].setdefault("labels", {})["team"] = "a"
    kubectl("replace", "-f", "-", stdin=json.dumps(ns))
    assert finalizers() == kept
    assert kubectl("get", "namespace", name, "-o", "jsonpath={.metadata.labels.team}").stdout == "a"
    manifest["spec"] = {"finalizers": []}
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(manifest))
    assert finalizers() == kept

    ns = json.loads(kubectl("get", "namespace", name, "-o", "json").stdout)
    ns["spec"]["finalizers"] = ["kubernetes"]
    kubectl("replace", "--raw", f"/api/v1/namespaces/{name}/finalize", "-f", "-",
            stdin=json.dumps(ns))  # fmt: skip
    assert finalizers() == ["kubernetes"]
    kubectl("delete", "namespace", name, "--timeout=20s")  # waits for the server's finalizer
    gone = kubectl("get", "namespace", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone


def test_get_in_chunks_continues_from_the_last_key(kubectl: Any) -> None:
    """`kubectl get --chunk-size=2` pages with the server's continue tokens (a fresh store
    read from the token's key at the list's revision), with and without a selector."""
    for index in range(5):
        name, image = f"chunk-{index}", "nginx:1.25"
        manifest = POD.format(name=name, image=image)
        if index % 2:
            manifest = manifest.replace("{app: web}", "{app: odd}")
        kubectl("create", "-f", "-", stdin=manifest)
    out = kubectl("get", "pods", "--chunk-size=2", "-o", "name", "-v=6")
    assert out.stdout.split() == [f"pod/chunk-{index}" for index in range(5)]
    assert out.stderr.count("continue=") == 2  # three pages of 2, 2 and 1
    odd = kubectl("get", "pods", "--chunk-size=1", "-l", "app=odd", "-o", "name").stdout
    assert odd.split() == ["pod/chunk-1", "pod/chunk-3"]
    table = kubectl("get", "pods", "--chunk-size=2").stdout.splitlines()
    assert [line.split()[0] for line in table] == ["NAME"] + [f"chunk-{i}" for i in range(5)]
