"""The pure halves of `podnet trace --verify`: which packets the probe's table marks where
(golden), and how the kernel's events are grouped into base chain calls and told apart (the
probe by its IP ID, the reply by the reverse of a 5-tuple the probe had, noise)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from podnet.kernel.nftrace import Header as Seen
from podnet.kernel.nftrace import TraceEvent
from podnet.testing.golden import assert_golden_text
from podnet.trace.listing import parse_listing
from podnet.trace.plan import Header, plan_trace
from podnet.trace.resolve import resolve_probe
from podnet.trace.snapshot import Snapshot
from podnet.trace.verify import (
    Call,
    changed_rules,
    classify,
    group_calls,
    table_script,
    trace_rules,
)

HERE = Path(__file__).parent


def probe_table(snap: Snapshot, target: str, port: str | None = None) -> str:
    probe = resolve_probe(snap, "alpha", target, port)
    probe = replace(probe, header=replace(probe.header, sport=40000))
    first = plan_trace(snap, probe)
    plans = [plan_trace(snap, probe, c.target) for c in first.candidates] or [first]
    marks = trace_rules(plans)
    return "".join(
        f"# {ns}\n" + table_script("podnet-trace-test", [m for m in marks if m.netns == ns])
        for ns in sorted({m.netns for m in marks})
    )


def test_probe_tables_mark_every_way_the_probe_can_go(
    snapshots: Callable[[str], Snapshot],
) -> None:
    text = probe_table(snapshots("vxlan-iptables"), "svc/hostnames")
    assert_golden_text(HERE / "golden" / "verify-table--vxlan-iptables-clusterip.nft", text)
    # every endpoint's pod, both nodes and the overlay both ways
    for needle in (
        "jump fwd0",
        "jump rep0",
        "jump fwdtun",
        "jump reptun",
        "10.244.0.4",
        "10.244.0.5",
        "10.244.1.6",
    ):
        assert needle in text


def event(
    table: str, chain: str, trace_id: int, header: Seen | None, handle: int | None = 1
) -> TraceEvent:
    return TraceEvent(trace_id, "ip", table, chain, "rule", handle, "continue", header)


def test_calls_are_told_apart_by_ip_id_and_reversed_tuples() -> None:
    probe = Header("tcp", "10.244.1.4", "10.96.0.10", 40000, 53)
    sent = Seen("tcp", "10.244.1.4", "10.96.0.10", 777, 40000, 53, 2)
    dnatted = Seen("tcp", "10.244.1.4", "10.244.0.2", 777, 40000, 53, 2)
    answer = Seen("tcp", "10.244.0.2", "10.244.1.4", 0, 53, 40000, 18)
    stranger = Seen("tcp", "10.244.0.9", "10.244.0.2", 5, 1234, 53, 2)
    pod = group_calls("pod", [event("podnet-trace-x", "fwd0", 1, sent)])
    node = group_calls(
        "node",
        [
            event("podnet-trace-x", "fwd0", 2, sent),
            event("nat", "PREROUTING", 2, sent),
            event("nat", "KUBE-SERVICES", 2, None),
            event("filter", "FORWARD", 3, dnatted),
            event("filter", "FORWARD", 4, answer),
            event("filter", "FORWARD", 5, stranger),
        ],
    )
    assert [len(c.events) for c in node] == [1, 2, 1, 1, 1]
    noise = classify({"pod": pod, "node": node}, probe)
    assert [c.tag for c in node] == ["fwd0", "fwd0", "fwd0", "rep0", None]
    assert noise == 1


def test_a_rule_the_snapshot_lacks_means_the_rules_changed_under_the_probe(
    snapshots: Callable[[str], Snapshot],
) -> None:
    """iptables-restore gives a rewritten chain's rules new handles: a kube-proxy sync
    between the snapshot and the probe shows as rules the snapshot's listing lacks."""
    snap = snapshots("vxlan-iptables")
    node = snap.nodes[0].netns
    listed = {node: {t.key: t for t in parse_listing(snap.namespaces[node].nft)}}
    nat = listed[node]["ip nat"]
    seen = Seen("tcp", "10.244.1.4", "10.96.0.10", 7, 40000, 53, 2)

    def calls(handle: int) -> dict[str, list[Call]]:
        found = group_calls(
            node,
            [
                event("nat", "PREROUTING", 1, seen, nat.chains["PREROUTING"].rules[0][1]),
                event("nat", "KUBE-SERVICES", 1, None, handle),
            ],
        )
        for call in found:
            call.tag = "fwd0"
        return {node: found}

    assert changed_rules(calls(nat.chains["KUBE-SERVICES"].rules[0][1]), listed, {}) == []
    [note] = changed_rules(calls(10**6), listed, {node: "node node1"})
    assert note.startswith("node node1: the rules changed while the probe ran")
    assert "rule handle 1000000 of ip nat KUBE-SERVICES" in note
