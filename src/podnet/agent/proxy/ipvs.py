"""ipvs mode, rendered: virtual servers, ipsets and the remaining iptables rules (KEP-265).

What belongs here: the IPVS availability probe and its error (`ipvs_available`,
`IpvsUnavailable`), the IPVS state as data (`VirtualServer`, `RealServer`, `IpsetSet`,
`IpvsState`) and `render_ipvs`, plus the text forms `IpvsState.ipvsadm_restore()`,
`IpvsState.ipset_restore()` and `IpvsState.iptables` (iptables-restore input).
Reference: kube-proxy.md §3.

Upstream design reproduced: every ClusterIP (and each external IP that is not already a node
address) is bound as /32 on the local interface `kube-ipvs0`; one virtual server per
(ClusterIP|externalIP, port, proto) and per (node IP x NodePort), NAT ("masq") forwarding,
scheduler rr by default (lc, sh, … accepted), persistence with the affinity timeout for
ClientIP; real servers have weight 1. Masquerade/hairpin/filter stay in iptables but match
ipsets, so the rule count does not grow with services.

Invariants: pure (the probe reads one /proc file). This machine's kernel has no IP_VS, so
podnet refuses ipvs mode at start (or falls back to iptables when asked); the renderers are
tested with golden text only. LoadBalancer sets are not rendered (podnet has no LBs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.model import Endpoint, ServicePort, ServicePortName, categorize

IPVS_PROC_FILE = Path("/proc/net/ip_vs")
DUMMY_DEVICE = "kube-ipvs0"
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh")


class IpvsUnavailable(Exception):
    """ipvs mode cannot run on this node; the message says why and what to use instead."""


def ipvs_available(proc_file: Path = IPVS_PROC_FILE) -> bool:
    """True when the kernel has IP_VS loaded (it creates /proc/net/ip_vs per namespace)."""
    return proc_file.exists()


@dataclass(frozen=True, slots=True, order=True)
class RealServer:
    address: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True, order=True)
class VirtualServer:
    address: str
    port: int
    protocol: str  # tcp | udp | sctp
    scheduler: str = "rr"
    persistence: int = 0  # seconds; 0 = not persistent
    real_servers: tuple[RealServer, ...] = ()


@dataclass(frozen=True, slots=True)
class IpsetSet:
    name: str
    type: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IpvsState:
    virtual_servers: tuple[VirtualServer, ...]
    bound_addresses: tuple[str, ...]  # /32 addresses on kube-ipvs0
    ipsets: tuple[IpsetSet, ...]
    iptables: str

    def ipvsadm_restore(self) -> str:
        flag = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
        out = []
        for vs in self.virtual_servers:
            svc = f"{flag[vs.protocol]} {vs.address}:{vs.port}"
            persist = f" -p {vs.persistence}" if vs.persistence else ""
            out.append(f"-A {svc} -s {vs.scheduler}{persist}")
            out += [
                f"-a {svc} -r {rs.address}:{rs.port} -m -w {rs.weight}" for rs in vs.real_servers
            ]
        return "\n".join(out) + "\n"

    def ipset_restore(self) -> str:
        out = []
        for s in self.ipsets:
            opts = (
                "range 0-65535"
                if s.type.startswith("bitmap")
                else "family inet hashsize 1024 maxelem 65536"
            )
            out.append(f"create {s.name} {s.type} {opts} -exist")
            out.append(f"flush {s.name}")
            out += [f"add {s.name} {m}" for m in s.members]
        return "\n".join(out) + "\n"


SET_TYPES = {
    "KUBE-CLUSTER-IP": "hash:ip,port",
    "KUBE-EXTERNAL-IP": "hash:ip,port",
    "KUBE-EXTERNAL-IP-LOCAL": "hash:ip,port",
    "KUBE-LOOP-BACK": "hash:ip,port,ip",
    "KUBE-NODE-PORT-TCP": "bitmap:port",
    "KUBE-NODE-PORT-LOCAL-TCP": "bitmap:port",
    "KUBE-NODE-PORT-UDP": "bitmap:port",
    "KUBE-NODE-PORT-LOCAL-UDP": "bitmap:port",
    "KUBE-NODE-PORT-SCTP-HASH": "hash:ip,port",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "hash:ip,port",
    "KUBE-HEALTH-CHECK-NODE-PORT": "bitmap:port",
    "KUBE-IPVS-IPS": "hash:ip",
}


def _iptables_rules(cfg: ProxyConfig) -> str:
    mark = cfg.mark
    masq_src = "" if cfg.masquerade_all else f" ! -s {cfg.cluster_cidr}"
    return (
        "\n".join(
            [
                "*filter",
                ":KUBE-FORWARD - [0:0]",
                ":KUBE-NODE-PORT - [0:0]",
                ":KUBE-IPVS-FILTER - [0:0]",
                '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
                f"-m mark --mark {mark}/{mark} -j ACCEPT",
                '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                '-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" '
                "-m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT",
                "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
                "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN",
                "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
                "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
                "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst "
                "-j REJECT",
                "COMMIT",
                "*nat",
                ":KUBE-SERVICES - [0:0]",
                ":KUBE-POSTROUTING - [0:0]",
                ":KUBE-NODE-PORT - [0:0]",
                ":KUBE-MARK-MASQ - [0:0]",
                "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
                '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for '
                f'masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst{masq_src} '
                "-j KUBE-MARK-MASQ",
                '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for '
                'masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst '
                "-j KUBE-MARK-MASQ",
                '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for '
                'masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst '
                "-m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
                '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for '
                'masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst '
                "-m addrtype --dst-type LOCAL -j ACCEPT",
                "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
                "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
                '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with '
                'externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN',
                '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for '
                'masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ',
                '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port with '
                'externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-UDP dst -j RETURN',
                '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port for '
                'masquerade purpose" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ',
                '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip '
                'for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src '
                "-j MASQUERADE",
                f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
                f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
                '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
                "-j MASQUERADE" + (" --random-fully" if cfg.random_fully else ""),
                f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",
                "COMMIT",
            ]
        )
        + "\n"
    )


@dataclass(slots=True)
class _Sets:
    members: dict[str, set[str]] = field(default_factory=lambda: {n: set() for n in SET_TYPES})

    def add(self, name: str, member: str) -> None:
        self.members[name].add(member)


def render_ipvs(
    services: Mapping[ServicePortName, ServicePort],
    endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
    cfg: ProxyConfig,
    scheduler: str = "rr",
) -> IpvsState:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown IPVS scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    sets = _Sets()
    vss: list[VirtualServer] = []
    bound: set[str] = set()
    for spn in sorted(services):
        sp = services[spn]
        proto = sp.protocol
        cats = categorize(sp, endpoints.get(spn, ()))
        internal = cats.local if sp.internal_local else cats.cluster
        external = (cats.local or cats.cluster) if sp.external_local else cats.cluster

        def vs(address: str, port: int, eps: Sequence[Endpoint], sp: ServicePort = sp) -> None:
            reals = tuple(sorted(RealServer(e.ip, e.port) for e in eps))
            vss.append(
                VirtualServer(address, port, sp.protocol, scheduler, sp.affinity_seconds, reals)
            )

        vs(sp.cluster_ip, sp.port, internal)
        bound.add(sp.cluster_ip)
        sets.add("KUBE-CLUSTER-IP", f"{sp.cluster_ip},{proto}:{sp.port}")
        for ip in sp.external_ips:
            vs(ip, sp.port, external)
            if ip not in cfg.node_ips:
                bound.add(ip)
            name = "KUBE-EXTERNAL-IP-LOCAL" if sp.external_local else "KUBE-EXTERNAL-IP"
            sets.add(name, f"{ip},{proto}:{sp.port}")
        if sp.node_port:
            for node_ip in cfg.node_ips:
                vs(node_ip, sp.node_port, external)
            if proto == "sctp":
                for node_ip in cfg.node_ips:
                    sets.add("KUBE-NODE-PORT-SCTP-HASH", f"{node_ip},sctp:{sp.node_port}")
                    if sp.external_local:
                        sets.add("KUBE-NODE-PORT-LOCAL-SCTP-HASH", f"{node_ip},sctp:{sp.node_port}")
            else:
                sets.add(f"KUBE-NODE-PORT-{proto.upper()}", str(sp.node_port))
                if sp.external_local:
                    sets.add(f"KUBE-NODE-PORT-LOCAL-{proto.upper()}", str(sp.node_port))
        if sp.health_check_node_port:
            sets.add("KUBE-HEALTH-CHECK-NODE-PORT", str(sp.health_check_node_port))
        for ep in cats.reachable:
            if ep.local:
                sets.add("KUBE-LOOP-BACK", f"{ep.ip},{proto}:{ep.port},{ep.ip}")
    for ip in bound:
        sets.add("KUBE-IPVS-IPS", ip)
    ipsets = tuple(
        IpsetSet(name, SET_TYPES[name], tuple(sorted(sets.members[name]))) for name in SET_TYPES
    )
    return IpvsState(tuple(vss), tuple(sorted(bound)), ipsets, _iptables_rules(cfg))


def render_ipvs_text(state: IpvsState) -> str:
    """The whole IPVS-mode node state as one readable text (used by golden tests)."""
    addresses = "\n".join(f"{DUMMY_DEVICE} {ip}/32" for ip in state.bound_addresses)
    return (
        f"# addresses on {DUMMY_DEVICE}\n{addresses}\n# ipvsadm-restore\n"
        f"{state.ipvsadm_restore()}# ipset restore\n{state.ipset_restore()}"
        f"# iptables-restore\n{state.iptables}"
    )
