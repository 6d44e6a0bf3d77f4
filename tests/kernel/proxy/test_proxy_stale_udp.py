"""Stale conntrack entries are deleted: UDP ones when a UDP Service's endpoints change, and
any un-NATed one to a service address once its rules are in."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from podnet.kernel import netns
from podnet.kernel.conntrack import Conntrack
from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.proxy_lab import (
    CLIENT_IP,
    ENDPOINT_IPS,
    HTTP_PORT,
    ProxyNode,
    Topology,
    topology,
)

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


TCP_VIP = "10.96.0.31"
MASQUERADE_LIKE = """table ip stale-test-masq {
  chain post {
    type nat hook postrouting priority srcnat ;
    ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade
  }
}
"""


def syn_from(ns: str, sport: int, wait: float) -> str:
    """A TCP connect to TCP_VIP:80 from source port `sport`: "connected", or what failed."""

    def attempt() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", sport))
            s.settimeout(wait)
            try:
                s.connect((TCP_VIP, 80))
            except TimeoutError:
                return "timed out"
            except OSError as exc:
                return f"error: {exc}"
            return "connected"

    return netns.call_in(ns, attempt)


def bypassing(topo: Topology) -> list[str]:
    return [
        f"{f.src}:{f.sport} -> {f.dst}:{f.dport}"
        for f in Conntrack(topo.node).flows(socket.IPPROTO_TCP)
        if f.dst == TCP_VIP and not f.is_dnat
    ]


@pytest.mark.parametrize("mode", ["iptables", "nftables", "userspace"])
def test_a_connection_tried_before_the_rules_does_not_black_hole_its_port(
    topo: Topology, mode: str
) -> None:
    """A SYN sent while the node has no rule for a ClusterIP (between one mode's cleanup and
    the next one's first sync: the netpol e2e flake, userspace mode) is routed on un-NATed and
    its conntrack entry (120 s, not renewed by retransmits) keeps that. A later connect from
    the same source port used to follow the entry and time out; the proxy deletes it once its
    rules are in, so the retry is translated."""
    Conntrack(topo.node).delete_matching(lambda f: f.dst == TCP_VIP)  # earlier tests' flows
    # a lab node's flannel masquerade (conntrack stays on while no proxy rule exists)
    loaded = netns.run(["nft", "-f", "-"], topo.node, stdin_text=MASQUERADE_LIKE)
    assert loaded.returncode == 0, loaded.stderr
    try:
        assert syn_from(topo.client, 40100, 0.3) == "timed out"  # no proxy, no rule: un-NATed
        assert bypassing(topo) == [f"{CLIENT_IP}:40100 -> {TCP_VIP}:80"]
        with ProxyNode(topo, mode) as node:
            try:
                node.wait_programmed()
                node.put("services", service("default", "web", TCP_VIP, port=80, port_name="http"))
                node.put(
                    "endpointslices",
                    endpoint_slice(
                        "default", "web", [ENDPOINT_IPS[0]], port=HTTP_PORT, port_name="http",
                        node="test-node",
                    ),
                )  # fmt: skip
                node.wait_programmed()
                # (the old code: "timed out", the SYNs following the entry out un-NATed)
                assert syn_from(topo.client, 40100, 2.0) == "connected", bypassing(topo)
                assert bypassing(topo) == []
            finally:
                node.cleanup_rules()
    finally:
        netns.run(["nft", "delete", "table", "ip", "stale-test-masq"], topo.node)
