"""The vxlan backend: device `flannel.1`, and per remote node one neighbour, one fdb entry and
one onlink route (flannel's `vxlan.go` / `vxlan_network.go`).

What belongs here: the pure planner (`desired_vteps`, `VxlanObserved`, `plan_vxlan`,
`render_vxlan_plan` for golden tests) and `VxlanBackend` / `VxlanNetwork`, which read the
kernel, plan, and apply through `podnet.kernel.overlay` and `podnet.kernel.links`.

For a remote node with subnet S (10.244.2.0/24), public IP P and VtepMAC M:

    ip neigh replace 10.244.2.0 lladdr M dev flannel.1 nud permanent
    bridge fdb replace M dev flannel.1 dst P self permanent
    ip route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink

Invariants:
- Exactly 1 neighbour + 1 fdb entry + 1 route per remote node; nothing else on flannel.1.
- Written in that order (the route last: with it in place and no neighbour the kernel would
  ARP for the gateway, which nolearning vxlan cannot answer); if a later step fails the earlier
  ones are rolled back. Removal goes the other way: route, fdb, neighbour.
- A full sync deletes only entries that are wrong or belong to no lease and writes only
  entries that are missing or different; correct entries are never touched, so a restarted
  agent does not interrupt traffic.
- The device's MAC is the one stored in the node's backend-data when there is one, so peers'
  neighbour and fdb entries stay valid across agent restarts and device rebuilds.
- The device MTU is underlay - 50 (14 inner Ethernet + 8 VXLAN + 8 UDP + 20 outer IPv4).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
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
from podnet.kernel import sysctl
from podnet.kernel.links import LinkError, Netlink
from podnet.kernel.overlay import VXLAN_DEFAULT_PORT, Overlay, OverlayError, VxlanSpec

log = logging.getLogger(__name__)

BACKEND_TYPE = "vxlan"
ENCAP_OVERHEAD = 50
DEFAULT_VNI = 1


def device_name(vni: int) -> str:
    return f"flannel.{vni}"


def random_mac() -> str:
    """A random locally administered unicast MAC (flannel's `pkg/mac`)."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True, slots=True)
class RemoteVtep:
    """What one remote node needs on flannel.1."""

    node: str
    subnet: str  # "10.244.2.0/24"
    gateway: str  # "10.244.2.0": the remote flannel.1 address, the route's next hop
    mac: str
    public_ip: str


def desired_vteps(leases: Sequence[Lease], vni: int) -> list[RemoteVtep]:
    """The remote VTEPs for `leases`: vxlan leases of this VNI with a VtepMAC, by node name."""
    out = []
    for lease in leases:
        mac = lease.data("VtepMAC")
        if lease.backend_type != BACKEND_TYPE or not isinstance(mac, str):
            continue
        if int(lease.data("VNI", DEFAULT_VNI)) != vni:
            continue
        out.append(
            RemoteVtep(
                lease.node,
                str(lease.subnet),
                str(lease.gateway),
                mac.lower(),
                str(lease.public_ip),
            )
        )
    return sorted(out, key=lambda v: v.node)


@dataclass(frozen=True, slots=True)
class VxlanObserved:
    """What flannel.1 holds now: neighbours ip→mac, fdb mac→dst, routes dst→(gateway, onlink)."""

    neighbours: Mapping[str, str]
    fdb: Mapping[str, str | None]
    routes: Mapping[str, tuple[str | None, bool]]


@dataclass(frozen=True, slots=True)
class VxlanPlan:
    delete_routes: tuple[str, ...] = ()
    delete_fdb: tuple[tuple[str, str | None], ...] = ()
    delete_neighbours: tuple[str, ...] = ()
    write: tuple[RemoteVtep, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.delete_routes or self.delete_fdb or self.delete_neighbours or self.write)


def plan_vxlan(desired: Sequence[RemoteVtep], observed: VxlanObserved) -> VxlanPlan:
    """Deletes for wrong/unknown entries, writes for missing/different ones; nothing else."""
    want_neigh = {v.gateway: v.mac for v in desired}
    want_fdb = {v.mac: v.public_ip for v in desired}
    want_routes = {v.subnet: v.gateway for v in desired}
    delete_routes = sorted(
        dst for dst, (gw, onlink) in observed.routes.items()
        if want_routes.get(dst) != gw or not onlink
    )  # fmt: skip
    delete_fdb = sorted((mac, dst) for mac, dst in observed.fdb.items() if want_fdb.get(mac) != dst)
    delete_neigh = sorted(
        ip for ip, mac in observed.neighbours.items() if want_neigh.get(ip) != mac
    )
    write = tuple(
        v
        for v in desired
        if observed.neighbours.get(v.gateway) != v.mac
        or observed.fdb.get(v.mac) != v.public_ip
        or observed.routes.get(v.subnet) != (v.gateway, True)
    )
    return VxlanPlan(tuple(delete_routes), tuple(delete_fdb), tuple(delete_neigh), write)


def render_vxlan_plan(plan: VxlanPlan, dev: str = "flannel.1") -> str:
    """The plan as the iproute2 commands it stands for (golden tests, debug logs)."""
    lines = [f"ip route del {dst} dev {dev}" for dst in plan.delete_routes]
    lines += [
        f"bridge fdb del {mac} dev {dev}" + (f" dst {dst}" if dst else "") + " self"
        for mac, dst in plan.delete_fdb
    ]
    lines += [f"ip neigh del {ip} dev {dev}" for ip in plan.delete_neighbours]
    for v in plan.write:
        lines += [
            f"ip neigh replace {v.gateway} lladdr {v.mac} dev {dev} nud permanent",
            f"bridge fdb replace {v.mac} dev {dev} dst {v.public_ip} self permanent",
            f"ip route replace {v.subnet} via {v.gateway} dev {dev} onlink",
        ]
    return "\n".join(lines) + ("\n" if lines else "")


class VxlanBackend:
    def __init__(self, ext: ExternalInterface, netns: str | None = None) -> None:
        self.ext = ext
        self.netns = netns

    def register_network(
        self, config: NetConfig, subnet: ipaddress.IPv4Network, stored: Mapping[str, Any]
    ) -> Network:
        vni = int(config.backend_option("VNI", DEFAULT_VNI))
        port = int(config.backend_option("Port", 0)) or VXLAN_DEFAULT_PORT
        mtu = int(config.backend_option("MTU", 0)) or self.ext.mtu
        stored_mac = stored.get("VtepMAC") if stored.get("VNI", vni) == vni else None
        name = device_name(vni)
        spec = VxlanSpec(
            name=name,
            vni=vni,
            local=self.ext.address,
            underlay_index=self.ext.index,
            port=port,
            learning=False,
            mtu=mtu - ENCAP_OVERHEAD,
            mac=str(stored_mac).lower() if stored_mac else None,
        )
        try:
            with Overlay(self.netns) as overlay:
                current = overlay.vxlan(name)
                if spec.mac is None and (current is None or current[1] is None):
                    spec = VxlanSpec(**{**_spec_fields(spec), "mac": random_mac()})
                info = overlay.ensure_vxlan(spec)
            with Netlink(self.netns) as nl:
                address = f"{subnet.network_address}/32"
                for have in nl.addresses(name):
                    if have.cidr != address and have.interface.ip in config.network:
                        log.info("removing stale address %s from %s", have.cidr, name)
                        nl.delete_address(name, have.cidr)
                nl.ensure_address(name, address)
            _disable_accept_ra(name, self.netns)
        except (OverlayError, LinkError) as exc:
            raise FlannelError(f"vxlan: cannot set up {name}: {exc}") from exc
        if info.mac is None:
            raise FlannelError(f"vxlan: {name} has no MAC address")
        log.info(
            "vxlan: %s vni %d local %s dev %s port %d mtu %d mac %s",
            name, vni, self.ext.address, self.ext.name, port, info.mtu, info.mac,
        )  # fmt: skip
        return VxlanNetwork(name, vni, info.mac, info.mtu, config, self.netns)


def _spec_fields(spec: VxlanSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in VxlanSpec.__dataclass_fields__}


def _disable_accept_ra(name: str, netns: str | None) -> None:
    """flannel sets accept_ra=0 on its device (no router advertisements on the overlay)."""
    key = sysctl.interface_key(name, "accept_ra", family="ipv6")
    try:
        if sysctl.exists(key, netns):  # absent when IPv6 is disabled: nothing to turn off
            sysctl.write(key, 0, netns)
    except sysctl.SysctlError as exc:
        log.debug("accept_ra on %s not changed: %s", name, exc)


class VxlanNetwork:
    backend_type = BACKEND_TYPE

    def __init__(
        self, dev: str, vni: int, mac: str, mtu: int, config: NetConfig, netns: str | None
    ) -> None:
        self.dev = dev
        self.vni = vni
        self.mac = mac
        self.mtu = mtu
        self.pod_gso_max_segs: int | None = None  # the kernel's default
        self.config = config
        self.netns = netns

    def backend_data(self) -> dict[str, Any] | None:
        return {"VNI": self.vni, "VtepMAC": self.mac}

    def observe(self) -> VxlanObserved:
        with Overlay(self.netns) as overlay, Netlink(self.netns) as nl:
            index = nl.require(self.dev).index
            neighbours = {n.ip: n.mac.lower() for n in overlay.neighbours(self.dev)}
            fdb = {e.mac.lower(): e.dst for e in overlay.fdb(self.dev)}
            routes = {
                r.dst: (r.gateway, r.onlink)
                for r in nl.routes()
                if r.oif == index and ipaddress.IPv4Network(r.dst).subnet_of(self.config.network)
            }
        return VxlanObserved(neighbours, fdb, routes)

    def reconcile(self, leases: Sequence[Lease]) -> None:
        plan = plan_vxlan(desired_vteps(leases, self.vni), self.observe())
        if plan:
            log.info("vxlan: reconciling %s:\n%s", self.dev, render_vxlan_plan(plan, self.dev))
        self._apply(plan)

    def handle(self, events: LeaseEvents) -> None:
        removed = desired_vteps(events.removed, self.vni)
        plan = VxlanPlan(
            delete_routes=tuple(v.subnet for v in removed),
            delete_fdb=tuple((v.mac, v.public_ip) for v in removed),
            delete_neighbours=tuple(v.gateway for v in removed),
            write=tuple(desired_vteps(events.added, self.vni)),
        )
        for lease in events.added:
            if lease.backend_type != BACKEND_TYPE:
                log.warning(
                    "vxlan: ignoring node %s: it runs the %s backend",
                    lease.node,
                    lease.backend_type,
                )
        self._apply(plan)

    def _apply(self, plan: VxlanPlan) -> None:
        if not plan:
            return
        try:
            with Overlay(self.netns) as overlay, Netlink(self.netns) as nl:
                for route in plan.delete_routes:
                    nl.delete_route(route)
                for mac, vtep_ip in plan.delete_fdb:
                    overlay.delete_fdb(self.dev, mac, vtep_ip)
                for ip in plan.delete_neighbours:
                    overlay.delete_neighbour(self.dev, ip)
                for vtep in plan.write:
                    self._write(overlay, nl, vtep)
        except (OverlayError, LinkError) as exc:
            raise ProgrammingError(f"vxlan: programming {self.dev} failed: {exc}") from exc

    def _write(self, overlay: Overlay, nl: Netlink, vtep: RemoteVtep) -> None:
        """Neighbour, then fdb, then route; undo the earlier steps if a later one fails."""
        overlay.replace_neighbour(self.dev, vtep.gateway, vtep.mac)
        try:
            overlay.replace_fdb(self.dev, vtep.mac, vtep.public_ip)
            try:
                nl.replace_route(vtep.subnet, gateway=vtep.gateway, dev=self.dev, onlink=True)
            except LinkError:
                overlay.delete_fdb(self.dev, vtep.mac, vtep.public_ip)
                raise
        except (OverlayError, LinkError):
            overlay.delete_neighbour(self.dev, vtep.gateway)
            raise
        log.info(
            "vxlan: node %s: %s via %s (%s at %s)",
            vtep.node, vtep.subnet, vtep.gateway, vtep.mac, vtep.public_ip,
        )  # fmt: skip

    def close(self) -> None:
        return None
