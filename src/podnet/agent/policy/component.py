"""The NetworkPolicy component of the node agent: watch what policies depend on, keep the
node's `inet podnet-policy` table equal to `render_policy_table` of it.

What belongs here: `PolicyComponent` (list+watch of Pods, Namespaces, NetworkPolicies and
Nodes — plus Services and EndpointSlices when kube-proxy runs in userspace mode —, the sync
function the agent's `SyncRunner` calls, established-connection revocation, drop counters
into metrics, the denied-connection log and the status file), `PolicyGate` (what the
userspace proxy asks before it dials) and `PolicyMetrics`.

Invariants (DESIGN.md contract 3, `agent/sync.py`):
- Watch handlers only record and wake the runner; a change that cannot alter the table (a
  pod's status conditions, a restart count) wakes nothing.
- Pods are kept (parsed) only while some NetworkPolicy exists: without one the table does
  not depend on any pod (nothing is isolated, every verdict allows), and a node of a
  30,000-pod cluster kept ~20 MB of them. Pods are listed after the first list of policies;
  a pod event then only advances the revisions (a sync that rewrites the status). The first
  policy re-lists every pod (a fresh list+watch) and nothing is rendered until that list is
  in: the table is then the one a fresh agent would render. The last policy gone drops them.
- Nothing is programmed before the first list of every watched resource.
- A full sync re-creates the table in one transaction (no moment without rules); a partial
  sync is the element/chain diff against what the kernel accepted last; after a failed
  transaction nothing is assumed and the next sync is full.
- After a sync that took something away (an element left an allow set, a pod became
  isolated), established flows the new table would refuse are deleted from conntrack, so
  their next packet is judged as new and dropped: a revocation cuts existing connections too.
- Stopping leaves the table in place (an agent restart must not open the node up).
- `status.json` under `state_dir/policy/` always describes what the kernel enforces (written
  after the transaction succeeded): the highest resourceVersion rendered, the local pods
  each policy isolates, drop counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from podnet.agent.context import AgentContext
from podnet.agent.policy.model import (
    EGRESS,
    INGRESS,
    PolicyView,
    namespace_labels,
    parse_policy,
    pod_info,
)
from podnet.agent.policy.nftables import (
    FAMILY,
    LOG_GROUP,
    LOG_PREFIX,
    NAME,
    PROXIED_COUNTER,
    PROXY_MARK,
    Backends,
    PolicyConfig,
    PolicyPlanner,
    PolicyTable,
    ServiceAddress,
    render_policy_table,
)
from podnet.agent.proxy.metrics import (
    SYNC_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    LabeledCounter,
    Renderable,
)
from podnet.agent.proxy.modes import ConntrackLike
from podnet.agent.proxy.tracker import ProxyState
from podnet.agent.status import status_path, write_status
from podnet.agent.sync import SyncRunner, TokenBucket
from podnet.api.interface import Obj
from podnet.api.reflector import PAGE_SIZE, reflect
from podnet.kernel.conntrack import Conntrack, Flow
from podnet.kernel.nflog import LoggedPacket, NflogError, NflogReader
from podnet.kernel.rules import Nft, NftRunner
from podnet.retry import Backoff

log = logging.getLogger(__name__)

RESOURCES = ("pods", "namespaces", "networkpolicies", "nodes")
USERSPACE_RESOURCES = ("services", "endpointslices")
LOG_ANNOTATION = "podnet.io/network-policy-log"  # "true" on a Node: log its denied connections
MIN_SYNC_PERIOD = 0.05  # policy changes should be enforced within a fraction of a second
FULL_SYNC_PERIOD = 3600.0
SYNC_PERIOD = 30.0  # the longest retry delay
COUNTER_PERIOD = 5.0  # how stale the drop counts in the metrics may be
LOG_PER_SECOND = 10  # denied-connection lines per second (the kernel limits per direction too)
# sets whose elements allow traffic / mark pods isolated (for "did this sync revoke?")
_ALLOW_SETS = (
    "ingress-from-all",
    "ingress-from-cidr",
    "ingress-peers",
    "egress-to-all",
    "egress-to-cidr",
    "egress-peers",
    "proxy-sources",
)
_DENY_SETS = ("ingress-isolated", "egress-isolated", "proxied-denied")
_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


class PolicyMetrics:
    def __init__(self) -> None:
        p = "podnet_networkpolicy_"
        self.drops = LabeledCounter(
            p + "drops_total",
            "New connections dropped, per policy isolating the pod and direction",
            ("namespace", "policy", "direction"),
        )
        self.pod_drops = LabeledCounter(
            p + "pod_drops_total",
            "New connections dropped, per local pod and direction",
            ("namespace", "pod", "direction"),
        )
        self.proxied_drops = Counter(
            p + "proxied_drops_total",
            "Connections to ClusterIPs dropped before the userspace proxy (no endpoint allowed)",
        )
        self.sync_duration = Histogram(
            p + "sync_duration_seconds", "Render and apply of the policy table", SYNC_BUCKETS
        )
        self.programming = Histogram(
            p + "programming_duration_seconds",
            "From the first change the agent saw to the table enforcing it",
            SYNC_BUCKETS,
        )
        self.last_sync = Gauge(
            p + "last_sync_timestamp_seconds", "The last time the table was synced"
        )
        self.sync_failures = Counter(p + "sync_failures_total", "Syncs the kernel refused")
        self.policies = Gauge(p + "policies", "NetworkPolicies in the cluster")
        self.selected_pods = Gauge(p + "selected_pods", "Local pods isolated in some direction")
        self.revoked = Counter(
            p + "revoked_connections_total",
            "Established flows deleted because a change denied them",
        )
        self.logged = Counter(p + "denied_logged_total", "Denied connections written to the log")

    def all(self) -> list[Renderable]:
        return [
            self.drops,
            self.pod_drops,
            self.proxied_drops,
            self.sync_duration,
            self.programming,
            self.last_sync,
            self.sync_failures,
            self.policies,
            self.selected_pods,
            self.revoked,
            self.logged,
        ]

    def render(self) -> str:
        return "".join(m.render() for m in self.all())


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def _revision(obj: Mapping[str, Any]) -> int:
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else 0


def _parse(resource: str, obj: Mapping[str, Any] | None) -> object:
    """What of an object the table depends on, parsed once when it arrives (equal before and
    after a change: nothing to do). Services and EndpointSlices go to their own tracker."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    if resource == "pods":
        return pod_info(obj)
    if resource == "namespaces":
        return namespace_labels(obj)
    if resource == "nodes":
        return (
            (obj.get("spec") or {}).get("podCIDR"),
            (meta.get("annotations") or {}).get(LOG_ANNOTATION),
        )
    try:
        return parse_policy(obj)
    except ValueError as exc:
        log.warning("%s; it selects nothing", exc)
        return None


