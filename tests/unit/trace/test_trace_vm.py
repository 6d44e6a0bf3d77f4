"""A VM node in a trace: its eth0 (virtio, no veth peer) meets the underlay bridge through
its tap; ipvs mode on it, golden; `--verify` says why it cannot check a path through it.

`as_vm` turns node2 of the captured `vxlan-iptables` snapshot into a VM node as a VM node's
state is read: its eth0 has no peer index and no kind, its host end is a tap
(`NodeLayout.tap`). `as_ipvs` then gives it the state the ipvs proxier renders for the
snapshot's own Services and EndpointSlices (`render_ipvs`, as node2's agent computes them): the
IPVS table (`ipvsadm-save -n` form) and ipsets, ipvs mode's iptables chains and jumps in place
of iptables mode's (flannel's rules kept), and the ClusterIPs on `kube-ipvs0` with their local
routes. Each ipvs scenario's whole rendering is compared with `golden/ipvs-node2--<name>.txt`
(`PODNET_UPDATE_GOLDEN=1` rewrites them: review the diff); `tests/e2e/test_vm_lab.py` traces
through a booted VM node's real IPVS table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.ipvs import IPVS_JUMP_RULES, render_ipvs
from podnet.agent.proxy.model import merge_endpoints, service_ports, slice_endpoints
from podnet.agent.proxy.trace_iptables import Table, parse_restore, restore_words
from podnet.kernel.inventory import AddressInfo, LinkInfo, RouteInfo
from podnet.testing.golden import assert_golden_text
from podnet.trace.plan import EndpointError, Trace, plan_trace
from podnet.trace.render import plain_text
from podnet.trace.resolve import resolve_probe
from podnet.trace.snapshot import NodeLayout, Snapshot
from podnet.trace.verify import NotVerifiable, unverifiable, verify_trace

HERE = Path(__file__).parent
Snapshots = Callable[[str], Snapshot]
TAP = "pnv2pepez2dxfzf"  # node2's port on the underlay bridge in the capture
NODE = "node2"


def as_vm(snap: Snapshot, name: str = "node2") -> Snapshot:
    node = snap.node(name)
    assert node is not None
    guest = snap.namespaces[node.netns]
    inv = guest.inventory
    eth0 = inv.link_named("eth0")
    host = snap.namespaces[""].inventory
    tap = host.link_named(TAP)
    assert eth0 is not None and tap is not None and tap.peer_index == eth0.index
    links = tuple(
        replace(link, kind=None, peer_index=None) if link.index == eth0.index else link
        for link in inv.links
    )
    host_links = tuple(
        replace(link, kind="tun", peer_index=None) if link.index == tap.index else link
        for link in host.links
    )
    namespaces = {
        **snap.namespaces,
        node.netns: replace(guest, inventory=replace(inv, links=links)),
        "": replace(snap.namespaces[""], inventory=replace(host, links=host_links)),
    }
    nodes = tuple(
        NodeLayout(n.name, n.netns, n.ip, TAP) if n.name == name else n for n in snap.nodes
    )
    return replace(snap, nodes=nodes, namespaces=namespaces)


def _summary(trace: Trace) -> tuple[object, ...]:
    return (trace.path, trace.outcome, trace.endpoint, [h.packet for h in trace.reply])


def test_a_vm_nodes_tap_carries_the_packet_both_ways(snapshots: Snapshots) -> None:
    snap = snapshots("vxlan-iptables")
    vm = as_vm(snap)
    for target, port, endpoint in (("gamma", "8080", None), ("svc/hostnames", None, "10.244.0.5")):
        probe = resolve_probe(snap, "alpha", target, port)
        want, got = plan_trace(snap, probe, endpoint), plan_trace(vm, probe, endpoint)
        assert got.outcome == "delivered", got.reason
        assert _summary(got) == _summary(want)
        crossings = [h for h in (*got.forward, *got.reply) if h.kind == "underlay"]
        assert crossings and all(h.tunnel for h in crossings)
        into, back = (
            [h for h in crossings if h.place == "node node1"],
            [h for h in crossings if h.place == "node node2"],
        )
        assert into and back
        assert back[0].objects[0] == f"VM eth0 (virtio) ↔ tap {TAP} in the host"
        assert into[0].what.endswith(f"{TAP} → eth0 of node node2")


def test_verify_names_the_vm_node_it_cannot_check(snapshots: Snapshots) -> None:
    vm = as_vm(snapshots("vxlan-iptables"))
    probe = resolve_probe(vm, "alpha", "gamma", "8080")
    reason = unverifiable(vm, [plan_trace(vm, probe)])
    assert reason is not None and reason.startswith(
        "--verify cannot check this path: it crosses VM node node2, whose kernel runs inside "
        "its guest"
    )
    same_node = resolve_probe(vm, "alpha", "beta", "8080")  # node1 only
    assert unverifiable(vm, [plan_trace(vm, same_node)]) is None
    try:  # raised before anything is added to any namespace or sent
        verify_trace(vm, probe)
    except NotVerifiable as exc:
        assert exc.reason == reason and exc.trace.outcome == "delivered"
    else:
        raise AssertionError("verify_trace went ahead through a VM node")


def test_a_namespace_names_its_node_even_when_one_node_name_leads_another(
    snapshots: Snapshots,
) -> None:
    snap = snapshots("vxlan-iptables")
    node1 = snap.node("node1")
    assert node1 is not None
    longer = NodeLayout("node1-b", f"{node1.netns}-b", "172.31.9.9")
    snap = replace(snap, nodes=(*snap.nodes, longer))
    pod = snap.pod_netns(next(p for p in snap.objects("pods") if p["spec"]["nodeName"] == "node1"))
    assert pod is not None
    named = {ns: getattr(snap.node_by_netns(ns), "name", None) for ns in (node1.netns, pod)}
    assert named == {node1.netns: "node1", pod: "node1"}
    assert snap.node_by_netns(longer.netns) == longer
    assert snap.node_by_netns(f"{longer.netns}-pod-0123") == longer
    assert snap.node_by_netns("podnet-elsewhere") is None


def _to_kube(rule: list[str]) -> bool:
    """Whether the rule jumps to one of kube-proxy's chains."""
    return "-j" in rule and rule[rule.index("-j") + 1].startswith("KUBE-")


