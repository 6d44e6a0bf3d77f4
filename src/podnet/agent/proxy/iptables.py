"""iptables mode: upstream kube-proxy's chains rendered as `iptables-restore` text.

What belongs here: chain naming (`KUBE-SVC-`/`KUBE-SVL-`/`KUBE-EXT-`/`KUBE-SEP-` + 16 base32
characters of sha256, exactly upstream's `portProtoHash`), the per-Service fragment renderer
(`render_service_rules`), the assembler that turns fragments into one restore input
(`assemble_iptables`), the convenience `render_iptables` over whole maps, and the jump rules
from the built-in chains (`JUMP_RULES`). Reference: kube-proxy.md §1.

Invariants:
- Pure: text out, no I/O. One restore input holds `*nat` then `*filter`, each `COMMIT`ted,
  produced in chunks as the Services' fragments come (`restore_chunks`).
- KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS, KUBE-FORWARD, KUBE-POSTROUTING and
  KUBE-MARK-MASQ are written in full on every sync; per-service chains only on a full sync or
  when their Service (or its endpoints) changed (KEP-3453). Chains that were ours and are no
  longer active are flushed and deleted (`:C - [0:0]` + `-X C`).
- Within a chain, rule order is semantic (probabilities are conditional: rule i of n fires with
  1/(n-i)); chain order is not.
- A full sync's `*nat` lists the table (`-S`, `WHOLE_TABLE`) right after declaring the
  shared chains. With `--noflush`, iptables 1.8's nf_tables backend records every chain a
  command names in a sorted linked list (to fetch only those chains), so each command walks
  that list: quadratic, 146 s for 10k Services. Once a command has named no chain it fetches
  the whole table instead and stops keeping the list: the same restore takes 1-3 s. `-S` is
  the one such command that changes nothing (it prints the table, which the runner
  discards); the legacy backend accepts it too. After it, rules can no longer go into a
  built-in chain the table lacks, so missing jump rules are inserted before it. Partial
  syncs name few chains, and listing 10k Services' rules costs more than it saves there;
  but their nat KUBE-SERVICES (whole on every sync) jumps to 10k chains, so its rules come
  in descending order of their targets: each target then goes in at the list's head, and a
  partial sync at 10k Services loads in 0.15 s of CPU instead of 1 s. (Order within
  KUBE-SERVICES is not semantic: each rule matches its own address and port; upstream
  writes them in Go map order. Only the NodePorts rule must be last, and is.)
- Not rendered (podnet has no such features): LoadBalancer IPs / source ranges (KUBE-FW-,
  KUBE-PROXY-FIREWALL), localhost NodePorts (KUBE-FIREWALL, nfacct). Hence the NodePort tail
  rule carries `! -d 127.0.0.0/8`, as upstream writes it with localhost NodePorts off.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, replace

from podnet.agent.proxy.config import LARGE_CLUSTER_ENDPOINTS, ProxyConfig
from podnet.agent.proxy.model import Endpoint, ServicePort, ServicePortName, categorize
from podnet.kernel.names import hashed

SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
NODEPORTS = "KUBE-NODEPORTS"
FORWARD = "KUBE-FORWARD"
POSTROUTING = "KUBE-POSTROUTING"
MARK_MASQ = "KUBE-MARK-MASQ"
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
FILTER_CHAINS = (SERVICES, EXTERNAL_SERVICES, FORWARD, NODEPORTS)
NAT_CHAINS = (SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ)
WHOLE_TABLE = "-S"  # see the module docstring: a chainless first command (nf_tables backend)
MANY_CHAINS = 1000  # where other restores of ours start with WHOLE_TABLE


@dataclass(frozen=True, slots=True)
class JumpRule:
    table: str
    chain: str  # built-in chain
    args: tuple[str, ...]  # match + `-j TARGET`, as for `iptables -I chain ...`


_NEW = ("-m", "conntrack", "--ctstate", "NEW")


def _jump(table: str, chain: str, comment: str, target: str, new: bool = False) -> JumpRule:
    return JumpRule(
        table, chain, (*(_NEW if new else ()), "-m", "comment", "--comment", comment, "-j", target)
    )


# upstream iptablesJumpChains minus the load-balancer firewall (no LoadBalancer support)
JUMP_RULES: tuple[JumpRule, ...] = (
    _jump(
        "filter",
        "INPUT",
        "kubernetes externally-visible service portals",
        EXTERNAL_SERVICES,
        new=True,
    ),
    _jump(
        "filter",
        "FORWARD",
        "kubernetes externally-visible service portals",
        EXTERNAL_SERVICES,
        new=True,
    ),
    _jump("filter", "INPUT", "kubernetes health check service ports", NODEPORTS),
    _jump("filter", "FORWARD", "kubernetes service portals", SERVICES, new=True),
    _jump("filter", "OUTPUT", "kubernetes service portals", SERVICES, new=True),
    _jump("filter", "FORWARD", "kubernetes forwarding rules", FORWARD),
    _jump("nat", "OUTPUT", "kubernetes service portals", SERVICES),
    _jump("nat", "PREROUTING", "kubernetes service portals", SERVICES),
    _jump("nat", "POSTROUTING", "kubernetes postrouting rules", POSTROUTING),
)


def port_proto_hash(name: ServicePortName) -> str:
    return hashed(str(name) + name.protocol, 16)


def service_chains(name: ServicePortName) -> tuple[str, str, str]:
    """The KUBE-SVC-, KUBE-SVL- and KUBE-EXT- chains of one service port (one hash)."""
    h = port_proto_hash(name)
    return "KUBE-SVC-" + h, "KUBE-SVL-" + h, "KUBE-EXT-" + h


def endpoint_chain(name: ServicePortName, ep: Endpoint) -> str:
    return "KUBE-SEP-" + hashed(str(name) + name.protocol + ep.address, 16)


def probability(n: int) -> str:
    return f"{1.0 / n:0.10f}"


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"' if " " in text else f"-m comment --comment {text}"


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """The iptables lines one Service contributes; shared chains get whole lines."""

    filter_services: tuple[str, ...] = ()
    filter_external: tuple[str, ...] = ()
    filter_nodeports: tuple[str, ...] = ()
    nat_services: tuple[str, ...] = ()
    nat_nodeports: tuple[str, ...] = ()
    nat_chains: tuple[str, ...] = ()  # the Service's own chains (SVC/SVL/EXT/SEP)
    # their `-A` lines, joined by newlines: one string, not one per line (a Service of 30
    # endpoints has ~95 lines, ~10 KB)
    nat_rules: str = ""

    def kept(self) -> ServiceRules:
        """What a proxier keeps of a Service between syncs: everything but its own chains'
        rules, which a sync writes only for a Service it renders again (every one on a full
        sync, the changed ones on a partial one). Kept for 1,000 Services of 30 endpoints
        those were 11 MB of the real agent (memory report, 1,000 nodes / 30,000 pods)."""
        return replace(self, nat_rules="") if self.nat_rules else self


def render_service_rules(
    ports: Sequence[ServicePort],
    endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
    cfg: ProxyConfig,
    large_cluster: bool = False,
) -> ServiceRules:
    """All rules of one Service's ports, in upstream syncProxyRules order."""
    f_svc: list[str] = []
    f_ext: list[str] = []
    f_np: list[str] = []
    n_svc: list[str] = []
    n_np: list[str] = []
    chains: list[str] = []
    rules: list[str] = []

    def svc_comment(text: str) -> str:
        return "" if large_cluster else _comment(text) + " "

    for sp in ports:
        name = str(sp.name)
        proto = sp.protocol
        cats = categorize(sp, endpoints.get(sp.name, ()))
        svc_c, svl_c, ext_c = service_chains(sp.name)
        seps = {ep: endpoint_chain(sp.name, ep) for ep in cats.reachable}  # one hash each
        internal_chain = svl_c if sp.internal_local else svc_c
        external_policy_chain = svl_c if sp.external_local else svc_c
        external_target = ext_c if sp.externally_accessible else svc_c
        uses_cluster = bool(cats.cluster) and sp.uses_cluster_endpoints
        uses_local = bool(cats.local) and sp.uses_local_endpoints
        uses_external = bool(cats.reachable) and sp.externally_accessible
        has_endpoints = bool(cats.reachable)
        has_internal = bool(cats.local) if sp.internal_local else has_endpoints
        has_external = bool(cats.local) if sp.external_local else has_endpoints
        int_target, int_comment = "DROP", f"{name} has no local endpoints"
        ext_target, ext_comment = "DROP", f"{name} has no local endpoints"
        if not cats.has_any:
            int_target, int_comment = "REJECT", f"{name} has no endpoints"
            ext_target, ext_comment = "REJECT", f"{name} has no endpoints"
        pmatch = f"-m {proto} -p {proto}"
        cip_match = (
            f"{_comment(f'{name} cluster IP')} {pmatch} -d {sp.cluster_ip} --dport {sp.port}"
        )

        if has_internal:
            n_svc.append(f"-A {SERVICES} {cip_match} -j {internal_chain}")
        else:
            f_svc.append(
                f"-A {SERVICES} {_comment(int_comment)} {pmatch} -d {sp.cluster_ip} "
                f"--dport {sp.port} -j {int_target}"
            )
        for ext_ip in sp.external_ips:
            if has_endpoints:
                n_svc.append(
                    f"-A {SERVICES} {_comment(f'{name} external IP')} {pmatch} "
                    f"-d {ext_ip} --dport {sp.port} -j {external_target}"
                )
            if not has_external:
                f_ext.append(
                    f"-A {EXTERNAL_SERVICES} {_comment(ext_comment)} {pmatch} "
                    f"-d {ext_ip} --dport {sp.port} -j {ext_target}"
                )
        if sp.node_port:
            if has_endpoints:
                n_np.append(
                    f"-A {NODEPORTS} {_comment(name)} {pmatch} --dport {sp.node_port} "
                    f"-j {external_target}"
                )
            if not has_external:
                f_ext.append(
                    f"-A {EXTERNAL_SERVICES} {_comment(ext_comment)} -m addrtype "
                    f"--dst-type LOCAL {pmatch} --dport {sp.node_port} -j {ext_target}"
                )
        if sp.health_check_node_port:
            f_np.append(
                f"-A {NODEPORTS} {_comment(f'{name} health check node port')} "
                f"-m tcp -p tcp --dport {sp.health_check_node_port} -j ACCEPT"
            )

        # the Service's own chains
        if has_internal:
            if cfg.masquerade_all:
                rules.append(f"-A {internal_chain} {cip_match} -j {MARK_MASQ}")
            else:
                rules.append(
                    f"-A {internal_chain} {cip_match} ! -s {cfg.cluster_cidr} -j {MARK_MASQ}"
                )
        if uses_external:
            chains.append(ext_c)
            if not sp.external_local:
                rules.append(
                    f"-A {ext_c} "
                    f"{_comment(f'masquerade traffic for {name} external destinations')}"
                    f" -j {MARK_MASQ}"
                )
            else:
                rules.append(
                    f"-A {ext_c} "
                    f"{_comment(f'pod traffic for {name} external destinations')} "
                    f"-s {cfg.cluster_cidr} -j {svc_c}"
                )
                rules.append(
                    f"-A {ext_c} {_comment(f'masquerade LOCAL traffic for {name} external destinations')} "  # noqa: E501
                    f"-m addrtype --src-type LOCAL -j {MARK_MASQ}"
                )
                rules.append(
                    f"-A {ext_c} {_comment(f'route LOCAL traffic for {name} external destinations')} "  # noqa: E501
                    f"-m addrtype --src-type LOCAL -j {svc_c}"
                )
            if has_external:
                rules.append(f"-A {ext_c} -j {external_policy_chain}")
        for chain, eps, used in (
            (svc_c, cats.cluster, uses_cluster),
            (svl_c, cats.local, uses_local),
        ):
            if not used:
                continue
            chains.append(chain)
            if sp.affinity_seconds:
                for ep in eps:
                    sep = seps[ep]
                    rules.append(
                        f"-A {chain} {svc_comment(f'{name} -> {ep.address}')}"
                        f"-m recent --name {sep} --rcheck --seconds "
                        f"{sp.affinity_seconds} --reap -j {sep}"
                    )
            for i, ep in enumerate(eps):
                stat = ""
                if i < len(eps) - 1:
                    stat = f"-m statistic --mode random --probability {probability(len(eps) - i)} "
                rules.append(
                    f"-A {chain} {svc_comment(f'{name} -> {ep.address}')}{stat}-j {seps[ep]}"
                )
        for ep, sep in seps.items():
            chains.append(sep)
            rules.append(f"-A {sep} {svc_comment(name)}-s {ep.ip} -j {MARK_MASQ}")
            recent = f"-m recent --name {sep} --set " if sp.affinity_seconds else ""
            rules.append(
                f"-A {sep} {svc_comment(name)}{recent}{pmatch} -j DNAT "
                f"--to-destination {ep.address}"
            )
    # rules of a chain must stay together even when a Service has several ports
    ordered: list[str] = []
    for chain in chains:
        prefix = f"-A {chain} "
        ordered.extend(r for r in rules if r.startswith(prefix))
    return ServiceRules(
        tuple(f_svc),
        tuple(f_ext),
        tuple(f_np),
        tuple(n_svc),
        tuple(n_np),
        tuple(chains),
        "\n".join(ordered),
    )


