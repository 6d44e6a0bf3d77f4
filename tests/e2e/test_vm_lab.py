"""A lab with a VM node (`podnet up --vm-nodes 1`): a namespace node and a node that boots
Debian's kernel under qemu, on one overlay; kube-proxy's ipvs mode carries packets on the VM.

One lab for the module: node1 is a namespace (ipvs falls back to iptables there: this
kernel has no IP_VS), node2 is a VM whose kernel loads ip_vs. Three web pods (one on node1,
two on node2) behind a ClusterIP Service; a client pod on node2 reaches them through IPVS,
round robin, across the overlay; the IPVS table inside the VM (`ipvsadm -Ln`) holds the
Service's virtual server with the three pods as real servers; ClientIP affinity then keeps
one pod. The tests after it use the same lab in order: a removed endpoint leaves the virtual
server and a NodePort answers; graceful termination keeps an established connection to a
removed endpoint; a netem delay (`podnet fault delay`) on the VM node; partition, loss and
stop on it.
Skipped with the reason where qemu or the kernel for VM nodes is not installed.

Marks: root + slow."""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import procs
from podnet.lab.spec import LabPlan, load_plan

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(600)]

WEB = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: busybox
    command:
    - sh
    - -c
    - mkdir -p /tmp/w && hostname > /tmp/w/index.html && httpd -f -p 8080 -h /tmp/w
    readinessProbe:
      httpGet: {{path: /, port: 8080}}
      periodSeconds: 1
