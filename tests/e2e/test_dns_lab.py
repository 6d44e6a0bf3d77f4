"""Cluster DNS in a real lab: what a user's pods see, through kube-proxy, from the busybox and
jessie-dnsutils images — names of Services (short, namespaced, FQDN), headless pods, SRV,
PTR, ExternalName, a missing name, a pod's own FQDN, forwarding to an upstream of the test's
own (dnsmasq in a node's namespace, installed with `Lab.set_dns_upstreams`, which rolls the
DNS pods), and a DNS pod deleted under load with no lookup lost.

Marks: root + slow + kubectl. One 2-node lab for the module, always taken down.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from podnet.kernel import netns
from podnet.lab import Lab, LabSpec, down_lab
from podnet.testing.waiting import poll

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kubectl, pytest.mark.timeout(300)]

WORKLOADS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: nginx, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: db}
spec:
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: mysql, port: 3306, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: sub}
spec:
  clusterIP: None
  selector: {app: sub}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: p1, labels: {app: sub}}
spec:
  hostname: p1
  subdomain: sub
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: www.example.test
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: dnsutils}
spec:
  containers:
  - name: main
    image: registry.k8s.io/e2e-test-images/jessie-dnsutils:1.3
    command: [sleep, "3600"]
"""


class Cluster:
    def __init__(self, lab: Lab, cache: Path) -> None:
        self.lab = lab
        self.cache = cache

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        out = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.lab.kubeconfig), "--cache-dir",
             str(self.cache), *args],
            input=stdin, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        if check:
            assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout + (out.stderr if not check else "")

    def exec(self, pod: str, *command: str) -> str:
        """Output of a command in a pod, whatever its exit code (nslookup's is 1 whenever
        one search domain misses)."""
        return self.kubectl("exec", pod, "--", *command, check=False)

    def field(self, kind: str, name: str, path: str, namespace: str = "default") -> str:
        return self.kubectl(
            "-n", namespace, "get", kind, name, "-o", "jsonpath={" + path + "}"
        ).strip()


