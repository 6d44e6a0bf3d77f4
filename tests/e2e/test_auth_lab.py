"""Security of a real lab (`podnet up`): private state, in-cluster identity, RBAC with the real
kubectl, the `kubernetes` Service in every proxy mode, the kubelet endpoint's TLS and
authentication.

Marks: root + slow + kubectl. One lab (two nodes) is brought up for the module and always
taken down.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.lab.spec import load_plan

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kubectl, pytest.mark.timeout(300)]


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Path]:
    """The lab's state dir."""
    name = f"ta{secrets.token_hex(2)}"
    up = podnet("up", "--name", name, "--nodes", "2", "--no-kubeconfig")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield Path(f"/var/lib/podnet/{name}")
    finally:
        down = podnet("down", "--name", name)
        assert down.returncode == 0, down.stdout + down.stderr


def kubectl(state: Path, *args: str, stdin: str | None = None, ok: bool = True) -> str:
    env = {**os.environ, "KUBECONFIG": str(state / "kubeconfig")}
    out = subprocess.run(
        ["kubectl", "--cache-dir", str(state / "kubectl-cache"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if ok:
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout + out.stderr


def can_i(state: Path, *args: str) -> str:
    """`kubectl auth can-i ARGS` (flags such as --token may come last): "yes" (exit 0) or "no"
    (exit 1). Upstream's kubectl appends " - <reason>" to a "no" that has one and may print a
    warning line after the answer ("resource 'nodes' is not namespace scoped")."""
    return kubectl(state, "auth", "can-i", *args, ok=False).splitlines()[0].split(" - ")[0]


def test_state_dir_and_its_files_are_private(lab: Path) -> None:
    """#19 item 2: the store, its WAL, logs, lab.json, keys and kubeconfigs: 0600 in 0700."""
    dirs = [lab, lab / "nodes", *sorted((lab / "nodes").iterdir())]
    for directory in dirs:
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, directory
    files = [p for d in dirs for p in d.iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"state.db", "state.db-wal", "lab.json", "ca.key", "server.log", "agent.log"} <= names
    wide = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {p: m for p, m in wide.items() if m != "0o600"} == {}


def test_agents_have_node_identities_and_their_kubelet_endpoints_need_tls_and_a_caller(
    lab: Path,
) -> None:
    """#12 item 4: each agent runs as its own node (`system:node:<name>`), held to the Node
    authorizer. #19 item 2: its kubelet endpoint speaks TLS only, with a certificate from the
    cluster CA for the node's address, and answers no anonymous caller (`kubectl logs` and
    exec through the API server, whose client certificate it accepts, run in the tests
    below)."""
    plan = load_plan(lab)
    assert plan is not None
    node1 = plan.nodes[0]
    as_node = ["--kubeconfig", node1.kubeconfig]
    whoami = json.loads(kubectl(lab, *as_node, "auth", "whoami", "-o", "json"))
    assert whoami["status"]["userInfo"]["username"] == "system:node:node1"
    assert "system:nodes" in whoami["status"]["userInfo"]["groups"]
    assert can_i(lab, "patch", "node/node1", *as_node) == "yes"
    for verb, what in (("patch", "node/node2"), ("list", "secrets"), ("create", "pods")):
        assert can_i(lab, verb, what, *as_node) == "no"

    tls = ssl.create_default_context(cafile=str(lab / "ca.crt"))  # checks the node's address
    endpoint = http.client.HTTPSConnection(node1.ip, 10250, context=tls, timeout=10)
    endpoint.request("GET", "/containerLogs/default/x/y")
    answer = endpoint.getresponse()
    assert (answer.status, json.loads(answer.read())["reason"]) == (401, "Unauthorized")
    endpoint.close()
    plain = http.client.HTTPConnection(node1.ip, 10250, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/healthz")
        plain.getresponse()
    plain.close()


def test_dns_pods_reach_the_api_as_their_service_account(lab: Path) -> None:
    """The lab came up, so cluster DNS answered: its pods listed Services with the token the
    kubelet projected for ServiceAccount kube-system/coredns, not with a lab credential."""
    pods = json.loads(kubectl(lab, "-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns",
                              "-o", "json"))["items"]  # fmt: skip
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "coredns"
        assert [v for v in pod["spec"]["volumes"] if "hostPath" in v] == []
        assert any("projected" in v for v in pod["spec"]["volumes"])


# --- in-cluster identity ---------------------------------------------------------------------

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
IN_CLUSTER_CLIENT = f"""
import json, os
from kubernetes import client, config
config.load_incluster_config()
v1 = client.CoreV1Api()
namespace = open("{SA_DIR}/namespace").read()
print("PODS", namespace, len(v1.list_namespaced_pod(namespace).items))
try:
    v1.delete_node("node1")
    print("DELETE allowed")
except client.exceptions.ApiException as exc:
    print("DELETE", exc.status, json.loads(exc.body)["message"])
print("ENV", os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_PORT_443_TCP"])
"""


def client_pod(name: str, node: str) -> str:
    """A pod of ServiceAccount `reader` on `node` running the official Python client (the
    agnhost image has the machine's Python and this venv at their host paths)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "serviceAccountName": "reader",
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                        "command": [sys.executable, "-c", IN_CLUSTER_CLIENT],
                    }
                ],
            },
        }
    )


def run_client(lab: Path, name: str, node: str) -> str:
    kubectl(lab, "create", "-f", "-", stdin=client_pod(name, node))
    try:
        waited = kubectl(lab, "wait", f"pod/{name}", "--for=jsonpath={.status.phase}=Succeeded",
                         "--timeout=45s", ok=False)  # fmt: skip
        logs = kubectl(lab, "logs", name, ok=False)
        if "condition met" not in waited:
            agent_log = (lab / "nodes" / node / "agent.log").read_text(errors="replace")
            describe = kubectl(lab, "describe", "pod", name, ok=False)
            raise AssertionError(f"{waited}\n{describe}\n{logs}\n{agent_log[-6000:]}")
        return logs
    finally:
        kubectl(lab, "delete", "pod", name, "--wait=false", ok=False)


@pytest.fixture(scope="module")
def reader(lab: Path) -> str:
    """ServiceAccount default/reader, bound to the `view` ClusterRole in default."""
    kubectl(lab, "create", "serviceaccount", "reader")
    kubectl(lab, "create", "rolebinding", "reader-view", "--clusterrole=view",
            "--serviceaccount=default:reader")  # fmt: skip
    return "system:serviceaccount:default:reader"


def assert_in_cluster_client_worked(logs: str, user: str) -> None:
    assert "PODS default " in logs, logs
    assert "ENV 10.96.0.1 tcp://10.96.0.1:443" in logs, logs
    assert (
        f'DELETE 403 nodes "node1" is forbidden: User "{user}" cannot delete resource "nodes" '
        'in API group "" at the cluster scope'
    ) in logs, logs


def test_kubectl_whoami_can_i_and_a_service_account_held_to_rbac(lab: Path, reader: str) -> None:
    """#12 item 4 with the real kubectl: whoami, can-i (--list), create token; a
    ServiceAccount token reads what its RoleBinding allows and is refused the rest, in
    upstream's words."""
    assert "system:masters" in kubectl(lab, "auth", "whoami")
    assert can_i(lab, "delete", "nodes") == "yes"
    token = kubectl(lab, "create", "token", "reader").strip()
    as_reader = ["--token", token]
    whoami = kubectl(lab, *as_reader, "auth", "whoami", "-o", "json")
    identity = json.loads(whoami)["status"]["userInfo"]
    assert identity["username"] == reader
    assert "system:serviceaccounts:default" in identity["groups"]
    assert can_i(lab, "list", "pods", *as_reader) == "yes"
    assert can_i(lab, "delete", "nodes", *as_reader) == "no"
    listing = kubectl(lab, *as_reader, "auth", "can-i", "--list")
    rows = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
    assert {"pods", "selfsubjectaccessreviews.authorization.k8s.io"} <= rows, listing
    assert "secrets" not in rows, listing  # view does not read Secrets
    kubectl(lab, *as_reader, "get", "pods")
    refused = kubectl(lab, *as_reader, "delete", "node", "whatever", ok=False)
    assert (
        f'Error from server (Forbidden): nodes "whatever" is forbidden: User "{reader}" cannot '
        'delete resource "nodes" in API group "" at the cluster scope'
    ) in refused, refused


def test_in_cluster_client_lists_pods_and_is_refused_nodes(lab: Path, reader: str) -> None:
    """#12 items 3 and 5: the projected token, ca.crt and namespace, KUBERNETES_SERVICE_*
    and the `kubernetes` Service at 10.96.0.1:443, from a pod on each node."""
    for node in ("node1", "node2"):
        assert_in_cluster_client_worked(run_client(lab, f"incluster-{node}", node), reader)


@pytest.mark.parametrize("mode", ["nftables", "userspace"])
def test_the_kubernetes_service_in_every_proxy_mode(lab: Path, reader: str, mode: str) -> None:
    """The `kubernetes` Service reaches the API server from every node's pods in the other
    proxy modes too (iptables: the test above)."""
    switched = podnet("proxy-mode", "--name", lab.name, mode)
    try:
        assert switched.returncode == 0, switched.stdout + switched.stderr
        for node in ("node1", "node2"):
            logs = run_client(lab, f"incluster-{mode}-{node}", node)
            assert_in_cluster_client_worked(logs, reader)
    finally:
        back = podnet("proxy-mode", "--name", lab.name, "iptables")
        assert back.returncode == 0, back.stdout + back.stderr
