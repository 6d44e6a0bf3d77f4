"""The flannel component of the node agent: lease, backend, rules, subnet.env, one sync loop.

What belongs here: `FlannelComponent` (the agent's `Component` for the overlay), the
list+watch of Nodes feeding it, the start-up order of flanneld's `main.go`, and
`find_external_interface`. Decisions live in the pure modules (config, leases, the backends'
planners, masq); this module wires them to the API and the kernel.

Start-up (flanneld's order): wait for this Node's `spec.podCIDR` (the server's node IPAM sets
it) → find the underlay interface → backend `register_network` (device first: the lease
carries its VtepMAC) → publish the lease annotations on the Node → FLANNEL-POSTRTG /
FLANNEL-FWD rules and ip_forward → first full sync of remote leases → write
`run_dir/flannel/subnet.env` (the kubelet reports the node Ready only after that).

Invariants (DESIGN.md contract 3; the loop is the agent's `SyncRunner`, `agent/sync.py`):
- Watch handlers only store Node objects and wake the runner; only its syncs touch the kernel.
  What is stored of a Node is what the leases are made of (`slim_node`: its name, podCIDR and
  flannel annotations; a whole hollow Node is ~20 KB decoded, 22 MB at 1,000 nodes), and the
  first list comes in pages (`reflector.PAGE_SIZE`).
- Nothing is programmed before the first full list of Nodes. The first sync is full, so is the
  one after any failure (which also re-registers the backend, unless only some lease could
  not be programmed: a deleted device comes back), and one every `resync_period`; between
  them, syncs apply the diff of lease snapshots (`LeaseWatcher.reset`). Failed syncs are
  retried with back-off (`RETRY_DELAY` doubling up to `resync_period`, with jitter).
- A full sync reconciles without flushing: entries that are right stay, so an agent restart
  does not interrupt vxlan/host-gw traffic, and whatever changed while the agent was down
  (nodes gone or joined, entries deleted by hand) is fixed.
- Stopping leaves devices, routes, neighbours, fdb and rules in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

from podnet.agent.context import AgentContext
from podnet.agent.flannel.backend import (
    ExternalInterface,
    FlannelError,
    Network,
    ProgrammingError,
)
from podnet.agent.flannel.config import NetConfig, make_config, render_subnet_env
from podnet.agent.flannel.leases import (
    Lease,
    LeaseWatcher,
    drop_overlapping,
    lease_from_node,
    own_lease_patch,
    slim_node,
    stored_backend_data,
)
from podnet.agent.flannel.masq import (
    FILTER_READ,
    NAT_READ,
    missing_jumps,
    own_lines,
    render_flannel_rules,
    rules_in_place,
)
from podnet.agent.flannel.registry import backend_factory, get_backend
from podnet.agent.sync import SyncRunner
from podnet.api.interface import Obj
from podnet.api.reflector import PAGE_SIZE, reflect
from podnet.kernel import sysctl
from podnet.kernel.links import Netlink
from podnet.kernel.rules import IptablesRunner
from podnet.retry import Backoff

log = logging.getLogger(__name__)

RESYNC_PERIOD = 10.0  # full sync (routes re-checked: flannel's host-gw checker uses 10 s)
MIN_SYNC_INTERVAL = 0.05  # coalesce bursts of node events
RETRY_DELAY = 1.0  # the first retry after a failed sync; later ones back off to RESYNC_PERIOD


def find_external_interface(node_ip: str, netns: str | None = None) -> ExternalInterface:
    """The link holding `node_ip` (flannel's `--iface` by address), with its MTU."""
    with Netlink(netns) as nl:
        for address in nl.addresses():
            if address.address == node_ip:
                link = nl.link_by_index(address.ifindex)
                if link is not None:
                    return ExternalInterface(link.name, link.index, node_ip, link.mtu)
    raise FlannelError(
        f"no interface of this node has the node address {node_ip}; flannel sends overlay "
        "traffic from it — check --node-ip"
    )


def write_subnet_env(path: Path, text: str) -> None:
    """Atomically replace subnet.env (directory 0755, file 0644, as flanneld)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


class FlannelComponent:
    """Subnet lease + backend + remote leases of one node (see the module docstring)."""

    name = "flannel"

    def __init__(
        self,
        ctx: AgentContext,
        *,
        netns: str | None = None,
        config: NetConfig | None = None,
        ip_masq: bool = True,
        resync_period: float = RESYNC_PERIOD,
    ) -> None:
        self.ctx = ctx
        # the namespace whose kernel this component programs: None = the agent's own (the
        # agent entered its node's namespace first); tests run several nodes in one process
        self.netns = netns
        self.config = config or make_config(
            ctx.cluster.cluster_cidr,
            subnet_len=ctx.cluster.node_cidr_mask,
            backend_type=ctx.backend,
        )
        backend_factory(self.config.backend_type)  # an unknown type fails here, not later
        self.ip_masq = ip_masq
        self.subnet_env = ctx.run_dir / "flannel" / "subnet.env"
        self.watcher = LeaseWatcher(ctx.node_name)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.nodes_changed = asyncio.Event()  # wakes the start-up wait for the podCIDR
        self.network: Network | None = None
        self.subnet: ipaddress.IPv4Network | None = None
        self.ext: ExternalInterface | None = None
        self.ready = asyncio.Event()  # subnet.env written
        self.runner = SyncRunner(
            "flannel",
            self._sync,
            min_interval=MIN_SYNC_INTERVAL,
            full_interval=resync_period,
            retry=Backoff(RETRY_DELAY, max(RETRY_DELAY, resync_period)),
        )
        self._reregister = True  # the next full sync builds the backend's device anew
        self._reported: set[str] = set()  # lease conflicts already logged

    @property
    def syncs(self) -> int:
        """Syncs attempted so far (successful or not)."""
        return self.runner.completed + self.runner.failures

    @property
    def last_error(self) -> str | None:
        """Why the last sync failed; None when it succeeded."""
        return self.runner.last_error

    # --- watch side: store and wake ---------------------------------------------------

    def _record(self, obj: dict[str, Any], deleted: bool) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        if deleted:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = slim_node(obj)
        self._changed()

    def _changed(self) -> None:
        self.nodes_changed.set()
        self.runner.request()

    async def _list_and_watch(self, stop: asyncio.Event) -> None:
        def replace(items: list[Obj]) -> None:
            fresh = {(item.get("metadata") or {}).get("name"): item for item in items}
            self.nodes = {k: v for k, v in fresh.items() if k}
            self._changed()

        def apply(kind: str, obj: Obj) -> None:
            self._record(obj, kind == "DELETED")

        await reflect(
            self.ctx.api, "nodes", replace=replace, apply=apply, stop=stop, who="flannel",
            page_size=PAGE_SIZE, transform=slim_node,
        )  # fmt: skip

    # --- start-up ---------------------------------------------------------------------

    async def _own_subnet(self, stop: asyncio.Event) -> ipaddress.IPv4Network | None:
        """Wait for this node's podCIDR; None if stopped first."""
        warned = 0.0
        while not stop.is_set():
            node = self.nodes.get(self.ctx.node_name)
            cidr = (node or {}).get("spec", {}).get("podCIDR") if node else None
            if cidr:
                subnet = ipaddress.IPv4Network(cidr)
                if not self.config.contains_subnet(subnet):
                    raise FlannelError(
                        f"subnet {self.config.network!r} specified in the flannel net config "
                        f"doesn't contain {cidr!r} PodCIDR of the {self.ctx.node_name!r} node"
                    )
                return subnet
            if time.monotonic() - warned > 10:
                warned = time.monotonic()
                log.info(
                    "flannel: node %r pod cidr not assigned yet; waiting for the node IPAM",
                    self.ctx.node_name,
                )
            self.nodes_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.nodes_changed.wait()
        return None

    async def _register(self, subnet: ipaddress.IPv4Network) -> Network:
        if self.network is not None:
            await asyncio.to_thread(self.network.close)
            self.network = None
        ext = await asyncio.to_thread(find_external_interface, self.ctx.node_ip, self.netns)
        self.ext = ext
        backend = get_backend(self.config.backend_type, ext, self.netns, self.ctx.run_dir)
        stored = stored_backend_data(self.nodes.get(self.ctx.node_name) or {})
        network = await asyncio.to_thread(backend.register_network, self.config, subnet, stored)
        self.network = network
        await self._publish(network, ext)
        return network

    async def _publish(self, network: Network, ext: ExternalInterface) -> None:
        patch = own_lease_patch(network.backend_type, network.backend_data(), ext.address)
        have = ((self.nodes.get(self.ctx.node_name) or {}).get("metadata") or {}).get(
            "annotations"
        ) or {}
        wanted = patch["metadata"]["annotations"]
        if all(have.get(k) == v for k, v in wanted.items()):
            return
        await self.ctx.api.patch("nodes", self.ctx.node_name, patch)
        log.info("flannel: published lease %s -> %s (%s)", self.subnet, ext.address, wanted)

    def _apply_rules(self, subnet: ipaddress.IPv4Network) -> None:
        iptables = IptablesRunner(self.netns)
        # only our chains' and the jumps' lines, kept as the dump is read: the nat table
        # holds kube-proxy's rules too (1,000 Services x 30 endpoints: ~10 MB, held as bytes,
        # text and lines several times over, on every resync)
        nat = iptables.scan(lambda lines: own_lines(lines, NAT_READ), "nat")
        filt = iptables.scan(lambda lines: own_lines(lines, FILTER_READ), "filter")
        whole = render_flannel_rules(self.config.network, subnet, ip_masq=self.ip_masq)
        if not (self.ip_masq and rules_in_place(nat, filt, whole)):
            need_nat, need_fwd = missing_jumps(nat, filt)
            iptables.restore(
                render_flannel_rules(self.config.network, subnet, need_nat, need_fwd, self.ip_masq)
            )
        sysctl.enable_ip_forward(self.netns)

    def _leases(self) -> list[Lease]:
        """The other nodes' leases that are safe to program (overlaps are logged, skipped)."""
        found = [lease for node in self.nodes.values() if (lease := lease_from_node(node))]
        kept, problems = drop_overlapping(self.ctx.node_name, self.subnet, found)
        for problem in problems:
            if problem not in self._reported:
                log.error("flannel: %s", problem)
        self._reported = set(problems)
        return kept

    # --- syncs (run by the runner) ----------------------------------------------------

    async def _sync(self, full: bool) -> None:
        subnet = self.subnet
        assert subnet is not None  # the runner starts once the podCIDR is known
        failure: Exception | None = None
        try:
            if full:
                await self._full_sync(subnet, self._reregister)
            else:
                await self._partial_sync()
            self._reregister = False
        except Exception as exc:
            failure = exc
            # anything but a failure to program one lease (a vanished device, a dead
            # datapath) rebuilds the backend's device on the next attempt
            self._reregister = not isinstance(exc, ProgrammingError)
        if self.network is not None:
            await asyncio.to_thread(
                self._write_subnet_env, subnet, self.network.mtu, self.network.pod_gso_max_segs
            )
            self.ready.set()
        if failure is not None:
            raise failure

    async def _full_sync(self, subnet: ipaddress.IPv4Network, reregister: bool) -> None:
        network = self.network
        if network is None or reregister:
            network = await self._register(subnet)
        elif self.ext is not None:
            await self._publish(network, self.ext)  # the Node may have been re-created
        await asyncio.to_thread(self._apply_rules, subnet)
        self.watcher.reset(self._leases())
        await asyncio.to_thread(network.reconcile, self.watcher.snapshot())

    async def _partial_sync(self) -> None:
        assert self.network is not None and self.ext is not None
        await self._publish(self.network, self.ext)
        events = self.watcher.reset(self._leases())
        if events:
            await asyncio.to_thread(self.network.handle, events)

    async def run(self, stop: asyncio.Event) -> None:
        watch = asyncio.create_task(self._list_and_watch(stop))
        try:
            subnet = await self._own_subnet(stop)
            if subnet is None:
                return
            self.subnet = subnet
            log.info(
                "flannel: node %s subnet %s, backend %s",
                self.ctx.node_name, subnet, self.config.backend_type,
            )  # fmt: skip
            await self.runner.loop(stop)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            if self.network is not None:
                await asyncio.to_thread(self.network.close)
                self.network = None

    def _write_subnet_env(
        self, subnet: ipaddress.IPv4Network, mtu: int, pod_gso_max_segs: int | None
    ) -> None:
        """Write subnet.env when its content changes (first sync, or a rebuilt backend)."""
        text = render_subnet_env(self.config, subnet, mtu, self.ip_masq, pod_gso_max_segs)
        try:
            if self.subnet_env.read_text() == text:
                return
        except FileNotFoundError:
            pass
        write_subnet_env(self.subnet_env, text)
        log.info("flannel: wrote %s (mtu %d)", self.subnet_env, mtu)
