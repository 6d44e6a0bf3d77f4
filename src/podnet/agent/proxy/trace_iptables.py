"""A packet walk over iptables-save / iptables-restore text (upstream `tracePacket`).

What belongs here: parsing restore text into tables → chains → rules, the consistency check
(every `-j` target is defined, every `-X` chain was declared), the canonical sort used by golden
tests (KUBE-NODEPORTS, KUBE-SERVICES first, other chains by name, rule order kept), `Walk` —
one packet through the chains of one table, recording every rule it matches as the kernel's
nftables trace reports it (`Step`) and every random choice it meets (`Branch`) — and
`trace_iptables`, which walks nat PREROUTING (or OUTPUT) → filter → nat POSTROUTING for one
packet and reports DNAT targets, masquerade and the filter verdict. `podnet trace`
(`podnet.trace.netfilter`) walks a live node's iptables-save output with `Walk`.

Invariants: pure; understands exactly the matches podnet renders and the spelling
iptables-save prints them in (comment, -p/-m proto, -s/-d/-i/-o with `!`, --dport, addrtype
LOCAL, statistic, recent, mark, conntrack, ipvs mode's `set --match-set` (members from `ipset
save`: `parse_ipset_save`) and `physdev --physdev-is-in`; MARK as `--or-mark`, `--xor-mark`
or `--set-xmark`). A
`statistic` rule is a branch: without `choose` the walk follows it *and* the rules after it,
so every endpoint a packet may reach is reported (as upstream's tracer does); with `choose` it
takes exactly the chosen ones. `recent --rcheck` matches the sources given in `recent` that
were seen within its `--seconds`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
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


_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_ESCAPE = re.compile(r"\\(.)")


def split_words(line: str) -> list[str]:
    """A rule line's words, as `shlex.split` gives them for iptables-save's quoting (double
    quotes, backslash escapes inside them) — about ten times faster, which matters for the
    thousands of rules of a large cluster."""
    return [
        _ESCAPE.sub(r"\1", quoted) if bare == "" else bare for quoted, bare in _WORD.findall(line)
    ]


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
            words = split_words(line)
            if words[1] not in current.chains:
                raise ValueError(f"rule for undeclared chain {words[1]}: {line!r}")
            current.chains[words[1]].append(words[2:])
        elif line.startswith("-X "):
            current.deleted.append(line.split()[1])
        elif line == "-S":  # a listing, changes nothing (iptables.WHOLE_TABLE)
            continue
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
    """Canonical order: tables by name; per table, KUBE-NODEPORTS, KUBE-SERVICES, then chains
    by name; the rules of KUBE-SERVICES sorted, the NodePorts jump last (the others' order is
    free)."""
    order = {"KUBE-NODEPORTS": 0, "KUBE-SERVICES": 1}
    sections: dict[str, list[str]] = {}
    table_name = ""
    chains: list[str] = []
    rules: dict[str, list[str]] = {}
    tail: list[str] = []

    def flush() -> None:
        keyed = sorted(chains, key=lambda c: (order.get(c, 2), c))
        out = sections.setdefault(table_name, [table_name])
        out.extend(f":{c} - [0:0]" for c in keyed)
        for c in keyed:
            lines = rules.get(c, [])
            if c == "KUBE-SERVICES":  # no semantic order but its last rule (NodePorts)
                last = [line for line in lines if "-j KUBE-NODEPORTS" in line]
                lines = sorted(line for line in lines if line not in last) + last
            out.extend(lines)
        out.extend(tail)
        out.append("COMMIT")

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table_name = line
            chains, rules, tail = [], {}, []
        elif line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            rules.setdefault(line.split()[1], []).append(line)
        elif line.startswith("-X "):
            tail.append(line)
        elif line == "COMMIT":
            flush()
    return "\n".join(line for name in sorted(sections) for line in sections[name]) + "\n"


@dataclass(slots=True)
class Verdict:
    dnat: list[str] = field(default_factory=list)  # every "ip:port" the packet may be sent to
    masquerade: bool = False
    filter: str = "ACCEPT"  # ACCEPT | DROP | REJECT

    def __str__(self) -> str:
        return ", ".join(self.dnat) if self.dnat else self.filter


@dataclass(frozen=True, slots=True)
class Step:
    """One rule a packet matched, in the words of the kernel's nftables trace.

    `verdict` is continue, jump X, goto X, accept, drop or return; `index` is the rule's place
    in its chain (0 = first). The trace package compares these with what the kernel reports.
    """

    chain: str
    index: int
    verdict: str
    rule: str


@dataclass(frozen=True, slots=True)
class Branch:
    """A random choice (`statistic` rule, the last rule of such a chain, `numgen`) and where
    it leads: `probability` is this rule's own (1.0 for the fall-through rule)."""

    chain: str
    index: int
    probability: float
    targets: tuple[str, ...]  # the "ip:port" DNAT destinations reached through it
    slot: int = 0  # which of a `numgen` rule's choices (0 for an iptables rule)


