"""`podnet trace --verify` on live labs: for every flannel backend and kube-proxy mode (ipvs
needs IP_VS, which this kernel lacks), the kernels' own nftables trace agrees with the
prediction on every scenario of the table; nothing the probe added is left behind, also
after SIGINT or SIGTERM; and `podnet graph --watch` serves a page a real headless Chromium
renders with every pod and Service of the lab.

One two-node lab per backend (module-scoped, chosen by indirect parametrization; the
interrupted --verify stays within one node, so it runs on the first backend's lab only); the
proxy modes are switched on it with `Lab.restart_agents` (what `podnet proxy-mode` does), and
each mode's probes start once the lab is done changing (`settle`: every node's proxy reports
the Services and EndpointSlices programmed). Pods: alpha and beta on node1, gamma on
node2 (agnhost netexec: HTTP 8080, UDP 8081), and `guarded` on node2, which a NetworkPolicy
opens to beta only. Services: `gamma` (NodePort; TCP 80 and UDP 81, its only endpoint on the
other node, so the kernel's random choice is known), `self` (alpha's own Service: the
hairpin), `sticky` (beta and gamma with ClientIP affinity), `empty` (no endpoints). Marks:
root + slow.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from podnet.agent.status import caught_up, read_status
from podnet.api.client import HttpApi
from podnet.demo.manifests import AGNHOST
from podnet.kernel import netns
from podnet.kernel.rules import NftRunner
from podnet.lab import Lab, LabSpec
from podnet.testing import browser
from podnet.testing.ports import free_port
from podnet.trace.netfilter import TRACE_TABLE_PREFIX
from podnet.trace.plan import plan_trace
from podnet.trace.render import plain_text, render_verification
from podnet.trace.resolve import pods_involved, resolve_probe
from podnet.trace.snapshot import capture_snapshot, cluster_snapshot
from podnet.trace.verify import Verification, verify_trace

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]

MODES = ("iptables", "nftables", "userspace")
BACKENDS = ("vxlan", "host-gw", "udp")


def pod(name: str, node: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name, **labels}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "netexec",
                    "image": AGNHOST,
                    "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                }
            ],
        },
    }


def service(
    name: str, app: str, ports: list[dict[str, Any]], kind: str = "ClusterIP"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": kind, "selector": {"app": app}, "ports": ports},
    }


OBJECTS = [
    ("pods", pod("alpha", "node1")),
    ("pods", pod("beta", "node1", role="web")),
    ("pods", pod("gamma", "node2", role="web")),
    ("pods", pod("guarded", "node2")),
    (
        "networkpolicies",
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "only-beta"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "guarded"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "beta"}}}]}],
            },
        },
    ),
    (
        "services",
        service(
            "gamma",
            "gamma",
            [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "echo", "port": 81, "targetPort": 8081, "protocol": "UDP"},
            ],
            "NodePort",
        ),
    ),
    ("services", service("self", "alpha", [{"port": 80, "targetPort": 8080}])),
    (
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sticky"},
            "spec": {
                "selector": {"role": "web"},
                "sessionAffinity": "ClientIP",
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        },
    ),
    ("services", service("empty", "nobody", [{"port": 80, "targetPort": 8080}])),
]


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    target: str
    port: str | None = None
    proto: str = "tcp"
    outcome: str = "delivered"
    reason: str = ""  # in the trace's reason for a drop


def scenarios(mode: str, node_port: int) -> list[Scenario]:
    return [
        Scenario("same node", "alpha", "beta", "8080"),
        Scenario("cross node", "alpha", "gamma", "8080"),
        Scenario("ClusterIP", "alpha", "svc/gamma", "http"),
        Scenario("hairpin", "alpha", "svc/self"),
        Scenario("NodePort on the other node", "alpha", "node2", str(node_port)),
        Scenario("from a node to a ClusterIP", "node1", "svc/gamma", "http"),
        Scenario("UDP by DNS name", "alpha", "gamma.default", "81", "udp"),
        Scenario("ICMP", "alpha", "gamma", proto="icmp"),
        Scenario("NetworkPolicy lets beta in", "beta", "guarded", "8080"),
        Scenario(
            "NetworkPolicy drops alpha",
            "alpha",
            "guarded",
            "8080",
            outcome="dropped",
            reason="pod default/guarded is isolated for ingress by NetworkPolicy "
            "default/only-beta and none of its rules admits tcp/8080 from ",
        ),
        Scenario(
            "no endpoints",
            "alpha",
            "svc/empty",
            outcome="refused" if mode == "userspace" else "rejected",
        ),
    ]


async def _install(lab: Lab) -> None:
    api = HttpApi.from_kubeconfig(lab.kubeconfig)
    try:
        for resource, obj in OBJECTS:
            await api.create(resource, obj, "default")
    finally:
        await api.close()


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The lab of the backend a test is parametrized with (`BACKENDS`), one per backend."""
    spec = LabSpec(name=f"ttr{secrets.token_hex(2)}", nodes=2, backend=request.param, dns=False)
    lab = Lab.up(spec, merge_kubeconfig=False)
    try:
        asyncio.run(_install(lab))
        settle(lab, lab.plan.proxy_mode)
        yield lab
    finally:
        lab.down()
    assert not netns.list_names(spec.netns_prefix)


