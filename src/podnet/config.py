"""Cluster-wide settings with the lab's defaults (DESIGN.md "Address plan").

One frozen value passed to the server (allocators, controllers) and to every agent, so no
component invents its own default for an address range.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_mask: int = 24
    service_cidr: str = "10.96.0.0/12"
    node_port_range: tuple[int, int] = (30000, 32767)
    cluster_domain: str = "cluster.local"
    # node lifecycle (kube-controller-manager's defaults are 40 s and 5 min; the lab is small
    # and local, so it reacts faster; all are settings, the lab's come from `podnet up`):
    # silent this long -> Ready=Unknown + unreachable taint (--node-monitor-grace-period)
    node_monitor_grace_seconds: float = 20.0
    # the tolerationSeconds every pod gets for the not-ready/unreachable NoExecute taints
    # (the DefaultTolerationSeconds admission, --default-unreachable-toleration-seconds):
    # how long after the taint its pods are evicted
    pod_eviction_timeout_seconds: float = 60.0
    # the kubelet's Lease; renewed every quarter of it (upstream's renewInterval)
    lease_duration_seconds: int = 40
    # beyond upstream, opt-in: a terminating pod's SIGTERM waits until every node's proxy
    # dropped its endpoint (agent/drain.py; `podnet up --endpoint-drain`)
    endpoint_drain: bool = False

    @property
    def lease_renew_seconds(self) -> float:
        return self.lease_duration_seconds / 4

    def __post_init__(self) -> None:
        ipaddress.ip_network(self.cluster_cidr)
        ipaddress.ip_network(self.service_cidr)
        lo, hi = self.node_port_range
        if not 0 < lo <= hi < 65536:
            raise ValueError(f"node_port_range {self.node_port_range} is not a port range")

    @property
    def kubernetes_service_ip(self) -> str:
        """The first address of the service network (10.96.0.1 by default)."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def dns_service_ip(self) -> str:
        """The tenth address of the service network (10.96.0.10): the kube-dns Service."""
        return str(ipaddress.ip_network(self.service_cidr)[10])
