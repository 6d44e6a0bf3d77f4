"""A lab with a VM node (`podnet up --vm-nodes 1`): a namespace node and a node that boots
Debian's kernel under qemu, on one overlay; kube-proxy's ipvs mode carries packets on the VM.

One lab for the module: node1 is a namespace (ipvs falls back to iptables there: this
kernel has no IP_VS), node2 is a VM whose kernel loads ip_vs. Three web pods (one on node1,
two on node2) behind a ClusterIP Service; a client pod on node2 reaches them through IPVS,
round robin, across the overlay; the IPVS table inside the VM (`ipvsadm -Ln`) holds the
Service's virtual server with the three pods as real servers; ClientIP affinity then keeps
one pod. The tests after it use the same lab in order: a removed endpoint leaves the virtual
server and a NodePort answers; `podnet trace` follows connections through IPVS in the VM;
graceful termination keeps an established connection to a removed endpoint; a netem delay
(`podnet fault delay`) on the VM node; partition, loss and stop on it.
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
from typing import Any, cast

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


def guest_evidence(name: str, node: str = "node2", lines: int = 30) -> str:
    """What a failing kubectl call needs explained, gathered before the lab (and its logs)
    is gone: the VM node's agent as its guest supervisor sees it (exits, last exit code), the
    tail of its agent log, and the API server's relay notes."""
    from podnet.lab.vm import VmControl, VmError

    state = Path(f"/var/lib/podnet/{name}")
    try:
        agent = VmControl.at(str(state), node).status().get("agent")
    except (VmError, OSError) as exc:
        agent = str(exc)
    parts = [f"\n--- guest agent of {node}: {agent}"]
    for label, path, keep in (
        ("agent log", state / "vms" / node / "agent.log", lambda line: True),
        ("server relay", state / "server.log", lambda line: "relay" in line),
    ):
        try:
            text = [line for line in path.read_text(errors="replace").splitlines() if keep(line)]
        except OSError as exc:
            text = [str(exc)]
        parts.append(f"--- {label} ({path}), last {lines} lines:\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


class Kubectl:
    def __init__(self, name: str, cache: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": f"/var/lib/podnet/{name}/kubeconfig"}
        self.cache = cache
        self.name = name

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 90) -> str:
        out = subprocess.run(
            ["kubectl", "--cache-dir", str(self.cache), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if out.returncode != 0:
            evidence = guest_evidence(self.name)
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}{evidence}")
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


def usable_real_servers(table: str, service: str) -> set[str]:
    """The real servers (`ip:port`) of TCP virtual server `service` in `ipvsadm -Ln` output
    that take new connections (weight > 0)."""
    section = table.split(f"TCP  {service} ", 1)[1].split("\nTCP", 1)[0].split("\nUDP", 1)[0]
    return {
        real
        for real, weight in re.findall(r"-> ([\d.]+:\d+)\s+Masq\s+(\d+)", section)
        if weight != "0"
    }


def test_podnet_trace_follows_connections_through_ipvs_on_the_vm_node(
    lab: str, tmp_path: Path
) -> None:
    """After the second test (web: a NodePort Service, endpoints web-1 on node1 and web-2 on
    node2): `podnet trace` reads node2's state inside its guest. From the client pod on node2
    the ClusterIP is IPVS's: the trace's IPVS hop names the virtual server, its candidates are
    the real servers `ipvsadm -Ln` shows taking connections, and followed to web-1 it crosses
    node2's tap and the underlay into node1, the reply coming back through IPVS. From web-1
    (node1: iptables) it reaches web-2 inside the VM; node1 to the NodePort on node2 is IPVS's
    too, masqueraded; --verify shows the prediction and says why the VM's kernel is not
    checked; a saved snapshot replays the same trace; `podnet graph` draws node2's pods, read
    inside the guest too."""
    from podnet.lab.vm import VmControl

    kubectl = Kubectl(lab, tmp_path)
    plan = load_plan(Path(f"/var/lib/podnet/{lab}"))
    assert plan is not None
    ips = wait_ready(kubectl, ["web-1", "web-2", "client"], 60)
    cluster_ip = kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
    node_port = kubectl("get", "service", "web", "-o", "jsonpath={.spec.ports[0].nodePort}")
    node2 = plan.node("node2").ip

    def trace(*args: str) -> dict[str, Any]:
        done = podnet("trace", "--name", lab, *args, "-o", "json", timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        return cast(dict[str, Any], json.loads(done.stdout))

    saved = tmp_path / "vm-ipvs.json"
    doc = trace("client", "svc/web", "--endpoint", ips["web-1"], "--save-snapshot", str(saved))
    table = VmControl(plan, "node2").run(["ipvsadm", "-Ln"]).stdout
    assert doc["outcome"] == "delivered", doc["reason"]
    assert doc["path"] == ["pod default/client", "node node2", "node node1", "pod default/web-1"]
    assert doc["endpoint"] == f"{ips['web-1']}:8080"
    (ipvs,) = [h for h in doc["forward"] if h["kind"] == "ipvs"]
    assert (ipvs["place"], ipvs["hook"]) == ("node node2", "input"), ipvs
    assert ipvs["summary"].startswith(f"IPVS TCP {cluster_ip}:80 rr (round robin"), ipvs
    assert {c["target"] for c in doc["candidates"]} == usable_real_servers(
        table, f"{cluster_ip}:80"
    ), table
    out_of_vm = [h for h in doc["forward"] if h["kind"] == "underlay"]
    assert out_of_vm[0]["place"] == "node node2", out_of_vm
    assert out_of_vm[0]["objects"][0].startswith("VM eth0 (virtio) ↔ tap "), out_of_vm
    into = [h for h in doc["reply"] if h["kind"] == "underlay"]
    assert into[0]["summary"].endswith("→ eth0 of node node2"), into
    assert any(h["summary"].startswith("IPVS translates the reply back") for h in doc["reply"])
    assert doc["reply"][-1]["kind"] == "deliver"

    into_vm = trace("web-1", "svc/web", "--endpoint", ips["web-2"])
    assert into_vm["outcome"] == "delivered", into_vm["reason"]
    assert into_vm["path"] == [
        "pod default/web-1", "node node1", "node node2", "pod default/web-2"
    ]  # fmt: skip
    assert not any(h["kind"] == "ipvs" for h in into_vm["forward"])  # node1's iptables DNAT

    node_port_doc = trace("node1", "node2", "--port", node_port)
    assert node_port_doc["outcome"] == "delivered", node_port_doc["reason"]
    (ipvs,) = [h for h in node_port_doc["forward"] if h["kind"] == "ipvs"]
    assert ipvs["summary"].startswith(f"IPVS TCP {node2}:{node_port} rr"), ipvs
    assert {c["target"] for c in node_port_doc["candidates"]} == usable_real_servers(
        table, f"{node2}:{node_port}"
    ), table
    assert any(
        h["place"] == "node node2" and h["summary"].startswith("masqueraded")
        for h in node_port_doc["forward"]
    ), node_port_doc["forward"]

    verify = podnet("trace", "--name", lab, "client", "svc/web", "--verify", timeout=240)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "IPVS TCP" in verify.stdout
    assert "not verified: --verify cannot check this path: it crosses VM node node2" in (
        " ".join(verify.stderr.split())
    ), verify.stderr

    replay = podnet(
        "trace", "--snapshot", str(saved), "client", "svc/web", "--endpoint", ips["web-1"],
        "-o", "json",
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout) == doc

    drawn = podnet("graph", "--name", lab, "-o", "json", timeout=240)
    assert drawn.returncode == 0, drawn.stderr
    (vm,) = [n for n in json.loads(drawn.stdout)["nodes"] if n["name"] == "node2"]
    assert {p["name"]: bool(p["veth"]) for p in vm["pods"]} == {"web-2": True, "client": True}
    assert vm["bridge"].startswith("cni0"), vm


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
    assert held.returncode == 0 and "200 OK" in out and drained in out, (
        out + err + guest_evidence(lab)
    )
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
