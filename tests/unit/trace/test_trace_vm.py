"""A VM node in a trace: its eth0 (virtio, no veth peer) meets the underlay bridge through
its tap, and `--verify` says why it cannot check a path through it.

The captured `vxlan-iptables` snapshot with node2 turned into a VM node as a VM node's state
is read: its eth0 has no peer index and no kind, its host end is a tap (`NodeLayout.tap`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from podnet.trace.plan import Trace, plan_trace
from podnet.trace.resolve import resolve_probe
from podnet.trace.snapshot import NodeLayout, Snapshot
from podnet.trace.verify import NotVerifiable, unverifiable, verify_trace

Snapshots = Callable[[str], Snapshot]
TAP = "pnv2pepez2dxfzf"  # node2's port on the underlay bridge in the capture


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
