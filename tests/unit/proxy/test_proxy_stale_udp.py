"""Which conntrack flows the proxy deletes: stale UDP ones after endpoint changes, and
un-NATed ones to service addresses that are new since the last sync."""

from __future__ import annotations

import socket

from podnet.agent.proxy.stale_udp import (
    NewlyTranslated,
    ServiceAddress,
    addresses_by_service,
    is_bypassing_flow,
    is_stale_udp_flow,
    newly_translated,
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


def synced(
    state: ProxyState, previous: dict[str, frozenset[ServiceAddress]], full: bool = False
) -> NewlyTranslated:
    """Apply the pending changes and compare addresses as the proxy component does after a
    sync (a partial one reads only the updated Services' addresses)."""
    applied = state.apply()
    updated = None if full else applied.updated_services
    current = addresses_by_service(state.service_port_map(), updated)
    return newly_translated(previous, current, updated)


def test_only_addresses_new_since_the_last_sync_are_fresh() -> None:
    state = ProxyState(node_name="n")
    web = service("ns", "web", "10.96.0.20", port=80)
    state.on_service(web)
    state.on_service(service("ns", "dns", "10.96.0.10", port=53, protocol="UDP"))
    # a full sync: every address is fresh, the map is rebuilt
    first = synced(state, {"ns/gone": frozenset({("10.96.0.99", "tcp", 80)})}, full=True)
    assert first.translated == {
        "ns/web": {("10.96.0.20", "tcp", 80)},
        "ns/dns": {("10.96.0.10", "udp", 53)},
    }
    assert first.fresh == {("10.96.0.20", "tcp", 80), ("10.96.0.10", "udp", 53)}
    # a partial sync with a new Service: its address only
    state.on_service(service("ns", "api", "10.96.0.30", port=443))
    added = synced(state, first.translated)
    assert added.fresh == {("10.96.0.30", "tcp", 443)}
    assert added.translated == {**first.translated, "ns/api": {("10.96.0.30", "tcp", 443)}}
    # an endpoint change: the Service is updated, its address is not new
    state.on_slice(endpoint_slice("ns", "web", ["10.244.1.5"]))
    endpoints_only = synced(state, added.translated)
    assert endpoints_only.fresh == frozenset()
    assert endpoints_only.translated == added.translated
    # an external IP added: that address only, the ClusterIP was translated already
    state.on_service(service("ns", "web", "10.96.0.20", port=80, externalIPs=["192.0.2.7"]))
    external = synced(state, endpoints_only.translated)
    assert external.fresh == {("192.0.2.7", "tcp", 80)}
    assert external.translated["ns/web"] == {("10.96.0.20", "tcp", 80), ("192.0.2.7", "tcp", 80)}
    # a deleted Service leaves the map; the others stay as they were
    state.on_service(web, deleted=True)
    deleted = synced(state, external.translated)
    assert deleted.fresh == frozenset()
    assert deleted.translated == {
        "ns/dns": {("10.96.0.10", "udp", 53)},
        "ns/api": {("10.96.0.30", "tcp", 443)},
    }
    # back again: its ClusterIP is new once more (its old flows were never NATed by a rule)
    state.on_service(web)
    assert synced(state, deleted.translated).fresh == {("10.96.0.20", "tcp", 80)}


def test_services_not_updated_are_left_as_they_were_and_inputs_unchanged() -> None:
    """A partial sync changes only the updated Services' entries, even when `current` holds
    every Service; neither input map is changed."""
    previous = {
        "ns/a": frozenset({("10.96.0.1", "tcp", 80)}),
        "ns/b": frozenset({("10.96.0.2", "tcp", 80)}),
        "ns/c": frozenset({("10.96.0.3", "udp", 53)}),
    }
    current = {
        "ns/a": frozenset({("10.96.0.1", "tcp", 80), ("10.96.0.1", "tcp", 8080)}),
        "ns/b": frozenset({("10.96.0.2", "tcp", 80), ("192.0.2.9", "tcp", 80)}),  # not updated
    }
    before = (dict(previous), dict(current))
    found = newly_translated(previous, current, frozenset({"ns/a", "ns/c"}))
    assert found.fresh == {("10.96.0.1", "tcp", 8080)}
    assert found.translated == {
        "ns/a": {("10.96.0.1", "tcp", 80), ("10.96.0.1", "tcp", 8080)},
        "ns/b": {("10.96.0.2", "tcp", 80)},
    }
    assert (previous, current) == before
    full = newly_translated(previous, current, None)
    assert full.translated == current and full.translated is not current
    assert full.fresh == current["ns/a"] | current["ns/b"]
    assert (previous, current) == before
    assert newly_translated({}, {}, None) == NewlyTranslated({}, frozenset())
