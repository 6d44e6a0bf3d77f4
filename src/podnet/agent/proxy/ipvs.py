"""ipvs mode, rendered: virtual servers, ipsets and the remaining iptables rules (KEP-265).

What belongs here: the IPVS availability probe and its error (`ipvs_available`,
`IpvsUnavailable`), the IPVS state as data (`VirtualServer`, `RealServer`, `IpsetSet`,
`IpvsState`) and `render_ipvs`, plus the text forms `IpvsState.ipvsadm_restore()`,
`IpvsState.ipset_restore()` and `IpvsState.iptables` (iptables-restore input), and the ipset
changes from one state to the next (`plan_ipsets`); the jump rules and chains ipvs mode
owns (`IPVS_JUMP_RULES`, `IPVS_ONLY_CHAINS`); reading
`ipvsadm-save -n` back (`parse_ipvsadm_save`) and the reconcile script from the table found
to the table wanted (`plan_ipvsadm`); graceful termination of removed real servers
(`parse_proc_ip_vs`, `plan_graceful_termination`); the kernel settings (`ipvs_sysctls`).
Reference: kube-proxy.md §3.

Upstream design reproduced: every ClusterIP (and each external IP that is not already a node
address) is bound as /32 on the local interface `kube-ipvs0`; one virtual server per
(ClusterIP|externalIP, port, proto) and per (node IP x NodePort), NAT ("masq") forwarding,
scheduler rr by default (lc, sh, … accepted), persistence with the affinity timeout for
ClientIP; real servers have weight 1. Masquerade/hairpin/filter stay in iptables but match
ipsets, so the rule count does not grow with services. Graceful termination (upstream's
graceful_termination.go): a TCP real server whose endpoint went away keeps its place with
weight 0 (no new connections) while it has connections (ActiveConn + InActConn in
/proc/net/ip_vs), and is deleted once they are gone, or after `GRACEFUL_TIMEOUT` (podnet's
bound; upstream waits for ever); UDP and SCTP real servers go at once (the kernel's
expire_nodest_conn drops their flows, and the proxy deletes their stale UDP conntrack
entries). A virtual server whose Service went is deleted at once, as upstream does.

Invariants: pure (the probe reads one /proc file). `plan_ipvsadm` never touches a virtual
server its `owned` predicate rejects, and its script adds/edits before it deletes. This
machine's kernel has no IP_VS, so podnet refuses ipvs mode at start (or falls back to
iptables when asked); the applier (`modes.IpvsProxier`) is tested with fakes for IPVS and for
real for ipsets, iptables and addresses. LoadBalancer sets are not rendered (podnet has no
LBs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.iptables import JumpRule
from podnet.agent.proxy.model import Endpoint, ServicePort, ServicePortName, categorize

IPVS_PROC_FILE = Path("/proc/net/ip_vs")
PROTOCOL_FLAGS = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
DUMMY_DEVICE = "kube-ipvs0"
GRACEFUL_RECHECK = 60.0  # seconds; upstream rsCheckDeleteInterval
GRACEFUL_TIMEOUT = 900.0  # seconds; IPVS's own idle timeout of an established TCP connection
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

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.address, self.port)

    @property
    def service_args(self) -> str:
        """How ipvsadm names the virtual server: `-t 10.96.0.1:443`."""
        return f"{PROTOCOL_FLAGS[self.protocol]} {self.address}:{self.port}"

    @property
    def options(self) -> str:
        return f"-s {self.scheduler}" + (f" -p {self.persistence}" if self.persistence else "")


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
        """The whole table as `ipvsadm -R` input (for an empty table; see `plan_ipvsadm`)."""
        return plan_ipvsadm((), self.virtual_servers, lambda vs: True) or "\n"

    def ipset_restore(self) -> str:
        """Every set whole (`create -exist`, `flush`, `add`): for a kernel in unknown state."""
        return plan_ipsets(None, self.ipsets)

    def ipset_members(self) -> dict[str, frozenset[str]]:
        """What the kernel's sets hold once this state is loaded (for `plan_ipsets`)."""
        return {s.name: frozenset(s.members) for s in self.ipsets}


