"""Overlay devices and their tables: vxlan links, TUN devices, neighbours, fdb, route lookups.

What belongs here: the kernel side of flannel's backends — creating and reading a vxlan
device (`VxlanSpec` in, `VxlanInfo` out), opening a TUN device (`open_tun`), permanent
neighbour (ARP) entries, bridge fdb entries with a remote VTEP address, and asking the kernel
how it would route to an address (`route_to`, for host-gw's "same L2 segment" check). Routes
and addresses themselves stay in `podnet.kernel.links.Netlink`; this adapter only adds what
overlays need beyond that. Everything goes through pyroute2; no `ip`/`bridge` output is parsed.

Invariants:
- An `Overlay` is bound to one network namespace (`None` = the calling thread's) for its life,
  like `Netlink`; errors surface as `OverlayError` naming the object, the namespace and errno.
- Writes use replace semantics (`ip neigh replace`, `bridge fdb replace`), so re-applying the
  same entry is a no-op and a changed MAC/VTEP is corrected in place; deletes of missing
  entries return False instead of failing.
- `open_tun` creates the TUN inside the namespace given (a thread enters it for the ioctl), and
  the returned fd is non-blocking and close-on-exec; the device lives exactly as long as the fd.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from podnet.kernel import netns as netns_ops
from podnet.kernel.links import LinkError, Netlink

log = logging.getLogger(__name__)

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x4
VXLAN_DEFAULT_PORT = 8472  # the Linux kernel's default vxlan port (IANA's is 4789)

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
TUNNEL_SOCKET_BUFFER = 8 << 20

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


class OverlayError(LinkError):
    """An overlay kernel operation failed; `errno` is the kernel's error, if any."""


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    """What a vxlan device should be (`ip link add NAME type vxlan id VNI local ... dev ...`)."""

    name: str
    vni: int
    local: str  # source address of the outer packets (the node's underlay address)
    underlay_index: int  # ifindex of the underlay device (`dev`)
    port: int = VXLAN_DEFAULT_PORT
    learning: bool = False
    mtu: int = 1450
    mac: str | None = None  # None: let the kernel pick a random one


@dataclass(frozen=True, slots=True)
class VxlanInfo:
    """A vxlan device as the kernel reports it."""

    index: int
    name: str
    vni: int | None
    local: str | None
    underlay_index: int | None
    port: int | None
    learning: bool
    mtu: int
    mac: str | None
    up: bool


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A neighbour (ARP) entry: `ip` is reachable at `mac` on the device."""

    ip: str
    mac: str
    permanent: bool


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A vxlan fdb entry: frames for `mac` are sent to the VTEP at `dst`."""

    mac: str
    dst: str | None
    permanent: bool


@dataclass(frozen=True, slots=True)
class RouteLookup:
    """How the kernel would route to an address (`ip route get`)."""

    dst: str
    gateway: str | None
    oif: int | None
    src: str | None


def vxlan_incompat(spec: VxlanSpec, existing: VxlanInfo | None, kind: str | None) -> str | None:
    """Why `existing` cannot serve as `spec` (flannel's `vxlanLinksIncompat`), or None if it can.

    MTU and MAC are not compared: both can be changed in place on a live device.
    """
    if kind != "vxlan" or existing is None:
        return f"it is a {kind or 'plain device'}, not a vxlan device"
    differences = []
    if existing.vni != spec.vni:
        differences.append(f"vni: {existing.vni} vs {spec.vni}")
    if existing.local != spec.local:
        differences.append(f"local: {existing.local} vs {spec.local}")
    if existing.underlay_index != spec.underlay_index:
        differences.append(f"vtep device index: {existing.underlay_index} vs {spec.underlay_index}")
    if existing.port != spec.port:
        differences.append(f"port: {existing.port} vs {spec.port}")
    if existing.learning != spec.learning:
        differences.append(f"learning: {existing.learning} vs {spec.learning}")
    return "; ".join(differences) or None


def _vxlan_info(msg: Any) -> VxlanInfo:
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None

    def attr(name: str) -> Any:
        return data.get_attr(name) if data is not None else None

    return VxlanInfo(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        vni=attr("IFLA_VXLAN_ID"),
        local=attr("IFLA_VXLAN_LOCAL"),
        underlay_index=attr("IFLA_VXLAN_LINK"),
        port=attr("IFLA_VXLAN_PORT"),
        learning=bool(attr("IFLA_VXLAN_LEARNING")),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        mac=msg.get_attr("IFLA_ADDRESS"),
        up=bool(msg["flags"] & 1),
    )