def _ipvs_iptables(captured: str, rendered: str) -> str:
    """`captured` (iptables-save) without iptables mode's chains and jumps, with ipvs mode's."""
    tables = parse_restore(captured)
    for table in tables.values():
        table.chains = {
            chain: [r for r in rules if not _to_kube(r)]
            for chain, rules in table.chains.items()
            if not chain.startswith("KUBE-")
        }
    for name, table in parse_restore(rendered).items():
        tables.setdefault(name, Table()).chains.update(table.chains)
    for jump in IPVS_JUMP_RULES:
        tables[jump.table].chains[jump.chain].insert(0, list(jump.args))
    out = []
    for name, table in tables.items():
        out.append(f"*{name}")
        out += [f":{chain} - [0:0]" for chain in table.chains]
        out += [
            f"-A {chain} {restore_words(rule)}"
            for chain, rules in table.chains.items()
            for rule in rules
        ]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def as_ipvs(snap: Snapshot, sticky: bool = False) -> Snapshot:
    """`snap` with node2 a VM node in ipvs mode (`sticky`: hostnames with ClientIP affinity)."""
    vm = as_vm(snap, NODE)
    layout = vm.node(NODE)
    assert layout is not None
    services: dict[Any, Any] = {}
    for svc in vm.objects("services"):
        if sticky and svc["metadata"]["name"] == "hostnames":
            svc = {**svc, "spec": {**svc["spec"], "sessionAffinity": "ClientIP"}}
        services.update({sp.name: sp for sp in service_ports(svc)})
    endpoints = merge_endpoints(slice_endpoints(s, NODE) for s in vm.objects("endpointslices"))
    cfg = ProxyConfig(vm.cluster_cidr, vm.service_cidr, node_ips=(layout.ip,))
    state = render_ipvs(services, endpoints, cfg)
    guest = vm.namespaces[layout.netns]
    inv = guest.inventory
    index = max(link.index for link in inv.links) + 1
    holder = LinkInfo(index, "kube-ipvs0", "dummy", "96:0b:3a:5e:1c:7d", 1500, False, None)
    local = tuple(
        RouteInfo(255, "local", f"{ip}/32", None, index, ip, 254) for ip in state.bound_addresses
    )
    inv = replace(
        inv,
        links=(*inv.links, holder),
        addresses=(*inv.addresses, *(AddressInfo(index, ip, 32) for ip in state.bound_addresses)),
        routes=(*inv.routes, *local),
    )
    ipvs = replace(
        guest,
        inventory=inv,
        iptables=_ipvs_iptables(guest.iptables, state.iptables),
        ipvs=state.ipvsadm_restore(),
        ipsets=state.ipset_restore(),
    )
    return replace(vm, proxy_mode="ipvs", namespaces={**vm.namespaces, layout.netns: ipvs})