def plan_ipsets(loaded: Mapping[str, frozenset[str]] | None, desired: Iterable[IpsetSet]) -> str:
    """`ipset restore` input from the sets `loaded` (set name -> members) to `desired`.

    `loaded=None` (the kernel's sets are not known: a full sync): every set is created
    (`-exist`), flushed and filled. Known: only the difference, as upstream's
    syncIPSetEntries: a missing set is created, new members are added and gone ones
    deleted, and a set already right gives no line, so a sync where one Service changed
    neither flushes nor reloads 10k ClusterIPs (a flushed set misses the masquerade and
    filter rules that match it until it is filled again).
    """
    out = []
    for s in desired:
        have = loaded.get(s.name) if loaded is not None else None
        if have is None:
            opts = (
                "range 0-65535"
                if s.type.startswith("bitmap")
                else "family inet hashsize 1024 maxelem 65536"
            )
            out.append(f"create {s.name} {s.type} {opts} -exist")
            if loaded is None:
                out.append(f"flush {s.name}")
            out += [f"add {s.name} {m}" for m in s.members]
            continue
        wanted = set(s.members)
        out += [f"del {s.name} {m}" for m in sorted(have - wanted)]
        out += [f"add {s.name} {m}" for m in s.members if m not in have]
    return "".join(line + "\n" for line in out)


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
                "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW "
                "-m set --match-set KUBE-IPVS-IPS dst -j REJECT",
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
                'externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst '
                "-j RETURN",
                '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for '
                'masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ',
                '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port with '
                'externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-UDP dst '
                "-j RETURN",
                '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port for '
                'masquerade purpose" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ',
                '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, '
                'source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK '
                "dst,dst,src -j MASQUERADE",
                f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
                f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
                '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring '
                'SNAT" -j MASQUERADE' + (" --random-fully" if cfg.random_fully else ""),
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


def _jump(table: str, chain: str, comment: str, target: str) -> JumpRule:
    return JumpRule(table, chain, ("-m", "comment", "--comment", comment, "-j", target))


# upstream's ipvs iptablesJumpChain minus the LoadBalancer firewall and the LB out-filter
IPVS_JUMP_RULES: tuple[JumpRule, ...] = (
    _jump("nat", "OUTPUT", "kubernetes service portals", "KUBE-SERVICES"),
    _jump("nat", "PREROUTING", "kubernetes service portals", "KUBE-SERVICES"),
    _jump("nat", "POSTROUTING", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
    _jump("filter", "FORWARD", "kubernetes forwarding rules", "KUBE-FORWARD"),
    _jump("filter", "INPUT", "kubernetes health check rules", "KUBE-NODE-PORT"),
    _jump("filter", "INPUT", "kubernetes ipvs access filter", "KUBE-IPVS-FILTER"),
)
# chains only ipvs mode creates, and the chains it shares by name with iptables mode
IPVS_ONLY_CHAINS = {"filter": ("KUBE-NODE-PORT", "KUBE-IPVS-FILTER"), "nat": ("KUBE-NODE-PORT",)}
IPVS_SHARED_CHAINS = {
    "filter": ("KUBE-FORWARD",),
    "nat": ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"),
}

_FLAG_PROTOCOLS = {flag: proto for proto, flag in PROTOCOL_FLAGS.items()}


def _split_service(words: list[str]) -> tuple[str, str, int] | None:
    """(protocol, address, port) from `-t 10.0.0.1:80`; None for fwmark services."""
    if len(words) < 2 or words[0] not in _FLAG_PROTOCOLS:
        return None
    address, _, port = words[1].rpartition(":")
    return (_FLAG_PROTOCOLS[words[0]], address, int(port))


def _option(words: list[str], flag: str, default: str) -> str:
    return words[words.index(flag) + 1] if flag in words[:-1] else default


def parse_ipvsadm_save(text: str) -> tuple[VirtualServer, ...]:
    """The virtual servers in `ipvsadm-save -n` output (fwmark services are skipped)."""
    services: dict[tuple[str, str, int], VirtualServer] = {}
    reals: dict[tuple[str, str, int], list[RealServer]] = {}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in ("-A", "-a"):
            continue
        key = _split_service(words[1:])
        if key is None:
            continue
        if words[0] == "-A":
            scheduler = _option(words, "-s", "wlc")
            persistence = int(_option(words, "-p", "0"))
            services[key] = VirtualServer(key[1], key[2], key[0], scheduler, persistence)
            reals.setdefault(key, [])
        else:
            address, _, port = _option(words, "-r", ":0").rpartition(":")
            weight = int(_option(words, "-w", "1"))
            reals.setdefault(key, []).append(RealServer(address, int(port), weight))
    return tuple(
        VirtualServer(vs.address, vs.port, vs.protocol, vs.scheduler, vs.persistence,
                      tuple(sorted(reals.get(key, ()))))
        for key, vs in services.items()
    )  # fmt: skip


def plan_ipvsadm(
    current: Iterable[VirtualServer],
    desired: Iterable[VirtualServer],
    owned: Callable[[VirtualServer], bool],
) -> str:
    """`ipvsadm -R` input turning the `current` table into `desired`, touching nothing else.

    New virtual servers are added (`-A`), changed scheduler/persistence edited (`-E`), real
    servers added/edited/deleted (`-a`/`-e`/`-d`); then owned virtual servers that are no
    longer wanted are deleted (`-D`). Unchanged servers produce no line, so a sync where
    nothing changed is an empty script and live connections and persistence templates stay.
    """
    have = {vs.key: vs for vs in current}
    out: list[str] = []
    wanted = set()
    for vs in desired:
        wanted.add(vs.key)
        old = have.get(vs.key)
        svc = vs.service_args
        if old is None:
            out.append(f"-A {svc} {vs.options}")
        elif old.options != vs.options:
            out.append(f"-E {svc} {vs.options}")
        old_reals = {(r.address, r.port): r for r in old.real_servers} if old else {}
        new_keys = {(r.address, r.port) for r in vs.real_servers}
        for rs in vs.real_servers:
            previous = old_reals.get((rs.address, rs.port))
            if previous is None:
                out.append(f"-a {svc} -r {rs.address}:{rs.port} -m -w {rs.weight}")
            elif previous.weight != rs.weight:
                out.append(f"-e {svc} -r {rs.address}:{rs.port} -m -w {rs.weight}")
        out += [
            f"-d {svc} -r {address}:{port}"
            for address, port in sorted(old_reals)
            if (address, port) not in new_keys
        ]
    out += [
        f"-D {vs.service_args}"
        for key, vs in sorted(have.items())
        if key not in wanted and owned(vs)
    ]
    return "".join(line + "\n" for line in out)


# (protocol, virtual address, virtual port, real address, real port)
RealServerKey = tuple[str, str, int, str, int]
_PROC_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


def _hex_endpoint(text: str) -> tuple[str, int] | None:
    """`0A600001:0050` -> ("10.96.0.1", 80); None for IPv6 (`[..]:port`) and fwmarks."""
    address, _, port = text.partition(":")
    if len(address) != 8 or not port:
        return None
    value = int(address, 16)
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0)), int(port, 16)


