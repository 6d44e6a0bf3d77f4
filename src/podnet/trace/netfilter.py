"""One namespace's packet filter, run for one packet at one hook, as the kernel runs it.

What belongs here: `Netfilter(state)` — every base chain of the namespace (iptables-nft's
`ip nat`/`ip filter`/... and nft-native tables such as `ip kube-proxy` and `inet
podnet-policy`), ordered as the kernel calls them — and `Netfilter.run(hook, packet)`, which
walks each base chain of the hook with the walker that understands its table (iptables-save
text: `agent/proxy/trace_iptables.py`; `ip kube-proxy`: `trace_nftables.py`; `inet
podnet-policy`: `agent/policy/trace.py`; `podnet fault`'s `ip podnet-fault-*`: here) and
returns what the kernel's nftables trace would report (every matched rule, returns,
policies) plus the packet's fate: accepted, dropped or rejected, DNAT / REDIRECT / SNAT /
masquerade, the mark, and the load-balancing choices met.

The kernel's order, and this module's:
- base chains of a hook run by priority; at equal priority the chain registered *last* runs
  first (`nf_hook_entries_grow` inserts before its equals). Registration order is nowhere in
  the ruleset (handles count per table) and this kernel cannot report it (no
  CONFIG_NETFILTER_NETLINK_HOOK), so ties go by table handle, then chain handle, newest
  first: exact when a table's base chains were made with it, not when an older table got a
  base chain later (iptables-nft adds built-in chains on first use); `verify.py` compares
  ties as a set;
- nat chains are not hooks of their own: the nat core is, at dstnat (-100) in prerouting and
  output and at srcnat (100) in postrouting and input, registered with the namespace's first
  nat chain; it runs the nat chains there (by their own priority, then newest first) for a
  connection's first packet only, stops at the first that binds a NAT, and rewrites the
  packet at once — so a filter chain at priority 0 sees the DNATed destination, and in output
  the new route (`ip_route_me_harder`);
- an accept ends one base chain, not the hook; a drop ends the hook;
- a base chain that ends without a verdict reports its policy.

Invariants: pure (the state is a captured `NamespaceState`); a table no walker understands is
reported as such (`unknown`), never guessed; tables named `podnet-trace-*` (the probe's own,
see `verify.py`) are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

from podnet.agent.policy.trace import Packet as PolicyPacket
from podnet.agent.policy.trace import walk_policy_chain
from podnet.agent.proxy.trace_iptables import (
    Branch,
    IpSet,
    Step,
    Walk,
    parse_ipset_save,
    parse_restore,
)
from podnet.agent.proxy.trace_nftables import NftModel, NftPacket, NftWalk
from podnet.trace.listing import ListedTable, parse_listing, table_model
from podnet.trace.snapshot import NamespaceState

TRACE_TABLE_PREFIX = "podnet-trace-"
IPTABLES_TABLES = ("raw", "mangle", "nat", "filter", "security")
KUBE_PROXY_TABLE = "ip kube-proxy"
POLICY_TABLE = "inet podnet-policy"
FAULT_TABLE_PREFIX = "ip podnet-fault-"  # `podnet fault` partition and loss (`lab/faults.py`)
# where the nat core sits in each hook (NF_IP_PRI_NAT_DST / NF_IP_PRI_NAT_SRC): every nat
# chain of the hook runs there, whatever its own priority (that only orders the nat chains)
NAT_PRIORITY = {"prerouting": -100, "output": -100, "postrouting": 100, "input": 100}


@dataclass(frozen=True, slots=True)
class TraceStep:
    """A rule the packet matched (index -1: the base chain's policy), in the kernel's words."""

    table: str  # "ip nat", "ip kube-proxy", "inet podnet-policy"
    chain: str
    index: int
    verdict: str  # continue, jump X, goto X, accept, drop, return, policy accept
    rule: str = ""


@dataclass(frozen=True, slots=True)
class ChainRun:
    """One base chain called for the packet, and what happened in it."""

    table: str
    chain: str
    kind: str  # filter, nat, route
    priority: int
    steps: tuple[TraceStep, ...]
    verdict: str  # accept, drop


@dataclass(frozen=True, slots=True)
class Candidate:
    """A place a service rule may send the packet, with the chance the rule gives it."""

    target: str  # "ip:port"
    probability: float
    table: str
    chain: str
    index: int
    slot: int = 0


@dataclass(frozen=True, slots=True)
class Packet:
    """The header fields the filter reads, and the packet's state in this namespace."""

    proto: str  # tcp, udp, icmp
    src: str
    dst: str
    sport: int | None
    dport: int | None
    state: str = "new"  # conntrack: new, established
    mark: int = 0
    iif: str | None = None
    oif: str | None = None
    dnatted: bool = False  # `ct status dnat` (this connection's destination was rewritten)
    outer: bool = False  # an overlay's encapsulating packet (a flow of its own)
    # conntrack already holds this flow, seen one way only: still `ct state new`, but its
    # NAT (a null binding) was decided by an earlier packet, so no nat chain sees it
    bound: bool = False


@dataclass(frozen=True, slots=True)
class HookResult:
    runs: tuple[ChainRun, ...]
    verdict: str  # accept, drop, reject
    packet: Packet  # after the hook (DNAT applied, mark carried)
    dnat: str | None = None  # "ip:port"
    redirect: int | None = None  # REDIRECT --to-ports
    masquerade: bool = False
    snat: str | None = None
    candidates: tuple[Candidate, ...] = ()
    unknown: tuple[str, ...] = ()  # tables no walker understands (their verdict: accept)

    @property
    def dropped_by(self) -> TraceStep | None:
        for run in reversed(self.runs):
            if run.verdict == "drop" and run.steps:
                return run.steps[-1]
        return None


@dataclass(frozen=True, slots=True)
class BaseChain:
    table: str
    chain: str
    kind: str
    hook: str
    priority: int
    policy: str
    order: tuple[int, int, int]  # (priority, -table handle, -chain handle)


def effective_candidates(table: str, branches: list[Branch]) -> list[Candidate]:
    """Each branch's own chance: `numgen` slots share one rule (1/N each); iptables'
    `statistic` rules are tried in order, so rule i wins with p_i * prod(1 - p_j), j < i."""
    out: list[Candidate] = []
    remaining: dict[str, float] = {}
    seen: set[tuple[str, int, int]] = set()
    for b in branches:
        key = (b.chain, b.index, b.slot)
        if key in seen or not b.targets:
            continue
        seen.add(key)
        slots = sum(1 for o in branches if (o.chain, o.index) == (b.chain, b.index))
        if slots > 1:
            chance = b.probability
        else:
            left = remaining.get(b.chain, 1.0)
            chance = left * b.probability
            remaining[b.chain] = left - chance
        out.append(Candidate(b.targets[0], chance, table, b.chain, b.index, b.slot))
    return out


class Netfilter:
    """The packet filter of one captured namespace."""

    def __init__(self, state: NamespaceState) -> None:
        self.state = state
        self.local = frozenset(a.address for a in state.inventory.addresses)
        listed = [t for t in parse_listing(state.nft) if not t.name.startswith(TRACE_TABLE_PREFIX)]
        self.listed = {t.key: t for t in listed}
        self.iptables = parse_restore(state.iptables) if state.iptables else {}
        self.chains: dict[str, list[BaseChain]] = {}
        for t in listed:
            for c in t.chains.values():
                if c.hook is None:
                    continue
                kind, hook, priority = c.hook
                base = BaseChain(
                    t.key, c.name, kind, hook, priority, c.policy, (priority, -t.handle, -c.handle)
                )
                self.chains.setdefault(hook, []).append(base)
        for chains in self.chains.values():
            chains.sort(key=lambda b: b.order)

    @cached_property
    def models(self) -> dict[str, NftModel]:
        return {
            key: table_model(t)
            for key, t in self.listed.items()
            if key in (KUBE_PROXY_TABLE, POLICY_TABLE)
        }

    def listed_table(self, key: str) -> ListedTable | None:
        return self.listed.get(key)

    def is_iptables(self, table: str) -> bool:
        family, _, name = table.partition(" ")
        return family == "ip" and name in self.iptables

    def run(
        self,
        hook: str,
        packet: Packet,
        choose: frozenset[tuple[str, int, int]] | None = None,
        nat: bool = True,
        reroute: Callable[[Packet], Packet] | None = None,
        before: int | None = None,
    ) -> HookResult:
        """The packet through every base chain of `hook`. `choose` picks random branches (see
        `trace_iptables.Walk`); None follows them all (to list the candidates). `nat=False`:
        the connection's NAT is already decided (a flooded frame's second copy). `reroute`
        (OUTPUT): the route lookup the kernel redoes right after a DNAT changed the
        destination (`ip_route_me_harder`), so the later chains see the new output device.
        `before`: only the chains of a lower priority run (IPVS takes the packet there)."""
        runs: list[ChainRun] = []
        unknown: list[str] = []
        candidates: list[Candidate] = []
        translated = _ChainRun([], packet)
        for priority, slot in self.slots(hook):
            if before is not None and priority >= before:
                break
            chains: tuple[BaseChain, ...] = slot if isinstance(slot, tuple) else (slot,)
            is_nat = isinstance(slot, tuple)
            if is_nat and (packet.state != "new" or packet.bound or not nat):
                continue
            for base in chains:
                done = self._run_chain(base, packet, choose)
                if done is None:
                    unknown.append(base.table)
                    continue
                packet = done.packet
                candidates += effective_candidates(base.table, done.branches)
                steps = done.steps
                if not (steps and steps[-1].verdict in ("accept", "drop")):
                    steps.append(TraceStep(base.table, base.chain, -1, f"policy {base.policy}"))
                verdict = "drop" if steps[-1].verdict.endswith("drop") else "accept"
                runs.append(
                    ChainRun(
                        base.table, base.chain, base.kind, base.priority, tuple(steps), verdict
                    )
                )
                if verdict == "drop":
                    return HookResult(
                        tuple(runs), "reject" if done.reject else "drop", packet,
                        candidates=tuple(candidates), unknown=tuple(unknown),
                    )  # fmt: skip
                if is_nat and done.translates:  # the binding is made: later nat chains skip
                    translated = done
                    break
            if is_nat:  # the nat core rewrites the packet here, before the later chains
                packet = self._translate(hook, packet, translated)
                if reroute is not None and (translated.dnat or translated.redirect):
                    packet = reroute(packet)
        return HookResult(
            tuple(runs),
            "accept",
            packet,
            dnat=translated.dnat,
            redirect=translated.redirect,
            masquerade=translated.masquerade,
            snat=translated.snat,
            candidates=tuple(candidates),
            unknown=tuple(unknown),
        )

    def slots(self, hook: str) -> list[tuple[int, BaseChain | tuple[BaseChain, ...]]]:
        """What the kernel calls at `hook`, in order, with the priority it calls it at: each
        filter (or route) chain by itself, and the nat chains together as one call of the nat
        core at its own priority."""
        chains = self.chains.get(hook, [])
        nat = tuple(b for b in chains if b.kind == "nat")
        slots: list[tuple[tuple[int, int, int], BaseChain | tuple[BaseChain, ...]]] = [
            (b.order, b) for b in chains if b.kind != "nat"
        ]
        if nat:
            # registered with the first nat chain of the namespace, so at a tie it runs after
            # the chains registered since: its key is the oldest nat chain's
            oldest = max(nat, key=lambda b: b.order[1:])
            slots.append(((NAT_PRIORITY[hook], *oldest.order[1:]), nat))
        slots.sort(key=lambda s: s[0])
        return [(order[0], s) for order, s in slots]

    def _translate(self, hook: str, packet: Packet, nat: _ChainRun) -> Packet:
        """The nat core's rewrite for the binding the nat chains made."""
        if nat.dnat is not None:
            ip, _, port = nat.dnat.rpartition(":")
            return replace(packet, dst=ip, dport=int(port), dnatted=True)
        if nat.redirect is not None:  # to the incoming interface's address; 127.0.0.1 locally
            if hook == "output":
                return replace(packet, dst="127.0.0.1", dport=nat.redirect, dnatted=True)
            to = self._address_of(packet.iif) or packet.dst
            return replace(packet, dst=to, dport=nat.redirect, dnatted=True)
        if nat.snat is not None:
            return replace(packet, src=nat.snat)
        if nat.masquerade:  # the output device's address; the source port chosen at random
            return replace(packet, src=self._address_of(packet.oif) or packet.src, sport=None)
        return packet

    def _address_of(self, device: str | None) -> str | None:
        inv = self.state.inventory
        link = inv.link_named(device) if device else None
        found = inv.addresses_of(link.index) if link is not None else []
        return found[0].address if found else None

    def _run_chain(
        self,
        base: BaseChain,
        packet: Packet,
        choose: frozenset[tuple[str, int, int]] | None,
    ) -> _ChainRun | None:
        if self.is_iptables(base.table):
            return self._run_iptables(base, packet, choose)
        if base.table == KUBE_PROXY_TABLE:
            return self._run_kube_proxy(base, packet, choose)
        if base.table == POLICY_TABLE:
            return self._run_policy(base, packet)
        if base.table.startswith(FAULT_TABLE_PREFIX):
            return self._run_fault(base, packet)
        return None

    def _steps(self, table: str, steps: list[Step]) -> list[TraceStep]:
        return [TraceStep(table, s.chain, s.index, s.verdict, s.rule) for s in steps]

    @cached_property
    def _sets(self) -> dict[str, IpSet]:
        return parse_ipset_save(self.state.ipsets)

    def _bridged(self, iif: str | None) -> bool:
        link = self.state.inventory.link_named(iif) if iif else None
        return link is not None and link.kind == "bridge"

    @cached_property
    def _recent(self) -> dict[str, dict[str, float]]:
        return self.state.recent

    def _run_iptables(
        self,
        base: BaseChain,
        packet: Packet,
        choose: frozenset[tuple[str, int, int]] | None,
    ) -> _ChainRun:
        walk = Walk(
            self.iptables[base.table.partition(" ")[2]],
            packet.src,
            packet.dst,
            packet.dport,
            packet.proto,
            self.local,
            state=packet.state.upper(),
            mark=packet.mark,
            iif=packet.iif,
            oif=packet.oif,
            recent=self._recent,
            choose=choose,
            sets=self._sets,
            bridged=self._bridged(packet.iif),
        )
        walk.walk(base.chain)
        return _ChainRun(
            self._steps(base.table, walk.steps),
            replace(packet, mark=walk.mark),
            walk.branches,
            dnat=walk.dnat[-1] if walk.dnat else None,
            redirect=walk.redirect,
            snat=walk.snat,
            masquerade=walk.masquerade,
            reject=walk.verdict == "REJECT",
        )

    def _run_kube_proxy(
        self,
        base: BaseChain,
        packet: Packet,
        choose: frozenset[tuple[str, int, int]] | None,
    ) -> _ChainRun:
        pkt = NftPacket(
            packet.src,
            packet.dst,
            packet.dport,
            packet.proto,
            self.local,
            state=packet.state,
            mark=packet.mark,
            ct_dnat=packet.dnatted,
        )
        walk = NftWalk(self.models[KUBE_PROXY_TABLE], pkt, choose)
        walk.chain(base.chain)
        return _ChainRun(
            self._steps(base.table, walk.steps),
            replace(packet, mark=pkt.mark),
            walk.branches,
            dnat=pkt.dnat[-1] if pkt.dnat else None,
            masquerade=pkt.masquerade,
            reject=walk.verdict == "REJECT",
        )

    def _run_policy(self, base: BaseChain, packet: Packet) -> _ChainRun:
        walked = walk_policy_chain(
            self.models[POLICY_TABLE],
            PolicyPacket(
                packet.src,
                packet.dst,
                packet.proto,
                packet.dport or 0,
                established=packet.state != "new",
                dnat=packet.dnatted,
                mark=packet.mark,
                local=self.local,
            ),
            base.chain,
        )
        return _ChainRun(self._steps(base.table, walked.steps), packet, [], snat=walked.snat)

    def _run_fault(self, base: BaseChain, packet: Packet) -> _ChainRun | None:
        """`podnet fault`'s own tables (partition, loss: `lab/faults.py`): interface, address
        and port matches, then drop. A random drop (loss's numgen) is followed as not taken:
        most packets pass it. None (unknown) for any other rule form."""
        table = self.listed.get(base.table)
        chain = table.chains.get(base.chain) if table is not None else None
        if chain is None:
            return None
        for index, (rule, _handle) in enumerate(chain.rules):
            matched = _fault_rule_matches(rule, packet)
            if matched is None:
                return None
            if matched:
                return _ChainRun([TraceStep(base.table, base.chain, index, "drop", rule)], packet)
        return _ChainRun([], packet)


_FAULT_MATCH = re.compile(
    r'\s*(?:(?P<dir>iifname|oifname) "(?P<dev>[^"]+)"'
    r"|ip (?P<addr>saddr|daddr) (?P<ips>\{[^}]*\}|\S+)"
    r"|(?P<proto>tcp|udp) (?P<which>sport|dport) (?P<port>\d+)"
    r"|numgen random mod \d+ < \d+)"
)


def _fault_rule_matches(rule: str, packet: Packet) -> bool | None:
    """Whether a fault table's rule (`... drop`, as `nft list` prints it) drops the packet;
    None for a form `lab/faults.py` does not write."""
    body = rule.strip()
    if not body.endswith(" drop"):
        return None
    body, matched, pos = body[: -len(" drop")], True, 0
    while pos < len(body):
        m = _FAULT_MATCH.match(body, pos)
        if m is None or m.end() == pos:
            return None
        pos = m.end()
        if m["dir"]:
            matched &= (packet.iif if m["dir"] == "iifname" else packet.oif) == m["dev"]
        elif m["addr"]:
            ips = {a.strip() for a in m["ips"].strip("{} ").split(",")}
            matched &= (packet.src if m["addr"] == "saddr" else packet.dst) in ips
        elif m["proto"]:
            port = packet.sport if m["which"] == "sport" else packet.dport
            matched &= packet.proto == m["proto"] and port == int(m["port"])
        else:  # numgen: a random share is dropped; the trace follows the packets that pass
            matched = False
    return matched


@dataclass(slots=True)
class _ChainRun:
    """What one base chain did: its steps, the packet after it, the branches it met and the
    translation it asked for."""

    steps: list[TraceStep]
    packet: Packet
    branches: list[Branch] = field(default_factory=list)
    dnat: str | None = None
    redirect: int | None = None
    snat: str | None = None
    masquerade: bool = False
    reject: bool = False

    @property
    def translates(self) -> bool:
        return bool(self.dnat or self.redirect or self.snat or self.masquerade)
