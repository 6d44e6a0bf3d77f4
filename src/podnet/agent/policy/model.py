"""NetworkPolicy semantics as plain values: parse API objects, decide what a policy selects and
allows, and give the verdict for one connection. Pure: no I/O, no clock.

What belongs here: the value types (`PodInfo`, `Identity`, `Policy` with its `Rule`s, peers
and ports), parsing from API dicts, `PolicyView` (the index the renderer and the verdict share:
pods by IP, identities, which policies select a pod, which peers an identity matches, named
port resolution) and `PolicyView.verdict` — the spec that the rendered nftables table must
agree with (the packet-walk tests compare the two on every pod pair).

Semantics (networking.k8s.io/v1, as the API reference and the upstream Netpol e2e tests
define them):
- A pod is isolated for ingress (egress) once any policy whose `policyTypes` holds Ingress
  (Egress) selects it; then a new connection passes only if some rule of one of those
  policies allows it (union). Egress of the source and ingress of the destination must both
  allow. Replies of an allowed connection always pass (the dataplane accepts conntrack
  established/related before judging).
- Peers: `podSelector` alone = pods of the policy's namespace; `namespaceSelector` alone =
  every pod of the matching namespaces (by their labels, which always carry
  `kubernetes.io/metadata.name`); both = the matching pods of the matching namespaces;
  `ipBlock` = addresses in `cidr` minus `except` (pod IPs included). An absent or empty
  `from`/`to` means every peer; absent or empty `ports` means every port and protocol.
- Ports: a number, a number range (`endPort`), every port of a protocol (no `port`), or a
  name resolved per destination pod against its containers' ports of that protocol (ingress:
  the selected pod; egress: each destination pod; an address that is no pod has no names).
- Traffic from the selected pod's own node (kubelet probes) is allowed. hostNetwork pods
  are never selected and are no pod peers (their address is the node's). Pods without an
  IP or that have finished (Succeeded/Failed) take no part.

Identities: pods with equal (namespace, labels, named container ports) are indistinguishable
for every selector and named port, so the renderer keys its per-peer sets by `Identity`, not by
pod; replicas of a Deployment share one.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.selectors import LabelSelector
from podnet.kernel import names

log = logging.getLogger(__name__)

INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)
PROTOCOLS = ("tcp", "udp", "sctp")  # what policy ports may name (lower case, as nft does)
MAX_PORT = 65535


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class ContainerPort:
    name: str
    protocol: str  # tcp | udp | sctp
    port: int


@dataclass(frozen=True, slots=True, order=True)
class Identity:
    """What selectors and named ports can see of a pod."""

    namespace: str
    labels: tuple[tuple[str, str], ...]
    named_ports: tuple[ContainerPort, ...]
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a dict key in every render: hash the nested tuples once
        object.__setattr__(self, "_hash", hash((self.namespace, self.labels, self.named_ports)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def key(self) -> str:
        return names.hashed(repr((self.namespace, self.labels, self.named_ports)), 13).lower()

    def describe(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in self.labels) or "<no labels>"
        return f"{self.namespace}: {labels}"


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    ip: str
    node: str
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[ContainerPort, ...] = ()  # named container ports
    host_network: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> Identity:
        return Identity(self.namespace, self.labels, self.ports)


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """`protocol` None means every protocol (and then every port)."""

    protocol: str | None
    first: int = 0
    last: int = MAX_PORT

    def matches(self, protocol: str, port: int) -> bool:
        if self.protocol is None:
            return True
        return protocol == self.protocol and self.first <= port <= self.last


ANY_PORT = PortRange(None)


@dataclass(frozen=True, slots=True)
class PortSpec:
    protocol: str
    port: int | str | None = None  # None: every port of the protocol
    end: int | None = None


@dataclass(frozen=True, slots=True)
class PodPeer:
    """Pods by selector. `namespaces` None: the policy's own namespace only."""

    pods: LabelSelector | None
    namespaces: LabelSelector | None


