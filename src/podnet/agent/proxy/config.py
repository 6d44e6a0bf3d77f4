"""Node-level settings every proxy renderer takes: one frozen value, built once per agent.

Invariants: addresses are validated on construction; the masquerade mark is a single bit
(upstream `--masquerade-bit`, default 14 → 0x4000), shared by KUBE-MARK-MASQ / mark-for-masquerade
and the POSTROUTING rules of every mode.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LARGE_CLUSTER_ENDPOINTS = 1000  # above this many endpoints, iptables rules drop comments


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    cluster_cidr: str = "10.244.0.0/16"  # pod traffic ("local detector"): no masquerade
    service_cidr: str = "10.96.0.0/12"
    node_ips: tuple[str, ...] = ()  # addresses that accept NodePorts (nftables/ipvs)
    masquerade_bit: int = 14
    masquerade_all: bool = False
    random_fully: bool = True  # iptables 1.8.9 supports MASQUERADE --random-fully
    # userspace mode: where its relay process keeps its socket, pid and log (the agent's run
    # dir); None runs the relay in the agent's own event loop (tests, benchmarks)
    relay_dir: str | None = None

    def __post_init__(self) -> None:
        ipaddress.IPv4Network(self.cluster_cidr)
        ipaddress.IPv4Network(self.service_cidr)
        for ip in self.node_ips:
            ipaddress.IPv4Address(ip)
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(f"masquerade_bit {self.masquerade_bit} is not in 0..31")

    @property
    def mark(self) -> str:
        """The mark as iptables-save and nft print it (0x4000)."""
        return hex(1 << self.masquerade_bit)
