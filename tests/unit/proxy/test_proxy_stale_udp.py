"""Which UDP conntrack flows the reconciler deletes after endpoint changes."""

from __future__ import annotations

import socket

from podnet.agent.proxy.stale_udp import is_stale_udp_flow, serving_endpoints_by_destination
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