def _link_kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return None
    kind: str | None = info.get_attr("IFLA_INFO_KIND")
    return kind


class Overlay(Netlink):
    """Overlay operations in one namespace. Use as a context manager or call `close()`."""

    error = OverlayError

    def _index(self, name: str) -> int:
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise OverlayError(f"link {name!r} does not exist in {self._where}", errno.ENODEV)
        return int(found[0])

    # vxlan devices ---------------------------------------------------------------------

    def vxlan(self, name: str) -> tuple[str | None, VxlanInfo | None] | None:
        """(kind, info) of the link `name` (info only for vxlan links); None if absent."""
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            return None
        msg = self._call(f"reading {name}", "get_links", found[0])[0]
        kind = _link_kind(msg)
        return kind, (_vxlan_info(msg) if kind == "vxlan" else None)

    def ensure_vxlan(self, spec: VxlanSpec) -> VxlanInfo:
        """The vxlan device of `spec`, up, reusing a compatible one (flannel's `ensureLink`).

        An incompatible device is deleted and rebuilt, and the reason logged. MTU is fixed in
        place. The MAC of a reused device is kept (its peers already know it) unless `spec.mac`
        asks for another one.
        """
        current = self.vxlan(spec.name)
        if current is not None:
            kind, info = current
            reason = vxlan_incompat(spec, info, kind)
            if reason is not None:
                log.warning(
                    "%s in %s exists with an incompatible configuration (%s); recreating it",
                    spec.name,
                    self._where,
                    reason,
                )
                self._call(f"deleting {spec.name}", "link", "del", index=self._index(spec.name))
                current = None
        if current is None:
            kwargs: dict[str, Any] = {
                "ifname": spec.name,
                "kind": "vxlan",
                "vxlan_id": spec.vni,
                "vxlan_local": spec.local,
                "vxlan_link": spec.underlay_index,
                "vxlan_port": spec.port,
                "vxlan_learning": int(spec.learning),
                "mtu": spec.mtu,
            }
            if spec.mac is not None:
                kwargs["address"] = spec.mac
            self._call(f"creating vxlan device {spec.name}", "link", "add", **kwargs)
        index = self._index(spec.name)
        info = self.require_vxlan(spec.name)
        if info.mtu != spec.mtu:
            self._call(f"setting mtu of {spec.name}", "link", "set", index=index, mtu=spec.mtu)
        if spec.mac is not None and info.mac != spec.mac:
            self._call(f"setting MAC of {spec.name}", "link", "set", index=index, address=spec.mac)
        if not info.up:
            self._call(f"bringing {spec.name} up", "link", "set", index=index, state="up")
        up = self.require_vxlan(spec.name)
        if spec.mac is not None and up.mac != spec.mac:  # flannel issue #1795: verify after up
            self._call(
                f"restoring MAC of {spec.name}", "link", "set", index=index, address=spec.mac
            )
            up = self.require_vxlan(spec.name)
        return up

    def require_vxlan(self, name: str) -> VxlanInfo:
        current = self.vxlan(name)
        if current is None or current[1] is None:
            raise OverlayError(f"vxlan device {name!r} does not exist in {self._where}")
        return current[1]

    def set_txqueuelen(self, name: str, length: int) -> None:
        """`ip link set NAME txqueuelen LENGTH` (a TUN's queue towards its reader)."""
        self._call(
            f"setting txqueuelen of {name}", "link", "set", index=self._index(name), txqlen=length
        )

    # neighbours (ARP) ------------------------------------------------------------------

    def neighbours(self, dev: str) -> list[Neighbour]:
        index = self._index(dev)
        msgs = self._call(
            f"listing neighbours of {dev}", "get_neighbours", family=socket.AF_INET, ifindex=index
        )
        out = []
        for msg in msgs:
            if int(msg["ifindex"]) != index:
                continue
            ip, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if ip is None or mac is None:
                continue
            out.append(Neighbour(str(ip), str(mac), bool(msg["state"] & NUD_PERMANENT)))
        return out

    def replace_neighbour(self, dev: str, ip: str, mac: str) -> None:
        """`ip neigh replace IP lladdr MAC dev DEV nud permanent`."""
        self._call(
            f"setting neighbour {ip} -> {mac} on {dev}",
            "neigh",
            "replace",
            dst=ip,
            lladdr=mac,
            ifindex=self._index(dev),
            state=NUD_PERMANENT,
        )

    def delete_neighbour(self, dev: str, ip: str) -> bool:
        try:
            self._ipr.neigh("del", dst=ip, ifindex=self._index(dev), family=socket.AF_INET)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise OverlayError(f"deleting neighbour {ip} on {dev}: {exc}", exc.code) from exc
        return True

    # fdb -------------------------------------------------------------------------------

    def fdb(self, dev: str) -> list[FdbEntry]:
        index = self._index(dev)
        msgs = self._call(
            f"listing fdb of {dev}", "get_neighbours", family=socket.AF_BRIDGE, ifindex=index
        )
        out = []
        for msg in msgs:
            if int(msg["ifindex"]) != index:
                continue
            mac = msg.get_attr("NDA_LLADDR")
            if mac is None:
                continue
            dst = msg.get_attr("NDA_DST")
            out.append(FdbEntry(str(mac), dst, bool(msg["state"] & NUD_PERMANENT)))
        return out

    def replace_fdb(self, dev: str, mac: str, dst: str) -> None:
        """`bridge fdb replace MAC dev DEV dst DST self permanent`."""
        self._call(
            f"setting fdb {mac} -> {dst} on {dev}",
            "neigh",
            "replace",
            family=socket.AF_BRIDGE,
            lladdr=mac,
            dst=dst,
            ifindex=self._index(dev),
            state=NUD_PERMANENT,
            flags=NTF_SELF,
        )

    def delete_fdb(self, dev: str, mac: str, dst: str | None = None) -> bool:
        kwargs: dict[str, Any] = {
            "family": socket.AF_BRIDGE,
            "lladdr": mac,
            "ifindex": self._index(dev),
            "flags": NTF_SELF,
        }
        if dst is not None:
            kwargs["dst"] = dst
        try:
            self._ipr.neigh("del", **kwargs)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise OverlayError(f"deleting fdb {mac} on {dev}: {exc}", exc.code) from exc
        return True

    # route lookups ---------------------------------------------------------------------

    def route_to(self, address: str) -> RouteLookup:
        """How the kernel routes to `address` now (`ip route get ADDRESS`)."""
        msgs = self._call(f"looking up the route to {address}", "route", "get", dst=address)
        msg = msgs[0]
        return RouteLookup(
            dst=address,
            gateway=msg.get_attr("RTA_GATEWAY"),
            oif=msg.get_attr("RTA_OIF"),
            src=msg.get_attr("RTA_PREFSRC"),
        )


