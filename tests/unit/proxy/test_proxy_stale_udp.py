"""Which UDP conntrack flows the reconciler deletes after endpoint changes."""

from __future__ import annotations

import socket

from podnet.agent.proxy.stale_udp import (
    addresses_by_service,
    is_bypassing_flow,
    is_stale_udp_flow,
    serving_endpoints_by_destination,
)
from podnet.agent.proxy.tracker import ProxyState
from podnet.kernel.conntrack import Flow
from podnet.testing.proxy import endpoint_slice, service


def flow(dst: str, dport: int, reply_src: str, proto: int = socket.IPPROTO_UDP) -> Flow:
    return Flow(proto, "10.244.2.10", dst, 40000, dport, reply_src, "10.244.2.10", 53, 40000)


def test_flows_to_gone_or_missing_endpoints_are_stale() -> None:
    state = ProxyState(node_name="n")
    state.on_service(
        service("ns", "dns", "10.96.0.10", port=53, protocol="UDP", type="NodePort", nodePort=30053)
    )
    state.on_slice(endpoint_slice("ns", "dns", ["10.244.1.5"], port=53, protocol="UDP"))
    state.on_service(service("ns", "empty", "10.96.0.11", port=53, protocol="UDP"))
    state.apply()
    dest = serving_endpoints_by_destination(state.service_port_map(), state.endpoints_map())
    assert not is_stale_udp_flow(flow("10.96.0.10", 53, "10.244.1.5"), dest)
    assert is_stale_udp_flow(flow("10.96.0.10", 53, "10.244.1.9"), dest)  # endpoint gone
    assert is_stale_udp_flow(flow("10.96.0.10", 53, "10.96.0.10"), dest)  # black hole, no DNAT
    assert is_stale_udp_flow(flow("10.96.0.11", 53, "10.96.0.11"), dest)  # zero endpoints
    assert is_stale_udp_flow(flow("192.168.0.2", 30053, "192.168.0.2"), dest)  # NodePort
    assert not is_stale_udp_flow(flow("192.168.0.2", 30053, "10.244.1.5"), dest)
    assert not is_stale_udp_flow(flow("10.96.0.10", 53, "10.9.9.9", socket.IPPROTO_TCP), dest)
    assert not is_stale_udp_flow(flow("10.244.1.7", 5353, "10.244.1.7"), dest)  # not a service


def sent(dst: str, dport: int, reply_src: str, proto: int = socket.IPPROTO_UDP) -> Flow:
    """A client's flow; the reply comes from `reply_src`:`dport` (masqueraded on the way out,
    as the lab's un-NATed SYNs were: the reply's destination says nothing)."""
    return Flow(proto, "10.244.2.10", dst, 40000, dport, reply_src, "172.31.1.12", dport, 62032)


def test_flows_no_rule_translated_are_bypassing() -> None:
    """Entries from before a service address had rules: un-NATed ones only, of that
    address's protocol and port; a partial sync looks at the updated Services only."""
    state = ProxyState(node_name="n")
    state.on_service(service("ns", "web", "10.96.0.20", port=80, externalIPs=["192.0.2.7"]))
    state.on_service(service("ns", "dns", "10.96.0.10", port=53, protocol="UDP"))
    state.apply()
    by_service = addresses_by_service(state.service_port_map())
    assert by_service == {
        "ns/web": {("10.96.0.20", "tcp", 80), ("192.0.2.7", "tcp", 80)},
        "ns/dns": {("10.96.0.10", "udp", 53)},
    }
    everything = by_service["ns/web"] | by_service["ns/dns"]
    assert everything == {
        ("10.96.0.20", "tcp", 80),
        ("192.0.2.7", "tcp", 80),
        ("10.96.0.10", "udp", 53),
    }
    tcp = socket.IPPROTO_TCP
    # the SYN routed on un-NATed (the reply would come from the VIP itself)
    assert is_bypassing_flow(sent("10.96.0.20", 80, "10.96.0.20", tcp), everything)
    assert is_bypassing_flow(sent("192.0.2.7", 80, "192.0.2.7", tcp), everything)
    assert is_bypassing_flow(sent("10.96.0.10", 53, "10.96.0.10"), everything)
    # translated: DNAT to an endpoint, or REDIRECT to the userspace proxy's port
    assert not is_bypassing_flow(sent("10.96.0.20", 80, "10.244.1.5", tcp), everything)
    redirected = Flow(tcp, "10.244.2.10", "10.96.0.20", 40000, 80, "10.244.2.1", "10.244.2.10",
                      41491, 40000)  # fmt: skip
    assert not is_bypassing_flow(redirected, everything)
    # another port or protocol of the address, or not a service address
    assert not is_bypassing_flow(sent("10.96.0.20", 81, "10.96.0.20", tcp), everything)
    assert not is_bypassing_flow(sent("10.96.0.20", 80, "10.96.0.20"), everything)
    assert not is_bypassing_flow(sent("10.244.1.7", 80, "10.244.1.7", tcp), everything)
    only_dns = addresses_by_service(state.service_port_map(), frozenset({"ns/dns"}))["ns/dns"]
    assert only_dns == {("10.96.0.10", "udp", 53)}
    assert not is_bypassing_flow(sent("10.96.0.20", 80, "10.96.0.20", tcp), only_dns)