def is_service_chain(chain: str) -> bool:
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


def restore_chunks(
    fragments: Iterable[tuple[str, ServiceRules]],
    cfg: ProxyConfig,
    changed: Set[str] | None = None,
    existing_chains: Iterable[str] = (),
    jumps: Mapping[str, Sequence[str]] | None = None,
    chunk_lines: int = 2000,
) -> Iterator[str]:
    """One `iptables-restore --noflush` input for all Services, as chunks of whole lines.

    `fragments`: (`ns/name`, its rules) in key order, consumed as the chunks are; a caller
    rendering them lazily overlaps its rendering with the tool's parsing (`IptablesRunner`
    writes each chunk as it comes). Hence `*nat` comes first, each Service's own chains
    declared just before their rules, and `*filter` (a few lines per Service, known once
    every fragment was seen) last. `changed=None` is a full sync; otherwise only those
    Services' own chains are rewritten. `existing_chains` are chains found in the kernel (or
    written before); ours that are no longer active get flushed and deleted. `jumps`: per
    table, `-I` lines for missing jump rules from built-in chains, loaded with the chains.
    """
    mark = cfg.mark
    jumps = jumps or {}
    out = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS)]
    if changed is None:
        out += jumps.get("nat", ())  # a built-in chain the table lacks cannot come after -S
        out.append(WHOLE_TABLE)
    active: set[str] = set()
    lines = len(out)  # in `out`, whose items may hold several
    f_np: list[str] = []
    f_svc: list[str] = []
    f_ext: list[str] = []
    n_np: list[str] = []
    n_svc: list[str] = []
    for key, frag in fragments:
        active.update(frag.nat_chains)
        f_np += frag.filter_nodeports
        f_svc += frag.filter_services
        f_ext += frag.filter_external
        n_np += frag.nat_nodeports
        n_svc += frag.nat_services
        if changed is None or key in changed:
            out += [f":{c} - [0:0]" for c in frag.nat_chains]
            lines += len(frag.nat_chains)
            if frag.nat_rules:
                out.append(frag.nat_rules)
                lines += frag.nat_rules.count("\n") + 1
            if lines >= chunk_lines:
                yield "\n".join(out) + "\n"
                out, lines = [], 0
    stale = sorted({c for c in existing_chains if is_service_chain(c)} - active)
    out += [f":{c} - [0:0]" for c in stale]
    out += n_np
    n_svc.sort(key=lambda line: line.rsplit(" -j ", 1)[1], reverse=True)  # see above
    out += n_svc
    out += [
        f'-A {SERVICES} -m comment --comment "kubernetes service nodeports; NOTE: this must be '
        f'the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 '
        f"-j {NODEPORTS}",
        f"-A {POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A {POSTROUTING} -j MARK --xor-mark {mark}",
        f'-A {POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
        f"-j MASQUERADE" + (" --random-fully" if cfg.random_fully else ""),
        f"-A {MARK_MASQ} -j MARK --or-mark {mark}",
        *(f"-X {c}" for c in stale),
        *(jumps.get("nat", ()) if changed is not None else ()),
        "COMMIT",
        "*filter",
        *(f":{c} - [0:0]" for c in FILTER_CHAINS),
        *f_np,
        *f_svc,
        *f_ext,
        f"-A {FORWARD} -m conntrack --ctstate INVALID -j DROP",
        f'-A {FORWARD} -m comment --comment "kubernetes forwarding rules" '
        f"-m mark --mark {mark}/{mark} -j ACCEPT",
        f'-A {FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        *jumps.get("filter", ()),
        "COMMIT",
    ]
    yield "\n".join(out) + "\n"


