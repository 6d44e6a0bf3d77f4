"""A packet walk over a rendered `inet podnet-policy` table (built with the proxy's `NftModel`).

What belongs here: `walk_policy_table(model, packet)` — the first packet of a connection (or a
packet of an established one) through the table's filter base chains of one hook, in priority
order, returning the verdict, the drop counters it bumped, the log prefixes it wrote and every
rule it matched (`steps`, in the kernel trace's words) — and `walk_policy_chain` for one base
chain. Used by the packet-walk tests to check the rendered rules against `PolicyView.verdict`,
and by `podnet trace` (`podnet.trace.netfilter`) on the table listed from a live node.

Invariants: pure; understands exactly the rule forms `nftables.py` renders (an unknown form
raises, so a new rule shape cannot silently pass the tests); interval elements are matched
field by field (address, CIDR or range; protocol name or number range; port or range).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from podnet.agent.proxy.trace_iptables import Step
from podnet.agent.proxy.trace_nftables import NftModel

PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}
_LOOKUP = re.compile(
    r"((?:ip saddr|ip daddr|meta l4proto|th dport)(?: \. (?:ip saddr|ip daddr|meta l4proto|"
    r"th dport))*) @(\S+) "
)


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    protocol: str = "tcp"
    port: int = 80
    established: bool = False
    dnat: bool = False  # `ct status dnat`: the destination was rewritten (REDIRECT, DNAT)
    mark: int = 0
    local: frozenset[str] = frozenset()  # this node's addresses (`fib saddr type local`)

    def value(self, name: str) -> str | int:
        if name in ("ip saddr", "ip daddr"):
            return self.src if name == "ip saddr" else self.dst
        return PROTOCOL_NUMBERS.get(self.protocol, 0) if name == "meta l4proto" else self.port


@dataclass(slots=True)
class Walk:
    verdict: str = "accept"  # a base chain with policy accept lets unmatched packets go
    counters: list[str] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)  # matched rules, as the kernel traces them
    snat: str | None = None  # `snat ip to` of a nat chain


def _field_matches(spec: str, value: str | int) -> bool:
    if isinstance(value, str):  # an address
        addr = int(ipaddress.IPv4Address(value))
        if "/" in spec:
            net = ipaddress.IPv4Network(spec, strict=False)
            return int(net.network_address) <= addr <= int(net.broadcast_address)
        first, _, last = spec.partition("-")
        lo = int(ipaddress.IPv4Address(first))
        hi = int(ipaddress.IPv4Address(last)) if last else lo
        return lo <= addr <= hi
    first, _, last = spec.partition("-")
    lo = PROTOCOL_NUMBERS.get(first) or int(first)
    hi = (PROTOCOL_NUMBERS.get(last) or int(last)) if last else lo
    return lo <= value <= hi


def _element_matches(key: str, values: list[str | int]) -> bool:
    specs = key.split(" . ")
    if len(specs) != len(values):
        raise ValueError(f"element {key!r} does not have {len(values)} fields")
    return all(_field_matches(s, v) for s, v in zip(specs, values, strict=True))


class _Walker:
    def __init__(self, model: NftModel, packet: Packet) -> None:
        self.model = model
        self.packet = packet
        self.out = Walk()
        self._at: tuple[str, int, str] = ("", 0, "")  # the rule being run

    def lookup(self, exprs: str, name: str) -> bool:
        values = [self.packet.value(e) for e in exprs.split(" . ")]
        return any(_element_matches(key, values) for key in self.model.sets[name])

    def chain(self, name: str, depth: int = 0) -> bool:
        """Run a chain; True when a verdict ended the walk."""
        if depth > 20:
            raise ValueError(f"loop through {name}")
        self.out.chains.append(name)
        for index, rule in enumerate(self.model.chains[name]):
            self._at = (name, index, rule)
            outcome = self.rule(rule, depth)
            if outcome == "return":
                return False
            if outcome == "stop":
                return True
        return False

    def rule(self, rule: str, depth: int) -> str:
        p = self.packet
        text = rule
        while True:
            if m := re.match(r"ct state established,related ", text):
                if not p.established:
                    return "next"
            elif m := re.match(r"ct status dnat ", text):
                if not p.dnat:
                    return "next"
            elif m := re.match(r"fib saddr type local ", text):
                if p.src not in p.local:
                    return "next"
            elif m := re.match(r"meta mark & (0x[0-9a-f]+) == (0x[0-9a-f]+) ", text):
                if p.mark & int(m.group(1), 16) != int(m.group(2), 16):
                    return "next"
            elif m := re.match(r"ip (saddr|daddr) (\d[\d./]*) ", text):
                if not _field_matches(m.group(2), p.src if m.group(1) == "saddr" else p.dst):
                    return "next"
            elif m := re.match(r"ip (saddr|daddr) (!= )?@(\S+) ", text):
                addr = p.src if m.group(1) == "saddr" else p.dst
                if (addr in self.model.sets[m.group(3)]) == bool(m.group(2)):
                    return "next"
            elif m := _LOOKUP.match(text):
                if not self.lookup(m.group(1), m.group(2)):
                    return "next"
            else:
                break
            text = text[m.end() :]
        return self.statement(text.strip(), depth)

    def _step(self, verdict: str) -> None:
        chain, index, rule = self._at
        self.out.steps.append(Step(chain, index, verdict, rule))

    def statement(self, text: str, depth: int) -> str:
        p = self.packet
        if m := re.fullmatch(r"(jump|goto) (\S+)", text):
            self._step(text)
            ended = self.chain(m.group(2), depth + 1)
            return "stop" if ended or m.group(1) == "goto" else "next"
        if text == "return":
            self._step("return")
            return "return"
        if text in ("accept", "drop"):
            self._step(text)
            self.out.verdict = text
            return "stop"
        if m := re.fullmatch(r"snat ip to ([\d.]+)", text):
            self._step("accept")
            self.out.snat = m.group(1)
            return "stop"
        if m := re.fullmatch(r"ip (saddr|daddr) vmap @(\S+)", text):
            verdict = self.model.sets[m.group(2)].get(p.src if m.group(1) == "saddr" else p.dst)
            return "next" if verdict is None else self.statement(verdict, depth)
        if m := re.fullmatch(
            r'limit rate \S+ burst \d+ packets log prefix "([^"]*)" group \d+', text
        ):
            self._step("continue")
            self.out.logged.append(m.group(1))
            return "next"
        if m := re.fullmatch(r'counter name "(\S+)"', text):
            self._step("continue")
            self.out.counters.append(m.group(1))
            return "next"
        if m := re.fullmatch(r"counter name ip (saddr|daddr) map @(\S+)", text):
            counter = self.model.sets[m.group(2)].get(p.src if m.group(1) == "saddr" else p.dst)
            if counter is not None:
                self._step("continue")
                self.out.counters.append(counter.strip('"'))
            return "next"
        raise ValueError(f"the policy walk does not understand {text!r}")


def walk_policy_chain(model: NftModel, packet: Packet, chain: str) -> Walk:
    """The packet through one base chain of the table (`podnet trace` runs each hook's base
    chains of every table in the kernel's order itself)."""
    walker = _Walker(model, packet)
    walker.chain(chain)
    return walker.out


def walk_policy_table(model: NftModel, packet: Packet, hook: str = "postrouting") -> Walk:
    """The packet through every filter base chain of `hook`, lowest priority first; a drop in
    any of them ends the walk."""
    chains = sorted(
        (c for c, (kind, where, _) in model.hooks.items() if kind == "filter" and where == hook),
        key=lambda c: model.hooks[c][2],
    )
    result = Walk()
    for chain in chains:
        out = walk_policy_chain(model, packet, chain)
        result.counters += out.counters
        result.logged += out.logged
        result.chains += out.chains
        result.steps += out.steps
        if out.verdict == "drop":
            result.verdict = "drop"
            break
    return result