SCENARIOS = [
    # (name, FROM, TO, port, endpoint, outcome, sticky)
    ("clusterip-cross-node", "gamma", "svc/hostnames", None, "10.244.1.6", "delivered", False),
    ("clusterip-same-node", "gamma", "svc/hostnames", None, "10.244.0.5", "delivered", False),
    ("hairpin", "hostnames-579567ddc6-vgf5t", "svc/hostnames", None, "10.244.0.5", "delivered",
     False),
    ("clusterip-from-node", "node2", "svc/hostnames", None, "10.244.1.6", "delivered", False),
    ("nodeport-from-node1", "alpha", "node2", "30345", None, "delivered", False),
    ("no-endpoints", "gamma", "svc/empty", None, None, "rejected", False),
    ("affinity", "gamma", "svc/hostnames", None, "10.244.0.4", "delivered", True),
]  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s[0])
def test_ipvs_trace_matches_golden(scenario: tuple[Any, ...], snapshots: Snapshots) -> None:
    name, source, target, port, endpoint, outcome, sticky = scenario
    snap = as_ipvs(snapshots("vxlan-iptables"), sticky)
    probe = resolve_probe(snap, source, target, port)
    trace = plan_trace(snap, probe, endpoint)
    text = plain_text(trace, f"{snap.backend}, kube-proxy ipvs on node2 (a VM node)")
    assert_golden_text(HERE / "golden" / f"ipvs-node2--{name}.txt", text)
    assert trace.outcome == outcome, text
    if endpoint is not None:
        assert trace.endpoint == f"{endpoint}:8080", text


def test_the_ipvs_hop_lists_the_real_servers_and_follows_the_endpoint(
    snapshots: Snapshots,
) -> None:
    snap = as_ipvs(snapshots("vxlan-iptables"))
    probe = resolve_probe(snap, "gamma", "svc/hostnames")
    for endpoint in ("10.244.0.4", "10.244.0.5", "10.244.1.6"):
        trace = plan_trace(snap, probe, endpoint)
        (ipvs,) = [h for h in trace.forward if h.kind == "ipvs"]
        assert (ipvs.place, ipvs.hook) == ("node node2", "input")
        assert [(c.target, round(c.probability, 3)) for c in ipvs.candidates] == [
            ("10.244.0.4:8080", 0.333),
            ("10.244.0.5:8080", 0.333),
            ("10.244.1.6:8080", 0.333),
        ]
        assert trace.endpoint == f"{endpoint}:8080"
        # the reply gets its source back from IPVS on node2, not from a nat chain
        undone = [h for h in trace.reply if h.what.startswith("IPVS translates the reply back")]
        assert [h.place for h in undone] == ["node node2"]
        assert undone[0].what.endswith("source back to 10.111.69.60:80")
        assert trace.reply[-1].kind == "deliver"


def test_a_draining_real_server_gets_no_new_connection(snapshots: Snapshots) -> None:
    snap = as_ipvs(snapshots("vxlan-iptables"))
    node = snap.node(NODE)
    assert node is not None
    state = snap.namespaces[node.netns]
    drained = state.ipvs.replace("-r 10.244.0.5:8080 -m -w 1", "-r 10.244.0.5:8080 -m -w 0")
    assert drained != state.ipvs
    snap = replace(snap, namespaces={**snap.namespaces, node.netns: replace(state, ipvs=drained)})
    probe = resolve_probe(snap, "gamma", "svc/hostnames")
    trace = plan_trace(snap, probe)
    assert [c.target for c in trace.candidates] == ["10.244.0.4:8080", "10.244.1.6:8080"]
    assert trace.endpoint == "10.244.0.4:8080"
    # asked for by --endpoint, the drained one is refused with the ones that take connections
    with pytest.raises(EndpointError, match=r"10\.244\.0\.4:8080, 10\.244\.1\.6:8080$"):
        plan_trace(snap, probe, "10.244.0.5")
