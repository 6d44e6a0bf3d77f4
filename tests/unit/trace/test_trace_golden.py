"""Golden traces: the planner is a pure function of a snapshot captured from a live lab.

Each snapshot in `snapshots/` was written by `podnet trace --save-snapshot` on a two-node lab
(alpha and beta on node1, gamma on node2, the `hostnames` Deployment behind a ClusterIP
Service, `web-np` a NodePort Service for gamma, `empty` a Service without endpoints) in one
flannel backend and kube-proxy mode (`host-gw-iptables`: the pods and Services of
`tests/e2e/test_trace_lab.py`'s lab instead). Each scenario's whole rendering (hops, kernel objects,
every netfilter rule matched, the reply) is compared with `golden/<snapshot>--<name>.txt`;
`PODNET_UPDATE_GOLDEN=1` rewrites them (review the diff). `tests/e2e/test_trace_lab.py`
checks the same kind of traces against the kernel's own trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from podnet.testing.golden import assert_golden_text
from podnet.trace.plan import EndpointError, Trace, plan_trace
from podnet.trace.render import plain_text, trace_to_dict
from podnet.trace.resolve import ResolveError, pods_involved, resolve_probe
from podnet.trace.snapshot import Snapshot, from_json, to_json

HERE = Path(__file__).parent
Snapshots = Callable[[str], Snapshot]


@dataclass(frozen=True)
class Scenario:
    snapshot: str
    name: str
    source: str
    target: str
    port: str | None = None
    proto: str = "tcp"
    endpoint: str | None = None
    outcome: str = "delivered"

    @property
    def id(self) -> str:
        return f"{self.snapshot}--{self.name}"


SCENARIOS = [
    Scenario("vxlan-iptables", "same-node", "alpha", "beta", "8080"),
    Scenario("vxlan-iptables", "cross-node", "alpha", "gamma", "8080"),
    Scenario("vxlan-iptables", "clusterip", "alpha", "svc/hostnames", endpoint="10.244.0.5"),
    Scenario("vxlan-iptables", "dns-name", "alpha", "hostnames", endpoint="10.244.1.6"),
    Scenario("vxlan-iptables", "nodeport", "alpha", "node2", "30345"),
    Scenario("vxlan-iptables", "nodeport-from-node", "node1", "node1", "30345"),
    Scenario(
        "vxlan-iptables", "clusterip-from-node", "node1", "svc/hostnames", endpoint="10.244.0.5"
    ),
    Scenario("vxlan-iptables", "no-endpoints", "alpha", "svc/empty", outcome="rejected"),
    Scenario(
        "vxlan-iptables",
        "hairpin",
        "hostnames-579567ddc6-5csqd",
        "svc/hostnames",
        endpoint="10.244.1.6",
    ),
    Scenario("vxlan-iptables", "udp-dns", "alpha", "svc/kube-system/kube-dns", "53", "udp"),
    Scenario("vxlan-iptables", "icmp", "alpha", "gamma", proto="icmp"),
    Scenario("vxlan-iptables", "closed-port", "alpha", "gamma", "9999", outcome="refused"),
    # the kubernetes Service's endpoint is the lab's API server, on the host
    Scenario("vxlan-iptables", "kubernetes", "alpha", "svc/kubernetes", outcome="left"),
    Scenario("vxlan-nftables", "clusterip", "alpha", "svc/hostnames", endpoint="10.244.0.5"),
    Scenario("vxlan-nftables", "nodeport", "alpha", "node2", "30345"),
    Scenario("vxlan-nftables", "nodeport-from-node", "node1", "node1", "30345"),
    # nat-output (dstnat) rewrites the ClusterIP before filter-output (filter) checks it
    Scenario(
        "vxlan-nftables", "clusterip-from-node", "node1", "svc/hostnames", endpoint="10.244.0.5"
    ),
    Scenario("vxlan-nftables", "no-endpoints", "alpha", "svc/empty", outcome="rejected"),
    Scenario(
        "vxlan-nftables",
        "hairpin",
        "hostnames-579567ddc6-5csqd",
        "svc/hostnames",
        endpoint="10.244.1.6",
    ),
    Scenario("vxlan-userspace", "clusterip", "alpha", "svc/hostnames", endpoint="10.244.0.5"),
    Scenario("vxlan-userspace", "clusterip-local", "alpha", "svc/hostnames", endpoint="10.244.1.6"),
    Scenario("vxlan-userspace", "nodeport-from-node", "node1", "node1", "30345"),
    Scenario("vxlan-userspace", "no-endpoints", "alpha", "svc/empty", outcome="refused"),
    Scenario("udp-iptables", "cross-node", "alpha", "gamma", "8080"),
    # host-gw: the e2e trace lab's pods (alpha on node1, gamma on node2, agnhost on 8080)
    Scenario("host-gw-iptables", "cross-node", "alpha", "gamma", "8080"),
    Scenario("host-gw-iptables", "clusterip", "alpha", "svc/gamma", "http"),
    Scenario("udp-iptables", "clusterip", "alpha", "svc/web-np"),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_golden_trace(scenario: Scenario, snapshots: Snapshots) -> None:
    snap = snapshots(scenario.snapshot)
    probe = resolve_probe(snap, scenario.source, scenario.target, scenario.port, scenario.proto)
    trace = plan_trace(snap, probe, scenario.endpoint)
    text = plain_text(trace, f"{snap.backend}, kube-proxy {snap.proxy_mode}")
    assert_golden_text(HERE / "golden" / f"{scenario.id}.txt", text)
    assert trace.outcome == scenario.outcome, text
    if scenario.endpoint and scenario.outcome == "delivered":
        assert trace.endpoint is not None and trace.endpoint.startswith(scenario.endpoint)
        assert {c.target for c in trace.candidates} >= {trace.endpoint}


def test_json_document_names_every_hop_and_rule(snapshots: Snapshots) -> None:
    snap = snapshots("vxlan-iptables")
    probe = resolve_probe(snap, "alpha", "svc/hostnames")
    doc = json.loads(json.dumps(trace_to_dict(plan_trace(snap, probe, "10.244.0.5"))))
    assert doc["schema"] == "podnet.trace/v1"
    assert doc["outcome"] == "delivered" and doc["endpoint"] == "10.244.0.5:8080"
    assert sorted(c["target"] for c in doc["candidates"]) == [
        "10.244.0.4:8080",
        "10.244.0.5:8080",
        "10.244.1.6:8080",
    ]
    assert abs(sum(c["probability"] for c in doc["candidates"]) - 1) < 1e-5
    kinds = [hop["kind"] for hop in doc["forward"]]
    assert kinds[0] == "route" and kinds[-1] == "deliver" and "encap" in kinds and "decap" in kinds
    dnat = [
        rule
        for hop in doc["forward"]
        for chain in hop["chains"]
        for rule in chain["rules"]
        if "--to-destination 10.244.0.5:8080" in rule["rule"]
    ]
    assert [r["verdict"] for r in dnat] == ["accept"]
    assert doc["reply"][-1]["kind"] == "deliver"


def test_snapshot_survives_json(snapshots: Snapshots) -> None:
    snap = snapshots("vxlan-iptables")
    assert from_json(to_json(snap)) == snap
    assert "podnet-trx1-node1" in snap.namespaces and "" in snap.namespaces


@pytest.mark.parametrize(
    ("source", "target", "port", "message"),
    [
        ("nobody", "beta", "8080", r"neither a node \(node1, node2\) nor a pod"),
        ("alpha", "svc/missing", None, "there is no service default/missing"),
        ("alpha", "svc/kube-system/kube-dns", None, "choose one with --port"),
        ("alpha", "svc/hostnames", "81", "has no tcp port 81"),
        ("alpha", "gamma", None, "give the port with --port"),
        ("alpha", "no-such-name.example", "80", "asked no-such-name.example"),
    ],
)
def test_unresolvable_from_and_to_say_what_exists(
    source: str, target: str, port: str | None, message: str, snapshots: Snapshots
) -> None:
    with pytest.raises(ResolveError, match=message):
        resolve_probe(snapshots("vxlan-iptables"), source, target, port)


def test_icmp_between_pods_conntrack_knows_shares_one_overlay_flow(snapshots: Snapshots) -> None:
    """vxlan hashes an ICMP packet's addresses, not its echo id, into the outer source port:
    while conntrack holds ICMP between the two pods, a new echo's overlay packet belongs to a
    flow seen one way already — `ct state new`, but no nat chain runs for it."""
    snap = snapshots("vxlan-iptables")
    probe = resolve_probe(snap, "alpha", "gamma", None, "icmp")
    fresh = plan_trace(snap, probe)
    inner = next(h for h in fresh.forward if h.kind == "encap").packet
    assert inner is not None
    node = next(h for h in fresh.forward if h.kind == "encap").netns
    state = replace(snap.namespaces[node], icmp_flows=(f"{inner.dst} {inner.src}",))
    known = plan_trace(replace(snap, namespaces={**snap.namespaces, node: state}), probe)

    def tunnel_kinds(trace: Trace) -> list[set[str]]:
        return [
            {run.kind for run in hop.runs}
            for hop in trace.forward
            if hop.tunnel and hop.kind == "netfilter" and hop.netns == node
        ]

    assert {"nat", "filter"} <= set().union(*tunnel_kinds(fresh))
    assert "nat" not in set().union(*tunnel_kinds(known)) and tunnel_kinds(known)
    assert known.outcome == "delivered"
    assert any("already knows the overlay flow of ICMP" in n for n in known.notes)


def test_an_endpoint_the_path_does_not_offer_is_refused(snapshots: Snapshots) -> None:
    """`--endpoint` that no choice on the path offers used to be ignored silently: the trace
    followed the first candidate as if it were the one asked for."""
    snap = snapshots("vxlan-iptables")
    probe = resolve_probe(snap, "alpha", "svc/hostnames")
    with pytest.raises(EndpointError) as refused:
        plan_trace(snap, probe, "10.9.9.9")
    assert str(refused.value).startswith(
        "--endpoint 10.9.9.9 is none of the endpoints this packet can be sent to: "
    )
    for offered in ("10.244.0.4:8080", "10.244.0.5:8080", "10.244.1.6:8080"):
        assert offered in str(refused.value)
    with pytest.raises(EndpointError):
        plan_trace(snap, probe, "10.244.1.6:9999")  # the right pod, a port it is not sent to
    assert plan_trace(snap, probe, "10.244.1.6").endpoint == "10.244.1.6:8080"
    # pod to pod: no choice on the way, nothing to refuse (the CLI notes it was not used)
    direct = plan_trace(snap, resolve_probe(snap, "alpha", "gamma", "8080"), "10.9.9.9")
    assert direct.outcome == "delivered" and direct.candidates == ()


def _with_service(snap: Snapshot, name: str, spec: dict[str, object]) -> Snapshot:
    svc = {"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": spec}
    return replace(snap, api={**snap.api, "services": [*snap.objects("services"), svc]})


def test_an_external_name_service_says_what_it_is(snapshots: Snapshots) -> None:
    """An ExternalName Service was called headless ("trace one of its pods ... answers with
    the pods' addresses": it has none), and its DNS name "not a name the cluster DNS knows"
    (the cluster DNS answers it with a CNAME)."""
    snap = _with_service(
        snapshots("vxlan-iptables"), "ext", {"type": "ExternalName", "externalName": "example.com"}
    )
    with pytest.raises(ResolveError) as by_service:
        resolve_probe(snap, "alpha", "svc/ext", "80")
    assert str(by_service.value).startswith(
        "service default/ext is an ExternalName Service: it has no ClusterIP and kube-proxy "
        "writes no rule for it; the cluster DNS answers its name with a CNAME to example.com"
    )
    with pytest.raises(ResolveError) as by_name:
        resolve_probe(snap, "alpha", "ext", "80")
    assert str(by_name.value).startswith(
        "TO 'ext': the cluster DNS answers ext.default.svc.cluster.local with a CNAME to "
        "example.com (an ExternalName Service)"
    )
    # one that names a Service of the cluster is followed there, as the cluster DNS does
    inside = _with_service(
        snapshots("vxlan-iptables"),
        "alias",
        {"type": "ExternalName", "externalName": "hostnames.default.svc.cluster.local"},
    )
    assert resolve_probe(inside, "alpha", "alias", "80").header.dst == "10.111.69.60"


def test_an_external_ip_leads_to_the_services_endpoints(snapshots: Snapshots) -> None:
    """A Service's externalIPs (and load balancer IPs) are addresses kube-proxy answers: the
    trace reads the endpoints' pods too (it ended "? unknown: where veth… leads was not
    captured") and names the Service."""
    base = snapshots("vxlan-iptables")
    hostnames = next(s for s in base.objects("services") if s["metadata"]["name"] == "hostnames")
    spec = {**hostnames["spec"], "externalIPs": ["172.31.1.200"]}
    snap = _with_service(
        replace(
            base,
            api={
                **base.api,
                "services": [s for s in base.objects("services") if s is not hostnames],
            },
        ),
        "hostnames",
        spec,
    )
    probe = resolve_probe(snap, "alpha", "172.31.1.200", "80")
    assert probe.target == "172.31.1.200 port 80/tcp (an external IP of service default/hostnames)"
    assert pods_involved(snap, "alpha", probe) >= {
        "default/alpha",
        "default/hostnames-579567ddc6-5csqd",
        "default/hostnames-579567ddc6-t2r2x",
        "default/hostnames-579567ddc6-vgf5t",
    }


def test_a_packet_to_a_joined_node_is_not_called_dropped(snapshots: Snapshots) -> None:
    """A machine `podnet join`ed to a lab has a Node but no namespace the lab captures. A
    trace to a pod on it ended "✗ dropped: no port of the underlay bridge leads to <mac>",
    while the packets got through (the pod answered through its Service). The walk now ends
    at the underlay saying whose kernel it cannot read. Here node2 plays the joined machine:
    its Node and pods stay, its namespaces and its place in the lab's plan go."""
    snap = snapshots("vxlan-iptables")
    joined = replace(
        snap,
        nodes=tuple(n for n in snap.nodes if n.name != "node2"),
        namespaces={k: v for k, v in snap.namespaces.items() if "-node2" not in k},
    )
    trace = plan_trace(joined, resolve_probe(joined, "alpha", "gamma", "8080"), None)
    assert trace.outcome == "unknown"
    assert trace.reason == (
        "172.31.1.12 is node node2, which this lab did not make (a machine joined with `podnet "
        "join`): its kernel is not read, so the walk ends here"
    )
