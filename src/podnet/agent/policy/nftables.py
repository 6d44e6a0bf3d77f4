"""The node's NetworkPolicy table `inet podnet-policy`: rendered whole from a `PolicyView`,
applied as one `nft -f -` transaction, later ones as element diffs.

What belongs here: `PolicyConfig`, `render_policy_table(view, node, cfg, proxy_sources)` (pure:
the complete desired table as data, `PolicyTable`), `PolicyTable.script()` (the full
transaction text the golden tests pin) and `PolicyPlanner` (full transaction first and after
any failure, element/chain diffs against what the kernel accepted last). Layout and reasons
are in README.md; the chain picture in short:

    postrouting (filter, srcnat-5: after every DNAT, before any SNAT) / input (filter)
      ct state established,related accept
      ip saddr @egress-isolated  goto egress          (input: pod -> this node)
      ip daddr @ingress-isolated goto ingress
    egress:  @egress-to-all / @egress-to-cidr goto ingress;  ip daddr vmap @egress-peers
             (-> eg-<identity>: ip saddr . proto . port @eg-<identity> goto ingress);  drop
    ingress: not isolated, from this node -> accept;  @ingress-from-all / @ingress-from-cidr;
             ip saddr vmap @ingress-peers (-> in-<identity>: @in-<identity> accept);  drop

Per new connection that is at most: one set test per side, one interval-set lookup per
kind of peer and one verdict-map lookup — none of it grows with the number of policies or
pods; policies only add set elements.

Invariants:
- Pure. Element texts are canonical, so the diff of two renders is exact: interval sets
  never hold overlapping elements (nft refuses them) — port ranges are merged per protocol,
  "any protocol" swallows the rest, address ranges are cut into disjoint pieces.
- Kernel names are derived (identity sets/chains `in-`/`eg-` + hash, drop counters
  `drop-in-`/`drop-eg-` + hash of ns/pod); user strings appear only inside quoted comments,
  and those are labels and names the API already validated.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from podnet.agent.policy.model import (
    ANY_PORT,
    EGRESS,
    INGRESS,
    BlockPeer,
    Identity,
    PodInfo,
    PodPeer,
    Policy,
    PolicyView,
    PortRange,
    Rule,
    named_only,
    numbered,
    resolve_ports,
)
from podnet.agent.proxy.nftables import Element, element_statements
from podnet.kernel import names

FAMILY = "inet"
NAME = "podnet-policy"
TABLE = f"{FAMILY} {NAME}"
PROXY_MARK = 0x2000  # the userspace proxy's dials (bit 13; kube-proxy owns 14 and 15)
LOG_GROUP = 7  # NFLOG group of denied new connections (per node namespace)
LOG_PREFIX = "podnet-policy "

_PORTS = "inet_proto . inet_service"
SETS: tuple[tuple[str, str, str], ...] = (
    ("ingress-isolated", "type ipv4_addr", "local pods selected by an Ingress policy"),
    ("egress-isolated", "type ipv4_addr", "local pods selected by an Egress policy"),
    (
        "ingress-from-all",
        f"type ipv4_addr . {_PORTS} ; flags interval",
        "pod . ports open to every source (rules without from)",
    ),
    (
        "ingress-from-cidr",
        f"type ipv4_addr . ipv4_addr . {_PORTS} ; flags interval",
        "pod . source range . ports (ipBlock peers)",
    ),
    ("ingress-peers", "type ipv4_addr : verdict", "pod IP -> its identity's ingress chain"),
    ("ingress-drops", "type ipv4_addr : counter", "local pod -> its ingress drop counter"),
    (
        "egress-to-all",
        f"type ipv4_addr . {_PORTS} ; flags interval",
        "pod . ports open to every destination (rules without to)",
    ),
    (
        "egress-to-cidr",
        f"type ipv4_addr . ipv4_addr . {_PORTS} ; flags interval",
        "pod . destination range . ports (ipBlock peers)",
    ),
    ("egress-peers", "type ipv4_addr : verdict", "pod IP -> its identity's egress chain"),
    ("egress-drops", "type ipv4_addr : counter", "local pod -> its egress drop counter"),
)
BASE_CHAINS = (
    ("postrouting", "type filter hook postrouting priority srcnat - 5 ; policy accept ;"),
    ("input", "type filter hook input priority filter ; policy accept ;"),
)
# userspace kube-proxy only (see README.md, "The userspace proxy")
USERSPACE_SETS = (
    (
        "proxied-denied",
        f"type ipv4_addr . ipv4_addr . {_PORTS}",
        "local pod . ClusterIP . port no endpoint of which it may reach",
    ),
    ("proxy-sources", "type ipv4_addr", "other nodes' userspace proxies (they judged the dial)"),
)
USERSPACE_CHAINS = (
    ("prerouting", "type filter hook prerouting priority dstnat - 10 ; policy accept ;"),
    ("proxy-source", "type nat hook postrouting priority srcnat - 1 ; policy accept ;"),
)
PROXIED_COUNTER = "drop-proxied"
ServiceAddress = tuple[str, str, int]  # ClusterIP, protocol (tcp/udp/sctp), port
Backends = tuple[tuple[str, int], ...]  # endpoint IP and port


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Node-level settings of the table (not policy data)."""

    userspace_proxy: bool = False  # kube-proxy runs in userspace mode on this node
    gateway: str | None = None  # this node's pod gateway (cni0): source of proxied dials
    # the cluster's pod network: only dials into it leave from the gateway (nothing outside,
    # e.g. the API server on the host address, has a route back to a pod gateway)
    pod_network: str | None = None
    log: bool = False  # log denied new connections (NFLOG group LOG_GROUP)
    log_rate: int = 10  # per second and direction
    mark: int = PROXY_MARK


