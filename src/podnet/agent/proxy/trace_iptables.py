"""A packet walk over rendered iptables-restore text (upstream proxier_test.go `tracePacket`).

What belongs here: parsing restore text into tables → chains → rules, the consistency check
(every `-j` target is defined, every `-X` chain was declared), the canonical sort used by golden
tests (KUBE-NODEPORTS, KUBE-SERVICES first, other chains by name, rule order kept), and
`trace_iptables`, which walks nat PREROUTING (or OUTPUT) → filter → nat POSTROUTING for one
packet and reports DNAT targets, masquerade and the filter verdict.

Invariants: pure; understands exactly the matches podnet renders (comment, -p/-m proto, -s/-d
with `!`, --dport, addrtype LOCAL, statistic, recent, mark, conntrack). A `statistic` rule is a
branch: the walk follows it *and* the rules after it, so every endpoint a packet may reach is
reported (as upstream's tracer does). `recent --rcheck` never matches (no history).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

BUILTIN_TARGETS = {
    "ACCEPT",
    "DROP",
    "REJECT",
    "RETURN",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "MARK",
    "REDIRECT",
}
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


@dataclass(slots=True)
class Table:
    chains: dict[str, list[list[str]]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


def parse_restore(text: str) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    current: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], Table())
        elif current is None:
            raise ValueError(f"rule outside a table: {line!r}")
        elif line.startswith(":"):
            current.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            words = shlex.split(line)
            if words[1] not in current.chains:
                raise ValueError(f"rule for undeclared chain {words[1]}: {line!r}")
            current.chains[words[1]].append(words[2:])
        elif line.startswith("-X "):
            current.deleted.append(line.split()[1])
        else:
            raise ValueError(f"unexpected restore line: {line!r}")
    return tables


def _target(rule: Sequence[str]) -> str | None:
    for i, word in enumerate(rule):
        if word in ("-j", "-g") and i + 1 < len(rule):
            return rule[i + 1]
    return None


def consistency_errors(text: str) -> list[str]:
    """Jumps to undefined chains and deletions of undeclared chains, as readable messages."""
    errors = []
    for tname, table in parse_restore(text).items():
        for chain, rules in table.chains.items():
            for rule in rules:
                target = _target(rule)
                if target and target not in BUILTIN_TARGETS and target not in table.chains:
                    errors.append(f"{tname}: {chain} jumps to undefined chain {target}")
        for chain in table.deleted:
            if chain not in table.chains:
                errors.append(f"{tname}: -X {chain} without a ':{chain}' line")
            elif table.chains[chain]:
                errors.append(f"{tname}: -X {chain} but the chain has rules")
    return errors


def sort_restore(text: str) -> str:
    """Canonical order: per table, KUBE-NODEPORTS, KUBE-SERVICES, then chains by name."""
    order = {"KUBE-NODEPORTS": 0, "KUBE-SERVICES": 1}
    out: list[str] = []
    table_name = ""
    chains: list[str] = []
    rules: dict[str, list[str]] = {}
    tail: list[str] = []

    def flush() -> None:
        keyed = sorted(chains, key=lambda c: (order.get(c, 2), c))
        out.extend(f":{c} - [0:0]" for c in keyed)
        for c in keyed:
            out.extend(rules.get(c, ()))
        out.extend(tail)
        out.append("COMMIT")

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table_name = line
            out.append(table_name)
            chains, rules, tail = [], {}, []
        elif line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            rules.setdefault(line.split()[1], []).append(line)
        elif line.startswith("-X "):
            tail.append(line)
        elif line == "COMMIT":
            flush()
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    dport: int
    proto: str = "tcp"


@dataclass(slots=True)
class Verdict:
    dnat: list[str] = field(default_factory=list)  # every "ip:port" the packet may be sent to
    masquerade: bool = False
    filter: str = "ACCEPT"  # ACCEPT | DROP | REJECT

    def __str__(self) -> str:
        return ", ".join(self.dnat) if self.dnat else self.filter


def _in(addr: str, spec: str) -> bool:
    return ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(spec, strict=False)


class _Walker:
    def __init__(self, table: Table, pkt: Packet, node_ips: Sequence[str], state: str) -> None:
        self.table = table
        self.pkt = pkt
        self.node_ips = set(node_ips)
        self.state = state  # conntrack state of the packet: NEW
        self.mark = 0
        self.dnat: list[str] = []
        self.verdict: str | None = None

    def local(self, addr: str) -> bool:
        return addr in self.node_ips or _in(addr, "127.0.0.0/8")

    def matches(self, rule: Sequence[str], dst: str) -> bool:
        i, neg = 0, False
        while i < len(rule):
            w = rule[i]
            if w == "!":
                neg = True
                i += 1
                continue
            ok = True
            if w == "-m":
                i += 2
                if rule[i - 1] == "statistic":
                    i += 4
                continue
            if w == "--comment":
                i += 2
                continue
            if w == "-p":
                ok = rule[i + 1] == self.pkt.proto
                i += 2
            elif w in ("-s", "-d"):
                ok = _in(self.pkt.src if w == "-s" else dst, rule[i + 1])
                i += 2
            elif w == "--dport":
                ok = int(rule[i + 1]) == self.pkt.dport
                i += 2
            elif w in ("--dst-type", "--src-type"):
                ok = self.local(dst if w == "--dst-type" else self.pkt.src)
                i += 2
            elif w == "--ctstate":
                ok = self.state in rule[i + 1].split(",")
                i += 2
            elif w == "--mark":
                value, _, mask = rule[i + 1].partition("/")
                ok = self.mark & int(mask or value, 16) == int(value, 16)
                i += 2
            elif w == "--name":
                i += 2
            elif w == "--rcheck":
                ok = False  # no recent history in a trace
                i += 1
            elif w in ("--seconds",):
                i += 2
            elif w in ("--set", "--reap"):
                i += 1
            elif w in ("-j", "-g"):
                return True
            else:
                raise ValueError(f"tracer does not understand {w!r} in {' '.join(rule)}")
            if ok == neg:
                return False
            neg = False
        return True

    def walk(self, chain: str, dst: str, depth: int = 0) -> bool:
        """Walk a chain; True when a terminal verdict (DNAT, ACCEPT, DROP, REJECT) ended it."""
        if depth > 50:
            raise ValueError(f"jump loop through {chain}")
        for rule in self.table.chains.get(chain, ()):
            if not self.matches(rule, dst):
                continue
            branch = "statistic" in rule
            target = _target(rule)
            if target is None:
                continue
            if target == "RETURN":
                return False
            if target == "MARK":
                idx = rule.index("-j")
                op, value = rule[idx + 1 + 1], int(rule[idx + 3], 16)
                self.mark = self.mark | value if op == "--or-mark" else self.mark ^ value
                continue
            if target == "DNAT":
                self.dnat.append(rule[rule.index("--to-destination") + 1])
                if branch:
                    continue
                return True
            if target in ("ACCEPT", "DROP", "REJECT"):
                self.verdict = target
                return True
            if target == "MASQUERADE":
                return True
            ended = self.walk(target, dst, depth + 1)
            if ended and not branch:
                return True
        return False


def trace_iptables(
    text: str,
    src: str,
    dst: str,
    dport: int,
    proto: str = "tcp",
    node_ips: Sequence[str] = (),
    from_node: bool = False,
) -> Verdict:
    """Where the first packet of a new connection goes under these rules."""
    tables = parse_restore(text)
    pkt = Packet(src, dst, dport, proto)
    nat = tables.get("nat", Table())
    pre = _Walker(nat, pkt, node_ips, "NEW")
    pre.walk("KUBE-SERVICES", dst)
    result = Verdict(dnat=sorted(set(pre.dnat), key=_addr_key), masquerade=False)
    new_dst = pre.dnat[0].rsplit(":", 1)[0] if pre.dnat else dst
    filt = _Walker(tables.get("filter", Table()), pkt, node_ips, "NEW")
    local = filt.local(new_dst)
    hooks = ["KUBE-SERVICES"] if from_node else []
    hooks += ["KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"] if local and not from_node else []
    hooks += ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD"] if not local else []
    for chain in dict.fromkeys(hooks):
        if filt.walk(chain, dst if not pre.dnat else new_dst) and filt.verdict:
            if filt.verdict != "ACCEPT":
                result.filter = filt.verdict
                result.dnat = []
            break
    result.masquerade = bool(pre.mark & _masq_bit(nat))
    return result


def _masq_bit(nat: Table) -> int:
    for rule in nat.chains.get("KUBE-MARK-MASQ", ()):
        if "--or-mark" in rule:
            return int(rule[rule.index("--or-mark") + 1], 16)
    return 0


def _addr_key(addr: str) -> tuple[int, int]:
    ip, _, port = addr.rpartition(":")
    return int(ipaddress.IPv4Address(ip)), int(port)
