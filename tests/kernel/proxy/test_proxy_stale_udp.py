"""Stale UDP conntrack entries are deleted when a UDP Service's endpoints change."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from podnet.kernel import netns
from podnet.kernel.conntrack import Conntrack
from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.proxy_lab import ENDPOINT_IPS, ProxyNode, Topology, topology

pytestmark = pytest.mark.root

VIP = "10.96.0.30"


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology() as t:
        yield t


def send_udp(ns: str, sport: int) -> None:
    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", sport))
            s.sendto(b"ping", (VIP, 53))

    netns.call_in(ns, send)


def udp_replies_from(topo: Topology) -> set[str]:
    flows = Conntrack(topo.node).flows(socket.IPPROTO_UDP)
    return {f.reply_src for f in flows if f.dst == VIP}


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_flows_to_a_removed_endpoint_and_black_holes_are_deleted(topo: Topology, mode: str) -> None:
    svc = service("default", "dns", VIP, port=53, port_name="dns", protocol="UDP")
    Conntrack(topo.node).delete_matching(lambda f: f.dst == VIP)  # earlier tests' flows
    with ProxyNode(topo, mode) as node:
        try:
            node.wait_programmed()  # the first (empty) sync: conntrack is active now
            send_udp(topo.client, 40001)  # no Service yet
            if mode == "iptables":  # routed on without DNAT: a black-hole entry
                assert VIP in udp_replies_from(topo)
            # (nftables drops traffic to unallocated service IPs, so no entry is created)
            node.put("services", svc)
            node.put(
                "endpointslices",
                endpoint_slice(
                    "default",
                    "dns",
                    [ENDPOINT_IPS[0]],
                    port=5353,
                    port_name="dns",
                    protocol="UDP",
                    node="test-node",
                ),
            )
            node.wait_programmed()
            assert VIP not in udp_replies_from(topo)  # the black-hole entry is gone
            send_udp(topo.client, 40002)
            assert ENDPOINT_IPS[0] in udp_replies_from(topo)
            node.put(
                "endpointslices",
                endpoint_slice(
                    "default",
                    "dns",
                    [ENDPOINT_IPS[1]],
                    port=5353,
                    port_name="dns",
                    protocol="UDP",
                    node="test-node",
                ),
            )
            node.wait_programmed()
            assert ENDPOINT_IPS[0] not in udp_replies_from(topo)
            send_udp(topo.client, 40002)  # the same client socket now reaches the new pod
            assert udp_replies_from(topo) == {ENDPOINT_IPS[1]}
        finally:
            node.cleanup_rules()