def trace_tables(lab: Lab) -> list[str]:
    """Tables named podnet-trace-* in any namespace of the lab."""
    found = []
    for name in netns.list_names(lab.plan.netns_prefix):
        listing = NftRunner(name).list_ruleset()
        found += [f"{name}: {line}" for line in listing.splitlines() if TRACE_TABLE_PREFIX in line]
    return found


# the ready endpoints each Service of OBJECTS ends up with
ENDPOINTS = {"gamma": 1, "self": 1, "sticky": 2, "empty": 0}


def settle(lab: Lab, mode: str) -> None:
    """Restart the agents in `mode` (unless they run in it) and wait until the lab is done
    changing: every pod ready, every Service at its final endpoints, every node's kube-proxy
    in `mode` with those Services and EndpointSlices in its kernel (`proxy/status.json`, see
    `agent/status.py`), node2's policy isolating `guarded`. A probe sent earlier races the
    agents: an iptables sync rewrites KUBE-SERVICES whole (new rule handles) under it."""
    if lab.plan.proxy_mode != mode:
        lab.restart_agents(proxy_mode=mode)
    deadline = time.monotonic() + 120  # pods start on a busy machine
    while (settled := _settled(lab, mode)) is not True:
        assert time.monotonic() < deadline, f"the lab did not settle in {mode} mode: {settled}"
        time.sleep(0.2)


def _settled(lab: Lab, mode: str) -> str | bool:
    """True, or what the lab is still waiting for."""
    found = asyncio.run(_read(lab, ("pods", "services", "endpointslices")))
    ready = {
        p["metadata"]["name"]
        for p in found["pods"]
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    }
    if ready != {"alpha", "beta", "gamma", "guarded"}:
        return f"pods ready: {sorted(ready)}"
    slices = [
        s for s in found["endpointslices"]
        if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") in ENDPOINTS
    ]  # fmt: skip
    counts = dict.fromkeys(ENDPOINTS, 0)
    for s in slices:
        endpoints = s.get("endpoints") or []
        if not all((e.get("conditions") or {}).get("ready") for e in endpoints):
            return f"endpoints not ready yet in {s['metadata']['name']}"
        counts[s["metadata"]["labels"]["kubernetes.io/service-name"]] += len(endpoints)
    if counts != ENDPOINTS:
        return f"ready endpoints per Service: {counts}"
    wanted = {
        "services": max(_rv(s) for s in found["services"] if s["metadata"]["name"] in ENDPOINTS),
        "endpointslices": max(_rv(s) for s in slices),
    }
    for node in lab.plan.nodes:
        status = read_status(Path(node.state_dir), "proxy")
        if status is None or status.get("mode") != mode or not caught_up(status, wanted):
            return f"{node.name}'s kube-proxy at {status} (want {mode}, {wanted})"
    guarded = next(p for p in found["pods"] if p["metadata"]["name"] == "guarded")
    node2 = next(n for n in lab.plan.nodes if n.name == guarded["spec"]["nodeName"])
    isolated = (read_status(Path(node2.state_dir), "policy") or {}).get("selected") or []
    if not any(
        s.get("pod") == "default/guarded" and s.get("ip") == guarded["status"].get("podIP")
        for s in isolated
    ):
        return f"{node2.name}'s policy does not isolate guarded yet: {isolated}"
    return True


