"""nftables mode: table `ip kube-proxy`, verdict maps, one `nft -f -` transaction per sync.

What belongs here: nft naming (upstream `hashAndTruncate`), the per-Service fragment renderer
(`render_service_fragment`), `NftablesPlanner` (remembers what the last successful transaction
installed and emits full or element-diff transactions) and the convenience `render_nftables`.
Reference: kube-proxy.md §2; the layout and its measurements are explained in README.md.

Layout (why it differs from upstream for most services): nft 1.0.6 resolves chain names with
a cost that grows with the number of chains in the table, so a transaction with one chain per
service and per endpoint (10k services x 3 endpoints = 40k chains) takes ~42 s here, and even
one chain per service (10k chains) ~15 s. So:
- "simple" services (no ClientIP affinity, Cluster traffic policies) get **no chain of their
  own**: `service-ips` / `service-nodeports` send them to one shared chain per endpoint count N
  (`lb-cluster-N`, `lb-external-N`, `lb-nodeport-N`), which masquerades as upstream would and
  picks the endpoint with one rule per protocol P (tcp, udp, sctp):
  `meta l4proto P dnat ip addr . port to ip daddr . P dport . numgen random mod N map
  @service-endpoints-P` (the map holds, per service address, slots 0..N-1 → endpoint ip . port).
  The maps are per protocol, keyed by `P dport`, never by the generic `meta l4proto . th
  dport`: nft 1.0.6 rebuilds a map's `typeof` data (`ip daddr . th dport`) from the kernel's
  userdata when the map already exists and evaluates it in the referencing rule's protocol
  context, where `th` conflicts with the rule's l4proto ("conflicting protocols specified: tcp
  vs. th"). So any transaction that adds such a rule to an existing table (a partial sync
  creating a new `lb-*-N` chain, every full sync after the first) was refused. A pinned
  `P dport` agrees with `meta l4proto P` in both cases; full and partial syncs render the same
  rule text (`pick_chains`).
  Hairpin traffic (an endpoint reaching itself) is masqueraded in `masquerading` through the
  `hairpin-endpoints` set ({ep . ep}), since no per-endpoint chain exists to do it.
- services with ClientIP affinity or a Local traffic policy keep **upstream's exact layout**
  (`service-`/`local-`/`external-`/`endpoint-` chains, `numgen random mod N vmap`, dynamic
  `affinity-` sets with timeout), because affinity needs per-endpoint state.

Invariants:
- Pure: text out. Every transaction is all-or-nothing (`nft -f -`).
- A partial sync touches only changed Services: element adds/deletes (a changed value is
  delete + add), their chains re-created (add + flush + rules) and stale ones deleted after the
  elements that referenced them. Shared elements (hairpin pairs, lb chains) are refcounted.
- The first full sync after start (or after a failure) deletes and re-creates the table;
  later full syncs flush and refill it, keeping affinity sets (their clients stay sticky).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.model import Endpoint, ServicePort, ServicePortName, categorize
from podnet.kernel.names import hashed

TABLE = "ip kube-proxy"
NAME_MAX = 240  # upstream chainNameBaseLengthMax


def hash_and_truncate(name: str) -> str:
    """Upstream's hashAndTruncate: 8 base32 characters of sha256, then the readable name."""
    full = f"{hashed(name, 8)}-{name}"
    return full if len(full) <= NAME_MAX else full[: NAME_MAX - 3] + "..."


def service_base(spn: ServicePortName) -> str:
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{spn.protocol}/{spn.port}")


def endpoint_base(spn: ServicePortName, ep: Endpoint) -> str:
    return hash_and_truncate(
        f"{spn.namespace}/{spn.name}/{spn.protocol}/{spn.port}__{ep.ip}/{ep.port}"
    )


# One set/map element: (set or map, key, value or "" for sets, comment or ""). A plain tuple:
# 100k of them are built per full sync, and tuples are created, hashed and sorted in C.
Element = tuple[str, str, str, str]


