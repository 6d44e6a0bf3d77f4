"""Which conntrack flows are stale: UDP ones after endpoint changes (upstream conntrack
reconciler), and any that reached a service address before its rules existed.

What belongs here: `serving_endpoints_by_destination` (per UDP service IP and per UDP NodePort:
the set of serving endpoint IPs) and `is_stale_udp_flow`, the predicate handed to
`podnet.kernel.conntrack.Conntrack.delete_matching` (kube-proxy.md §5.4); `addresses_by_service`,
`newly_translated` and `is_bypassing_flow` for flows to a ClusterIP or external IP port that
were never NATed.

Bypassing flows: a connection attempted while a node had no rule for the address (the moment
between one proxy mode's cleanup and the next one's first sync, or a Service used before its
rules arrived) is routed on un-NATed towards an address nobody owns, and its conntrack entry
keeps that (non-)translation: an unanswered TCP SYN's entry lives 120 s and a retransmitted
SYN does not renew it. A later connection from the same client that happens to get the same
ephemeral port (ports are picked at random: a pod's probes hit one of ~50 such entries a few
times in a hundred steps) follows the entry, not the rules, and times out. Once the rules are
in, such an entry can only black-hole traffic, so the proxy deletes it. As it can only predate
its address's rules, a full sync looks at every address but a partial one only at addresses
new since the last sync (`newly_translated`), not at every address on every endpoint change.

Invariants: pure. A UDP flow whose original destination is a service IP (ClusterIP or external
IP) or a NodePort is stale when its reply source is not a serving endpoint of that service —
including services with *zero* serving endpoints (the fix of upstream issue #139628), so
"black hole" entries created while a service had no endpoints are removed too. Traffic policy,
topology and terminating state are ignored on purpose, as upstream does.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from podnet.agent.proxy.model import Endpoint, ServicePort, ServicePortName
from podnet.kernel.conntrack import Flow


@dataclass(frozen=True, slots=True)
class UdpDestinations:
    by_ip: Mapping[str, frozenset[str]]  # service IP -> serving endpoint IPs
    by_node_port: Mapping[int, frozenset[str]]  # NodePort -> serving endpoint IPs


def serving_endpoints_by_destination(
    services: Mapping[ServicePortName, ServicePort],
    endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
) -> UdpDestinations:
    by_ip: dict[str, set[str]] = {}
    by_port: dict[int, set[str]] = {}
    for spn, sp in services.items():
        if sp.protocol != "udp":
            continue
        serving = {ep.ip for ep in endpoints.get(spn, ()) if ep.serving}
        for ip in (sp.cluster_ip, *sp.external_ips):
            by_ip.setdefault(ip, set()).update(serving)
        if sp.node_port:
            by_port.setdefault(sp.node_port, set()).update(serving)
    return UdpDestinations(
        {k: frozenset(v) for k, v in by_ip.items()}, {k: frozenset(v) for k, v in by_port.items()}
    )


ServiceAddress = tuple[str, str, int]  # service IP, protocol name (tcp/udp/sctp), port


def addresses_by_service(
    services: Mapping[ServicePortName, ServicePort], only: frozenset[str] | None = None
) -> dict[str, frozenset[ServiceAddress]]:
    """Per Service (`namespace/name`; all of them, or those in `only`): the (IP, protocol,
    port) of each of its ClusterIP and external IP ports."""
    found: dict[str, set[ServiceAddress]] = {}
    for spn, sp in services.items():
        if only is not None and spn.service not in only:
            continue
        ips = [ip for ip in (sp.cluster_ip, *sp.external_ips) if ip and ip != "None"]
        found.setdefault(spn.service, set()).update((ip, sp.protocol, sp.port) for ip in ips)
    return {service: frozenset(addresses) for service, addresses in found.items() if addresses}


@dataclass(frozen=True, slots=True)
class NewlyTranslated:
    translated: dict[str, frozenset[ServiceAddress]]  # per Service, what its rules translate now
    fresh: frozenset[ServiceAddress]  # the addresses among them that were not translated before


def newly_translated(
    previous: Mapping[str, frozenset[ServiceAddress]],
    current: Mapping[str, frozenset[ServiceAddress]],
    updated: frozenset[str] | None,
) -> NewlyTranslated:
    """After a sync: the per-Service addresses the rules translate and which are new.

    `previous` is the last sync's map, `current` what `addresses_by_service` finds now (for
    every Service or only the updated ones), `updated` the Services the sync rewrote (None: a
    full sync, after which every address counts as new and `current` replaces the map). A
    partial sync changes only the entries of `updated` (a Service gone, or left without an
    address, is dropped). Neither input is changed."""
    if updated is None:
        return NewlyTranslated(dict(current), frozenset().union(*current.values()))
    translated = dict(previous)
    fresh: set[ServiceAddress] = set()
    for service in updated:
        now = current.get(service)
        if now is None:
            translated.pop(service, None)
            continue
        fresh.update(now - previous.get(service, frozenset()))
        translated[service] = now
    return NewlyTranslated(translated, frozenset(fresh))


def is_bypassing_flow(flow: Flow, addresses: frozenset[ServiceAddress]) -> bool:
    """A flow to a service address that no rule translated (see the module docstring)."""
    if flow.is_dnat or flow.dport is None:
        return False
    return (flow.dst, flow.protocol_name, flow.dport) in addresses


def is_stale_udp_flow(flow: Flow, dest: UdpDestinations) -> bool:
    if flow.protocol != socket.IPPROTO_UDP:
        return False
    serving = dest.by_ip.get(flow.dst)
    if serving is not None:
        return flow.reply_src not in serving
    if flow.dport is not None:
        serving = dest.by_node_port.get(flow.dport)
        if serving is not None:
            return flow.reply_src not in serving
    return False