@dataclass(frozen=True, slots=True)
class BlockPeer:
    cidr: str
    excepts: tuple[str, ...] = ()

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """IPv4 address ranges (first, last) of cidr minus the excepts, in order; an IPv6
        block covers nothing of this IPv4 cluster."""
        outer = ipaddress.ip_network(self.cidr, strict=False)
        if outer.version != 4:
            return ()
        out = [(int(outer.network_address), int(outer.broadcast_address))]
        for text in self.excepts:
            cut = ipaddress.ip_network(text, strict=False)
            if cut.version != 4:
                continue
            lo, hi = int(cut.network_address), int(cut.broadcast_address)
            kept: list[tuple[int, int]] = []
            for a, b in out:
                if hi < a or lo > b:
                    kept.append((a, b))
                    continue
                if a < lo:
                    kept.append((a, lo - 1))
                if hi < b:
                    kept.append((hi + 1, b))
            out = kept
        return tuple(out)

    def contains(self, ip: str) -> bool:
        value = int(ipaddress.IPv4Address(ip))
        return any(a <= value <= b for a, b in self.ranges())


Peer = PodPeer | BlockPeer


@dataclass(frozen=True, slots=True)
class Rule:
    peers: tuple[Peer, ...] | None  # None: every peer (absent or empty from/to)
    ports: tuple[PortSpec, ...] = ()  # empty: every port and protocol


@dataclass(frozen=True, slots=True)
class Policy:
    namespace: str
    name: str
    selector: LabelSelector
    ingress: tuple[Rule, ...] | None  # None: the policy has no Ingress type
    egress: tuple[Rule, ...] | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...] | None:
        return self.ingress if direction == INGRESS else self.egress


# --- parsing API objects -------------------------------------------------------------------


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        return ()
    return tuple(sorted((_shared(str(k)), _shared(str(v))) for k, v in value.items()))


def _shared(text: str) -> str:
    """One copy of a string many pods repeat (namespace, node, label keys and values): each
    decoded object brings its own, and a node's view keeps every pod of the cluster."""
    return sys.intern(text)


