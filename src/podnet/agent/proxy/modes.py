"""Proxy modes as small backends: render with the pure renderers, apply in one call.

What belongs here: the `Proxier` protocol, `ProxyKernel` (the kernel doors a proxier may use:
iptables, nft, conntrack, ipvs, ipset runners, the service address holder and the sysctl
writer, bound to the node's namespace), the iptables, nftables and ipvs proxiers, and the
functions removing each mode's kernel state (`cleanup_*_leftovers`, used when switching
modes). The userspace proxier is in `userspace.py`; the registry of modes by name,
`PROXIERS`, is in `registry.py`.

Invariants:
- `sync(state, changed)` renders from `state`'s applied maps only and applies everything in
  one `iptables-restore --noflush` or one `nft -f -`; `changed=None` is a full sync. It may run
  on a worker thread: it never touches the tracker's pending changes.
- A proxier remembers what it installed only after the kernel accepted it; on failure it
  forgets, so the next (full) sync starts from a clean slate.
- `cleanup()` removes everything the mode created and nothing else (our chains by prefix, our
  table by name, our jump rules by exact text, our ipsets by name, virtual servers on
  service/node addresses, addresses by their label).
- ipvs mode shares the names KUBE-SERVICES, KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD
  and four jump rules with iptables mode; each mode's cleanup empties a shared chain only
  when its own leftovers are there, so a restart in the same mode keeps traffic flowing.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import os
import shlex
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from podnet.agent.proxy import iptables as ipt
from podnet.agent.proxy.config import LARGE_CLUSTER_ENDPOINTS, ProxyConfig
from podnet.agent.proxy.ipvs import (
    GRACEFUL_RECHECK,
    GRACEFUL_TIMEOUT,
    IPVS_JUMP_RULES,
    IPVS_ONLY_CHAINS,
    IPVS_SHARED_CHAINS,
    SET_TYPES,
    RealServerKey,
    VirtualServer,
    ipvs_sysctls,
    parse_ipvsadm_save,
    parse_proc_ip_vs,
    plan_graceful_termination,
    plan_ipsets,
    plan_ipvsadm,
    render_ipvs,
)
from podnet.agent.proxy.nftables import Fragment, NftablesPlanner, render_service_fragment
from podnet.agent.proxy.tracker import ProxyState
from podnet.kernel import sysctl as sysctl_ops
from podnet.kernel.conntrack import Conntrack, Flow
from podnet.kernel.ipvs import (
    BindingPlan,
    Ipset,
    IpsetRunner,
    Ipvs,
    IpvsRunner,
    ServiceAddressHolder,
    plan_bindings,
)
from podnet.kernel.rules import Iptables, IptablesRunner, Nft, NftRunner


class ConntrackLike(Protocol):
    def delete_matching(self, should_delete: Callable[[Flow], bool]) -> int: ...


class SysctlWriter(Protocol):
    def __call__(self, key: str, value: str | int, netns: str | None = None) -> None: ...


@dataclass(slots=True)
class ProxyKernel:
    """The kernel doors of one node; `netns=None` means the agent's own namespace."""

    netns: str | None = None
    iptables: Iptables = field(default_factory=IptablesRunner)
    nft: Nft = field(default_factory=NftRunner)
    conntrack: ConntrackLike = field(default_factory=Conntrack)
    ipvs: Ipvs = field(default_factory=IpvsRunner)
    ipset: Ipset = field(default_factory=IpsetRunner)
    addresses: ServiceAddressHolder = field(default_factory=ServiceAddressHolder)
    sysctl: SysctlWriter = field(default_factory=lambda: sysctl_ops.write)

    @classmethod
    def in_namespace(cls, netns: str | None) -> ProxyKernel:
        return cls(
            netns,
            IptablesRunner(netns),
            NftRunner(netns),
            Conntrack(netns),
            IpvsRunner(netns),
            IpsetRunner(netns),
            ServiceAddressHolder(netns),
        )


@dataclass(frozen=True, slots=True)
class SyncResult:
    full: bool
    payload_bytes: int  # size of the restore input / nft transaction
    services: int
    recheck_after: float | None = None  # sync again then, even if nothing changes (seconds)