def _kept(resource: str, obj: Obj) -> Obj:
    """What the component keeps of an object: of pods, namespaces and nodes only the fields
    `_parse`, `config` and `_proxy_sources` read (a node of a 30,000-pod cluster held every
    pod whole, most of the agent's memory); policies, and the userspace mode's Services and
    EndpointSlices, whole."""
    if resource not in ("pods", "namespaces", "nodes"):
        return obj
    meta = obj.get("metadata") or {}
    kept: Obj = {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "resourceVersion", "labels") if k in meta
        }
    }
    if resource == "pods":
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        kept["spec"] = {
            "nodeName": spec.get("nodeName"),
            "hostNetwork": spec.get("hostNetwork"),
            "containers": [
                {"ports": c["ports"]}
                for c in spec.get("containers") or ()
                if (c or {}).get("ports")
            ],
        }
        kept["status"] = {"podIP": status.get("podIP"), "phase": status.get("phase")}
    elif resource == "nodes":
        flag = (meta.get("annotations") or {}).get(LOG_ANNOTATION)
        if flag is not None:
            kept["metadata"]["annotations"] = {LOG_ANNOTATION: flag}
        kept["spec"] = {"podCIDR": (obj.get("spec") or {}).get("podCIDR")}
    return kept


_KEY_ONLY: Obj = {}  # what is kept of a pod or namespace once parsed: its key says the rest


def _from_key(key: str) -> Obj:
    """The name and namespace a pod's or namespace's key stands for (a re-list's deletion)."""
    namespace, slash, name = key.partition("/")
    return {"metadata": {"namespace": namespace, "name": name} if slash else {"name": key}}