@dataclass(frozen=True, slots=True)
class Selected:
    """A local pod and the policies isolating it (for status, metrics and logs)."""

    pod: str  # ns/name
    ip: str
    ingress: tuple[str, ...]
    egress: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicyTable:
    """The desired table: object declarations (in order), chain rules, set elements."""

    declarations: dict[str, str]  # "set X" / "map X" / "counter X" / "chain X" -> statement
    rules: dict[str, tuple[str, ...]]
    elements: dict[str, frozenset[tuple[str, str]]]  # set/map -> {(key, value or "")}
    selected: tuple[Selected, ...] = ()
    counters: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (pod, dir)

    def script(self, recreate: bool = True) -> str:
        """The full transaction: (re)create the table and everything in it."""
        head = f'add table {TABLE} {{ comment "podnet NetworkPolicy" ; }}'
        lines = [head, f"delete table {TABLE}", head] if recreate else [head]
        lines += self.declarations.values()
        for chain, rules in self.rules.items():
            lines += [f"add rule {TABLE} {chain} {r}" for r in rules]
        lines += _elements("add", {k: v for k, v in self.elements.items() if v})
        return "\n".join(lines) + "\n"


def _elements(verb: str, by_set: Mapping[str, Iterable[tuple[str, str]]]) -> list[str]:
    items: list[Element] = [
        (name, key, value, "") for name in by_set for key, value in sorted(by_set[name])
    ]
    return element_statements(verb, items, TABLE)


# --- element texts -------------------------------------------------------------------------