def assemble_iptables(
    fragments: Mapping[str, ServiceRules],
    cfg: ProxyConfig,
    changed: Set[str] | None = None,
    existing_chains: Iterable[str] = (),
) -> str:
    """`restore_chunks` of these fragments as one text (keys: `ns/name`)."""
    ordered = ((key, fragments[key]) for key in sorted(fragments))
    return "".join(restore_chunks(ordered, cfg, changed, existing_chains))


def active_chains(fragments: Mapping[str, ServiceRules]) -> set[str]:
    return {c for frag in fragments.values() for c in frag.nat_chains}


def group_by_service(
    services: Mapping[ServicePortName, ServicePort],
) -> dict[str, tuple[ServicePort, ...]]:
    grouped: dict[str, list[ServicePort]] = {}
    for spn in sorted(services):
        grouped.setdefault(spn.service, []).append(services[spn])
    return {k: tuple(v) for k, v in grouped.items()}


def is_large_cluster(endpoints: Mapping[ServicePortName, Sequence[Endpoint]]) -> bool:
    return sum(len(eps) for eps in endpoints.values()) > LARGE_CLUSTER_ENDPOINTS


def render_iptables(
    services: Mapping[ServicePortName, ServicePort],
    endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
    cfg: ProxyConfig,
    changed: Set[str] | None = None,
    existing_chains: Iterable[str] = (),
) -> str:
    """The whole restore input for these services and endpoints (see `assemble_iptables`)."""
    large = is_large_cluster(endpoints)
    fragments = {
        key: render_service_rules(ports, endpoints, cfg, large)
        for key, ports in group_by_service(services).items()
    }
    return assemble_iptables(fragments, cfg, changed, existing_chains)