def parse_proc_ip_vs(text: str) -> dict[RealServerKey, int]:
    """Connections (ActiveConn + InActConn) per real server, from /proc/net/ip_vs."""
    found: dict[RealServerKey, int] = {}
    service: tuple[str, str, int] | None = None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in _PROC_PROTOCOLS:
            vip = _hex_endpoint(words[1])
            service = (_PROC_PROTOCOLS[words[0]], *vip) if vip else None
        elif len(words) >= 6 and words[0] == "->" and service is not None:
            real = _hex_endpoint(words[1])
            if real is not None and words[4].isdigit() and words[5].isdigit():
                found[(*service, *real)] = int(words[4]) + int(words[5])
        elif words and words[0] not in ("->", "IP", "Prot"):
            service = None  # a fwmark service: its real servers are not ours
    return found


@dataclass(frozen=True, slots=True)
class DrainPlan:
    """The table to reconcile to (`virtual_servers`: the rendered one, plus every draining
    real server at weight 0), and since when each of those drains (`draining`)."""

    virtual_servers: tuple[VirtualServer, ...]
    draining: dict[RealServerKey, float]


def plan_graceful_termination(
    current: Iterable[VirtualServer],
    desired: Iterable[VirtualServer],
    connections: Callable[[], Mapping[RealServerKey, int]],
    draining_since: Mapping[RealServerKey, float],
    now: float,
    timeout: float = GRACEFUL_TIMEOUT,
) -> DrainPlan:
    """Keep removed TCP real servers that still carry connections, at weight 0.

    A real server in `current` but not in `desired` (same virtual server) stays, with weight
    0, while it is TCP, has connections and has drained for less than `timeout` since
    `draining_since` (or `now`, when it starts draining); otherwise `plan_ipvsadm` deletes
    it. A draining real server that is wanted again comes back with its rendered weight.
    `connections` (the kernel's counters) is called at most once, and only when some TCP real
    server is going away.
    """
    have = {vs.key: vs for vs in current}
    counts: Mapping[RealServerKey, int] | None = None
    out: list[VirtualServer] = []
    draining: dict[RealServerKey, float] = {}
    for vs in desired:
        old = have.get(vs.key)
        if old is None or vs.protocol != "tcp":
            out.append(vs)
            continue
        wanted = {(r.address, r.port) for r in vs.real_servers}
        kept = []
        for rs in old.real_servers:
            if (rs.address, rs.port) in wanted:
                continue
            key = (vs.protocol, vs.address, vs.port, rs.address, rs.port)
            since = draining_since.get(key, now)
            if now - since >= timeout:
                continue
            if counts is None:
                counts = connections()
            if counts.get(key, 0) > 0:
                kept.append(RealServer(rs.address, rs.port, 0))
                draining[key] = since
        out.append(replace(vs, real_servers=tuple(sorted((*vs.real_servers, *kept)))))
    return DrainPlan(tuple(out), draining)


def _kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(match.group(1)), int(match.group(2))


def ipvs_sysctls(kernel_release: str) -> dict[str, int]:
    """The kernel settings upstream's ipvs proxier writes (§3.6), in its order.

    conn_reuse_mode=0 only on 4.1 <= kernel < 5.9: there it avoids a 1 s SYN stall on port
    reuse; from 5.9 the default is right and upstream leaves it alone.
    """
    settings = {"net.ipv4.vs.conntrack": 1}
    if (4, 1) <= _kernel_version(kernel_release) < (5, 9):
        settings["net.ipv4.vs.conn_reuse_mode"] = 0
    settings["net.ipv4.vs.expire_nodest_conn"] = 1
    settings["net.ipv4.vs.expire_quiescent_template"] = 1
    settings["net.ipv4.ip_forward"] = 1
    return settings