def element_statements(verb: str, elements: Iterable[Element], table: str = TABLE) -> list[str]:
    """One `add|delete element` statement per set/map, one element per line (nft parses a
    batched statement about twice as fast as one statement per element)."""
    grouped: dict[str, list[str]] = {}
    for container, key, value, comment in elements:
        items = grouped.get(container)
        if items is None:
            items = grouped[container] = []
        if verb == "delete":
            items.append(key)
        elif comment:
            items.append(
                f'{key} comment "{comment}" : {value}' if value else f'{key} comment "{comment}"'
            )
        else:
            items.append(f"{key} : {value}" if value else key)
    return [
        f"{verb} element {table} {name} {{\n\t" + ",\n\t".join(items) + "\n}"
        for name, items in grouped.items()
    ]


@dataclass(frozen=True, slots=True)
class Fragment:
    """What one Service puts into the table."""

    chains: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (chain, rules) in order
    affinity_sets: tuple[tuple[str, int], ...] = ()  # (set, timeout seconds)
    elements: tuple[Element, ...] = ()
    picks: frozenset[int] = frozenset()  # endpoint counts N whose lb-*-N chains it uses


def render_service_fragment(
    ports: Sequence[ServicePort],
    endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
    cfg: ProxyConfig,
) -> Fragment:
    chains: list[tuple[str, tuple[str, ...]]] = []
    sets: list[tuple[str, int]] = []
    elements: list[Element] = []
    picks: set[int] = set()
    cluster_ips: set[str] = set()
    masq_src = "" if cfg.masquerade_all else f"ip saddr != {cfg.cluster_cidr} "
    for sp in ports:
        name = str(sp.name)
        proto = sp.protocol
        cats = categorize(sp, endpoints.get(sp.name, ()))
        cluster_ips.add(sp.cluster_ip)
        reject = "goto reject-chain" if not cats.has_any else "drop"
        key = f"{sp.cluster_ip} . {proto} . {sp.port}"
        ext_keys = [f"{ip} . {proto} . {sp.port}" for ip in sp.external_ips]
        np_key = f"{proto} . {sp.node_port}"
        # keys of the per-protocol endpoint maps: the protocol is in the map's name
        slot_keys = [f"{ip} . {sp.port}" for ip in (sp.cluster_ip, *sp.external_ips)]
        simple = not (sp.affinity_seconds or sp.internal_local or sp.external_local)
        if simple:
            eps = cats.cluster
            n = len(eps)
            if not n:
                for k in (key, *ext_keys):
                    elements.append(("no-endpoint-services", k, reject, name))
                if sp.node_port:
                    elements.append(("no-endpoint-nodeports", np_key, reject, name))
                continue
            picks.add(n)
            elements.append(("service-ips", key, f"goto lb-cluster-{n}", ""))
            for k in ext_keys:
                elements.append(("service-ips", k, f"goto lb-external-{n}", ""))
            for k in slot_keys:
                elements += [
                    (f"service-endpoints-{proto}", f"{k} . {i}", f"{ep.ip} . {ep.port}", "")
                    for i, ep in enumerate(eps)
                ]
            if sp.node_port:
                elements.append(("service-nodeports", np_key, f"goto lb-nodeport-{n}", ""))
                elements += [
                    (
                        f"nodeport-endpoints-{proto}",
                        f"{sp.node_port} . {i}",
                        f"{ep.ip} . {ep.port}",
                        "",
                    )
                    for i, ep in enumerate(eps)
                ]
            elements += [("hairpin-endpoints", f"{ep.ip} . {ep.ip}", "", "") for ep in eps]
            continue
        # upstream layout: per-service and per-endpoint chains
        base = service_base(sp.name)
        svc_c, local_c, ext_c = f"service-{base}", f"local-{base}", f"external-{base}"
        internal_chain = local_c if sp.internal_local else svc_c
        has_endpoints = bool(cats.reachable)
        has_internal = bool(cats.local) if sp.internal_local else has_endpoints
        has_external = bool(cats.local) if sp.external_local else has_endpoints
        uses_cluster = bool(cats.cluster) and sp.uses_cluster_endpoints
        uses_local = bool(cats.local) and sp.uses_local_endpoints
        uses_external = has_endpoints and sp.externally_accessible
        if has_internal:
            elements.append(("service-ips", key, f"goto {internal_chain}", ""))
        else:
            elements.append(("no-endpoint-services", key, reject, name))
        for k in ext_keys:
            if uses_external:
                elements.append(("service-ips", k, f"goto {ext_c}", ""))
            if not has_external:
                elements.append(("no-endpoint-services", k, reject, name))
        if sp.node_port:
            if uses_external:
                elements.append(("service-nodeports", np_key, f"goto {ext_c}", ""))
            if not has_external:
                elements.append(("no-endpoint-nodeports", np_key, reject, name))
        for chain, eps, used in (
            (svc_c, cats.cluster, uses_cluster),
            (local_c, cats.local, uses_local),
        ):
            if not used:
                continue
            rules = []
            if chain == internal_chain:
                rules.append(f"ip daddr {sp.cluster_ip} {masq_src}jump mark-for-masquerade")
            if sp.affinity_seconds:
                rules += [
                    f"ip saddr @affinity-{endpoint_base(sp.name, ep)} "
                    f"goto endpoint-{endpoint_base(sp.name, ep)}"
                    for ep in eps
                ]
            vmap = " , ".join(
                f"{i} : goto endpoint-{endpoint_base(sp.name, ep)}" for i, ep in enumerate(eps)
            )
            rules.append(f"numgen random mod {len(eps)} vmap {{ {vmap} }}")
            chains.append((chain, tuple(rules)))
        if uses_external:
            if not sp.external_local:
                rules = ["jump mark-for-masquerade", f"goto {svc_c}"]
            else:
                rules = [
                    f"ip saddr {cfg.cluster_cidr} goto {svc_c}",
                    "fib saddr type local jump mark-for-masquerade",
                    f"fib saddr type local goto {svc_c}",
                ]
                if uses_local:
                    rules.append(f"goto {local_c}")
            chains.append((ext_c, tuple(rules)))
        for ep in cats.reachable:
            eb = endpoint_base(sp.name, ep)
            rules = [f"ip saddr {ep.ip} jump mark-for-masquerade"]
            if sp.affinity_seconds:
                sets.append((f"affinity-{eb}", sp.affinity_seconds))
                rules.append(f"update @affinity-{eb} {{ ip saddr }}")
            rules.append(f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}")
            chains.append((f"endpoint-{eb}", tuple(rules)))
    elements += [("cluster-ips", ip, "", "") for ip in sorted(cluster_ips)]
    return Fragment(tuple(chains), tuple(sets), tuple(elements), frozenset(picks))


