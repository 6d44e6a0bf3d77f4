"""The host-gw backend: one route per remote subnet via the remote node's underlay address.

What belongs here: the pure planner (`desired_host_routes`, `plan_host_routes`,
`check_direct`) and `HostGwBackend` / `HostGwNetwork` (flannel's `hostgw.go` +
`route_network.go`). No device is created; the pod MTU is the underlay's.

    ip route replace 10.244.2.0/24 via 172.31.1.12 dev eth0

Invariants:
- Only routes inside the cluster network, on the underlay device, with a gateway, are ours;
  a full sync deletes the ones no lease wants and leaves correct ones untouched.
- A remote node must be directly reachable (same L2 segment): the kernel's route to its
  address must have no gateway. Otherwise its subnet gets no route and the error names the
  node, its address and the gateway in the way (the other nodes are still programmed).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.agent.flannel.backend import (
    ExternalInterface,
    FlannelError,
    Network,
    ProgrammingError,
)
from podnet.agent.flannel.config import NetConfig
from podnet.agent.flannel.leases import Lease, LeaseEvents
from podnet.kernel.links import LinkError, Netlink
from podnet.kernel.overlay import Overlay, OverlayError, RouteLookup

log = logging.getLogger(__name__)

BACKEND_TYPE = "host-gw"


class NotOnSameSegment(ProgrammingError):
    """A remote node is not directly reachable, which host-gw requires."""


@dataclass(frozen=True, slots=True)
class HostRoute:
    node: str
    subnet: str
    gateway: str  # the remote node's underlay address


def desired_host_routes(leases: Sequence[Lease]) -> list[HostRoute]:
    return sorted(
        (
            HostRoute(lease.node, str(lease.subnet), str(lease.public_ip))
            for lease in leases
            if lease.backend_type == BACKEND_TYPE
        ),
        key=lambda r: r.node,
    )


def check_direct(route: HostRoute, lookup: RouteLookup, ext: ExternalInterface) -> None:
    """Raise `NotOnSameSegment` unless the kernel reaches `route.gateway` directly on `ext`."""
    if lookup.gateway is not None:
        raise NotOnSameSegment(
            f"host-gw: node {route.node} ({route.gateway}) is not on this node's L2 segment: "
            f"the kernel reaches it via gateway {lookup.gateway}; host-gw needs every node "
            f"directly reachable on {ext.name} — use the vxlan backend across routers"
        )
    if lookup.oif is not None and lookup.oif != ext.index:
        raise NotOnSameSegment(
            f"host-gw: node {route.node} ({route.gateway}) is reached through interface index "
            f"{lookup.oif}, not the underlay {ext.name} (index {ext.index}); host-gw routes pod "
            "traffic only over the underlay"
        )


@dataclass(frozen=True, slots=True)
class HostGwPlan:
    delete: tuple[str, ...] = ()
    write: tuple[HostRoute, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.delete or self.write)


def plan_host_routes(
    desired: Sequence[HostRoute], observed: Mapping[str, str | None]
) -> HostGwPlan:
    """`observed`: our routes now, dst → gateway. Delete unknown/wrong, write missing/wrong."""
    want = {r.subnet: r.gateway for r in desired}
    delete = tuple(sorted(dst for dst, gw in observed.items() if dst not in want))
    write = tuple(r for r in desired if observed.get(r.subnet) != r.gateway)
    return HostGwPlan(delete, write)


def render_host_gw_plan(plan: HostGwPlan, dev: str) -> str:
    lines = [f"ip route del {dst} dev {dev}" for dst in plan.delete]
    lines += [f"ip route replace {r.subnet} via {r.gateway} dev {dev}" for r in plan.write]
    return "\n".join(lines) + ("\n" if lines else "")


class HostGwBackend:
    def __init__(self, ext: ExternalInterface, netns: str | None = None) -> None:
        self.ext = ext
        self.netns = netns

    def register_network(
        self, config: NetConfig, subnet: ipaddress.IPv4Network, stored: Mapping[str, Any]
    ) -> Network:
        log.info(
            "host-gw: routes via %s (%s), mtu %d", self.ext.name, self.ext.address, self.ext.mtu
        )
        return HostGwNetwork(self.ext, config, self.netns)


class HostGwNetwork:
    backend_type = BACKEND_TYPE

    def __init__(self, ext: ExternalInterface, config: NetConfig, netns: str | None) -> None:
        self.ext = ext
        self.mtu = ext.mtu
        self.pod_gso_max_segs: int | None = None  # the kernel's default
        self.config = config
        self.netns = netns
        self.unreachable: dict[str, str] = {}  # node -> why it has no route (last sync)

    def backend_data(self) -> dict[str, Any] | None:
        return None

    def observe(self, nl: Netlink) -> dict[str, str | None]:
        return {
            r.dst: r.gateway
            for r in nl.routes()
            if r.oif == self.ext.index
            and r.gateway is not None
            and ipaddress.IPv4Network(r.dst).subnet_of(self.config.network)
        }

    def reconcile(self, leases: Sequence[Lease]) -> None:
        with Netlink(self.netns) as nl:
            plan = plan_host_routes(desired_host_routes(leases), self.observe(nl))
        self._apply(plan, full=True)

    def handle(self, events: LeaseEvents) -> None:
        removed = {r.subnet for r in desired_host_routes(events.removed)}
        added = desired_host_routes(events.added)
        self._apply(HostGwPlan(tuple(sorted(removed)), tuple(added)), full=False)

    def _apply(self, plan: HostGwPlan, full: bool) -> None:
        if plan:
            log.info("host-gw: %s", render_host_gw_plan(plan, self.ext.name).strip())
        errors: list[str] = []
        try:
            with Netlink(self.netns) as nl, Overlay(self.netns) as overlay:
                for dst in plan.delete:
                    nl.delete_route(dst)
                for route in plan.write:
                    try:
                        check_direct(route, self._lookup(overlay, route), self.ext)
                    except NotOnSameSegment as exc:
                        self.unreachable[route.node] = str(exc)
                        errors.append(str(exc))
                        continue
                    self.unreachable.pop(route.node, None)
                    nl.replace_route(route.subnet, gateway=route.gateway, dev=self.ext.name)
        except (LinkError, OverlayError) as exc:
            raise FlannelError(f"host-gw: programming routes failed: {exc}") from exc
        for message in errors:
            log.error("%s", message)
        if errors and full:
            raise NotOnSameSegment("; ".join(errors))

    def _lookup(self, overlay: Overlay, route: HostRoute) -> RouteLookup:
        try:
            return overlay.route_to(route.gateway)
        except OverlayError as exc:
            raise NotOnSameSegment(
                f"host-gw: node {route.node} ({route.gateway}) is not reachable from this node "
                f"({exc}); host-gw needs every node directly reachable on {self.ext.name}"
            ) from exc

    def close(self) -> None:
        return None