class Proxier(Protocol):
    """One kube-proxy mode on one node; built by `registry.PROXIERS[name].proxier(cfg, kernel)`."""

    mode: str

    async def sync(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult:
        """Program the node from `state`; `changed=None` is a full sync. Raises on failure."""
        ...

    async def cleanup(self) -> None:
        """Remove everything this mode created on the node."""
        ...

    async def stop(self) -> None:
        """The agent stops: release process-bound resources, keep kernel rules."""
        ...


class _BlockingProxier(abc.ABC):
    """Runs a blocking `sync_now` on a worker thread (restores of 10k services take long)."""

    @abc.abstractmethod
    def sync_now(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult: ...

    @abc.abstractmethod
    def cleanup_now(self) -> None: ...

    async def sync(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult:
        return await asyncio.to_thread(self.sync_now, state, changed)

    async def cleanup(self) -> None:
        await asyncio.to_thread(self.cleanup_now)

    async def stop(self) -> None:
        return None


def _rules_of(save_text: str, chains: Iterable[str]) -> set[tuple[str, ...]]:
    """The `-A` lines of `chains` in a dump, as words (only theirs: 10k Services' dump has
    150k lines, and splitting each costs seconds)."""
    starts = tuple(f"-A {c} " for c in chains)
    return {tuple(shlex.split(line)) for line in save_text.splitlines() if line.startswith(starts)}


def restore_line(words: list[str]) -> str:
    """Words as iptables-restore reads them: it understands double quotes only."""
    return " ".join(f'"{w}"' if " " in w else w for w in words)


def missing_jump_rules(save_text: str, jumps: tuple[ipt.JumpRule, ...]) -> dict[str, list[str]]:
    """Per table, `-I` lines for the jump rules absent from an iptables-save dump."""
    return _chains_and_missing_jumps(save_text.splitlines(), jumps)[1]


def _chains_and_missing_jumps(
    lines: Iterable[str], jumps: tuple[ipt.JumpRule, ...]
) -> tuple[list[str], dict[str, list[str]]]:
    """In one pass over a dump's lines: its chains (in the dump's order, each once), and per
    table the `-I` lines for the jump rules it lacks (what a full sync needs of it;
    `IptablesRunner.scan` reads the dump, ~10 MB at 30,000 endpoints, as the tool writes it).
    With no `jumps`, only the chains: the one parser of a dump's `:CHAIN` lines."""
    chains: dict[str, None] = {}  # an ordered set
    present: dict[str, set[tuple[str, ...]]] = {}
    starts = tuple({f"-A {j.chain} " for j in jumps})  # built-in chains: a few lines each
    table = ""
    for line in lines:
        if line.startswith(":"):
            chains[line[1:].split()[0]] = None
        elif line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(starts):
            present.setdefault(table, set()).add(tuple(shlex.split(line)))
    missing: dict[str, list[str]] = {}
    for jump in jumps:
        if ("-A", jump.chain, *jump.args) not in present.get(jump.table, set()):
            missing.setdefault(jump.table, []).append(restore_line(["-I", jump.chain, *jump.args]))
    return list(chains), missing


def with_jump_rules(text: str, missing: dict[str, list[str]]) -> str:
    """Add the `-I` lines to their table's section, so chains and jumps load together: at its
    end, or before `ipt.WHOLE_TABLE` (which stops built-in chains from being created)."""
    pending = dict(missing)
    out: list[str] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        if line in ("COMMIT", ipt.WHOLE_TABLE):
            out += pending.pop(table, [])
        out.append(line)
    return "\n".join(out) + "\n"


def ensure_jump_rules(runner: Iptables, jumps: tuple[ipt.JumpRule, ...]) -> int:
    """Insert (`-I`) the jump rules that are missing; returns how many were added."""
    missing = missing_jump_rules(runner.save(), jumps)
    for table, lines in missing.items():
        runner.restore(f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n")
    return sum(len(v) for v in missing.values())


def remove_jump_rules(runner: Iptables, jumps: tuple[ipt.JumpRule, ...]) -> None:
    for table in sorted({j.table for j in jumps}):
        present = _rules_of(runner.save(table), {j.chain for j in jumps})
        lines = [
            restore_line(["-D", j.chain, *j.args])
            for j in jumps
            if j.table == table and ("-A", j.chain, *j.args) in present
        ]
        if lines:
            runner.restore(f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n")


def delete_chains(
    runner: Iptables, table: str, owned: Callable[[str], bool], flush: Iterable[str] = ()
) -> None:
    """Delete the `owned` chains; when there are any, also empty the existing chains named in
    `flush` (chains kept but jumping to the doomed ones) in the same restore."""
    present = runner.scan(lambda lines: _chains_and_missing_jumps(lines, ())[0], table)
    chains = [c for c in present if owned(c)]
    if chains:
        emptied = [c for c in flush if c in present and c not in chains]
        # thousands of chains: WHOLE_TABLE keeps the nf_tables backend linear (iptables.py)
        body = [ipt.WHOLE_TABLE] if len(chains) > ipt.MANY_CHAINS else []
        body += [f":{c} - [0:0]" for c in emptied + chains] + [f"-X {c}" for c in chains]
        runner.restore(f"*{table}\n" + "\n".join(body) + "\nCOMMIT\n")


def _is_iptables_mode_chain(chain: str) -> bool:
    return ipt.is_service_chain(chain) or chain in (
        ipt.SERVICES,
        ipt.EXTERNAL_SERVICES,
        ipt.NODEPORTS,
        ipt.FORWARD,
        ipt.POSTROUTING,
        ipt.MARK_MASQ,
    )


def cleanup_iptables_leftovers(runner: Iptables, keep_ipvs_shared: bool = False) -> None:
    """Remove iptables mode's jump rules and chains (leaving every other chain alone).

    `keep_ipvs_shared` (the node runs ipvs mode): keep the chains and jump rules ipvs mode
    uses under the same names; nat KUBE-SERVICES is emptied only when iptables mode's
    service chains are still there (it jumps to them).
    """
    if not keep_ipvs_shared:
        remove_jump_rules(runner, ipt.JUMP_RULES)
        for table in ("filter", "nat"):
            delete_chains(runner, table, _is_iptables_mode_chain)
        return
    remove_jump_rules(runner, tuple(j for j in ipt.JUMP_RULES if j not in IPVS_JUMP_RULES))
    for table in ("filter", "nat"):
        shared = IPVS_SHARED_CHAINS[table]
        owned = _chains_except(_is_iptables_mode_chain, shared)
        delete_chains(runner, table, owned, flush=shared if table == "nat" else ())


def _chains_except(owned: Callable[[str], bool], kept: Iterable[str]) -> Callable[[str], bool]:
    keep = frozenset(kept)
    return lambda chain: owned(chain) and chain not in keep


def _owned_virtual_server(
    cfg: ProxyConfig, bound: Iterable[str]
) -> Callable[[VirtualServer], bool]:
    """Virtual servers podnet may delete: on the service CIDR, a node IP, or a held address."""
    service_cidr = ipaddress.IPv4Network(cfg.service_cidr)
    mine = set(cfg.node_ips) | set(bound)

    def owned(vs: VirtualServer) -> bool:
        if vs.address in mine:
            return True
        try:
            return ipaddress.IPv4Address(vs.address) in service_cidr
        except ValueError:  # an IPv6 virtual server: not ours (the cluster is IPv4)
            return False

    return owned


def cleanup_nftables_leftovers(nft: Nft) -> None:
    """Remove nftables mode's table (everything it makes lives in that one table)."""
    nft.delete_table("ip", "kube-proxy")


def cleanup_ipvs_leftovers(kernel: ProxyKernel, cfg: ProxyConfig) -> None:
    """Remove ipvs mode's state: its jump rules and chains (emptying the shared chains that
    reference them), its virtual servers, its ipsets and the addresses it bound."""
    runner = kernel.iptables
    remove_jump_rules(runner, tuple(j for j in IPVS_JUMP_RULES if j not in ipt.JUMP_RULES))
    for table, only in IPVS_ONLY_CHAINS.items():
        # nat KUBE-SERVICES / KUBE-POSTROUTING jump to KUBE-NODE-PORT and match the sets
        flush = IPVS_SHARED_CHAINS[table] if table == "nat" else ()
        delete_chains(runner, table, frozenset(only).__contains__, flush)
    bound = kernel.addresses.bound_anywhere()
    if kernel.ipvs.available():
        owned = _owned_virtual_server(cfg, bound)
        script = plan_ipvsadm(parse_ipvsadm_save(kernel.ipvs.save()), (), owned)
        if script:
            kernel.ipvs.restore(script)
    kernel.ipset.destroy(SET_TYPES)
    kernel.addresses.release()


class IptablesProxier(_BlockingProxier):
    mode = "iptables"

    def __init__(self, cfg: ProxyConfig, kernel: ProxyKernel) -> None:
        self.cfg = cfg
        self.runner = kernel.iptables
        self.fragments: dict[str, ipt.ServiceRules] = {}
        self.large = False
        self.written: set[str] | None = None  # chains the last successful restore left

    def sync_now(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult:
        large = (
            sum(len(eps) for info in state.slices.values() for eps in info.endpoints.values())
            > LARGE_CLUSTER_ENDPOINTS
        )
        if large != self.large or self.written is None:
            changed = None  # comments change everywhere / nothing is known: full sync
        # kept between syncs without their own chains' rules (`ServiceRules.kept`): a sync
        # writes those only for the Services it renders, each as the restore input reaches it
        # (the rendering overlaps iptables-restore's parsing of what came before, and only the
        # Service being written has its rules in memory)
        fragments = dict(self.fragments) if changed is not None else {}
        if changed is None:
            keys = sorted(state.services)
        else:
            for key in changed:
                if key not in state.services:
                    fragments.pop(key, None)
            keys = sorted(fragments.keys() | (changed & state.services.keys()))
        sent = 0

        def rendered() -> Iterator[tuple[str, ipt.ServiceRules]]:
            for key in keys:
                if changed is None or key in changed:
                    rules = ipt.render_service_rules(
                        state.services[key], state.endpoints_of(key), self.cfg, large
                    )
                    fragments[key] = rules.kept()
                    yield key, rules
                else:
                    yield key, fragments[key]

        def counted(chunks: Iterable[str]) -> Iterator[str]:
            nonlocal sent
            for chunk in chunks:
                sent += len(chunk)
                yield chunk

        try:
            if changed is None:
                # one dump per full sync: our stale chains and the missing jump rules
                existing, missing = self.runner.scan(
                    lambda lines: _chains_and_missing_jumps(lines, ipt.JUMP_RULES)
                )
                chunks = ipt.restore_chunks(rendered(), self.cfg, None, existing, missing)
            else:
                chunks = ipt.restore_chunks(rendered(), self.cfg, changed, self.written or ())
            self.runner.restore(counted(chunks))
        except Exception:
            self.written = None
            raise
        self.fragments, self.large = fragments, large
        self.written = ipt.active_chains(fragments)
        return SyncResult(changed is None, sent, len(fragments))

    def cleanup_now(self) -> None:
        cleanup_iptables_leftovers(self.runner)
        self.fragments, self.written = {}, None


class NftablesProxier(_BlockingProxier):
    mode = "nftables"

    def __init__(self, cfg: ProxyConfig, kernel: ProxyKernel) -> None:
        self.cfg = cfg
        self.nft = kernel.nft
        self.planner = NftablesPlanner(cfg)
        self.fragments: dict[str, Fragment] = {}

    def sync_now(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult:
        if not self.planner.table_known:
            changed = None
        fragments = dict(self.fragments) if changed is not None else {}
        for key in state.services if changed is None else changed:
            ports = state.services.get(key)
            if ports is None:
                fragments.pop(key, None)
            else:
                fragments[key] = render_service_fragment(ports, state.endpoints_of(key), self.cfg)
        if changed is None:
            text = self.planner.full(fragments)
        else:
            text = self.planner.partial(fragments, changed)
        try:
            if text:
                self.nft.apply(text)
        except Exception:
            self.planner.forget()
            self.fragments = {}
            raise
        if changed is None:
            self.planner.committed(fragments)
        else:
            self.planner.committed_partial(fragments, changed)
        self.fragments = fragments
        return SyncResult(changed is None, len(text), len(fragments))

    def cleanup_now(self) -> None:
        cleanup_nftables_leftovers(self.nft)
        self.planner.forget()
        self.fragments = {}


class IpvsProxier(_BlockingProxier):
    """ipvs mode: ipsets, then new service addresses, then the virtual server reconcile,
    then the remaining iptables rules (with missing jump rules) in one restore, then the
    addresses no longer needed are unbound (after their virtual servers are gone).

    Like upstream every sync renders the whole state, and the IPVS part is a diff against
    `ipvsadm-save`, so unchanged services are not touched. The ipsets and the bound
    addresses are diffs too, against what the last successful sync left (`loaded_sets`,
    `held`): a partial sync after one endpoint change sends a few ipset lines instead of
    flushing and refilling every set, and does not list 10k addresses. A full sync (the
    first, the periodic one, any after a failure) trusts no memory: it lists the addresses
    and reloads the sets whole. Removed TCP real servers with connections drain at weight 0
    (`draining`, see `plan_graceful_termination`); while any does, the result asks for a
    re-check after `GRACEFUL_RECHECK`.
    """

    mode = "ipvs"

    def __init__(
        self,
        cfg: ProxyConfig,
        kernel: ProxyKernel,
        scheduler: str = "rr",
        kernel_release: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        graceful_timeout: float = GRACEFUL_TIMEOUT,
    ) -> None:
        self.cfg = cfg
        self.kernel = kernel
        self.scheduler = scheduler
        self.kernel_release = kernel_release or os.uname().release
        self.tuned = False  # kernel settings written (once per agent start)
        self.clock = clock
        self.graceful_timeout = graceful_timeout
        self.draining: dict[RealServerKey, float] = {}  # real server -> draining since
        # what the last successful sync left in the kernel; None: unknown (re-read/reload)
        self.loaded_sets: dict[str, frozenset[str]] | None = None
        self.held: set[str] | None = None

    def sync_now(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult:
        k = self.kernel
        rendered = render_ipvs(
            state.service_port_map(), state.endpoints_map(), self.cfg, self.scheduler
        )
        if not self.tuned:
            for key, value in ipvs_sysctls(self.kernel_release).items():
                k.sysctl(key, value, k.netns)
            self.tuned = True
        if changed is None:
            self.loaded_sets, self.held = None, None
        loaded_sets, remembered = self.loaded_sets, self.held
        self.loaded_sets, self.held = None, None  # until this sync has succeeded
        held = k.addresses.bound() if remembered is None else remembered
        plan = plan_bindings(rendered.bound_addresses, held)
        ipsets = plan_ipsets(loaded_sets, rendered.ipsets)
        if ipsets:
            k.ipset.restore(ipsets)
        k.addresses.apply(BindingPlan(plan.bind, ()))
        owned = _owned_virtual_server(self.cfg, held | set(rendered.bound_addresses))
        current = parse_ipvsadm_save(k.ipvs.save())
        drain = plan_graceful_termination(
            current,
            rendered.virtual_servers,
            lambda: parse_proc_ip_vs(k.ipvs.stats()),
            self.draining,
            self.clock(),
            self.graceful_timeout,
        )
        script = plan_ipvsadm(current, drain.virtual_servers, owned)
        if script:
            k.ipvs.restore(script)
        self.draining = drain.draining
        text = with_jump_rules(
            rendered.iptables, missing_jump_rules(k.iptables.save(), IPVS_JUMP_RULES)
        )
        k.iptables.restore(text)
        k.addresses.apply(BindingPlan((), plan.unbind))
        self.loaded_sets, self.held = rendered.ipset_members(), set(rendered.bound_addresses)
        payload = len(ipsets) + len(script) + len(text)
        recheck = GRACEFUL_RECHECK if self.draining else None
        return SyncResult(changed is None, payload, len(state.services), recheck)

    def cleanup_now(self) -> None:
        self.loaded_sets, self.held = None, None
        cleanup_ipvs_leftovers(self.kernel, self.cfg)
        # and the chains/jumps it shares by name with iptables mode (emptied above)
        cleanup_iptables_leftovers(self.kernel.iptables)