def _gateway(node: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(pod gateway, pod subnet's network address) of a node from its podCIDR."""
    cidr = ((node or {}).get("spec") or {}).get("podCIDR")
    try:
        net = ipaddress.IPv4Network(str(cidr))
    except ValueError:
        return None, None
    return str(net.network_address + 1), str(net.network_address)


def revokes(old: PolicyTable, new: PolicyTable) -> bool:
    """Whether going from `old` to `new` takes anything away (then established flows must be
    checked)."""
    for name, before in old.elements.items():
        allow = name in _ALLOW_SETS or name.startswith(("in-", "eg-"))
        if allow and before - new.elements.get(name, frozenset()):
            return True
    return any(
        new.elements.get(n, frozenset()) - old.elements.get(n, frozenset()) for n in _DENY_SETS
    )


class PolicyGate:
    """The userspace proxy's question before it dials an endpoint for a client: what the
    table would answer had the kernel seen the client's packet after DNAT."""

    mark = PROXY_MARK

    def __init__(self, component: PolicyComponent) -> None:
        self.component = component

    def allows(self, client: str, endpoint: str, port: int, protocol: str) -> bool:
        comp = self.component
        view = comp.view
        if view is None:  # nothing is enforced yet: neither is it here
            return True
        dst = view.by_ip.get(endpoint)
        from_node = (
            dst is not None and dst.node == comp.ctx.node_name and client in comp.own_addresses()
        )
        return view.verdict(client, endpoint, protocol, port, from_dst_node=from_node).allowed


class PolicyComponent:
    name = "policy"

    def __init__(
        self,
        ctx: AgentContext,
        *,
        nft: Nft | None = None,
        conntrack: ConntrackLike | None = None,
        min_sync_period: float = MIN_SYNC_PERIOD,
        sync_period: float = SYNC_PERIOD,
        full_sync_period: float = FULL_SYNC_PERIOD,
        counter_period: float = COUNTER_PERIOD,
    ) -> None:
        self.ctx = ctx
        self.nft: Nft = nft or NftRunner()
        self.conntrack: ConntrackLike = conntrack if conntrack is not None else Conntrack()
        self.userspace = ctx.proxy_mode == "userspace"
        self.resources = RESOURCES + (USERSPACE_RESOURCES if self.userspace else ())
        self.objects: dict[str, dict[str, Obj]] = {r: {} for r in self.resources}
        self.parsed: dict[str, dict[str, Any]] = {r: {} for r in self.resources}
        self._listed = {r: asyncio.Event() for r in self.resources}
        # pods are kept only while a policy exists (module docstring); None: not known yet
        self._keep_pods: bool | None = None
        self._pods_task: asyncio.Task[None] | None = None
        self._pods_generation = 0  # of the pods list+watch: a replaced one's calls are ignored
        self._stop: asyncio.Event | None = None
        self._full_skipped = False  # a full sync was asked for while pods were being listed
        self.initialized = asyncio.Event()
        self.services = ProxyState(node_name=ctx.node_name) if self.userspace else None
        self.metrics = PolicyMetrics()
        self.runner = SyncRunner(
            "policy",
            self._sync,
            min_interval=min_sync_period,
            full_interval=full_sync_period,
            retry=Backoff(min(min_sync_period, sync_period), sync_period),
            burst=2,
        )
        self.planner = PolicyPlanner()
        self.counter_period = counter_period
        self.view: PolicyView | None = None  # what the kernel enforces (the gate reads it)
        self.table: PolicyTable | None = None
        self.revision = 0  # the highest resourceVersion recorded
        self.applied_revision = 0  # the highest one the kernel enforces
        # the same per resource: watch streams are independent, so a reader that wrote to
        # several resources waits for each (`status.json` "revisions")
        self.revisions: dict[str, int] = dict.fromkeys(self.resources, 0)
        self.applied_revisions: dict[str, int] = dict.fromkeys(self.resources, 0)
        self._pending_since: float | None = None
        self._counts: dict[str, int] = {}  # counter -> packets at the last reading
        self._reader: NflogReader | None = None
        self._log_bucket = TokenBucket.full(1 / LOG_PER_SECOND, LOG_PER_SECOND, time.monotonic())
        self._suppressed = 0
        self.gate = PolicyGate(self)

    @property
    def status_path(self) -> Path:
        return status_path(self.ctx.state_dir, "policy")

    # --- watch side: record and wake ------------------------------------------------------

    def _record(self, resource: str, obj: Obj, deleted: bool) -> None:
        revision = _revision(obj)
        self.revision = max(self.revision, revision)
        self.revisions[resource] = max(self.revisions[resource], revision)
        known, parsed = self.objects[resource], self.parsed[resource]
        if resource == "pods" and not self._keep_pods:
            # no policy: no pod can alter the table; the sync only advances the revisions
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            if self.initialized.is_set():
                self.runner.request()
            return
        key = _key(obj)
        if deleted:
            known.pop(key, None)
        else:
            obj = _kept(resource, obj)
            # pods and namespaces: their parsed view below is all that is read later; the
            # re-list's deletions need only the key (one shared empty value: 30,000 pods'
            # name-and-namespace stubs were ~14 MB)
            known[key] = _KEY_ONLY if resource in ("pods", "namespaces") else obj
        if resource == "services" and self.services is not None:
            changed = self.services.on_service(obj, deleted)
        elif resource == "endpointslices" and self.services is not None:
            changed = self.services.on_slice(obj, deleted)
        else:
            before, after = parsed.get(key), _parse(resource, None if deleted else obj)
            if after is None:
                parsed.pop(key, None)
            else:
                parsed[key] = after
            changed = before != after
            if resource == "networkpolicies" and self._keep_pods is not None:
                self._pods_needed(bool(parsed))
        if changed:
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            if self.initialized.is_set():
                self.runner.request()

    async def _list_and_watch(self, resource: str, stop: asyncio.Event) -> None:
        generation = self._pods_generation

        def current() -> bool:  # a replaced pods list+watch records nothing more
            return resource != "pods" or generation == self._pods_generation

        def replace(items: list[Obj]) -> None:
            if not current():
                return
            seen = set()
            for obj in items:
                seen.add(_key(obj))
                self._record(resource, obj, False)
            for key, known in list(self.objects[resource].items()):
                if key not in seen:
                    self._record(resource, _from_key(key) if known is _KEY_ONLY else known, True)
            self._listed[resource].set()
            if resource == "networkpolicies" and self._keep_pods is None:
                # pods are listed once it is known whether they are needed
                self._keep_pods = bool(self.parsed[resource])
                self._watch_pods()
            elif resource == "pods" and self.initialized.is_set():
                self.runner.request()  # a re-list for a first policy: render it now
            if not self.initialized.is_set() and all(e.is_set() for e in self._listed.values()):
                self.initialized.set()

        def apply(kind: str, obj: Obj) -> None:
            if current():
                self._record(resource, obj, kind == "DELETED")

        # the first list in pages, each item cut down on arrival: one page of whole objects in
        # memory at a time, not every pod of the cluster at once
        await reflect(
            self.ctx.api, resource, replace=replace, apply=apply, stop=stop, who="policy",
            page_size=PAGE_SIZE, transform=lambda obj: _kept(resource, obj),
        )  # fmt: skip

    def _pods_needed(self, needed: bool) -> None:
        """A policy came or the last one went (module docstring)."""
        if needed == self._keep_pods:
            return
        self._keep_pods = needed
        self.objects["pods"].clear()
        self.parsed["pods"].clear()
        if needed:  # what was not kept must be listed again
            self._watch_pods()

    def _watch_pods(self) -> None:
        """(Re)start the pods list+watch: nothing is rendered until its list is in."""
        if self._stop is None:
            return
        if self._pods_task is not None:
            self._pods_task.cancel()
        self._pods_generation += 1
        self._listed["pods"].clear()
        self._pods_task = asyncio.create_task(self._list_and_watch("pods", self._stop))

    # --- what the table is rendered from ------------------------------------------------------

    def _node(self, name: str) -> Obj | None:
        return self.objects["nodes"].get(name)

    def own_addresses(self) -> frozenset[str]:
        gateway, network = _gateway(self._node(self.ctx.node_name))
        return frozenset(a for a in (self.ctx.node_ip, gateway, network) if a)

    def config(self) -> PolicyConfig:
        node = self._node(self.ctx.node_name) or {}
        flag = str(((node.get("metadata") or {}).get("annotations") or {}).get(LOG_ANNOTATION, ""))
        return PolicyConfig(
            userspace_proxy=self.userspace,
            gateway=_gateway(node)[0],
            pod_network=self.ctx.cluster.cluster_cidr,
            log=flag.lower() in ("true", "on", "yes", "1"),
        )

    def _proxy_sources(self) -> list[str]:
        return sorted(
            gw
            for name, node in self.objects["nodes"].items()
            if name != self.ctx.node_name and (gw := _gateway(node)[0]) is not None
        )

    def _service_backends(self) -> dict[ServiceAddress, Backends]:
        if self.services is None:
            return {}
        self.services.apply()
        endpoints = self.services.endpoints_map()
        return {
            (sp.cluster_ip, sp.protocol, sp.port): tuple(
                (e.ip, e.port) for e in endpoints.get(spn, ()) if e.ready
            )
            for spn, sp in self.services.service_port_map().items()
            if sp.cluster_ip
        }

    # --- sync side ----------------------------------------------------------------------------

    async def _sync(self, full: bool) -> None:
        if not self._listed["pods"].is_set():
            # a first policy's re-list of pods is not in yet: it requests a sync
            self._full_skipped = self._full_skipped or full
            return
        full, self._full_skipped = full or self._full_skipped, False
        started = time.perf_counter()
        revision, revisions = self.revision, dict(self.revisions)
        pending_since = self._pending_since
        self._pending_since = None
        view = PolicyView(
            tuple(self.parsed["pods"].values()),
            dict(self.parsed["namespaces"].values()),
            tuple(
                self.parsed["networkpolicies"][k] for k in sorted(self.parsed["networkpolicies"])
            ),
        )
        cfg = self.config()
        table = render_policy_table(
            view,
            self.ctx.node_name,
            cfg,
            self._proxy_sources() if self.userspace else (),  # 1,000 nodes: ~10 ms
            self._service_backends() if self.userspace else None,
        )
        if full:
            self.planner.forget()
        text, recreate = self.planner.transaction(table)
        old = self.table
        if recreate or (
            old is not None
            and any(
                k not in table.declarations for k in old.declarations if k.startswith("counter ")
            )
        ):
            await self._read_counters()  # counters about to be re-created or deleted
        try:
            if text:
                await asyncio.to_thread(self.nft.apply, text)
        except Exception:
            self.planner.forget()
            self.metrics.sync_failures.inc()
            if self._pending_since is None:
                self._pending_since = pending_since
            raise
        self.planner.committed(table)
        if recreate:
            self._counts = {}
        self.view, self.table = view, table
        self.applied_revision, self.applied_revisions = revision, revisions
        now = time.monotonic()
        self.metrics.sync_duration.observe(time.perf_counter() - started)
        if pending_since is not None:
            self.metrics.programming.observe(now - pending_since)
        self.metrics.last_sync.set(time.time())
        self.metrics.policies.set(len(view.policies))
        self.metrics.selected_pods.set(len(table.selected))
        self._set_log(cfg.log)
        self._write_status()
        if old is not None and revokes(old, table):
            await self._revoke(view, table)

    async def _revoke(self, view: PolicyView, table: PolicyTable) -> None:
        """Delete established flows of local pods that the new table would refuse."""
        node, own = self.ctx.node_name, self.own_addresses()
        proxies = table.elements.get("proxy-sources", frozenset())
        proxied_denied = table.elements.get("proxied-denied", frozenset())

        def refused(flow: Flow) -> bool:
            protocol = _PROTOCOLS.get(flow.protocol)
            if protocol is None or flow.reply_sport is None:
                return False
            src, dst, port = flow.src, flow.reply_src, flow.reply_sport  # dst after DNAT
            if flow.is_dnat and dst not in view.by_ip:
                # redirected to this node's userspace proxy: refused when no endpoint may be
                # reached any more (what `proxied-denied` drops)
                key = f"{src} . {flow.dst} . {protocol} . {flow.dport}"
                return (key, "") in proxied_denied
            if (src, "") in proxies:
                return False  # a userspace proxy's dial: judged on the client's node
            src_pod, dst_pod = view.by_ip.get(src), view.by_ip.get(dst)
            local_src = src_pod is not None and src_pod.node == node
            local_dst = dst_pod is not None and dst_pod.node == node
            if not (local_src or local_dst):
                return False
            from_node = local_dst and src in own
            return not view.verdict(src, dst, protocol, port, from_dst_node=from_node).allowed

        try:
            deleted = await asyncio.to_thread(self.conntrack.delete_matching, refused)
        except Exception as exc:  # the table is right; flows time out by themselves
            log.warning("policy: revoking established connections failed: %s", exc)
            return
        if deleted:
            log.info("policy: %d established connection(s) no longer allowed were cut", deleted)
        self.metrics.revoked.inc(deleted)

    # --- drop counters ------------------------------------------------------------------------

    async def _read_counters(self) -> None:
        table = self.table
        if table is None:
            return
        try:
            values = await asyncio.to_thread(self.nft.counters, FAMILY, NAME)
        except Exception as exc:
            log.debug("policy: reading drop counters failed: %s", exc)
            return
        selected = {s.pod: s for s in table.selected}
        changed = False
        for name, packets in values.items():
            before = self._counts.get(name, 0)
            delta = packets - before if packets >= before else packets
            self._counts[name] = packets
            if delta <= 0:
                continue
            changed = True
            if name == PROXIED_COUNTER:
                self.metrics.proxied_drops.inc(delta)
                continue
            owner = table.counters.get(name)
            if owner is None:
                continue
            pod, direction = owner
            namespace, _, pod_name = pod.partition("/")
            self.metrics.pod_drops.inc((namespace, pod_name, direction), delta)
            chosen = selected.get(pod)
            policies = (
                ()
                if chosen is None
                else (chosen.ingress if direction == INGRESS else chosen.egress)
            )
            for policy in policies:
                policy_ns, _, policy_name = policy.partition("/")
                self.metrics.drops.inc((policy_ns, policy_name, direction), delta)
        if changed:
            self._write_status()

    async def _count_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.counter_period):
                    await stop.wait()
            if not stop.is_set():
                await self._read_counters()

    # --- the denied-connection log ------------------------------------------------------------

    def _set_log(self, enabled: bool) -> None:
        if enabled and self._reader is None:
            reader = NflogReader(LOG_GROUP)
            try:
                reader.open()
            except (OSError, NflogError) as exc:
                log.warning("policy: denied connections cannot be logged: %s", exc)
                return
            asyncio.get_running_loop().add_reader(reader.fileno(), self._on_logged)
            self._reader = reader
            log.info("policy: logging denied connections of node %s", self.ctx.node_name)
        elif not enabled and self._reader is not None:
            self._close_log()

    def _close_log(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._reader.fileno())
            self._reader.close()
            self._reader = None

    def _on_logged(self) -> None:
        if self._reader is None:
            return
        for packet in self._reader.read():
            if self._log_bucket.delay(time.monotonic()) > 0:
                self._suppressed += 1
                continue
            self._log_bucket.take(time.monotonic())
            self.metrics.logged.inc()
            log.info("%s", self.describe_denied(packet))

    def describe_denied(self, packet: LoggedPacket) -> str:
        """One log line: who could not reach whom, on what, and which policies isolate."""
        view = self.view
        direction = packet.prefix[len(LOG_PREFIX) :].strip() or "?"

        def name(ip: str, port: int | None = None) -> str:
            pod = view.by_ip.get(ip) if view is not None else None
            where = f"{ip}:{port}" if port is not None else ip
            return f"{pod.key} ({where})" if pod is not None else where

        port = f"/{packet.dport}" if packet.dport is not None else ""
        line = (
            f"policy: denied {direction} {name(packet.src, packet.sport)} -> "
            f"{name(packet.dst)} {packet.protocol}{port}"
        )
        if view is not None and packet.dport is not None:
            verdict = view.verdict(packet.src, packet.dst, packet.protocol, packet.dport)
            if verdict.policies:
                line += f"; isolated for {verdict.denied_by} by {', '.join(verdict.policies)}"
        if self._suppressed:
            line += f" ({self._suppressed} more not logged)"
            self._suppressed = 0
        return line

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        table = self.table
        drops: dict[str, dict[str, int]] = {}
        if table is not None:
            for counter, (pod, direction) in table.counters.items():
                if pod:
                    drops.setdefault(pod, {})[direction] = self._counts.get(counter, 0)
        return {
            "node": self.ctx.node_name,
            "revision": self.applied_revision,
            "revisions": self.applied_revisions,
            "synced_at": time.time(),
            "policies": len(self.view.policies) if self.view is not None else 0,
            "log": self._reader is not None,
            "selected": [
                {
                    "pod": s.pod,
                    "ip": s.ip,
                    INGRESS: list(s.ingress),
                    EGRESS: list(s.egress),
                    "drops": drops.get(s.pod, {}),
                }
                for s in (table.selected if table is not None else ())
            ],
        }

    def _write_status(self) -> None:
        write_status(self.ctx.state_dir, "policy", self.status())

    # --- run ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info("policy: NetworkPolicy on node %s", self.ctx.node_name)
        self._stop = stop
        # pods: once the first list of policies says whether they are needed (_watch_pods)
        tasks = [
            asyncio.create_task(self._list_and_watch(r, stop))
            for r in self.resources
            if r != "pods"
        ]
        tasks.append(asyncio.create_task(self._count_periodically(stop)))
        try:
            await self.runner.loop(stop, after=self.initialized)
        finally:
            if self._pods_task is not None:
                tasks.append(self._pods_task)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._close_log()