def open_tun(name: str, netns: str | None = None, vnet_header: bool = False) -> int:
    """Create TUN device `name` (IFF_TUN | IFF_NO_PI) in `netns`; return its non-blocking fd.

    With `vnet_header` every read and write carries a 10-byte virtio_net_hdr first
    (IFF_VNET_HDR), which lets a writer hand the kernel one GSO packet for a run of TCP
    segments. The device disappears when the fd is closed (it is not persistent), like flannel0.
    """
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_header else 0)

    def create() -> int:
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise OverlayError(
                f"cannot open {TUN_DEVICE}: {exc.strerror} (is the tun module available?)",
                exc.errno,
            ) from exc
        try:
            request = struct.pack("16sH", name.encode(), flags)
            fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            raise OverlayError(
                f"cannot create TUN device {name!r}: {exc.strerror}", exc.errno
            ) from exc
        return fd

    return netns_ops.call_in(netns, create)


def udp_socket(address: str, port: int, netns: str | None = None) -> socket.socket:
    """A UDP socket bound to `address:port` inside `netns` (it stays in that namespace)."""

    def create() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # a tunnel socket carries every pod flow of the node: give it room for bursts,
            # past net.core.rmem_max/wmem_max when allowed (root), else up to those limits
            for forced, plain in (
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
            ):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, forced, TUNNEL_SOCKET_BUFFER)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, TUNNEL_SOCKET_BUFFER)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            raise OverlayError(
                f"cannot bind UDP {address}:{port}: {exc.strerror} (another flannel running?)",
                exc.errno,
            ) from exc
        return sock

    return netns_ops.call_in(netns, create)