def pod_info(obj: Mapping[str, Any]) -> PodInfo | None:
    """The policy-relevant view of a Pod, or None when it takes no part (no IP yet,
    finished)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ip = status.get("podIP")
    if not isinstance(ip, str) or not ip or status.get("phase") in ("Succeeded", "Failed"):
        return None
    try:
        if ipaddress.ip_address(ip).version != 4:
            return None
    except ValueError:
        return None
    ports: set[ContainerPort] = set()
    for container in spec.get("containers") or ():
        for port in (container or {}).get("ports") or ():
            name = (port or {}).get("name")
            number = (port or {}).get("containerPort")
            if isinstance(name, str) and name and isinstance(number, int):
                protocol = _shared(str(port.get("protocol") or "TCP").lower())
                ports.add(ContainerPort(_shared(name), protocol, number))
    return PodInfo(
        namespace=_shared(str(meta.get("namespace") or "default")),
        name=str(meta.get("name") or ""),
        ip=ip,
        node=_shared(str(spec.get("nodeName") or "")),
        labels=_labels(meta.get("labels")),
        ports=tuple(sorted(ports)),
        host_network=bool(spec.get("hostNetwork")),
    )


def namespace_labels(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    labels = dict(_labels(meta.get("labels")))
    labels.setdefault("kubernetes.io/metadata.name", name)
    return name, labels


def _selector(value: Any) -> LabelSelector:
    return LabelSelector.from_spec(value if isinstance(value, dict) else {})


def _port_spec(raw: Any) -> PortSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"port {raw!r} is not an object")
    protocol = str(raw.get("protocol") or "TCP").lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {raw.get('protocol')!r} is not TCP, UDP or SCTP")
    port = raw.get("port")
    end = raw.get("endPort")
    if port is not None and not isinstance(port, int | str):
        raise ValueError(f"port {port!r} is neither a number nor a name")
    if isinstance(port, str) and port.isdigit():
        port = int(port)  # an int-or-string sent as a string of digits
    return PortSpec(protocol, port, end if isinstance(end, int) and isinstance(port, int) else None)


def _peer(raw: Any) -> Peer:
    if not isinstance(raw, dict):
        raise ValueError(f"peer {raw!r} is not an object")
    block = raw.get("ipBlock")
    if isinstance(block, dict):
        cidr = str(block.get("cidr") or "")
        ipaddress.ip_network(cidr, strict=False)  # ValueError when broken
        excepts = tuple(str(e) for e in block.get("except") or ())
        for text in excepts:
            ipaddress.ip_network(text, strict=False)
        return BlockPeer(cidr, excepts)
    pods = raw.get("podSelector")
    namespaces = raw.get("namespaceSelector")
    return PodPeer(
        _selector(pods) if pods is not None else None,
        _selector(namespaces) if namespaces is not None else None,
    )


def _rules(raw: Any, peers_key: str, where: str) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for i, item in enumerate(raw if isinstance(raw, list) else ()):
        item = item if isinstance(item, dict) else {}
        try:
            peers_raw = item.get(peers_key) or []
            peers = tuple(_peer(p) for p in peers_raw) if peers_raw else None
            ports = tuple(_port_spec(p) for p in item.get("ports") or ())
        except (ValueError, ApiError) as exc:
            # fail closed: the broken rule allows nothing, its policy still isolates
            log.warning("policy %s: rule %d ignored (allows nothing): %s", where, i, exc)
            continue
        rules.append(Rule(peers, ports))
    return tuple(rules)


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A NetworkPolicy object as a `Policy`; raises ValueError when its podSelector cannot be
    read (then it selects nothing: the caller logs and skips it)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")
    where = f"{namespace}/{name}"
    try:
        selector = _selector(spec.get("podSelector"))
    except ApiError as exc:
        raise ValueError(f"policy {where}: podSelector: {exc}") from exc
    types = spec.get("policyTypes")
    if not isinstance(types, list) or not types:  # upstream's defaulting, for older objects
        types = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    ingress = _rules(spec.get("ingress"), "from", where) if "Ingress" in types else None
    egress = _rules(spec.get("egress"), "to", where) if "Egress" in types else None
    return Policy(namespace, name, selector, ingress, egress)


# --- resolution shared by the renderer and the verdict -------------------------------------


def resolve_ports(
    specs: tuple[PortSpec, ...], named: Iterable[ContainerPort]
) -> tuple[PortRange, ...]:
    """The port ranges `specs` allow towards a pod with these named ports (empty specs: every
    port and protocol). A name the pod lacks (for that protocol) allows nothing."""
    if not specs:
        return (ANY_PORT,)
    named = tuple(named)
    out: list[PortRange] = []
    for spec in specs:
        if spec.port is None:
            out.append(PortRange(spec.protocol))
        elif isinstance(spec.port, int):
            out.append(PortRange(spec.protocol, spec.port, spec.end or spec.port))
        else:
            out += [
                PortRange(spec.protocol, cp.port, cp.port)
                for cp in named
                if cp.name == spec.port and cp.protocol == spec.protocol
            ]
    return tuple(out)


def has_named_ports(specs: tuple[PortSpec, ...]) -> bool:
    return any(isinstance(s.port, str) for s in specs)


def numbered(specs: tuple[PortSpec, ...]) -> tuple[PortSpec, ...]:
    return tuple(s for s in specs if not isinstance(s.port, str))


def named_only(specs: tuple[PortSpec, ...]) -> tuple[PortSpec, ...]:
    return tuple(s for s in specs if isinstance(s.port, str))


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    denied_by: str | None = None  # "ingress" | "egress" when not allowed
    policies: tuple[str, ...] = ()  # ns/name of the policies isolating that side


@dataclass
class PolicyView:
    """Index over one snapshot of pods, namespaces and policies (build a new one per sync)."""

    pods: tuple[PodInfo, ...]
    namespaces: Mapping[str, Mapping[str, str]]
    policies: tuple[Policy, ...]
    by_ip: dict[str, PodInfo] = field(init=False)
    _selecting: dict[tuple[str, str], tuple[Policy, ...]] = field(init=False)
    _peer_cache: dict[tuple[str, PodPeer, Identity], bool] = field(init=False)
    _peer_identities: dict[int, tuple[Identity, ...]] = field(init=False)
    _identities: dict[Identity, tuple[PodInfo, ...]] | None = field(init=False)

    def __post_init__(self) -> None:
        self.by_ip = {}
        for pod in sorted(self.pods, key=lambda p: p.key):
            if not pod.host_network:
                self.by_ip.setdefault(pod.ip, pod)
        self._selecting = {}
        self._peer_cache = {}
        self._peer_identities = {}
        self._identities = None

    @property
    def identities(self) -> dict[Identity, tuple[PodInfo, ...]]:
        """Every pod peer (not hostNetwork) grouped by identity, pods sorted by name."""
        if self._identities is None:
            groups: dict[Identity, list[PodInfo]] = {}
            for pod in self.by_ip.values():
                groups.setdefault(pod.identity, []).append(pod)
            self._identities = {
                i: tuple(sorted(p, key=lambda x: x.key)) for i, p in sorted(groups.items())
            }
        return self._identities

    def selecting(self, pod: PodInfo, direction: str) -> tuple[Policy, ...]:
        """The policies with this direction's type that select `pod` (none for hostNetwork)."""
        key = (pod.key, direction)
        found = self._selecting.get(key)
        if found is None:
            labels = dict(pod.labels)
            found = tuple(
                p
                for p in self.policies
                if not pod.host_network
                and p.namespace == pod.namespace
                and p.rules(direction) is not None
                and p.selector.matches(labels)
            )
            self._selecting[key] = found
        return found

    def peer_identities(self, policy: Policy, peer: PodPeer) -> tuple[Identity, ...]:
        """The identities `peer` (of `policy`) matches, resolved once per view and peer."""
        found = self._peer_identities.get(id(peer))
        if found is None:
            found = tuple(i for i in self.identities if self.peer_matches(policy, peer, i))
            self._peer_identities[id(peer)] = found
        return found

    def peer_matches(self, policy: Policy, peer: PodPeer, identity: Identity) -> bool:
        # equal peers of policies in one namespace share the answer (1,000 policies that
        # say `podSelector: {app: client}` are matched once per identity)
        key = (policy.namespace if peer.namespaces is None else "", peer, identity)
        hit = self._peer_cache.get(key)
        if hit is None:
            if peer.namespaces is None:
                in_ns = identity.namespace == policy.namespace
            else:
                in_ns = peer.namespaces.matches(self.namespaces.get(identity.namespace))
            hit = in_ns and (peer.pods is None or peer.pods.matches(dict(identity.labels)))
            self._peer_cache[key] = hit
        return hit

    def _rule_allows(self, policy: Policy, rule: Rule, peer_ip: str, peer: PodInfo | None) -> bool:
        """Whether `rule` admits `peer_ip` (a pod when `peer` is set), ports aside."""
        if rule.peers is None:
            return True
        for p in rule.peers:
            if isinstance(p, BlockPeer):
                if p.contains(peer_ip):
                    return True
            elif peer is not None and self.peer_matches(policy, p, peer.identity):
                return True
        return False

    def _side(
        self, direction: str, pod: PodInfo, peer_ip: str, peer: PodInfo | None,
        named: tuple[ContainerPort, ...],
        protocol: str, port: int,
    ) -> tuple[str, ...]:  # fmt: skip
        """The keys of the policies isolating `pod` in `direction` when none of their rules
        admits the peer on protocol/port (ports resolved against `named`); () = allowed."""
        policies = self.selecting(pod, direction)
        for pol in policies:
            for rule in pol.rules(direction) or ():
                if self._rule_allows(pol, rule, peer_ip, peer) and any(
                    r.matches(protocol, port) for r in resolve_ports(rule.ports, named)
                ):
                    return ()
        return tuple(p.key for p in policies)

    def verdict(
        self, src: str, dst: str, protocol: str, port: int, *, from_dst_node: bool = False
    ) -> Verdict:
        """Whether a new connection src → dst:port/protocol passes every policy.

        `from_dst_node`: `src` is an address of the node the destination pod runs on."""
        src_pod, dst_pod = self.by_ip.get(src), self.by_ip.get(dst)
        named = dst_pod.ports if dst_pod is not None else ()  # names live on the destination
        if src_pod is not None:
            isolating = self._side(EGRESS, src_pod, dst, dst_pod, named, protocol, port)
            if isolating:
                return Verdict(False, EGRESS, isolating)
        if dst_pod is not None and not from_dst_node:
            isolating = self._side(INGRESS, dst_pod, src, src_pod, named, protocol, port)
            if isolating:
                return Verdict(False, INGRESS, isolating)
        return Verdict(True)


def build_view(
    pods: Iterable[Mapping[str, Any]],
    namespaces: Iterable[Mapping[str, Any]],
    policies: Iterable[Mapping[str, Any]],
) -> PolicyView:
    """A `PolicyView` from API objects; unreadable policies are logged and left out."""
    infos = tuple(p for p in (pod_info(o) for o in pods) if p is not None)
    ns = dict(namespace_labels(o) for o in namespaces)
    parsed: list[Policy] = []
    for obj in policies:
        try:
            parsed.append(parse_policy(obj))
        except ValueError as exc:
            log.warning("%s; it selects nothing", exc)
    parsed.sort(key=lambda p: p.key)
    return PolicyView(infos, ns, tuple(parsed))