def nslookup_addresses(output: str, name: str) -> list[str]:
    """The addresses busybox's nslookup printed for `name`."""
    found, current = [], ""
    for line in output.splitlines():
        if line.startswith("Name:"):
            current = line.split(None, 1)[1].strip()
        elif line.startswith("Address:") and current == name:
            found.append(line.split(None, 1)[1].strip())
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binary = shutil.which("dnsmasq")
    if binary is None:
        pytest.skip("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
    root = tmp_path_factory.mktemp("dnslab")
    name = f"dns{secrets.token_hex(2)}"
    # no upstream until the test's own runs: nothing here may reach the machine's resolver
    spec = LabSpec(name=name, nodes=2, state_root=root / "state", dns_upstreams=())
    upstream: subprocess.Popen[bytes] | None = None
    try:
        lab = Lab.up(spec, merge_kubeconfig=False, timeout=120)
        node = lab["node1"]
        # the upstream: authoritative for everything (NXDOMAIN) but www.example.test
        upstream = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, binary, "--keep-in-foreground",
             "--conf-file=/dev/null", "--no-resolv", "--no-hosts", f"--listen-address={node.ip}",
             "--bind-interfaces", "--port=53", "--pid-file=", "--user=root", "--local=/#/",
             "--address=/www.example.test/192.0.2.80", "--local-ttl=300"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        lab.set_dns_upstreams([node.ip], timeout=90)
        cluster = Cluster(lab, root / "kube-cache")
        cluster.kubectl("apply", "-f", "-", stdin=WORKLOADS)
        cluster.kubectl("rollout", "status", "deployment/web", "--timeout=90s")
        cluster.kubectl("rollout", "status", "deployment/db", "--timeout=90s")
        cluster.kubectl("wait", "--for=condition=Ready", "pod/p1", "pod/client", "pod/dnsutils",
                        "--timeout=90s")  # fmt: skip
        yield cluster
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait(timeout=10)
        down_lab(name, root / "state")


def test_pods_get_the_kubelets_resolv_conf_and_hosts(cluster: Cluster) -> None:
    assert cluster.exec("client", "cat", "/etc/resolv.conf") == (
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )
    p1_ip = cluster.field("pod", "p1", ".status.podIP")
    hosts = cluster.exec("p1", "cat", "/etc/hosts")
    assert hosts.endswith(f"{p1_ip}\tp1.sub.default.svc.cluster.local\tp1\n")
    assert cluster.exec("p1", "hostname").strip() == "p1"


def test_service_names_resolve_short_namespaced_and_fully_qualified(cluster: Cluster) -> None:
    web_ip = cluster.field("service", "web", ".spec.clusterIP")
    # busybox's nslookup applies the search list only to names without a dot (as on any
    # cluster); the C library's resolver (wget, ping) applies it to every name (ndots:5)
    for name in ("web", "web.default.svc.cluster.local"):
        out = cluster.exec("client", "nslookup", name)
        assert nslookup_addresses(out, "web.default.svc.cluster.local") == [web_ip], out
    for name in ("web", "web.default", "web.default.svc.cluster.local"):
        page = cluster.exec("client", "wget", "-q", "-O-", "-T", "2", f"http://{name}")
        assert "Welcome to nginx!" in page, page
    dns_ip = cluster.exec("dnsutils", "dig", "+short", "kube-dns.kube-system.svc.cluster.local")
    assert dns_ip.strip() == "10.96.0.10"
    assert cluster.exec("dnsutils", "host", "web.default").startswith(
        f"web.default.svc.cluster.local has address {web_ip}\n"
    )


def test_headless_service_srv_and_ptr(cluster: Cluster) -> None:
    db_ips = sorted(
        cluster.kubectl("get", "pods", "-l", "app=db", "-o", "jsonpath={.items[*].status.podIP}")
        .split()
    )  # fmt: skip
    found = cluster.exec("dnsutils", "dig", "+short", "db.default.svc.cluster.local")
    assert sorted(found.split()) == db_ips
    srv = cluster.exec(
        "dnsutils", "dig", "+short", "SRV", "_mysql._tcp.db.default.svc.cluster.local"
    )
    assert sorted(srv.splitlines()) == sorted(
        f"0 50 3306 {ip.replace('.', '-')}.db.default.svc.cluster.local." for ip in db_ips
    )
    ptr = cluster.exec("dnsutils", "dig", "+short", "-x", db_ips[0])
    assert ptr.strip() == f"{db_ips[0].replace('.', '-')}.db.default.svc.cluster.local."
    web_ip = cluster.field("service", "web", ".spec.clusterIP")
    assert cluster.exec("dnsutils", "dig", "+short", "-x", web_ip).strip() == (
        "web.default.svc.cluster.local."
    )


def test_a_pods_own_fqdn_from_hostname_and_subdomain(cluster: Cluster) -> None:
    p1_ip = cluster.field("pod", "p1", ".status.podIP")
    fqdn = "p1.sub.default.svc.cluster.local"
    out = cluster.exec("client", "nslookup", fqdn)
    assert nslookup_addresses(out, fqdn) == [p1_ip], out
    ping = cluster.exec("client", "ping", "-c", "1", "-W", "2", "p1.sub")  # the search path
    assert ping.startswith(f"PING p1.sub ({p1_ip})") and " 0% packet loss" in ping, ping
    assert cluster.exec("p1", "hostname", "-f").strip() == fqdn


def test_the_busybox_toolbox_works_as_the_official_images(cluster: Cluster) -> None:
    spider = cluster.exec("client", "sh", "-c", "wget --spider --timeout=10 web 2>&1 && echo ok")
    assert spider.endswith("remote file exists\nok\n"), spider
    assert cluster.exec("client", "sh", "-c", "nc -z -w 2 web 80 && echo open").strip() == "open"
    # nc -l -p PORT -e PROG and nc -u, on the pod with a hostname, reached by its name
    cluster.exec("p1", "sh", "-c", "nc -l -p 8080 -e echo hello-from-nc >/dev/null 2>&1 &")
    cluster.exec("p1", "sh", "-c", "nc -u -l -p 9000 > /tmp/udp.txt 2>/dev/null &")

    def bound() -> bool | None:  # exec returns when sh does: each nc binds a moment later
        return (
            8080 in ports(cluster, "p1", "tcp", "0A") and 9000 in ports(cluster, "p1", "udp")
        ) or None

    poll("p1's nc on tcp 8080 and udp 9000", bound)
    assert cluster.exec("client", "nc", "-w", "2", "p1.sub", "8080").strip() == "hello-from-nc"
    cluster.exec("client", "sh", "-c", "echo hello-udp | nc -u -w 1 p1.sub 9000")
    assert cluster.exec("p1", "cat", "/tmp/udp.txt").strip() == "hello-udp"


def ports(cluster: Cluster, pod: str, table: str, state: str | None = None) -> set[int]:
    """The local ports of the pod's sockets in /proc/net/`table` and `table`6 (tcp, udp; busybox
    nc binds IPv6, dual-stack), only those in `state` if given (0A: a TCP socket listening)."""
    out = cluster.kubectl("exec", pod, "--", "cat", f"/proc/net/{table}", f"/proc/net/{table}6")
    rows = [row.split() for row in out.splitlines()]
    return {
        int(r[1].rsplit(":", 1)[1], 16)
        for r in rows
        if r and r[0].endswith(":") and state in (None, r[3])  # not the "sl local_address" header
    }


def test_a_missing_name_is_nxdomain_at_once(cluster: Cluster) -> None:
    out = cluster.exec("client", "nslookup", "nope")
    assert "NXDOMAIN" in out and "timed out" not in out, out
    dig = cluster.exec("dnsutils", "dig", "nope.default.svc.cluster.local")
    assert "status: NXDOMAIN" in dig and "flags: qr aa rd" in dig, dig


def test_other_names_and_external_names_go_to_the_upstream(cluster: Cluster) -> None:
    out = cluster.exec("client", "nslookup", "www.example.test")
    assert nslookup_addresses(out, "www.example.test") == ["192.0.2.80"], out
    chased = cluster.exec("dnsutils", "dig", "+noall", "+answer", "ext.default.svc.cluster.local")
    assert [line.split() for line in chased.splitlines()] == [
        ["ext.default.svc.cluster.local.", "30", "IN", "CNAME", "www.example.test."],
        ["www.example.test.", "30", "IN", "A", "192.0.2.80"],
    ]
    missing = cluster.exec("dnsutils", "dig", "nope.example.test")
    assert "status: NXDOMAIN" in missing, missing


def live_dns_pods(cluster: Cluster) -> list[str]:
    """The coredns pods not being deleted."""
    listed = json.loads(cluster.kubectl("-n", "kube-system", "get", "pods", "-l",
                                        "k8s-app=kube-dns", "-o", "json"))  # fmt: skip
    return [
        p["metadata"]["name"] for p in listed["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def test_a_dns_pod_deleted_under_load_loses_no_lookup(cluster: Cluster) -> None:
    pods = live_dns_pods(cluster)
    assert len(pods) == 2
    stop = threading.Event()
    results: dict[str, list[str]] = {"ok": [], "failed": []}

    def load() -> None:
        while not stop.is_set():
            request = dns.message.make_query("web.default.svc.cluster.local.", "A")
            try:
                reply = dns.query.udp(request, "10.96.0.10", timeout=2)
                outcome = "ok" if reply.answer else f"rcode {reply.rcode()}"
            except (dns.exception.DNSException, OSError) as exc:
                outcome = f"{type(exc).__name__}"
            results["ok" if outcome == "ok" else "failed"].append(outcome)
            time.sleep(0.01)

    worker = threading.Thread(
        target=lambda: netns.call_in(cluster.lab["node1"].netns, load), daemon=True
    )
    worker.start()
    try:
        time.sleep(1)
        cluster.kubectl("-n", "kube-system", "delete", "pod", pods[0], "--wait=false")
        deadline = time.monotonic() + 60
        while True:
            names = live_dns_pods(cluster)
            if pods[0] not in names and len(names) == 2:
                break
            assert time.monotonic() < deadline, f"coredns pods are {names}"
            time.sleep(0.5)
        cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                        "--timeout=60s")  # fmt: skip
        time.sleep(1)
    finally:
        stop.set()
        worker.join(timeout=10)
    print(f"{len(results['ok'])} lookups while a DNS pod was replaced")
    assert results["failed"] == [] and len(results["ok"]) > 100