"""

CLIENT = """
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: node2
  containers:
  - name: client
    image: busybox
    command: [sleep, "3600"]
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"""

PODS = {"web-1": "node1", "web-2": "node2", "web-3": "node2"}
REQUESTS = 300


def podnet(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    from podnet.lab.vm import check_host

    try:
        check_host(None)
    except Exception as exc:
        pytest.skip(f"VM nodes cannot boot here: {exc}")
    name = f"tvm{secrets.token_hex(2)}"
    up = podnet(
        "up", "--name", name, "--nodes", "2", "--vm-nodes", "1", "--proxy-mode", "ipvs",
        "--proxy-fallback", "--no-dns", "--no-kubeconfig", "--timeout", "360",
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield name
    finally:
        down = podnet("down", "--name", name, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


class Kubectl:
    def __init__(self, name: str, cache: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": f"/var/lib/podnet/{name}/kubeconfig"}
        self.cache = cache

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 90) -> str:
        out = subprocess.run(
            ["kubectl", "--cache-dir", str(self.cache), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout


def wait_ready(kubectl: Kubectl, names: list[str], seconds: float) -> dict[str, str]:
    """Pod name -> IP once every pod in `names` is Ready."""
    deadline = time.monotonic() + seconds
    while True:
        pods = json.loads(kubectl("get", "pods", "-o", "json"))["items"]
        ready = {
            p["metadata"]["name"]: p["status"].get("podIP", "")
            for p in pods
            if {c["type"]: c["status"] for c in p["status"].get("conditions") or ()}.get("Ready")
            == "True"
        }
        if set(names) <= set(ready):
            return ready
        assert time.monotonic() < deadline, json.dumps([p["status"] for p in pods])[-3000:]
        time.sleep(1)


def fetch_many(kubectl: Kubectl, address: str, count: int) -> collections.Counter[str]:
    """`count` requests from the client pod on the VM node; which pod answered each."""
    loop = f"i=0; while [ $i -lt {count} ]; do wget -qO- http://{address}/; i=$((i+1)); done"
    out = kubectl("exec", "client", "--", "sh", "-c", loop, timeout=240)
    return collections.Counter(out.split())


def test_ipvs_on_a_vm_node_balances_a_cluster_ip(lab: str, tmp_path: Path) -> None:
    from podnet.lab.vm import VmControl

    kubectl = Kubectl(lab, tmp_path)
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    kernels = {n["metadata"]["name"]: n["status"]["nodeInfo"]["kernelVersion"] for n in nodes}
    assert kernels["node2"] != kernels["node1"], kernels  # its own kernel
    for pod, node in PODS.items():
        kubectl("apply", "-f", "-", stdin=WEB.format(name=pod, node=node))
    kubectl("apply", "-f", "-", stdin=CLIENT)
    kubectl("apply", "-f", "-", stdin=SERVICE)
    ips = wait_ready(kubectl, [*PODS, "client"], 240)
    cluster_ip = kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")

    plan = load_plan(Path(f"/var/lib/podnet/{lab}"))
    assert plan is not None
    guest = VmControl(plan, "node2")
    deadline = time.monotonic() + 60
    while True:  # the proxy programs IPVS once the endpoints are Ready
        table = guest.run(["ipvsadm", "-Ln"]).stdout
        reals = {ips[p] for p in PODS if f"-> {ips[p]}:8080" in table}
        if f"TCP  {cluster_ip}:80 rr" in table and len(reals) == len(PODS):
            break
        assert time.monotonic() < deadline, table
        time.sleep(1)

    # round robin across the overlay: node1's pod answers through the VXLAN tunnel
    answers = fetch_many(kubectl, cluster_ip, REQUESTS)
    assert set(answers) == set(PODS), answers
    assert all(0.20 <= n / REQUESTS <= 0.47 for n in answers.values()), answers

    kubectl("patch", "service", "web", "-p", '{"spec":{"sessionAffinity":"ClientIP"}}')
    deadline = time.monotonic() + 60
    while f"TCP  {cluster_ip}:80 rr persistent" not in guest.run(["ipvsadm", "-Ln"]).stdout:
        assert time.monotonic() < deadline, guest.run(["ipvsadm", "-Ln"]).stdout
        time.sleep(1)
    sticky = fetch_many(kubectl, cluster_ip, 30)
    assert len(sticky) == 1 and sum(sticky.values()) == 30, sticky


def test_ipvs_on_a_vm_node_follows_endpoints_and_serves_a_node_port(
    lab: str, tmp_path: Path
) -> None:
    """After the first test: a removed endpoint gets no new connection (its real server
    leaves, or drains at weight 0 while the first test's connections time out), and a
    NodePort on the VM node's address reaches the pods."""
    from podnet.lab.vm import VmControl

    kubectl = Kubectl(lab, tmp_path)
    plan = load_plan(Path(f"/var/lib/podnet/{lab}"))
    assert plan is not None
    guest = VmControl(plan, "node2")
    ips = wait_ready(kubectl, [*PODS, "client"], 60)
    cluster_ip = kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
    kubectl(
        "patch", "service", "web", "-p", '{"spec":{"sessionAffinity":"None","type":"NodePort"}}'
    )
    kubectl("delete", "pod", "web-3", "--grace-period=1", "--wait=true")
    node_port = kubectl("get", "service", "web", "-o", "jsonpath={.spec.ports[0].nodePort}")
    node_ip = plan.node("node2").ip
    deadline = time.monotonic() + 60
    while True:
        table = guest.run(["ipvsadm", "-Ln"]).stdout
        if (
            re.search(rf"-> {re.escape(ips['web-3'])}:8080\s+Masq\s+[1-9]", table) is None
            and re.search(rf"^TCP  {re.escape(cluster_ip)}:80 rr\s*$", table, re.MULTILINE)
            and f"TCP  {node_ip}:{node_port} rr" in table
        ):
            break
        assert time.monotonic() < deadline, table
        time.sleep(1)
    answers = fetch_many(kubectl, cluster_ip, 30)
    assert set(answers) == {"web-1", "web-2"}, answers
    through_node_port = fetch_many(kubectl, f"{node_ip}:{node_port}", 30)
    assert set(through_node_port) == {"web-1", "web-2"}, through_node_port


def real_server(table: str, service: str, ip: str) -> tuple[int, int] | None:
    """(Weight, ActiveConn) of real server `ip`:8080 of TCP virtual server `service` in
    `ipvsadm -Ln` output; None when it has no such real server."""
    head = f"TCP  {service} "
    if head not in table:
        return None
    section = table.split(head, 1)[1].split("\nTCP", 1)[0].split("\nUDP", 1)[0]
    row = re.search(rf"-> {re.escape(ip)}:8080\s+Masq\s+(\d+)\s+(\d+)", section)
    return (int(row.group(1)), int(row.group(2))) if row else None


def test_ipvs_graceful_termination_keeps_an_established_connection(
    lab: str, tmp_path: Path
) -> None:
    """After the second test: a connection held open through the ClusterIP survives the
    removal of its endpoint, whose real server stays at weight 0 with the connection, while
    new connections go to the other endpoint; the endpoint back, its weight is 1 again."""
    from podnet.lab.vm import VmControl

    kubectl = Kubectl(lab, tmp_path)
    plan = load_plan(Path(f"/var/lib/podnet/{lab}"))
    assert plan is not None
    guest = VmControl(plan, "node2")
    ips = wait_ready(kubectl, ["web-1", "web-2", "client"], 60)
    cluster_ip = kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
    go = f"/tmp/go-{secrets.token_hex(4)}"
    # the request line now, the blank line ending the headers once `go` exists (busybox
    # httpd waits 60 s for headers); then the answer, from the pod the connection reached
    # the context closes the pipes whatever happens (left open, they surface as unraisable
    # ResourceWarnings in whichever later test the garbage collector runs in)
    with subprocess.Popen(
        ["kubectl", "--cache-dir", str(tmp_path), "exec", "client", "--", "sh", "-c",
         f"(printf 'GET / HTTP/1.0\\r\\n'; while [ ! -e {go} ]; do sleep 0.2; done; "
         f"printf '\\r\\n'; sleep 3) | nc {cluster_ip} 80"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kubectl.env,
    ) as held:  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:  # which endpoint IPVS gave the held connection
                conns = guest.run(["ipvsadm", "-Lnc"]).stdout
                found = re.search(
                    rf"ESTABLISHED\s+\S+\s+{re.escape(cluster_ip)}:80\s+([\d.]+):8080", conns
                )
                if found:
                    break
                assert held.poll() is None and time.monotonic() < deadline, conns
                time.sleep(0.5)
            drained = next(p for p in ("web-1", "web-2") if ips[p] == found.group(1))
            other = "web-2" if drained == "web-1" else "web-1"
            kubectl("label", "pod", drained, "app=drained", "--overwrite")
            deadline = time.monotonic() + 30
            while True:
                table = guest.run(["ipvsadm", "-Ln"]).stdout
                row = real_server(table, f"{cluster_ip}:80", ips[drained])
                if row and row[0] == 0:
                    break
                assert time.monotonic() < deadline, table
                time.sleep(0.5)
            assert row[1] >= 1, table  # ActiveConn: the held connection
            assert set(fetch_many(kubectl, cluster_ip, 6)) == {other}
            kubectl("exec", "client", "--", "touch", go)
            out, err = held.communicate(timeout=60)
        finally:
            if held.poll() is None:
                held.kill()
    assert held.returncode == 0 and "200 OK" in out and drained in out, out + err
    kubectl("label", "pod", drained, "app=web", "--overwrite")
    deadline = time.monotonic() + 30
    while (row := real_server(table := guest.run(["ipvsadm", "-Ln"]).stdout, f"{cluster_ip}:80",
                              ips[drained])) is None or row[0] != 1:  # fmt: skip
        assert time.monotonic() < deadline, table
        time.sleep(0.5)


def test_netem_delay_on_a_vm_node(lab: str, tmp_path: Path) -> None:
    """`podnet fault delay` on a VM node: netem in its own kernel (this one has none) holds
    what leaves its eth0, the overlay included; clearing it removes the qdisc."""
    from podnet.lab.vm import VmControl

    kubectl = Kubectl(lab, tmp_path)
    plan = load_plan(Path(f"/var/lib/podnet/{lab}"))
    assert plan is not None
    guest = VmControl(plan, "node2")
    web1 = wait_ready(kubectl, ["web-1", "client"], 60)["web-1"]  # on node1
    fault = podnet("fault", "delay", "--name", lab, "node2", "300", timeout=120)
    assert fault.returncode == 0, fault.stdout + fault.stderr
    assert "delay 300ms" in guest.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    out = kubectl("exec", "client", "--", "ping", "-c", "3", "-q", web1)
    rtt = re.search(r"min/avg/max = ([\d.]+)/", out)
    assert rtt is not None and float(rtt.group(1)) >= 300, out
    cleared = podnet("fault", "clear", "--name", lab, "--all", timeout=120)
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert "netem" not in guest.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout


def ping_from_node1(plan: LabPlan, address: str, count: int) -> int:
    """Echo replies node1's namespace got from `address` out of `count` (0.2 s apart)."""
    out = subprocess.run(
        ["ip", "netns", "exec", plan.node("node1").netns,  # busybox: this host has no ping
         "busybox", "ping", "-q", "-c", str(count), "-i", "0.2", "-W", "1", address],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    received = re.search(r"(\d+) (?:packets )?received", out)
    assert received is not None, out
    return int(received.group(1))


def test_partition_loss_and_stop_on_a_vm_node(lab: str) -> None:
    """The other fault kinds on a VM node: partition and loss load their nft table in the
    guest's kernel, stop freezes the qemu process; each is cleared like on any node."""
    from podnet.lab.vm import VmControl

    plan = load_plan(Path(f"/var/lib/podnet/{lab}"))
    assert plan is not None
    guest = VmControl(plan, "node2")
    node2 = plan.node("node2").ip
    assert ping_from_node1(plan, node2, 2) == 2

    def fault(*args: str) -> None:
        done = podnet("fault", *args, "--name", lab, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    fault("partition", "node2", "--from", "node1")
    assert "podnet-fault-partition" in guest.run(["nft", "list", "tables"]).stdout
    assert ping_from_node1(plan, node2, 3) == 0
    fault("clear", "--all")
    assert "podnet-fault" not in guest.run(["nft", "list", "tables"]).stdout
    fault("loss", "node2", "50")  # its replies: about half come back
    assert 0 < ping_from_node1(plan, node2, 30) < 30
    fault("clear", "--all")
    assert ping_from_node1(plan, node2, 5) == 5

    qemu = next(r for r in procs.recorded(Path(plan.pids_dir)) if r.label == "agent-node2")
    fault("stop", "node", "node2")
    assert Path(f"/proc/{qemu.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    assert ping_from_node1(plan, node2, 3) == 0
    fault("clear", "--all")
    deadline = time.monotonic() + 60  # the guest catches up with its clock first
    while ping_from_node1(plan, node2, 2) < 2:
        assert time.monotonic() < deadline
