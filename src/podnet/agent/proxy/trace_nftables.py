"""A model of the `ip kube-proxy` table built from nft transactions, and a packet walk over it.

What belongs here: `NftModel` (apply the transactions podnet renders to one table — `ip
kube-proxy` unless told otherwise, the NetworkPolicy walk uses it for `inet podnet-policy`:
add/flush/delete of table, chains, sets, maps, named counters and elements, multi-line
element blocks), `consistency_errors` (every jump/goto/vmap target chain and every @set
exists), `NftWalk` — one packet through chains of the table, recording each matched rule as
the kernel's trace reports it and each `numgen` choice — and `trace_nftables`, which walks a
new connection's first packet through nat prerouting (or output), the filter hooks and nat
postrouting and reports DNAT targets, masquerade and the filter verdict.

Invariants: pure; understands exactly the statement forms podnet renders, in its own spelling
and in the one `nft list` prints back (`podnet.trace.listing` loads a live table into an
`NftModel`). `numgen` choices are branches (every endpoint the packet may reach is reported,
unless `choose` picks); dynamic affinity sets hold what the model was given (empty, as for a
client's first connection, unless listed from the kernel). Applying a full transaction and
then partial ones must give the same model as one full transaction of the final state — that
is how partial syncs are tested.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from podnet.agent.proxy.trace_iptables import Branch, Step, Verdict

_PRIORITIES = {
    "raw": -300,
    "mangle": -150,
    "dstnat": -100,
    "filter": 0,
    "security": 50,
    "srcnat": 100,
}
HOOK_SPEC = re.compile(r"type (\w+) hook (\w+) priority (\w+|-?\d+)(?: ([+-]) (\d+))?")


def hook_priority(name: str, sign: str | None, offset: str | None) -> int:
    """A chain priority in numbers: `srcnat - 5` -> 95, `-100` -> -100."""
    base = _PRIORITIES[name] if name in _PRIORITIES else int(name)
    return base + (int(offset or 0) * (-1 if sign == "-" else 1))


@dataclass(slots=True)
class NftModel:
    chains: dict[str, list[str]] = field(default_factory=dict)
    # base chain -> (type, hook, priority)
    hooks: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    sets: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> value ("")
    counters: set[str] = field(default_factory=set)
    exists: bool = False
    table: str = "ip kube-proxy"

    def apply(self, transaction: str) -> None:
        for stmt in _statements(transaction):
            self._statement(stmt)

    def _statement(self, stmt: str) -> None:
        m = re.match(
            rf"^(add|delete|flush) (table|chain|rule|set|map|element|counter) "
            rf"{re.escape(self.table)}\s*(.*)$",
            stmt,
            re.S,
        )
        if m is None:
            raise ValueError(f"unsupported nft statement: {stmt!r}")
        verb, kind, rest = m.groups()
        if kind == "table":
            if verb == "delete":
                self.chains.clear()
                self.hooks.clear()
                self.sets.clear()
                self.counters.clear()
                self.exists = False
            else:
                self.exists = True
            return
        if not self.exists:
            raise ValueError(f"no table for: {stmt!r}")
        name = rest.split()[0] if rest else ""
        if kind == "chain":
            if verb == "add":
                self.chains.setdefault(name, [])
                hook = HOOK_SPEC.search(rest)
                if hook:
                    kind, where, base, sign, offset = hook.groups()
                    self.hooks[name] = (kind, where, hook_priority(base, sign, offset))
            elif verb == "flush":
                self._need(self.chains, name, stmt)
                self.chains[name] = []
            else:
                self._need(self.chains, name, stmt)
                if self.chains[name]:
                    raise ValueError(f"deleting non-empty chain: {stmt!r}")
                if any(name in r for rules in self.chains.values() for r in rules) or any(
                    name in v for s in self.sets.values() for v in s.values()
                ):
                    raise ValueError(f"deleting chain still referenced: {stmt!r}")
                del self.chains[name]
                self.hooks.pop(name, None)
        elif kind == "counter":
            if verb == "add":
                self.counters.add(name)
            else:
                if any(f'"{name}"' in v for s in self.sets.values() for v in s.values()):
                    raise ValueError(f"deleting counter still referenced: {stmt!r}")
                self.counters.remove(name)
        elif kind == "rule":
            self._need(self.chains, name, stmt)
            self.chains[name].append(rest[len(name) :].strip())
        elif kind in ("set", "map"):
            if verb == "add":
                self.sets.setdefault(name, {})
            elif verb == "flush":
                self._need(self.sets, name, stmt)
                self.sets[name] = {}
            else:
                self._need(self.sets, name, stmt)
                del self.sets[name]
        else:  # element
            self._need(self.sets, name, stmt)
            body = rest[len(name) :].strip()
            assert body.startswith("{") and body.endswith("}"), stmt
            for item in _split_elements(body[1:-1]):
                key, _, value = item.partition(" : ")
                key = re.sub(r'\s+comment "[^"]*"', "", key).strip()
                if verb == "add":
                    if key in self.sets[name]:
                        raise ValueError(f"element {key} exists in {name}: {stmt[:200]!r}")
                    self.sets[name][key] = value.strip()
                else:
                    if key not in self.sets[name]:
                        raise ValueError(f"element {key} missing in {name}")
                    del self.sets[name][key]

    @staticmethod
    def _need(table: Mapping[str, object], name: str, stmt: str) -> None:
        if name not in table:
            raise ValueError(f"{name} does not exist: {stmt[:200]!r}")


def _statements(text: str) -> list[str]:
    out: list[str] = []
    buf: list[str] = []
    depth = 0
    for line in text.splitlines():
        if not buf and not line.strip():
            continue
        buf.append(line.strip())
        depth += line.count("{") - line.count("}")
        if depth == 0:
            out.append(" ".join(buf))
            buf = []
    if buf:
        raise ValueError("unbalanced braces at end of transaction")
    return out


def _split_elements(body: str) -> list[str]:
    items: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in body:
        if ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
            continue
        depth += (ch == "{") - (ch == "}")
        cur.append(ch)
    if "".join(cur).strip():
        items.append("".join(cur).strip())
    return items


_TARGETS = re.compile(r"\b(?:jump|goto) ([^\s,}]+)")
_SETREFS = re.compile(r"@([^\s,}]+)")


def consistency_errors(model: NftModel) -> list[str]:
    errors = []
    for chain, rules in model.chains.items():
        for rule in rules:
            errors += [
                f"{chain}: jump/goto to undefined chain {t}"
                for t in _TARGETS.findall(rule)
                if t not in model.chains
            ]
            errors += [
                f"{chain}: reference to undefined set/map @{s}"
                for s in _SETREFS.findall(rule)
                if s not in model.sets
            ]
    for name, elements in model.sets.items():
        for value in elements.values():
            errors += [
                f"{name}: element goes to undefined chain {t}"
                for t in _TARGETS.findall(value)
                if t not in model.chains
            ]
            counter = value.strip('"')
            if value.startswith('"') and counter not in model.counters:
                errors.append(f"{name}: element names undefined counter {counter}")
    return errors


def _in(addr: str, spec: str) -> bool:
    return ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(spec, strict=False)


@dataclass(slots=True)
class NftPacket:
    """A packet crossing the `ip kube-proxy` table: addresses, conntrack state, mark, and what
    the walk did to it (DNAT targets, masquerade)."""

    src: str
    dst: str
    dport: int | None
    proto: str
    node_ips: frozenset[str]
    state: str = "new"  # conntrack: new, established, related
    mark: int = 0
    dnat: list[str] = field(default_factory=list)
    masquerade: bool = False
    ct_dnat: bool = False  # `ct status dnat`: an earlier hook already rewrote the destination

    def local(self, addr: str) -> bool:
        return addr in self.node_ips or _in(addr, "127.0.0.0/8")


class NftWalk:
    """One walk through chains of the table, recording each matched rule as the kernel's trace
    would (`steps`) and each random choice met (`branches`).

    `choose` is None to follow every branch of a `numgen` (every endpoint is reported), or the
    (chain, rule index, slot) choices to take, as the kernel's random draw did.
    """

    def __init__(
        self,
        model: NftModel,
        pkt: NftPacket,
        choose: frozenset[tuple[str, int, int]] | None = None,
    ) -> None:
        self.model = model
        self.pkt = pkt
        self.choose = choose
        self.verdict: str | None = None
        self.steps: list[Step] = []
        self.branches: list[Branch] = []
        self._at: tuple[str, int, str] = ("", 0, "")  # the rule being run

    def _value_match(self, addr: str, value: str) -> bool:
        if value.startswith("@"):
            return addr in self.model.sets.get(value[1:], {})
        if value.startswith("{"):
            return any(_in(addr, v.strip()) for v in value.strip("{} ").split(","))
        return _in(addr, value)

    def chain(self, name: str, depth: int = 0) -> bool:
        """Run a chain; True when a terminal verdict ended the walk."""
        if depth > 50:
            raise ValueError(f"loop through {name}")
        for index, rule in enumerate(self.model.chains[name]):
            self._at = (name, index, rule)
            outcome = self.rule(rule, depth)
            if outcome == "return":
                return False
            if outcome == "stop":
                return True
        return False

    def _step(self, verdict: str) -> None:
        chain, index, rule = self._at
        self.steps.append(Step(chain, index, verdict, rule))

    def rule(self, rule: str, depth: int) -> str:
        p = self.pkt
        text = re.sub(r'\s+comment "[^"]*"$', "", rule)
        # matches, consumed from the left
        while True:
            if m := re.match(r"ip (saddr|daddr) (!= )?(@\S+|\{[^}]*\}|\d[\d./]*) ", text):
                addr = p.src if m.group(1) == "saddr" else p.dst
                if self._value_match(addr, m.group(3)) == bool(m.group(2)):
                    return "next"
            elif m := re.match(r"ct status dnat ip saddr \. ip daddr @(\S+) ", text):
                dnatted = bool(p.dnat) or p.ct_dnat
                if not dnatted or f"{p.src} . {p.dst}" not in self.model.sets[m.group(1)]:
                    return "next"
            elif m := re.match(r"ct state new ", text):
                if p.state != "new":
                    return "next"
            elif m := re.match(r"fib (saddr|daddr) type local ", text):
                if not p.local(p.src if m.group(1) == "saddr" else p.dst):
                    return "next"
            elif m := re.match(r"(?:mark and|meta mark &) (0x[0-9a-f]+) == 0(?:x0+)? ", text):
                if p.mark & int(m.group(1), 16):
                    return "next"
            elif m := re.match(r"meta l4proto (\w+|\{[^}]*\}) (?!\.)", text):
                if p.proto not in m.group(1).strip("{} ").replace(",", " ").split():
                    return "next"
            else:
                break
            text = text[m.end() :]
        return self.statement(text.strip(), depth)

    def _taken(self, chain: str, index: int, slot: int) -> bool:
        return self.choose is None or (chain, index, slot) in self.choose

    def statement(self, text: str, depth: int) -> str:
        p = self.pkt
        if m := re.fullmatch(r"(jump|goto) (\S+)", text):
            self._step(text)
            ended = self.chain(m.group(2), depth + 1)
            return "stop" if ended or m.group(1) == "goto" else "next"
        if text == "return":
            self._step("return")
            return "return"
        if text in ("reject", "drop", "accept"):
            self._step("accept" if text == "accept" else "drop")
            self.verdict = text.upper()
            return "stop"
        if m := re.fullmatch(r"(ip daddr \. )?meta l4proto \. th dport vmap @(\S+)", text):
            key = f"{p.proto} . {p.dport}"
            if m.group(1):
                key = f"{p.dst} . {key}"
            verdict = self.model.sets[m.group(2)].get(key)
            return "next" if verdict is None else self.statement(verdict, depth)
        if m := re.fullmatch(r"numgen random mod (\d+) vmap \{ (.*) \}", text):
            chain, index, _ = self._at
            branches = [v.split(" : ", 1)[1] for v in re.split(r" ?, ", m.group(2))]
            for slot, branch in enumerate(branches):
                self._record_branch(branch, slot, len(branches), depth)
            for slot, branch in enumerate(branches):
                if self._taken(chain, index, slot):
                    self._at = (chain, index, self._at[2])
                    self.statement(branch, depth)
            return "stop"
        if text.startswith("update @"):
            self._step("continue")
            return "next"
        if m := re.fullmatch(
            r"(?:meta )?mark set (?:meta )?mark (or|xor|\||\^) (0x[0-9a-f]+)", text
        ):
            v = int(m.group(2), 16)
            p.mark = p.mark | v if m.group(1) in ("or", "|") else p.mark ^ v
            self._step("continue")
            return "next"
        if text.startswith("masquerade"):
            self._step("accept")
            self.verdict = "MASQUERADE"
            p.masquerade = True
            return "stop"
        if m := re.fullmatch(r"dnat (?:ip )?to ([\d.]+:\d+)", text):
            self._step("accept")
            p.dnat.append(m.group(1))
            return "stop"
        if m := re.fullmatch(
            r"dnat ip (?:addr \. port )?to (ip daddr \. )?(\w+) dport "
            r"\. numgen random mod (\d+) map @(\S+)",
            text,
        ):
            if m.group(2) != p.proto:  # a `tcp dport` key only reads TCP packets
                return "next"
            chain, index, _ = self._at
            prefix = f"{p.dst} . " if m.group(1) else ""
            entries = self.model.sets[m.group(4)]
            slots = int(m.group(3))
            picked = False
            for i in range(slots):
                target = entries.get(f"{prefix}{p.dport} . {i}")
                if target is None:
                    continue
                address = target.replace(" . ", ":")
                self.branches.append(Branch(chain, index, 1 / slots, (address,), i))
                if self._taken(chain, index, i):
                    p.dnat.append(address)
                    picked = True
            if picked:
                self._step("accept")
                return "stop"
            return "next"  # no element for this slot: the map lookup fails, the rule breaks
        raise ValueError(f"tracer does not understand statement {text!r}")

    def _record_branch(self, verdict: str, slot: int, count: int, depth: int) -> None:
        chain, index, rule = self._at
        target = re.fullmatch(r"(?:jump|goto) (\S+)", verdict)
        reached: tuple[str, ...] = ()
        if target:
            dry = NftWalk(self.model, replace(self.pkt, dnat=[], mark=self.pkt.mark))
            dry.chain(target.group(1), depth + 1)
            reached = tuple(dry.pkt.dnat)
        self.branches.append(Branch(chain, index, 1 / count, reached, slot))
        self._at = (chain, index, rule)


def _base_chains(model: NftModel, kind: str, hook: str) -> list[str]:
    chains = [c for c, (t, h, _) in model.hooks.items() if t == kind and h == hook]
    return sorted(chains, key=lambda c: model.hooks[c][2])


def trace_nftables(
    model: NftModel,
    src: str,
    dst: str,
    dport: int,
    proto: str = "tcp",
    node_ips: Sequence[str] = (),
    from_node: bool = False,
) -> Verdict:
    pkt = NftPacket(src, dst, dport, proto, frozenset(node_ips))
    for chain in _base_chains(model, "nat", "output" if from_node else "prerouting"):
        if NftWalk(model, pkt).chain(chain):
            break
    result = Verdict(dnat=sorted(set(pkt.dnat)))
    if pkt.dnat:  # the filter hooks see the translated destination
        pkt.dst = pkt.dnat[0].rsplit(":", 1)[0]
    hook = "output" if from_node else ("input" if pkt.local(pkt.dst) else "forward")
    for chain in _base_chains(model, "filter", hook):
        walk = NftWalk(model, pkt)
        if walk.chain(chain) and walk.verdict in ("REJECT", "DROP"):
            result.filter = walk.verdict
            result.dnat = []
            return result
    for chain in _base_chains(model, "nat", "postrouting"):
        walk = NftWalk(model, pkt)
        walk.chain(chain)
        if walk.verdict == "MASQUERADE":
            result.masquerade = True
    return result