PROTOCOLS = ("tcp", "udp", "sctp")  # one endpoint map per protocol (see the module docstring)

MAPS = (
    ("cluster-ips", "type ipv4_addr", "Active ClusterIPs"),
    ("nodeport-ips", "type ipv4_addr", "IPs that accept NodePort traffic"),
    (
        "hairpin-endpoints",
        "type ipv4_addr . ipv4_addr",
        "endpoint . endpoint: a pod reaching itself through a service (hairpin)",
    ),
    (
        "no-endpoint-nodeports",
        "type inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
    (
        "no-endpoint-services",
        "type ipv4_addr . inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to services with no endpoints",
    ),
    (
        "service-ips",
        "type ipv4_addr . inet_proto . inet_service : verdict",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    ),
    ("service-nodeports", "type inet_proto . inet_service : verdict", "NodePort traffic"),
    *(
        (
            f"service-endpoints-{proto}",
            f"typeof ip daddr . {proto} dport . numgen random mod 1 : ip daddr . {proto} dport",
            f"{proto} service address . slot -> endpoint, for services without chains of their own",
        )
        for proto in PROTOCOLS
    ),
    *(
        (
            f"nodeport-endpoints-{proto}",
            f"typeof {proto} dport . numgen random mod 1 : ip daddr . {proto} dport",
            f"{proto} nodeport . slot -> endpoint, for services without chains of their own",
        )
        for proto in PROTOCOLS
    ),
)

BASE_CHAINS = (
    ("filter-forward", "type filter hook forward priority 0"),
    ("filter-input", "type filter hook input priority 0"),
    ("filter-output", "type filter hook output priority 0"),
    ("nat-output", "type nat hook output priority -100"),
    ("nat-postrouting", "type nat hook postrouting priority 100"),
    ("nat-prerouting", "type nat hook prerouting priority -100"),
)
HELPER_CHAINS = (
    "cluster-ips-check",
    "mark-for-masquerade",
    "masquerading",
    "nodeport-endpoints-check",
    "reject-chain",
    "services",
    "service-endpoints-check",
)


def _static_rules(cfg: ProxyConfig) -> list[tuple[str, str]]:
    mark = cfg.mark
    nodeports = (
        "ip daddr @nodeport-ips" if cfg.node_ips else "fib daddr type local ip daddr != 127.0.0.0/8"
    )
    return [
        (
            "cluster-ips-check",
            'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        ),
        (
            "cluster-ips-check",
            f"ip daddr {{ {cfg.service_cidr} }} drop comment "
            '"Drop traffic to unallocated ClusterIPs"',
        ),
        ("filter-forward", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-input", "ct state new jump nodeport-endpoints-check"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump cluster-ips-check"),
        ("mark-for-masquerade", f"mark set mark or {mark}"),
        (
            "masquerading",
            "ct status dnat ip saddr . ip daddr @hairpin-endpoints jump mark-for-masquerade",
        ),
        ("masquerading", f"mark and {mark} == 0 return"),
        ("masquerading", f"mark set mark xor {mark}"),
        ("masquerading", "masquerade fully-random"),
        ("nat-output", "jump services"),
        ("nat-postrouting", "jump masquerading"),
        ("nat-prerouting", "jump services"),
        (
            "nodeport-endpoints-check",
            f"{nodeports} meta l4proto . th dport vmap @no-endpoint-nodeports",
        ),
        ("reject-chain", "reject"),
        ("services", "ip daddr . meta l4proto . th dport vmap @service-ips"),
        ("services", f"{nodeports} meta l4proto . th dport vmap @service-nodeports"),
        (
            "service-endpoints-check",
            "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        ),
    ]


def pick_chains(n: int, cfg: ProxyConfig) -> list[tuple[str, tuple[str, ...]]]:
    """The shared chains that pick one of N endpoints for simple services: the same text in
    full and partial syncs. One dnat rule per protocol, each reading its own map."""
    masq_src = "" if cfg.masquerade_all else f"ip saddr != {cfg.cluster_cidr} "

    def pick(key: str, table: str) -> tuple[str, ...]:
        return tuple(
            f"meta l4proto {proto} dnat ip addr . port to {key}{proto} dport"
            f" . numgen random mod {n} map @{table}-{proto}"
            for proto in PROTOCOLS
        )

    return [
        (
            f"lb-cluster-{n}",
            (f"{masq_src}jump mark-for-masquerade", *pick("ip daddr . ", "service-endpoints")),
        ),
        (
            f"lb-external-{n}",
            ("jump mark-for-masquerade", *pick("ip daddr . ", "service-endpoints")),
        ),
        (
            f"lb-nodeport-{n}",
            ("jump mark-for-masquerade", *pick("", "nodeport-endpoints")),
        ),
    ]


@dataclass(slots=True)
class _Transaction:
    """Statements grouped so every object exists before anything refers to it."""

    declare: list[str] = field(default_factory=list)  # add set / add chain [+ flush]
    rules: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)  # element delete statements
    adds: list[str] = field(default_factory=list)  # element add statements
    drops: list[str] = field(default_factory=list)  # stale chains and sets, last

    def chain(self, chain: str, rules: Iterable[str], flush: bool) -> None:
        self.declare.append(f"add chain {TABLE} {chain}")
        if flush:
            self.declare.append(f"flush chain {TABLE} {chain}")
        self.rules += [f"add rule {TABLE} {chain} {rule}" for rule in rules]

    def affinity_set(self, name: str, timeout: int) -> None:
        self.declare.append(
            f"add set {TABLE} {name} {{ type ipv4_addr ; "
            f"flags dynamic,timeout ; timeout {timeout}s ; }}"
        )

    def text(self) -> str:
        lines = self.declare + self.rules + self.deletes + self.adds + self.drops
        return "\n".join(lines) + ("\n" if lines else "")


@dataclass(slots=True)
class NftablesPlanner:
    """Turns fragments into transactions; remembers what the last applied one installed."""

    cfg: ProxyConfig
    installed: dict[str, Fragment] = field(default_factory=dict)
    installed_picks: Counter[int] = field(default_factory=Counter)
    elements: Counter[Element] = field(default_factory=Counter)
    table_known: bool = False  # False: next full sync deletes and re-creates the table

    def full(self, fragments: Mapping[str, Fragment]) -> str:
        tx = _Transaction()
        head = f'add table {TABLE} {{ comment "rules for kube-proxy" ; }}'
        tx.declare.append(head)
        if not self.table_known:
            tx.declare += [f"delete table {TABLE}", head]
        flush = self.table_known
        for name, spec, comment in MAPS:
            kind = "map" if ":" in spec else "set"
            tx.declare.append(f'add {kind} {TABLE} {name} {{ {spec} ; comment "{comment}" ; }}')
            if flush:
                tx.declare.append(f"flush {kind} {TABLE} {name}")
        for chain, spec in BASE_CHAINS:
            tx.declare.append(f"add chain {TABLE} {chain} {{ {spec} ; }}")
            if flush:
                tx.declare.append(f"flush chain {TABLE} {chain}")
        for chain in HELPER_CHAINS:
            tx.chain(chain, (), flush)
        tx.rules += [f"add rule {TABLE} {chain} {rule}" for chain, rule in _static_rules(self.cfg)]
        elements: Counter[Element] = Counter(
            ("nodeport-ips", ip, "", "") for ip in self.cfg.node_ips
        )
        picks: Counter[int] = Counter()
        for frag in fragments.values():
            picks.update(frag.picks)
        for n in sorted(picks):
            for chain, rules in pick_chains(n, self.cfg):
                tx.chain(chain, rules, flush)
        active_chains: set[str] = set()
        active_sets: set[str] = set()
        for key in sorted(fragments):
            frag = fragments[key]
            for set_name, timeout in frag.affinity_sets:
                active_sets.add(set_name)
                tx.affinity_set(set_name, timeout)
            for chain, rules in frag.chains:
                active_chains.add(chain)
                tx.chain(chain, rules, flush)
            elements.update(frag.elements)
        tx.adds += element_statements("add", sorted(elements))
        if flush:
            old_chains, old_sets = self._installed_objects()
            for n in sorted(set(self.installed_picks) - set(picks)):
                old_chains |= {c for c, _ in pick_chains(n, self.cfg)}
            stale = sorted(old_chains - active_chains)
            tx.drops += [f"flush chain {TABLE} {c}" for c in stale]
            tx.drops += [f"delete chain {TABLE} {c}" for c in stale]
            tx.drops += [f"delete set {TABLE} {s}" for s in sorted(old_sets - active_sets)]
        return tx.text()

    def _installed_objects(self) -> tuple[set[str], set[str]]:
        chains = {c for f in self.installed.values() for c, _ in f.chains}
        sets = {s for f in self.installed.values() for s, _ in f.affinity_sets}
        return chains, sets

    def partial(self, fragments: Mapping[str, Fragment], changed: Set[str]) -> str:
        """Element diffs and chain rewrites for the changed Services only."""
        tx = _Transaction()
        elements = Counter(self.elements)
        created: set[int] = set()
        drop_chains: list[str] = []
        removed: list[Element] = []
        added: list[Element] = []
        for key in sorted(changed):
            old = self.installed.get(key, Fragment())
            new = fragments.get(key, Fragment())
            for n in sorted(new.picks - old.picks):
                if self.installed_picks[n] <= 0 and n not in created:
                    created.add(n)
                    for chain, rules in pick_chains(n, self.cfg):
                        tx.chain(chain, rules, flush=True)
            old_sets = dict(old.affinity_sets)
            new_sets = dict(new.affinity_sets)
            for set_name, timeout in new.affinity_sets:
                # a changed timeout of an existing set waits for the next table re-creation
                if set_name not in old_sets:
                    tx.affinity_set(set_name, timeout)
            old_chains = dict(old.chains)
            new_chains = dict(new.chains)
            for chain, rules in new.chains:
                if old_chains.get(chain) != rules:
                    tx.chain(chain, rules, flush=chain in old_chains)
            drop_chains += [c for c in old_chains if c not in new_chains]
            tx.drops += [f"delete set {TABLE} {s}" for s in old_sets if s not in new_sets]
            old_els, new_els = set(old.elements), set(new.elements)
            for el in sorted(old_els - new_els):
                elements[el] -= 1
                if elements[el] <= 0:
                    del elements[el]
                    removed.append(el)
            for el in sorted(new_els - old_els):
                if elements[el] <= 0:
                    added.append(el)
                elements[el] += 1
        # a changed value is delete + add of the same key: deletes go first
        tx.deletes = element_statements("delete", removed)
        tx.adds = element_statements("add", added)
        # stale chains go after the elements that referred to them, before stale sets
        drops = [f"flush chain {TABLE} {c}" for c in drop_chains]
        drops += [f"delete chain {TABLE} {c}" for c in drop_chains]
        tx.drops = drops + tx.drops
        return tx.text()

    def committed(self, fragments: Mapping[str, Fragment]) -> None:
        """Record that the transaction for these fragments was applied."""
        self.installed = dict(fragments)
        self.installed_picks = Counter()
        self.elements = Counter()
        for frag in fragments.values():
            self.installed_picks.update(frag.picks)
            self.elements.update(frag.elements)
        self.table_known = True

    def committed_partial(self, fragments: Mapping[str, Fragment], changed: Set[str]) -> None:
        for key in changed:
            old = self.installed.pop(key, Fragment())
            self.installed_picks.subtract(old.picks)
            self.elements.subtract(old.elements)
            new = fragments.get(key)
            if new is not None:
                self.installed[key] = new
                self.installed_picks.update(new.picks)
                self.elements.update(new.elements)
        self.elements = +self.elements
        self.installed_picks = +self.installed_picks

    def forget(self) -> None:
        """After a failed transaction nothing is known: the next full sync starts over."""
        self.installed.clear()
        self.installed_picks.clear()
        self.elements.clear()
        self.table_known = False


def render_fragments(
    services: Mapping[ServicePortName, ServicePort],
    endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
    cfg: ProxyConfig,
) -> dict[str, Fragment]:
    grouped: dict[str, list[ServicePort]] = {}
    for spn in sorted(services):
        grouped.setdefault(spn.service, []).append(services[spn])
    return {k: render_service_fragment(v, endpoints, cfg) for k, v in grouped.items()}


def render_nftables(
    services: Mapping[ServicePortName, ServicePort],
    endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
    cfg: ProxyConfig,
) -> str:
    """The first full-sync transaction for these services (what a fresh start applies)."""
    return NftablesPlanner(cfg).full(render_fragments(services, endpoints, cfg))
