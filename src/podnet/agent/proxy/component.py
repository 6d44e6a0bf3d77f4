"""The proxy component of the node agent: watch Services + EndpointSlices, program the node.

What belongs here: `ProxyComponent` (the agent's `Component` for kube-proxy), the list+watch
loops feeding `ProxyState`, the sync function run by the agent's `SyncRunner`, mode
selection (including the IPVS availability check and the fallback), and the cleanup of other
modes' state when a node switches modes. The modes themselves are in `modes.py` (`PROXIERS`).

Invariants (DESIGN.md contract 3, the runner's contract in `agent/sync.py`):
- Watch handlers only record changes and wake the runner; only the sync function programs.
- Nothing is programmed before the first list of *both* Services and EndpointSlices (the
  runner starts then).
- The runner decides full or partial: full first, after any failure (the trackers were already
  drained) and every `full_sync_period`; otherwise partial. Retries back off from
  `min_sync_period` to `sync_period` (upstream's fixed retry delay), with jitter.
- A watch that expires (410 Gone) re-lists; objects missing from the new list are deleted.
  Lists come in pages (`reflector.PAGE_SIZE`), each item cut to what the proxy reads (`slim`).
- After every successful sync, `state_dir/proxy/status.json` (`agent/status.py`) names the
  highest Service and EndpointSlice resourceVersion in the kernel: readers outside the agent
  (the demo, tests) wait on it instead of guessing how long programming takes.
- Stopping leaves the rules in place (an agent restart must not interrupt Service traffic);
  the userspace proxy's sockets and connections live on in its relay process (`relay.py`)
  when the agent gives it a directory (`relay_dir`), else they end with the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from podnet.agent.context import AgentContext
from podnet.agent.drain import PROXY_REVISION
from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.ipvs import IPVS_PROC_FILE, IpvsUnavailable, ipvs_available
from podnet.agent.proxy.metrics import ProxyMetrics, Renderable, metrics_app
from podnet.agent.proxy.model import TRIGGER_TIME_ANNOTATION
from podnet.agent.proxy.modes import Proxier, ProxyKernel
from podnet.agent.proxy.registry import proxy_mode, remove_other_modes
from podnet.agent.proxy.relay import DialGate
from podnet.agent.proxy.stale_udp import (
    ServiceAddress,
    addresses_by_service,
    is_bypassing_flow,
    is_stale_udp_flow,
    newly_translated,
    serving_endpoints_by_destination,
)
from podnet.agent.proxy.tracker import ProxyState
from podnet.agent.proxy.userspace import UserspaceProxier
from podnet.agent.status import write_status
from podnet.agent.sync import SyncRunner
from podnet.api.interface import Obj
from podnet.api.reflector import PAGE_SIZE, reflect
from podnet.retry import Backoff

log = logging.getLogger(__name__)

FULL_SYNC_PERIOD = 3600.0  # upstream proxyutil.FullSyncPeriod (1 h)
MIN_SYNC_PERIOD = 1.0  # upstream minSyncPeriod default; also the first retry delay
SYNC_PERIOD = 30.0  # the longest retry delay (upstream retries every syncPeriod)
# modes whose rules NAT every packet to a service address (ipvs: the kernel's IPVS, not
# conntrack NAT, translates, so an entry's tuples do not say whether it was translated)
BYPASS_CLEANUP_MODES = ("iptables", "nftables", "userspace")


def select_mode(mode: str, fallback: bool, ipvs_probe: Callable[[], bool] = ipvs_available) -> str:
    """The mode to run: `mode` itself, or iptables when ipvs is missing and fallback is on."""
    proxy_mode(mode)  # an unknown name lists the valid ones
    if mode == "ipvs" and not ipvs_probe():
        if fallback:
            log.warning(
                "proxy mode ipvs: the kernel has no IP_VS (%s is missing); "
                "falling back to iptables as --proxy-fallback asks",
                IPVS_PROC_FILE,
            )
            return "iptables"
        raise IpvsUnavailable(
            f"proxy mode 'ipvs' needs the kernel's IP Virtual Server support (CONFIG_IP_VS, "
            f"module ip_vs), and this kernel has none ({IPVS_PROC_FILE} is missing). "
            "Use --proxy-mode nftables or iptables, or add --proxy-fallback to fall back to "
            "iptables when IPVS is unavailable."
        )
    return mode


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def slim(resource: str, obj: Obj) -> Obj:
    """What the proxy reads of a listed Service or EndpointSlice (`model.service_ports`,
    `model.slice_endpoints`, the trigger time, the key and revision): a first list of 1,000
    EndpointSlices of 30 endpoints is ~10 MB of JSON, and every item stayed whole in memory
    until the list was in (targetRefs, zones, managedFields)."""
    meta = obj.get("metadata") or {}
    kept_meta = {
        k: meta[k] for k in ("name", "namespace", "labels", "resourceVersion") if k in meta
    }
    trigger = (meta.get("annotations") or {}).get(TRIGGER_TIME_ANNOTATION)
    if trigger is not None:
        kept_meta["annotations"] = {TRIGGER_TIME_ANNOTATION: trigger}
    if resource == "services":
        return {"metadata": kept_meta, "spec": obj.get("spec") or {}}
    out: Obj = {"metadata": kept_meta, "ports": obj.get("ports") or []}
    if "addressType" in obj:
        out["addressType"] = obj["addressType"]
    out["endpoints"] = [
        {k: ep[k] for k in ("addresses", "conditions", "nodeName") if k in ep}
        for ep in obj.get("endpoints") or ()
        if isinstance(ep, dict)
    ]
    return out


class ProxyComponent:
    name = "proxy"

    def __init__(
        self,
        ctx: AgentContext,
        *,
        kernel: ProxyKernel | None = None,
        metrics: ProxyMetrics | None = None,
        serve_metrics: bool = True,
        min_sync_period: float = MIN_SYNC_PERIOD,
        sync_period: float = SYNC_PERIOD,
        full_sync_period: float = FULL_SYNC_PERIOD,
        ipvs_probe: Callable[[], bool] = ipvs_available,
        dial_gate: DialGate | None = None,
        extra_metrics: Sequence[Renderable] = (),
        relay_dir: Path | None = None,
    ) -> None:
        self.ctx = ctx
        self.extra_metrics = tuple(extra_metrics)  # other components' registries, same /metrics
        self.kernel = kernel or ProxyKernel()
        self.metrics = metrics or ProxyMetrics()
        self.serve_metrics = serve_metrics
        self.cfg = ProxyConfig(
            cluster_cidr=ctx.cluster.cluster_cidr,
            service_cidr=ctx.cluster.service_cidr,
            node_ips=(ctx.node_ip,) if ctx.node_ip else (),
            relay_dir=str(relay_dir) if relay_dir is not None else None,
        )
        self.mode = select_mode(ctx.proxy_mode, ctx.proxy_fallback, ipvs_probe)
        self.state = ProxyState(node_name=ctx.node_name, started_at=time.time())
        self.proxier: Proxier = proxy_mode(self.mode).proxier(self.cfg, self.kernel)
        if isinstance(self.proxier, UserspaceProxier):
            # the proxy socket dials the endpoint: NetworkPolicy must be asked here
            self.proxier.gate = dial_gate
            self.proxier.on_reset = self._resync_full
        self.runner = SyncRunner(
            "proxy",
            self._sync,
            min_interval=min_sync_period,
            full_interval=full_sync_period,
            retry=Backoff(min(min_sync_period, sync_period), sync_period),
            burst=2,
        )
        self._synced = {"services": asyncio.Event(), "endpointslices": asyncio.Event()}
        self._known: dict[str, dict[str, Mapping[str, Any]]] = {
            "services": {},
            "endpointslices": {},
        }
        self.initialized = asyncio.Event()
        self.metrics_port: int | None = None  # the bound port once serving
        # the highest resourceVersion recorded per resource, and programmed (status.json)
        self._seen = {"services": 0, "endpointslices": 0}
        self.programmed = dict(self._seen)
        self._published_revision = 0  # the highest EndpointSlice one on the Node (drain)
        self._recheck: asyncio.TimerHandle | None = None  # a sync the proxier asked for
        # per Service, the addresses its rules translate since the last sync (so only an
        # address that is new needs its un-NATed flows deleted, not every endpoint change)
        self._translated: dict[str, frozenset[ServiceAddress]] = {}

    # what tests and benchmarks wait on (the runner keeps them)
    @property
    def syncs_completed(self) -> int:
        return self.runner.completed

    @property
    def sync_in_progress(self) -> bool:
        return self.runner.in_progress

    @property
    def need_full(self) -> bool:
        return self.runner.need_full

    def _resync_full(self) -> None:
        """The data plane lost its state (the userspace relay died): program it all again."""
        self.runner.request(full=True)

    def cleanup_other_modes(self) -> None:
        """Switching modes: remove what the other modes left on this node."""
        remove_other_modes(self.kernel, self.cfg, self.mode)

    # --- watch side: record and wake, nothing else --------------------------------------

    def _record(self, resource: str, obj: Mapping[str, Any], deleted: bool) -> None:
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        self._seen[resource] = max(self._seen[resource], int(rv) if rv.isdigit() else 0)
        known = self._known[resource]
        if deleted:
            known.pop(_key(obj), None)
        else:
            # only what a deletion found by a re-list needs (its key, its Service): the
            # trackers hold what the rules are made of, so the object itself is not kept
            meta = obj.get("metadata") or {}
            known[_key(obj)] = {
                "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta}
            }
        if resource == "services":
            pending = self.state.on_service(obj, deleted)
        else:
            pending = self.state.on_slice(obj, deleted)
        self.metrics.service_changes_pending.set(len(self.state.service_changes.pending()))
        self.metrics.endpoint_changes_pending.set(len(self.state.slice_changes.pending()))
        if pending and self.initialized.is_set():
            self.metrics.last_queued.set(time.time())
            self.runner.request()

    async def _list_and_watch(self, resource: str, stop: asyncio.Event) -> None:
        def replace(items: list[Obj]) -> None:
            seen = set()
            for obj in items:
                seen.add(_key(obj))
                self._record(resource, obj, False)
            for key, known in list(self._known[resource].items()):
                if key not in seen:
                    self._record(resource, known, True)
            self._synced[resource].set()
            self._maybe_initialize()

        def apply(kind: str, obj: Obj) -> None:
            self._record(resource, obj, kind == "DELETED")

        # the first list in pages, each item cut down on arrival (`slim`)
        await reflect(
            self.ctx.api, resource, replace=replace, apply=apply, stop=stop, who="proxy",
            page_size=PAGE_SIZE, transform=lambda obj: slim(resource, obj),
        )  # fmt: skip

    def _maybe_initialize(self) -> None:
        if not self.initialized.is_set() and all(e.is_set() for e in self._synced.values()):
            self.initialized.set()

    # --- sync side ---------------------------------------------------------------------

    async def _sync(self, full: bool) -> None:
        """Called by the runner: full or partial (see `agent/sync.py`), raises on failure."""
        seen = dict(self._seen)  # everything recorded so far is applied below
        await self._sync_state(full)
        if seen != self.programmed:
            self.programmed = seen
            write_status(
                self.ctx.state_dir,
                "proxy",
                {"node": self.ctx.node_name, "mode": self.mode, "revisions": seen},
            )
        revision = seen["endpointslices"]
        if self.ctx.cluster.endpoint_drain and revision > self._published_revision:
            await self.ctx.api.patch(
                "nodes",
                self.ctx.node_name,
                {"metadata": {"annotations": {PROXY_REVISION: str(revision)}}},
            )
            self._published_revision = revision

    async def _sync_state(self, full: bool) -> None:
        applied = self.state.apply()
        self.metrics.service_changes_total.inc(applied.service_changes)
        self.metrics.endpoint_changes_total.inc(applied.endpoint_changes)
        self.metrics.service_changes_pending.set(0)
        self.metrics.endpoint_changes_pending.set(0)
        if full or applied.updated_services:
            started = time.perf_counter()
            try:
                result = await self.proxier.sync(
                    self.state, None if full else applied.updated_services
                )
            except Exception:
                self.metrics.sync_failures_total.inc()
                raise
            self._recheck_later(result.recheck_after)
            elapsed = time.perf_counter() - started
            self.metrics.sync_duration.observe(elapsed)
            kind = self.metrics.sync_full_duration if full else self.metrics.sync_partial_duration
            kind.observe(elapsed)
            now = time.time()
            self.metrics.last_sync.set(now)
            for trigger in applied.trigger_times:
                self.metrics.network_programming.observe(max(0.0, now - trigger))
            if self.mode != "userspace" and (applied.udp_changed or full):
                await self._delete_stale_udp_flows()
            if self.mode in BYPASS_CLEANUP_MODES and (full or applied.updated_services):
                await self._delete_bypassing_flows(None if full else applied.updated_services)

    def _recheck_later(self, seconds: float | None) -> None:
        """The proxier asked to look again (ipvs: real servers draining): one pending
        re-check at a time, a full sync since ipvs re-syncs everything anyway."""
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if seconds is not None:
            loop = asyncio.get_running_loop()
            self._recheck = loop.call_later(seconds, self.runner.request, True)

    async def _delete_stale_udp_flows(self) -> None:
        dest = serving_endpoints_by_destination(
            self.state.service_port_map(), self.state.endpoints_map()
        )
        if not dest.by_ip and not dest.by_node_port:
            return
        try:
            deleted = await asyncio.to_thread(
                self.kernel.conntrack.delete_matching, lambda f: is_stale_udp_flow(f, dest)
            )
        except Exception as exc:  # cleanup failing must not fail the sync
            log.warning("proxy: stale UDP conntrack cleanup failed: %s", exc)
            return
        self.metrics.conntrack_deleted_total.inc(deleted)

    async def _delete_bypassing_flows(self, services: frozenset[str] | None) -> None:
        """Flows that reached a service address before its rules were in (`stale_udp.py`):
        after the rules are loaded, so a packet now either is translated or was seen by the
        dump. A full sync (the first one follows a mode switch) looks at every address, a
        partial one at the updated Services' addresses that are new since the last sync."""
        now = addresses_by_service(self.state.service_port_map(), services)
        found = newly_translated(self._translated, now, services)
        self._translated = found.translated
        fresh = found.fresh
        if not fresh:
            return
        try:
            deleted = await asyncio.to_thread(
                self.kernel.conntrack.delete_matching, lambda f: is_bypassing_flow(f, fresh)
            )
        except Exception as exc:  # cleanup failing must not fail the sync
            log.warning("proxy: conntrack cleanup of un-NATed service flows failed: %s", exc)
            return
        if deleted:
            log.info("proxy: deleted %d conntrack flow(s) that bypassed the service rules", deleted)
        self.metrics.bypassing_flows_deleted_total.inc(deleted)

    async def _serve_metrics(self) -> web.AppRunner:
        runner = web.AppRunner(metrics_app(self.metrics, *self.extra_metrics), access_log=None)
        await runner.setup()
        address = self.ctx.metrics_address
        site = web.TCPSite(runner, address, self.ctx.metrics_port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        self.metrics_port = sockets[0].getsockname()[1] if sockets else self.ctx.metrics_port
        log.info("proxy: metrics on http://%s:%s/metrics", address, self.metrics_port)
        return runner

    async def run(self, stop: asyncio.Event) -> None:
        log.info("proxy: mode %s on node %s", self.mode, self.ctx.node_name)
        await asyncio.to_thread(self.cleanup_other_modes)
        http = await self._serve_metrics() if self.serve_metrics else None
        tasks = [
            asyncio.create_task(self._list_and_watch("services", stop)),
            asyncio.create_task(self._list_and_watch("endpointslices", stop)),
        ]
        try:
            await self.runner.loop(stop, after=self.initialized)
        finally:
            self._recheck_later(None)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.proxier.stop()
            if http is not None:
                await http.cleanup()