# the kernel's trace verdict of each built-in target (nft-compat reports the xt verdict)
TARGET_VERDICTS = {
    "ACCEPT": "accept",
    "DROP": "drop",
    "REJECT": "drop",
    "RETURN": "return",
    "DNAT": "accept",
    "SNAT": "accept",
    "MASQUERADE": "accept",
    "REDIRECT": "accept",
    "MARK": "continue",
}


def _in(addr: str, spec: str) -> bool:
    return ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(spec, strict=False)


@dataclass(frozen=True, slots=True)
class IpSet:
    """One ipset as `ipset save` shows it: its type (`hash:ip,port`, `bitmap:port`, ...) and
    its members as written there (`10.96.0.10,tcp:80`, `30345`)."""

    type: str
    members: frozenset[str]

    def member(self, flags: str, src: str, dst: str, proto: str, dport: int | None) -> str | None:
        """The member a packet is looked up as, by the match's direction flags (`dst,dst`);
        None when the packet has no such value (no port)."""
        dims = self.type.partition(":")[2].split(",")
        words: list[str] = []
        for dim, flag in zip(dims, flags.split(","), strict=False):
            if dim in ("ip", "net"):
                words.append(src if flag == "src" else dst)
            elif dim == "port" and flag == "dst" and dport is not None:
                words.append(str(dport) if self.type == "bitmap:port" else f"{proto}:{dport}")
            else:
                return None
        return ",".join(words)


def parse_ipset_save(text: str) -> dict[str, IpSet]:
    """`ipset save` output: set name -> its type and members."""
    types: dict[str, str] = {}
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "create":
            types[words[1]] = words[2]
            members.setdefault(words[1], set())
        elif len(words) >= 3 and words[0] == "add":
            members.setdefault(words[1], set()).add(words[2])
    return {name: IpSet(types.get(name, ""), frozenset(found)) for name, found in members.items()}


@dataclass(slots=True)
class Walk:
    """A packet's state while it crosses the chains of one table (the trace's view).

    `choose` decides random branches: None follows every branch (each endpoint a packet may
    reach is reported, as upstream's tracer does); a set of (chain, rule index) takes exactly
    those branches, as the kernel's random draw did. `recent` holds what `-m recent --rcheck`
    finds (list name -> source address -> seconds since last seen; `--seconds N` matches
    only a source seen within N seconds); `local` the node's own addresses.
    """

    table: Table
    src: str
    dst: str
    dport: int | None
    proto: str = "tcp"
    local: frozenset[str] = frozenset()
    state: str = "NEW"  # the packet's conntrack state: NEW, ESTABLISHED, RELATED
    mark: int = 0
    iif: str | None = None
    oif: str | None = None
    recent: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    choose: frozenset[tuple[str, int, int]] | None = None
    sets: Mapping[str, IpSet] = field(default_factory=dict)  # ipset name -> members
    bridged: bool = False  # it came in through a bridge port (`physdev --physdev-is-in`)
    dnat: list[str] = field(default_factory=list)
    redirect: int | None = None  # REDIRECT --to-ports
    masquerade: bool = False
    snat: str | None = None
    verdict: str | None = None  # ACCEPT, DROP, REJECT when a rule ended the walk
    steps: list[Step] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)

    def is_local(self, addr: str) -> bool:
        return addr in self.local or _in(addr, "127.0.0.0/8")

    def matches(self, rule: Sequence[str]) -> bool:
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
                continue
            if w in ("--comment", "--mode", "--name", "--seconds", "--mask"):
                i += 2
                continue
            if w in ("--set", "--reap", "--rsource", "--rdest"):
                i += 1
                continue
            if w == "-p":
                ok = rule[i + 1] == self.proto
                i += 2
            elif w in ("-s", "-d"):
                ok = _in(self.src if w == "-s" else self.dst, rule[i + 1])
                i += 2
            elif w in ("-i", "-o"):
                ok = (self.iif if w == "-i" else self.oif) == rule[i + 1]
                i += 2
            elif w == "--dport":
                ok = self.dport is not None and int(rule[i + 1]) == self.dport
                i += 2
            elif w in ("--dst-type", "--src-type"):
                ok = self.is_local(self.dst if w == "--dst-type" else self.src)
                i += 2
            elif w == "--ctstate":
                ok = self.state in rule[i + 1].split(",")
                i += 2
            elif w == "--mark":
                value, _, mask = rule[i + 1].partition("/")
                ok = self.mark & int(mask or value, 16) == int(value, 16)
                i += 2
            elif w == "--rcheck":
                name = rule[rule.index("--name") + 1] if "--name" in rule else "DEFAULT"
                age = self.recent.get(name, {}).get(self.src)
                limit = float(rule[rule.index("--seconds") + 1]) if "--seconds" in rule else None
                ok = age is not None and (limit is None or age <= limit)
                i += 1
            elif w == "--match-set":
                found = self.sets.get(rule[i + 1])
                key = (
                    found.member(rule[i + 2], self.src, self.dst, self.proto, self.dport)
                    if found
                    else None
                )
                ok = found is not None and key in found.members
                i += 3
            elif w == "--physdev-is-in":
                ok = self.bridged
                i += 1
            elif w == "--probability":
                i += 2  # a branch: decided by the walk, not here
                continue
            elif w in ("-j", "-g"):
                return True
            else:
                raise ValueError(f"tracer does not understand {w!r} in {' '.join(rule)}")
            if ok == neg:
                return False
            neg = False
        return True

    def _take(self, chain: str, index: int, rule: Sequence[str]) -> bool:
        """Whether a random branch is taken (always, when every branch is followed)."""
        return self.choose is None or (chain, index, 0) in self.choose

    def walk(self, chain: str, depth: int = 0) -> bool:
        """Walk a chain; True when a terminal verdict (DNAT, ACCEPT, DROP, REJECT) ended it."""
        if depth > 50:
            raise ValueError(f"jump loop through {chain}")
        rules = self.table.chains.get(chain, ())
        random_chain = any("statistic" in r for r in rules)
        for index, rule in enumerate(rules):
            if not self.matches(rule):
                continue
            target = _target(rule)
            branch = "statistic" in rule
            if (
                random_chain
                and target is not None
                and target not in TARGET_VERDICTS
                and self._record_branch(chain, index, rule, target, depth)
                and not self._take(chain, index, rule)
            ):
                continue
            text = restore_words(rule)
            if target is None:
                self.steps.append(Step(chain, index, "continue", text))
                continue
            verb = "goto" if "-g" in rule else "jump"
            self.steps.append(
                Step(chain, index, TARGET_VERDICTS.get(target, f"{verb} {target}"), text)
            )
            if target == "RETURN":
                return False
            if target == "MARK":
                idx = rule.index("-j")
                self.mark = apply_mark(self.mark, rule[idx + 2], rule[idx + 3])
                continue
            if target == "DNAT":
                self.dnat.append(rule[rule.index("--to-destination") + 1])
                if branch and self.choose is None:
                    continue
                return True
            if target == "REDIRECT":
                self.redirect = int(rule[rule.index("--to-ports") + 1])
                return True
            if target == "SNAT":
                self.snat = rule[rule.index("--to-source") + 1]
                return True
            if target in ("ACCEPT", "DROP", "REJECT"):
                self.verdict = target
                return True
            if target == "MASQUERADE":
                self.masquerade = True
                return True
            ended = self.walk(target, depth + 1)
            if verb == "goto" or (ended and not (branch and self.choose is None)):
                return ended or verb == "goto"
        return False

    def _record_branch(
        self, chain: str, index: int, rule: Sequence[str], target: str, depth: int
    ) -> bool:
        """Record a jump of a random chain that leads to an endpoint (a DNAT) as a branch;
        False for one that does not (KUBE-SVC's `! -s <cluster CIDR> -j KUBE-MARK-MASQ`
        first rule), which is an ordinary jump, taken whichever endpoint is chosen."""
        probability = 1.0
        if "--probability" in rule:
            probability = float(rule[rule.index("--probability") + 1])
        dry = Walk(self.table, self.src, self.dst, self.dport, self.proto, self.local)
        dry.walk(target, depth + 1)
        if not dry.dnat:
            return False
        self.branches.append(Branch(chain, index, probability, tuple(dry.dnat)))
        return True


