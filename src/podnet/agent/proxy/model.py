"""Services and endpoints as kube-proxy sees them: frozen values built from API dicts.

What belongs here: `ServicePortName`, `ServicePort`, `Endpoint`, the conversions from a
Service / EndpointSlice dict (`service_ports`, `slice_endpoints`) and `categorize`, which picks
the endpoints each kind of traffic may use (upstream `proxy.CategorizeEndpoints`).

Invariants:
- Pure: no I/O, no clock. Equal inputs give equal (hashable, comparable) values, so the change
  tracker can drop changes that cancel out by plain `==`.
- A Service without a ClusterIP (headless, ExternalName) yields no ports: kube-proxy ignores it.
- Endpoint order is canonical (sorted by address, then port), so rendered rules do not depend
  on the order slices arrived in.
- Only IPv4 is modelled (podnet's address plan is IPv4); slices of other address types are
  ignored like upstream ignores the other family.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

DEFAULT_AFFINITY_SECONDS = 10800  # v1.DefaultClientIPServiceAffinitySeconds (3 h)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    """`ns/name:port` plus the protocol: the key of every per-port rule and chain name."""

    namespace: str
    name: str
    port: str  # the Service port's name ("" for a single unnamed port)
    protocol: str  # lower case: tcp | udp | sctp

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    @property
    def service(self) -> str:
        """The Service's `namespace/name`: the unit of change tracking and partial syncs."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: ServicePortName
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    affinity_seconds: int = 0  # 0: no ClientIP affinity, else the stickiness timeout
    external_local: bool = False  # externalTrafficPolicy: Local
    internal_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int = 0

    @property
    def protocol(self) -> str:
        return self.name.protocol

    @property
    def externally_accessible(self) -> bool:
        return self.node_port != 0 or bool(self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # external traffic with ETP=Local still needs cluster endpoints for the pod
        # short-circuit, so any externally accessible port uses them
        return not self.internal_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_local or (self.external_local and self.externally_accessible)


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    local: bool = False  # on this node

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class EndpointCategories:
    """Which endpoints each kind of traffic uses (upstream CategorizeEndpoints)."""

    cluster: tuple[Endpoint, ...]  # for Cluster-policy traffic
    local: tuple[Endpoint, ...]  # for Local-policy traffic (this node's endpoints only)
    reachable: tuple[Endpoint, ...]  # union: every endpoint that gets a SEP chain / DNAT
    has_any: bool  # some usable endpoint exists anywhere (REJECT vs DROP)


def _usable(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    eps = tuple(endpoints)
    ready = tuple(e for e in eps if e.ready)
    if ready:
        return ready
    # KEP-1669: with no ready endpoint, fall back to serving-and-terminating ones
    return tuple(e for e in eps if e.serving and e.terminating)


def categorize(port: ServicePort, endpoints: Sequence[Endpoint]) -> EndpointCategories:
    cluster = _usable(endpoints) if port.uses_cluster_endpoints else ()
    local = _usable(e for e in endpoints if e.local) if port.uses_local_endpoints else ()
    if not local:
        reachable = cluster
    elif not cluster:
        reachable = local
    else:  # keep the canonical order of `endpoints`
        chosen = set(cluster) | set(local)
        reachable = tuple(e for e in endpoints if e in chosen)
    return EndpointCategories(cluster, local, reachable, has_any=bool(_usable(endpoints)))


def endpoint_sort_key(ep: Endpoint) -> tuple[bytes, int]:
    return (socket.inet_aton(ep.ip), ep.port)


def _seconds(spec: Mapping[str, Any]) -> int:
    if spec.get("sessionAffinity") != "ClientIP":
        return 0
    cfg = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
    return int(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_SECONDS)


def service_ports(service: Mapping[str, Any]) -> tuple[ServicePort, ...]:
    """The ports kube-proxy programs for one Service dict (none for headless/ExternalName)."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    cluster_ip = spec.get("clusterIP") or ""
    if spec.get("type") == "ExternalName" or cluster_ip in ("", "None"):
        return ()
    try:
        ipaddress.IPv4Address(cluster_ip)
    except ValueError:
        return ()
    ns, name = str(meta.get("namespace") or "default"), str(meta["name"])
    affinity = _seconds(spec)
    ext_local = spec.get("externalTrafficPolicy") == "Local" and spec.get("type") in (
        "NodePort",
        "LoadBalancer",
    )
    int_local = spec.get("internalTrafficPolicy") == "Local"
    external_ips = tuple(str(ip) for ip in spec.get("externalIPs") or ())
    hc_port = int(spec.get("healthCheckNodePort") or 0) if ext_local else 0
    ports = []
    for p in spec.get("ports") or ():
        proto = str(p.get("protocol") or "TCP").lower()
        if proto not in PROTOCOLS:
            continue
        ports.append(
            ServicePort(
                name=ServicePortName(ns, name, str(p.get("name") or ""), proto),
                cluster_ip=cluster_ip,
                port=int(p["port"]),
                node_port=int(p.get("nodePort") or 0),
                external_ips=external_ips,
                affinity_seconds=affinity,
                external_local=ext_local,
                internal_local=int_local,
                health_check_node_port=hc_port,
            )
        )
    return tuple(sorted(ports, key=lambda sp: sp.name))


def slice_service(endpoint_slice: Mapping[str, Any]) -> str | None:
    """`namespace/service` a slice belongs to, or None when it has no service-name label."""
    meta = endpoint_slice.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not svc:
        return None
    return f"{meta.get('namespace') or 'default'}/{svc}"


def slice_endpoints(
    endpoint_slice: Mapping[str, Any], node_name: str
) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """The endpoints one EndpointSlice contributes, per service port."""
    service = slice_service(endpoint_slice)
    if service is None or endpoint_slice.get("addressType", "IPv4") != "IPv4":
        return {}
    ns, name = service.split("/", 1)
    result: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    for p in endpoint_slice.get("ports") or ():
        if p.get("port") is None:
            continue
        proto = str(p.get("protocol") or "TCP").lower()
        spn = ServicePortName(ns, name, str(p.get("name") or ""), proto)
        eps = set()
        for ep in endpoint_slice.get("endpoints") or ():
            cond = ep.get("conditions") or {}
            ready = cond.get("ready")
            ready = True if ready is None else bool(ready)  # nil means ready (API docs)
            serving = cond.get("serving")
            serving = ready if serving is None else bool(serving)
            terminating = bool(cond.get("terminating") or False)
            for ip in ep.get("addresses") or ():
                eps.add(
                    Endpoint(
                        ip=str(ip),
                        port=int(p["port"]),
                        ready=ready,
                        serving=serving,
                        terminating=terminating,
                        local=ep.get("nodeName") == node_name,
                    )
                )
        result[spn] = tuple(sorted(eps, key=endpoint_sort_key))
    return result


def merge_endpoints(
    parts: Iterable[Mapping[ServicePortName, tuple[Endpoint, ...]]],
) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """Merge several slices of one service; an address seen twice keeps its first entry."""
    merged: dict[ServicePortName, dict[str, Endpoint]] = {}
    for part in parts:
        for spn, eps in part.items():
            bucket = merged.setdefault(spn, {})
            for ep in eps:
                bucket.setdefault(ep.address, ep)
    return {spn: tuple(sorted(b.values(), key=endpoint_sort_key)) for spn, b in merged.items()}