def merge_ports(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Disjoint ranges covering `ranges`: any-protocol wins; per protocol, overlapping and
    adjacent ranges join."""
    ranges = list(ranges)
    if any(r.protocol is None for r in ranges):
        return (ANY_PORT,)
    out: list[PortRange] = []
    for r in sorted(ranges):
        last = out[-1] if out else None
        if last is not None and last.protocol == r.protocol and r.first <= last.last + 1:
            out[-1] = PortRange(r.protocol, last.first, max(last.last, r.last))
        else:
            out.append(r)
    return tuple(out)


def _ports_text(r: PortRange) -> str:
    if r.protocol is None:
        return "0-255 . 0-65535"
    port = str(r.first) if r.first == r.last else f"{r.first}-{r.last}"
    return f"{r.protocol} . {port}"


def _addr_text(first: int, last: int) -> str:
    lo, hi = ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
    if first == last:
        return str(lo)
    nets = list(ipaddress.summarize_address_range(lo, hi))
    return str(nets[0]) if len(nets) == 1 else f"{lo}-{hi}"


Box = tuple[int, int, tuple[PortRange, ...]]  # address range and the ports open in it


def disjoint(boxes: Iterable[Box]) -> list[Box]:
    """Cut address ranges into pieces that do not overlap, each with the merged ports of every
    range covering it; neighbouring pieces with equal ports join again."""
    boxes = list(boxes)
    cuts = sorted({b[0] for b in boxes} | {b[1] + 1 for b in boxes})
    out: list[Box] = []
    for first, nxt in itertools.pairwise(cuts):
        last = nxt - 1
        ports = merge_ports(p for lo, hi, ps in boxes if lo <= first and last <= hi for p in ps)
        if not ports:
            continue
        if out and out[-1][1] + 1 == first and out[-1][2] == ports:
            out[-1] = (out[-1][0], last, ports)
        else:
            out.append((first, last, ports))
    return out


class _Keyed:
    """Elements of one concatenated set, gathered per pod and normalised at the end."""

    def __init__(self) -> None:
        self.ports: dict[str, list[PortRange]] = defaultdict(list)
        self.boxes: dict[str, list[Box]] = defaultdict(list)

    def add(self, ip: str, ports: Iterable[PortRange]) -> None:
        self.ports[ip] += ports

    def add_block(
        self, ip: str, ranges: Iterable[tuple[int, int]], ports: Sequence[PortRange]
    ) -> None:
        self.boxes[ip] += [(a, b, tuple(ports)) for a, b in ranges if ports]

    def port_elements(self) -> frozenset[tuple[str, str]]:
        return frozenset(
            (f"{ip} . {_ports_text(r)}", "")
            for ip, rs in self.ports.items()
            for r in merge_ports(rs)
        )

    def block_elements(self) -> frozenset[tuple[str, str]]:
        return frozenset(
            (f"{ip} . {_addr_text(a, b)} . {_ports_text(r)}", "")
            for ip, boxes in self.boxes.items()
            for a, b, ports in disjoint(boxes)
            for r in ports
        )


# --- the renderer --------------------------------------------------------------------------


def _counter_name(direction: str, pod: PodInfo) -> str:
    return f"drop-{'in' if direction == INGRESS else 'eg'}-{names.hashed(pod.key, 13).lower()}"


def _chain_name(direction: str, identity: Identity) -> str:
    return f"{'in' if direction == INGRESS else 'eg'}-{identity.key}"


def _comment(text: str) -> str:
    return text[:120].replace('"', "'")


@dataclass
class _Direction:
    """Everything one direction contributes."""

    isolated: set[str] = field(default_factory=set)
    to_all: _Keyed = field(default_factory=_Keyed)
    cidr: _Keyed = field(default_factory=_Keyed)
    per_identity: dict[Identity, _Keyed] = field(default_factory=lambda: defaultdict(_Keyed))
    drops: dict[str, str] = field(default_factory=dict)  # pod ip -> counter


def _render_direction(
    view: PolicyView,
    direction: str,
    local: Sequence[PodInfo],
    identities: Mapping[Identity, tuple[PodInfo, ...]],
) -> _Direction:
    """Policy by policy (each policy's peers are resolved once, then added for every local
    pod it selects)."""
    out = _Direction()
    selected: dict[int, tuple[Policy, list[PodInfo]]] = {}
    for pod in local:
        policies = view.selecting(pod, direction)
        if not policies:
            continue
        out.isolated.add(pod.ip)
        out.drops[pod.ip] = _counter_name(direction, pod)
        for policy in policies:
            selected.setdefault(id(policy), (policy, []))[1].append(pod)
    for policy, pods in selected.values():
        for rule in policy.rules(direction) or ():
            if direction == INGRESS:
                _ingress_rule(view, out, policy, rule, pods)
            else:
                _egress_rule(view, out, policy, rule, pods, identities)
    return out


def _peers(
    view: PolicyView, policy: Policy, rule: Rule
) -> tuple[list[tuple[BlockPeer, tuple[tuple[int, int], ...]]], list[Identity]]:
    """A rule's ipBlocks (with their ranges) and the identities its pod peers match."""
    blocks = [(p, p.ranges()) for p in rule.peers or () if isinstance(p, BlockPeer)]
    matched: dict[Identity, None] = {}
    for peer in rule.peers or ():
        if isinstance(peer, PodPeer):
            matched.update(dict.fromkeys(view.peer_identities(policy, peer)))
    return blocks, list(matched)


def _ingress_rule(
    view: PolicyView, out: _Direction, policy: Policy, rule: Rule, pods: list[PodInfo]
) -> None:
    blocks, matched = _peers(view, policy, rule)
    for pod in pods:
        ports = resolve_ports(rule.ports, pod.ports)  # names belong to the selected pod
        if rule.peers is None:
            out.to_all.add(pod.ip, ports)
            continue
        for _, ranges in blocks:
            out.cidr.add_block(pod.ip, ranges, ports)
        for identity in matched:
            out.per_identity[identity].add(pod.ip, ports)


def _egress_rule(
    view: PolicyView,
    out: _Direction,
    policy: Policy,
    rule: Rule,
    pods: list[PodInfo],
    identities: Mapping[Identity, tuple[PodInfo, ...]],
) -> None:
    """Named ports belong to each destination pod: per identity, per pod in an ipBlock."""
    plain, named = numbered(rule.ports), named_only(rule.ports)
    plain_ports = resolve_ports(plain, ()) if plain or not named else ()
    blocks, matched = _peers(view, policy, rule)
    by_identity = {i: resolve_ports(rule.ports, i.named_ports) for i in matched}
    if rule.peers is None and named:
        by_identity = {i: resolve_ports(named, i.named_ports) for i in identities}
    in_blocks = [
        (int(ipaddress.IPv4Address(dst.ip)), resolve_ports(named, dst.ports))
        for block, _ in blocks
        for dst in view.by_ip.values()
        if named and block.contains(dst.ip)
    ]
    for pod in pods:
        if rule.peers is None:
            out.to_all.add(pod.ip, plain_ports)
        for _, ranges in blocks:
            out.cidr.add_block(pod.ip, ranges, plain_ports)
        for value, ports in in_blocks:
            out.cidr.add_block(pod.ip, [(value, value)], ports)
        for identity, ports in by_identity.items():
            out.per_identity[identity].add(pod.ip, ports)


def _static_rules(cfg: PolicyConfig) -> dict[str, tuple[str, ...]]:
    established = "ct state established,related accept"

    def denied(direction: str, addr: str) -> tuple[str, ...]:
        log = (
            (
                f"limit rate {cfg.log_rate}/second burst {cfg.log_rate} packets "
                f'log prefix "{LOG_PREFIX}{direction} " group {LOG_GROUP}',
            )
            if cfg.log
            else ()
        )
        return (*log, f"counter name ip {addr} map @{direction}-drops", "drop")

    userspace = cfg.userspace_proxy
    # redirected to the proxy's socket: judged in prerouting and by the proxy when it dials
    proxied = ("ct status dnat accept",) if userspace else ()
    from_proxies = ("ip saddr @proxy-sources accept",) if userspace else ()
    rules = {
        "postrouting": (
            established,
            "ip saddr @egress-isolated goto egress",
            "ip daddr @ingress-isolated goto ingress",
        ),
        "input": (established, *proxied, "ip saddr @egress-isolated goto egress"),
        "egress": (
            "ip saddr . meta l4proto . th dport @egress-to-all goto ingress",
            "ip saddr . ip daddr . meta l4proto . th dport @egress-to-cidr goto ingress",
            "ip daddr vmap @egress-peers",
            *denied(EGRESS, "saddr"),
        ),
        "ingress": (
            "ip daddr != @ingress-isolated accept",
            "fib saddr type local accept",
            *from_proxies,
            "ip daddr . meta l4proto . th dport @ingress-from-all accept",
            "ip daddr . ip saddr . meta l4proto . th dport @ingress-from-cidr accept",
            "ip saddr vmap @ingress-peers",
            *denied(INGRESS, "daddr"),
        ),
    }
    if userspace:
        rules["prerouting"] = (
            established,
            "ip saddr . ip daddr . meta l4proto . th dport @proxied-denied goto proxied-deny",
        )
        log = (
            f"limit rate {cfg.log_rate}/second burst {cfg.log_rate} packets "
            f'log prefix "{LOG_PREFIX}proxied " group {LOG_GROUP}'
        )
        rules["proxied-deny"] = (
            *((log,) if cfg.log else ()),
            f'counter name "{PROXIED_COUNTER}"',
            "drop",
        )
        mark = f"{cfg.mark:#010x}"
        snat = (
            (f"meta mark & {mark} == {mark} ip daddr {cfg.pod_network} snat ip to {cfg.gateway}",)
            if cfg.gateway and cfg.pod_network
            else ()
        )
        rules["proxy-source"] = snat
    return rules


def _proxied_denied(
    view: PolicyView, local: Sequence[PodInfo], services: Mapping[ServiceAddress, Backends]
) -> frozenset[tuple[str, str]]:
    """(local pod, ClusterIP, port) where no endpoint admits the pod: the userspace proxy
    could not dial any, so the client's first packet is dropped before it is redirected."""
    out: set[tuple[str, str]] = set()
    for (vip, protocol, port), backends in services.items():
        if not backends:
            continue
        for pod in local:
            if not any(view.verdict(pod.ip, ip, protocol, p).allowed for ip, p in backends):
                out.add((f"{pod.ip} . {vip} . {protocol} . {port}", ""))
    return frozenset(out)


def render_policy_table(
    view: PolicyView,
    node: str,
    cfg: PolicyConfig,
    proxy_sources: Iterable[str] = (),
    services: Mapping[ServiceAddress, Backends] | None = None,
) -> PolicyTable:
    """The whole table for `node`: its pods are the ones isolated and judged here; every pod
    of the cluster is a possible peer. With the userspace proxy, `proxy_sources` are the
    other nodes' pod gateways and `services` the ClusterIP ports with their endpoints."""
    local = sorted(
        (p for p in view.by_ip.values() if p.node == node and not p.host_network),
        key=lambda p: p.key,
    )
    identities = view.identities
    decl: dict[str, str] = {}
    userspace = cfg.userspace_proxy
    for name, spec, comment in SETS + (USERSPACE_SETS if userspace else ()):
        kind = "map" if ":" in spec else "set"
        decl[f"{kind} {name}"] = f'add {kind} {TABLE} {name} {{ {spec} ; comment "{comment}" ; }}'
    rules = _static_rules(cfg)
    for name, spec in BASE_CHAINS + (USERSPACE_CHAINS if userspace else ()):
        decl[f"chain {name}"] = f"add chain {TABLE} {name} {{ {spec} }}"
    for name in ("egress", "ingress", *(("proxied-deny",) if userspace else ())):
        decl[f"chain {name}"] = f"add chain {TABLE} {name}"
    elements: dict[str, frozenset[tuple[str, str]]] = {}
    counters: dict[str, tuple[str, str]] = {}
    if userspace:
        elements["proxy-sources"] = frozenset((ip, "") for ip in proxy_sources)
        elements["proxied-denied"] = _proxied_denied(view, local, services or {})
        counters[PROXIED_COUNTER] = ("", "proxied")
        decl[f"counter {PROXIED_COUNTER}"] = (
            f'add counter {TABLE} {PROXIED_COUNTER} {{ comment "denied before the userspace '
            'proxy" ; }'
        )
    by_direction: dict[str, _Direction] = {}
    for direction in (INGRESS, EGRESS):
        d = _render_direction(view, direction, local, identities)
        by_direction[direction] = d
        pods = {p.ip: p for p in local}
        for ip, counter in sorted(d.drops.items(), key=lambda kv: kv[1]):
            counters[counter] = (pods[ip].key, direction)
            decl[f"counter {counter}"] = (
                f'add counter {TABLE} {counter} {{ comment "{pods[ip].key} {direction}" ; }}'
            )
        prefix = "ingress-from" if direction == INGRESS else "egress-to"
        elements[f"{direction}-isolated"] = frozenset((ip, "") for ip in d.isolated)
        elements[f"{direction}-drops"] = frozenset((ip, f'"{c}"') for ip, c in d.drops.items())
        elements[f"{prefix}-all"] = d.to_all.port_elements()
        elements[f"{prefix}-cidr"] = d.cidr.block_elements()
        peers: set[tuple[str, str]] = set()
        addr = "daddr" if direction == INGRESS else "saddr"
        verdict = "accept" if direction == INGRESS else "goto ingress"
        for identity in sorted(d.per_identity):
            content = d.per_identity[identity].port_elements()
            if not content:
                continue
            chain = _chain_name(direction, identity)
            comment = _comment(identity.describe())
            decl[f"set {chain}"] = (
                f"add set {TABLE} {chain} {{ type ipv4_addr . {_PORTS} ; flags interval ; "
                f'comment "{comment}" ; }}'
            )
            decl[f"chain {chain}"] = f'add chain {TABLE} {chain} {{ comment "{comment}" ; }}'
            rules[chain] = (f"ip {addr} . meta l4proto . th dport @{chain} {verdict}",)
            elements[chain] = content
            peers |= {(p.ip, f"jump {chain}") for p in identities[identity]}
        elements[f"{direction}-peers"] = frozenset(peers)
    selected = tuple(
        Selected(
            p.key,
            p.ip,
            tuple(x.key for x in view.selecting(p, INGRESS)),
            tuple(x.key for x in view.selecting(p, EGRESS)),
        )
        for p in local
        if p.ip in by_direction[INGRESS].isolated or p.ip in by_direction[EGRESS].isolated
    )
    # chains are declared after every set (rules refer to sets), rules in declaration order
    ordered = dict(sorted(decl.items(), key=lambda kv: (kv[0].startswith("chain "), kv[0])))
    rule_order = {k[len("chain ") :]: i for i, k in enumerate(ordered) if k.startswith("chain ")}
    return PolicyTable(
        ordered,
        dict(sorted(rules.items(), key=lambda kv: rule_order[kv[0]])),
        elements,
        selected,
        counters,
    )


# --- transactions --------------------------------------------------------------------------


def _drop_order(key: str) -> int:
    return {"chain": 0, "set": 1, "map": 1, "counter": 2}[key.split(" ", 1)[0]]


def diff_script(old: PolicyTable, new: PolicyTable) -> str | None:
    """The transaction turning `old` into `new` by element and chain diffs; None when a kept
    object's declaration changed (then only a full transaction will do)."""
    for key, text in new.declarations.items():
        if key in old.declarations and old.declarations[key] != text:
            return None
    lines = [text for key, text in new.declarations.items() if key not in old.declarations]
    for chain, rules in new.rules.items():
        old_rules = old.rules.get(chain)
        if old_rules == rules:
            continue
        if old_rules is not None:
            lines.append(f"flush chain {TABLE} {chain}")
        lines += [f"add rule {TABLE} {chain} {r}" for r in rules]
    deletes: dict[str, set[tuple[str, str]]] = {}
    adds: dict[str, set[tuple[str, str]]] = {}
    for name in dict.fromkeys([*old.elements, *new.elements]):
        before = old.elements.get(name, frozenset())
        after = new.elements.get(name, frozenset())
        kept = f"set {name}" in new.declarations or f"map {name}" in new.declarations
        if kept and before - after:  # a deleted set takes its elements along
            deletes[name] = set(before - after)
        if after - before:
            adds[name] = set(after - before)
    lines += _elements("delete", deletes)  # first: a changed value is delete + add
    lines += _elements("add", adds)
    gone = sorted((k for k in old.declarations if k not in new.declarations), key=_drop_order)
    # stale chains are emptied before anything is deleted: their rules refer to stale sets
    lines += [
        f"flush chain {TABLE} {key[len('chain ') :]}" for key in gone if key.startswith("chain ")
    ]
    for key in gone:
        kind, name = key.split(" ", 1)
        lines.append(f"delete {kind} {TABLE} {name}")
    return "\n".join(lines) + "\n" if lines else ""


@dataclass(slots=True)
class PolicyPlanner:
    """Remembers the table the kernel last accepted and plans the next transaction."""

    installed: PolicyTable | None = None

    def transaction(self, new: PolicyTable) -> tuple[str, bool]:
        """(text, full?) to go from the installed table to `new`."""
        if self.installed is not None:
            text = diff_script(self.installed, new)
            if text is not None:
                return text, False
        return new.script(), True

    def committed(self, table: PolicyTable) -> None:
        self.installed = table

    def forget(self) -> None:
        """After a failed transaction nothing is known: the next one re-creates the table."""
        self.installed = None