def apply_mark(mark: int, op: str, arg: str) -> int:
    """The MARK target as rendered (`--or-mark`, `--xor-mark`, `--set-mark`) and as
    iptables-save prints it back (`--set-xmark value/mask`: clear mask, then xor value)."""
    value_text, _, mask_text = arg.partition("/")
    value = int(value_text, 16)
    if op == "--or-mark":
        return mark | value
    if op == "--xor-mark":
        return mark ^ value
    if op == "--and-mark":
        return mark & value
    mask = int(mask_text, 16) if mask_text else 0xFFFFFFFF
    if op == "--set-mark":
        return (mark & ~mask) | value
    if op == "--set-xmark":
        return (mark & ~mask) ^ value
    raise ValueError(f"tracer does not understand MARK {op} {arg}")


def restore_words(rule: Sequence[str]) -> str:
    """A parsed rule back in iptables-save's words (quoting what has spaces)."""
    return " ".join(f'"{w}"' if " " in w or not w else w for w in rule)


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
    local = frozenset(node_ips)
    nat = tables.get("nat", Table())
    pre = Walk(nat, src, dst, dport, proto, local)
    pre.walk("KUBE-SERVICES")
    result = Verdict(dnat=sorted(set(pre.dnat), key=_addr_key), masquerade=False)
    new_dst = pre.dnat[0].rsplit(":", 1)[0] if pre.dnat else dst
    filt = Walk(tables.get("filter", Table()), src, new_dst, dport, proto, local)
    is_local = filt.is_local(new_dst)
    hooks = ["KUBE-SERVICES"] if from_node else []
    hooks += ["KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"] if is_local and not from_node else []
    hooks += ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD"] if not is_local else []
    for chain in dict.fromkeys(hooks):
        filt.dst = dst if not pre.dnat else new_dst
        if filt.walk(chain) and filt.verdict:
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