async def _read(lab: Lab, resources: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    api = HttpApi.from_kubeconfig(lab.kubeconfig)
    try:
        listed = await asyncio.gather(*(api.list(r, "default") for r in resources))
    finally:
        await api.close()
    return {r: found.get("items") or [] for r, found in zip(resources, listed, strict=True)}


def _rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lab", BACKENDS, indirect=True)
def test_the_kernels_agree_with_every_predicted_hop(lab: Lab, mode: str) -> None:
    settle(lab, mode)
    snap = cluster_snapshot(lab.plan)
    node_port = next(
        p["nodePort"]
        for s in snap.objects("services")
        if s["metadata"]["name"] == "gamma"
        for p in s["spec"]["ports"]
        if p["name"] == "http"
    )
    failures = []
    for scenario in scenarios(mode, node_port):
        snap = cluster_snapshot(lab.plan)
        probe = resolve_probe(snap, scenario.source, scenario.target, scenario.port, scenario.proto)
        snap = capture_snapshot(snap, pods_involved(snap, scenario.source, probe))
        verification = verify_trace(snap, probe, timeout=3.0)
        trace = verification.trace
        if (
            verification.agree
            and trace.outcome == scenario.outcome
            and scenario.reason in trace.reason
        ):
            continue
        failures.append(explain(f"{lab.plan.backend}/{mode}: {scenario.name}", verification))
    assert not failures, "\n".join(failures)
    if mode != "userspace":  # the proxy keeps its affinity in its own memory, not the kernel's
        check_affinity(lab, mode)
    assert trace_tables(lab) == []


def explain(what: str, verification: Verification) -> str:
    """The prediction and the kernel's rows side by side, as `podnet trace --verify` prints."""
    console = Console(width=120, color_system=None, record=True, file=None)
    with console.capture() as captured:
        render_verification(verification, console)
    trace = verification.trace
    return f"--- {what} ({trace.outcome})\n{plain_text(trace, width=120)}{captured.get()}"


def check_affinity(lab: Lab, mode: str) -> None:
    """After a first connection to `sticky` (ClientIP affinity, two endpoints), the kernel
    remembers alpha (`-m recent` lists, the nft affinity sets); the prediction reads that
    memory and names the endpoint the kernel then picks, with no random choice left."""
    chosen = []
    for _ in range(2):
        snap = cluster_snapshot(lab.plan)
        probe = resolve_probe(snap, "alpha", "svc/sticky")
        snap = capture_snapshot(snap, pods_involved(snap, "alpha", probe))
        predicted = plan_trace(snap, probe)
        verification = verify_trace(snap, probe, timeout=3.0)
        remembered_by = {  # what the prediction read: the kernel's affinity memory
            ns: {k: v for k, v in state.recent.items() if v}
            for ns, state in snap.namespaces.items()
            if any(state.recent.values())
        }
        assert verification.agree and verification.chosen is not None, explain(
            f"{lab.plan.backend}/{mode}: alpha to sticky, probe {len(chosen) + 1} (affinity; "
            f"recent lists at the snapshot: {remembered_by}, chosen so far: {chosen})",
            verification,
        )
        chosen.append(verification.chosen)
    assert chosen[0] == chosen[1]
    remembered = {c.target for c in predicted.candidates if c.probability > 0.99}
    assert predicted.endpoint in (None, chosen[1]) and remembered <= {chosen[1]}
    assert predicted.forward[-1].packet is not None
    assert f"{predicted.forward[-1].packet.dst}:{predicted.forward[-1].packet.dport}" == chosen[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("lab", BACKENDS[:1], indirect=True)
def test_an_interrupted_verify_leaves_nothing(lab: Lab, sig: signal.Signals) -> None:
    """A probe nobody answers (an unused address of node1's pod subnet) keeps `--verify`
    listening for --timeout seconds; the signal arrives while its tables are in place. The
    probe stays within node1 (no overlay), so one backend's lab covers it."""
    cidr = next(
        n["spec"]["podCIDR"] for n in cluster_snapshot(lab.plan).objects("nodes")
        if n["metadata"]["name"] == "node1"
    )  # fmt: skip
    nobody = cidr.rsplit(".", 1)[0] + ".250"
    proc = subprocess.Popen(
        [sys.executable, "-m", "podnet.cli.main", "trace", "--name", lab.name, "alpha", nobody,
         "--proto", "icmp", "--verify", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not trace_tables(lab):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the probe's tables never appeared"
            time.sleep(0.02)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert trace_tables(lab) == []


@pytest.mark.parametrize("lab", BACKENDS, indirect=True)
@pytest.mark.skipif(browser.chromium() is None, reason="chromium is not installed")
def test_graph_watch_page_shows_every_pod_and_service(lab: Lab) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "podnet.cli.main", "graph", "--name", lab.name, "--watch",
         "--port", str(port), "--interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "graph.svg", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the --watch page never answered"
                time.sleep(0.2)
        dom = browser.dump_dom(url, budget_ms=2500)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # fail below, without leaving the process to the next test
            proc.communicate()
    assert proc.returncode == 0
    snap = cluster_snapshot(lab.plan)
    for resource in ("pods", "services"):
        for obj in snap.objects(resource):
            meta = obj["metadata"]
            assert f'data-name="{meta["namespace"]}/{meta["name"]}"' in dom
    assert "live, refreshed" in dom
