"""Semantics the Netpol matrix does not reach: hostNetwork pods, the node's own traffic,
unresolvable named ports, broken rules, finished pods, IPv6 blocks; and the element
normalisation that keeps interval sets free of overlaps."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.agent.policy.model import (
    ANY_PORT,
    BlockPeer,
    PolicyView,
    PortRange,
    build_view,
    pod_info,
)
from podnet.agent.policy.nftables import disjoint, merge_ports
from podnet.testing.netpol import namespace_manifest, policy


def pod(ns: str, name: str, ip: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    spec = {"nodeName": "n1", "containers": [{"name": "c", "ports": extra.pop("ports", [])}]}
    spec.update(extra.pop("spec", {}))
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": spec,
        "status": {"podIP": ip, "phase": extra.pop("phase", "Running")},
    }


SERVER = pod("x", "server", "10.244.1.10", {"app": "server"},
             ports=[{"name": "http", "containerPort": 8080}])  # fmt: skip
CLIENT = pod("x", "client", "10.244.1.11", {"app": "client"})
HOST = pod("x", "host", "172.31.9.11", {"app": "client"}, spec={"hostNetwork": True})
NAMESPACES = [namespace_manifest("x")]


def view(
    *policies: dict[str, Any], pods: tuple[dict[str, Any], ...] = (SERVER, CLIENT, HOST)
) -> PolicyView:
    return build_view(pods, NAMESPACES, policies)


DENY = policy("x", "deny", podSelector={}, policyTypes=["Ingress", "Egress"])


def test_host_network_pods_are_neither_selected_nor_pod_peers() -> None:
    v = view(
        DENY,
        policy(
            "x",
            "from-clients",
            ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
        ),
    )
    host = pod_info(HOST)
    assert host is not None
    assert v.selecting(host, "ingress") == ()
    assert "172.31.9.11" not in v.by_ip
    # the client pod is a peer; the hostNetwork "client" (the node's address) is not
    assert (
        v.verdict("10.244.1.11", "10.244.1.10", "tcp", 8080).allowed is False
    )  # client egress denied
    assert v.verdict("172.31.9.11", "10.244.1.10", "tcp", 8080).allowed is False
    assert v.verdict("172.31.9.11", "10.244.1.10", "tcp", 8080, from_dst_node=True).allowed


def test_traffic_from_the_pods_own_node_is_allowed_but_egress_still_judged() -> None:
    v = view(DENY)
    assert v.verdict("10.244.1.1", "10.244.1.10", "tcp", 80, from_dst_node=True).allowed
    denied = v.verdict("10.244.1.10", "10.244.1.1", "tcp", 80)
    assert (denied.allowed, denied.denied_by, denied.policies) == (False, "egress", ("x/deny",))


def test_named_port_resolves_on_the_destination_and_an_unknown_name_allows_nothing() -> None:
    ports = [{"port": "http"}, {"port": "nope", "protocol": "UDP"}]
    v = view(
        policy("x", "http", ingress=[{"ports": ports}]),
        policy("x", "out", policyTypes=["Egress"], podSelector={"matchLabels": {"app": "client"}},
               egress=[{"ports": [{"port": "http"}]}]),
    )  # fmt: skip
    assert v.verdict("10.244.1.11", "10.244.1.10", "tcp", 8080).allowed
    assert not v.verdict("10.244.1.11", "10.244.1.10", "tcp", 80).allowed
    # an address that is no pod has no named ports: the client's egress rule cannot match it
    assert not v.verdict("10.244.1.11", "192.0.2.1", "tcp", 8080).allowed


def test_a_broken_rule_allows_nothing_but_its_policy_still_isolates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = policy(
        "x",
        "broken",
        ingress=[{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}, {"ports": [{"port": 99}]}],
    )
    v = view(broken)
    assert "rule 0 ignored" in caplog.text
    assert not v.verdict("10.244.1.11", "10.244.1.10", "tcp", 80).allowed
    assert v.verdict("10.244.1.11", "10.244.1.10", "tcp", 99).allowed


def test_a_policy_with_an_unreadable_pod_selector_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = policy("x", "bad", podSelector={"matchExpressions": [{"key": "a", "operator": "Near"}]})
    assert view(bad).policies == ()
    assert "x/bad" in caplog.text


def test_finished_pods_and_pods_without_ip_take_no_part() -> None:
    assert pod_info(pod("x", "done", "10.244.1.12", {}, phase="Succeeded")) is None
    assert pod_info({"metadata": {"name": "p"}, "spec": {}, "status": {}}) is None


def test_ipv6_blocks_cover_nothing_and_excepts_cut_holes() -> None:
    assert BlockPeer("2001:db8::/64").ranges() == ()
    block = BlockPeer("10.0.0.0/24", ("10.0.0.16/28", "10.0.0.0/30"))
    assert [(a & 0xFF, b & 0xFF) for a, b in block.ranges()] == [(4, 15), (32, 255)]
    assert block.contains("10.0.0.40") and not block.contains("10.0.0.20")


def test_merge_ports_joins_overlaps_and_any_protocol_wins() -> None:
    tcp = [
        PortRange("tcp", 80, 81),
        PortRange("tcp", 82, 90),
        PortRange("tcp", 85, 85),
        PortRange("udp", 53, 53),
    ]
    assert merge_ports(tcp) == (PortRange("tcp", 80, 90), PortRange("udp", 53, 53))
    assert merge_ports([*tcp, ANY_PORT]) == (ANY_PORT,)


def test_disjoint_cuts_overlapping_address_ranges() -> None:
    a, b = PortRange("tcp", 80, 80), PortRange("tcp", 81, 81)
    got = disjoint([(0, 255, (a,)), (16, 31, (b,)), (100, 300, (a,))])
    assert got == [(0, 15, (a,)), (16, 31, (PortRange("tcp", 80, 81),)), (32, 300, (a,))]
