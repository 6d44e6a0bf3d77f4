"""The ruleset as the kernel lists it (`nft -a list ruleset`), as data.

What belongs here: `parse_listing(text)` — every table of a namespace with its handle, its
chains (handle, hook, priority, policy, rules with their handles) and the elements of its sets
and maps — and `table_model(table)`, which loads one nft-native table into the proxy's
`NftModel`, so the packet walks that check podnet's rendered rules (`agent/proxy/
trace_nftables.py`, `agent/policy/trace.py`) walk the live kernel's rules too. Tables written
by iptables-nft (`ip nat`, `ip filter`, ...) are walked from iptables-save text instead; from
the listing they only contribute which base chains exist, at which priority, and the rule
handles the kernel's trace names.

Invariants: pure; the listing's own layout (one declaration per line, two-tab rule indent,
`# handle N` comments) is the only format read; an unknown line inside a set or chain is
skipped (nft prints options such as `flags` or `size` there), never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from podnet.agent.proxy.trace_nftables import HOOK_SPEC, NftModel, hook_priority

_TABLE = re.compile(r"^table (\w+) (\S+) \{(?: # handle (\d+))?$")
_BLOCK = re.compile(
    r"^\t(chain|set|map|counter|quota|flowtable|ct \w+) (\S+) \{(?: # handle (\d+))?$"
)
_HANDLE = re.compile(r"^(.*?)\s*# handle (\d+)$")
_POLICY = re.compile(r"policy (accept|drop);")


@dataclass(slots=True)
class ListedChain:
    name: str
    handle: int
    hook: tuple[str, str, int] | None = None  # (type, hook, priority) of a base chain
    policy: str = "accept"
    rules: list[tuple[str, int]] = field(default_factory=list)  # (text, handle) in order


@dataclass(slots=True)
class ListedTable:
    family: str
    name: str
    handle: int
    chains: dict[str, ListedChain] = field(default_factory=dict)
    elements: dict[str, str] = field(default_factory=dict)  # set/map -> "a, b : c, ..."
    kinds: dict[str, str] = field(default_factory=dict)  # set/map/counter name -> its kind

    @property
    def key(self) -> str:
        """`family name`, as the trace and `nft` name a table."""
        return f"{self.family} {self.name}"

    def rule_index(self, chain: str, handle: int) -> int | None:
        """Position of the rule with this handle in its chain (None: not in the listing)."""
        found = self.chains.get(chain)
        if found is None:
            return None
        for index, (_, rule_handle) in enumerate(found.rules):
            if rule_handle == handle:
                return index
        return None


def parse_listing(text: str) -> list[ListedTable]:
    tables: list[ListedTable] = []
    table: ListedTable | None = None
    block: tuple[str, str] | None = None  # (kind, name) of the open chain/set/map/...
    elements: list[str] | None = None  # lines of an open `elements = {` list
    for line in text.splitlines():
        if elements is not None and block is not None and table is not None:
            elements.append(line.strip())
            if _balanced(" ".join(elements)):
                body = " ".join(elements)
                table.elements[block[1]] = body[body.index("{") + 1 : body.rindex("}")].strip()
                elements = None
            continue
        if m := _TABLE.match(line):
            table = ListedTable(m.group(1), m.group(2), int(m.group(3) or 0))
            tables.append(table)
            block = None
            continue
        if table is None:
            continue
        if line == "}":
            table, block = None, None
            continue
        if m := _BLOCK.match(line):
            kind, name = m.group(1), m.group(2)
            block = (kind, name)
            if kind == "chain":
                table.chains[name] = ListedChain(name, int(m.group(3) or 0))
            else:
                table.kinds[name] = kind
            continue
        if line == "\t}":
            block = None
            continue
        if block is None or not line.startswith("\t\t"):
            continue
        body = line.strip()
        kind, name = block
        if kind == "chain":
            chain = table.chains[name]
            if hook := HOOK_SPEC.search(body):
                chain.hook = (hook.group(1), hook.group(2), hook_priority(*hook.group(3, 4, 5)))
                if policy := _POLICY.search(body):
                    chain.policy = policy.group(1)
                continue
            if body.startswith("comment ") and not chain.rules and _HANDLE.match(body) is None:
                continue
            m = _HANDLE.match(body)
            chain.rules.append((m.group(1), int(m.group(2))) if m else (body, 0))
        elif body.startswith("elements = {"):
            elements = [body]
            if _balanced(body):
                table.elements[name] = body[body.index("{") + 1 : body.rindex("}")].strip()
                elements = None
    return tables


def _balanced(text: str) -> bool:
    return text.count("{") == text.count("}")


_DYNAMIC = re.compile(r"\s+(?:timeout|expires) \S+")


def table_model(table: ListedTable) -> NftModel:
    """The table as an `NftModel` (chains, hooks, rules, set and map elements)."""
    model = NftModel(table=table.key)
    model.apply(f"add table {table.key}")
    for name, chain in table.chains.items():
        model.chains[name] = [text for text, _ in chain.rules]
        if chain.hook is not None:
            model.hooks[name] = chain.hook
    for name, kind in table.kinds.items():
        if kind == "counter":
            model.counters.add(name)
        else:
            model.sets[name] = {}
    for name, body in table.elements.items():
        if name in model.sets and body:
            # dynamic sets (affinity) list each element's timeout and time left: not the key
            model.apply(f"add element {table.key} {name} {{ {_DYNAMIC.sub('', body)} }}")
    return model
