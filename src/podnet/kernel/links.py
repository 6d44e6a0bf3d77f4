"""Links, addresses and routes of one network namespace, through rtnetlink (pyroute2).

`Netlink(netns)` is a small typed adapter over `pyroute2.IPRoute`: callers pass names and CIDR
strings and get frozen dataclasses (`Link`, `Address`, `Route`) back; no pyroute2 message
leaves this module. `FakeNetlink` is the in-memory twin for unit tests of code that plans
links and routes; `NetlinkApi` is the protocol both implement (checked by mypy).

Invariants:
- `ensure_*` methods are idempotent: they create what is missing, fix what differs and, when
  they must rebuild an object, log why (flannel's `ensureLink` habit).
- A `Netlink` is bound to one namespace for its whole life (`None` = the namespace of the
  thread that opens it). Netlink errors surface as `LinkError` naming the object and the
  errno text, never as a bare `NetlinkError`.
- Only IPv4 is managed (the cluster is single-stack).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

log = logging.getLogger(__name__)

IFF_UP = 0x1
MAIN_TABLE = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255  # in a delete request: match a route of any scope (what `ip` sends)
RTNH_F_ONLINK = 0x4
BRIDGE_MODE_HAIRPIN = 1
RTPROT_KERNEL = 2
RTPROT_STATIC = 4
# address requests sent in one write by add_addresses/delete_addresses: ~100 bytes each, with
# their acks well inside the socket buffers
ADDRESS_BATCH = 256


class LinkError(Exception):
    """A link/address/route operation failed; `errno` is the kernel's error, if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str | None  # "bridge", "veth", "vxlan", "tun", None for lo and physical devices
    mtu: int
    mac: str | None
    up: bool  # administratively up (IFF_UP)
    oper_state: str  # "UP", "DOWN", "UNKNOWN", "LOWERLAYERDOWN", ...
    master: int | None  # index of the bridge this link is a port of
    # IFLA_LINK: for a veth, its peer's index (an index in the peer's namespace)
    link_index: int | None = None
    gso_max_segs: int | None = None  # IFLA_GSO_MAX_SEGS: most segments of one GSO packet

    @property
    def running(self) -> bool:
        """Carrier is up: operstate UP, or UNKNOWN for devices without carrier (lo, tun)."""
        return self.up and self.oper_state in ("UP", "UNKNOWN")


@dataclass(frozen=True, slots=True)
class Address:
    ifindex: int
    address: str  # "10.244.1.1"
    prefixlen: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.cidr)


@dataclass(frozen=True, slots=True)
class Route:
    dst: str  # a network in CIDR form; "0.0.0.0/0" is the default route
    gateway: str | None = None
    oif: int | None = None
    onlink: bool = False
    src: str | None = None  # preferred source address
    scope: int = RT_SCOPE_UNIVERSE
    table: int = MAIN_TABLE
    proto: int = RTPROT_STATIC

    @property
    def is_default(self) -> bool:
        return self.dst == "0.0.0.0/0"


def normalize_cidr(dst: str) -> str:
    """`default` or an address/prefix -> the network in CIDR form ("10.244.0.0/16")."""
    if dst == "default":
        return "0.0.0.0/0"
    try:
        return str(ipaddress.IPv4Network(dst, strict=False))
    except ValueError as exc:
        raise LinkError(f"{dst!r} is not an IPv4 network: {exc}") from None


def _kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return None
    kind: str | None = info.get_attr("IFLA_INFO_KIND")
    return kind


def _to_link(msg: Any) -> Link:
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=_kind(msg),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        mac=msg.get_attr("IFLA_ADDRESS"),
        up=bool(msg["flags"] & IFF_UP),
        oper_state=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
        master=msg.get_attr("IFLA_MASTER"),
        link_index=msg.get_attr("IFLA_LINK"),
        gso_max_segs=msg.get_attr("IFLA_GSO_MAX_SEGS"),
    )


def _to_route(msg: Any) -> Route:
    dst = msg.get_attr("RTA_DST")
    length = int(msg["dst_len"])
    return Route(
        dst=normalize_cidr(f"{dst}/{length}" if dst else f"0.0.0.0/{length}"),
        gateway=msg.get_attr("RTA_GATEWAY"),
        oif=msg.get_attr("RTA_OIF"),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
        src=msg.get_attr("RTA_PREFSRC"),
        scope=int(msg["scope"]),
        table=int(msg.get_attr("RTA_TABLE") or msg["table"]),
        proto=int(msg["proto"]),
    )


class NetlinkApi(Protocol):
    """The surface `Netlink` and `FakeNetlink` share: type code against this to accept both."""

    netns: str | None

    def close(self) -> None: ...
    def links(self) -> list[Link]: ...
    def link(self, name: str) -> Link | None: ...
    def link_by_index(self, index: int) -> Link | None: ...
    def require(self, name: str) -> Link: ...
    def ensure_bridge(self, name: str, mtu: int | None = None) -> Link: ...
    def create_veth(
        self,
        name: str,
        peer_name: str,
        peer_netns: str | None = None,
        mtu: int | None = None,
        peer_gso_max_segs: int | None = None,
    ) -> Link: ...
    def create_tap(self, name: str, mtu: int | None = None) -> Link: ...
    def set_up(self, name: str) -> None: ...
    def set_mtu(self, name: str, mtu: int) -> None: ...
    def set_master(self, name: str, master: str | None) -> None: ...
    def set_hairpin(self, name: str, on: bool = True) -> None: ...
    def hairpin(self, name: str) -> bool: ...
    def delete_link(self, name: str) -> bool: ...
    def wait_running(self, name: str, timeout: float = 2.0) -> Link: ...
    def addresses(self, name: str | None = None) -> list[Address]: ...
    def ensure_address(self, name: str, cidr: str, label: str | None = None) -> bool: ...
    def add_addresses(self, name: str, cidrs: Sequence[str], label: str | None = None) -> int: ...
    def delete_addresses(self, name: str, cidrs: Sequence[str]) -> int: ...
    def labelled_addresses(self, label: str) -> list[Address]: ...
    def ensure_dummy(self, name: str) -> Link | None: ...
    def delete_address(self, name: str, cidr: str) -> bool: ...
    def flush_addresses(self, name: str) -> int: ...
    def routes(self, table: int = MAIN_TABLE) -> list[Route]: ...
    def replace_route(
        self,
        dst: str,
        gateway: str | None = None,
        dev: str | None = None,
        onlink: bool = False,
        src: str | None = None,
        scope: int | None = None,
        table: int = MAIN_TABLE,
    ) -> Route: ...
    def delete_route(self, dst: str, table: int = MAIN_TABLE) -> bool: ...


class Netlink:
    """rtnetlink for one namespace. Use as a context manager or call `close()`.

    Subclasses that add operations (the overlay's vxlan/neighbour/fdb calls) set `error` to
    their own `LinkError` subclass; every failure is raised as that type.
    """

    error: type[LinkError] = LinkError

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        where = f"network namespace {netns!r}" if netns else "this namespace"
        self._where = where
        try:
            self._ipr = IPRoute(netns=netns) if netns else IPRoute()
        except (OSError, NetlinkError) as exc:
            raise self.error(f"cannot open netlink in {where}: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise self.error(
                f"{what} in {self._where} failed: {os.strerror(exc.code)}", exc.code
            ) from exc

    # links ---------------------------------------------------------------------------

    def links(self) -> list[Link]:
        return [_to_link(m) for m in self._call("listing links", "get_links")]

    def link(self, name: str) -> Link | None:
        indexes = self._ipr.link_lookup(ifname=name)
        return self.link_by_index(indexes[0]) if indexes else None

    def link_by_index(self, index: int) -> Link | None:
        try:
            msgs = self._ipr.get_links(index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise LinkError(f"reading link {index} in {self._where}: {exc}", exc.code) from exc
        return _to_link(msgs[0]) if msgs else None

    def require(self, name: str) -> Link:
        found = self.link(name)
        if found is None:
            raise LinkError(f"link {name!r} does not exist in {self._where}", errno.ENODEV)
        return found

    def ensure_bridge(self, name: str, mtu: int | None = None) -> Link:
        """A bridge `name`, up, with `mtu`; its MAC pinned so joining ports cannot change it.

        An existing link of another kind is deleted and rebuilt (logged with the reason).
        """
        existing = self.link(name)
        if existing is not None and existing.kind != "bridge":
            log.warning(
                "rebuilding %s in %s: it is a %s, not a bridge",
                name,
                self._where,
                existing.kind or "plain device",
            )
            self.delete_link(name)
            existing = None
        if existing is None:
            try:
                self._call(f"creating bridge {name}", "link", "add", ifname=name, kind="bridge")
            except LinkError as exc:
                if exc.errno != errno.EEXIST:  # EEXIST: a concurrent caller made it first
                    raise
            bridge = self.require(name)
            # a bridge takes the lowest MAC of its ports unless one was set explicitly;
            # pinning it keeps the gateway's MAC stable (upstream bridge plugin does this)
            if bridge.mac:
                self._call(
                    f"pinning MAC of {name}", "link", "set", index=bridge.index, address=bridge.mac
                )
        bridge = self.require(name)
        if mtu is not None and bridge.mtu != mtu:
            self._call(f"setting mtu of {name}", "link", "set", index=bridge.index, mtu=mtu)
        if not bridge.up:
            self._call(f"bringing {name} up", "link", "set", index=bridge.index, state="up")
        return self.require(name)

    def create_veth(
        self,
        name: str,
        peer_name: str,
        peer_netns: str | None = None,
        mtu: int | None = None,
        peer_gso_max_segs: int | None = None,
    ) -> Link:
        """A veth pair: `name` here, `peer_name` in `peer_netns` (a name or path) or here.

        The peer is created directly inside its namespace under its final name, so there is
        no moment where a half-configured pair is visible under a temporary name.
        `peer_gso_max_segs` caps the segments of the peer's GSO packets (what its sockets'
        TCP builds), set at creation so every socket sees it.
        """
        peer: dict[str, Any] = {"ifname": peer_name}
        if peer_netns is not None:
            peer["net_ns_fd"] = peer_netns
        if mtu is not None:
            peer["mtu"] = mtu
        if peer_gso_max_segs is not None:
            peer["gso_max_segs"] = peer_gso_max_segs
        kwargs: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer}
        if mtu is not None:
            kwargs["mtu"] = mtu
        self._call(f"creating veth {name} <-> {peer_name}", "link", "add", **kwargs)
        return self.require(name)

    def create_tap(self, name: str, mtu: int | None = None) -> Link:
        """A persistent tap device (what a VM's virtio-net attaches to; qemu opens it by
        name). It outlives the process that uses it until `delete_link`."""
        self._call(f"creating tap {name}", "link", "add", ifname=name, kind="tuntap", mode="tap")
        if mtu is not None:
            self.set_mtu(name, mtu)
        return self.require(name)

    def set_up(self, name: str) -> None:
        self._call(f"bringing {name} up", "link", "set", index=self.require(name).index, state="up")

    def set_mtu(self, name: str, mtu: int) -> None:
        self._call(
            f"setting mtu {mtu} on {name}", "link", "set", index=self.require(name).index, mtu=mtu
        )

    def set_master(self, name: str, master: str | None) -> None:
        """Make `name` a port of bridge `master` (None: release it from its bridge)."""
        index = self.require(name).index
        master_index = self.require(master).index if master else 0
        self._call(f"setting master of {name}", "link", "set", index=index, master=master_index)

    def set_hairpin(self, name: str, on: bool = True) -> None:
        """Hairpin mode on a bridge port: frames may leave by the port they came in on."""
        index = self.require(name).index
        self._call(f"setting hairpin on {name}", "brport", "set", index=index, mode=int(on))

    def hairpin(self, name: str) -> bool:
        """Whether hairpin mode is on for the bridge port `name` (False if not a port)."""
        index = self.require(name).index
        for msg in self._call(f"reading bridge port {name}", "brport", "show", index=index):
            protinfo = msg.get_attr("IFLA_PROTINFO")
            if protinfo is not None:
                return bool(protinfo.get_attr("IFLA_BRPORT_MODE"))
        return False

    def delete_link(self, name: str) -> bool:
        """Delete a link (a veth takes its peer with it); False if it did not exist."""
        found = self.link(name)
        if found is None:
            return False
        try:
            self._ipr.link("del", index=found.index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise LinkError(f"deleting {name} in {self._where}: {exc}", exc.code) from exc
        return True

    def wait_running(self, name: str, timeout: float = 2.0) -> Link:
        """Wait until the link has carrier (a fresh veth needs a moment after both ends are up)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.require(name)
            if found.running or time.monotonic() >= deadline:
                return found
            time.sleep(0.01)

    # addresses -----------------------------------------------------------------------

    def addresses(self, name: str | None = None) -> list[Address]:
        kwargs: dict[str, Any] = {"family": socket.AF_INET}
        if name is not None:
            kwargs["index"] = self.require(name).index
        return [
            Address(int(m["index"]), str(m.get_attr("IFA_ADDRESS")), int(m["prefixlen"]))
            for m in self._call("listing addresses", "get_addr", **kwargs)
        ]

    def ensure_address(self, name: str, cidr: str, label: str | None = None) -> bool:
        """Add `cidr` ("10.244.1.1/24") to the link unless present; True if it was added.

        `label` (IFA_LABEL, "<ifname>:<tag>", at most 15 characters) marks addresses a
        component owns on a shared device such as `lo`; `labelled_addresses` finds them.
        """
        iface = ipaddress.IPv4Interface(cidr)
        for have in self.addresses(name):
            if have.interface == iface:
                return False
        index = self.require(name).index
        extra: dict[str, Any] = {"label": label} if label is not None else {}
        try:
            self._call(
                f"adding {cidr} to {name}",
                "addr",
                "add",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **extra,
            )
        except LinkError as exc:
            if exc.errno == errno.EEXIST:  # a concurrent caller added it first
                return False
            raise
        return True

    def add_addresses(self, name: str, cidrs: Sequence[str], label: str | None = None) -> int:
        """Add many addresses to the link; those it already has stay as they are.

        For thousands of addresses (ipvs mode's ClusterIPs): `ensure_address` lists the
        link's addresses before each add, so n adds cost O(n^2); here the requests go
        `ADDRESS_BATCH` to a write (NLM_F_REPLACE: an address present is no error) and the
        acks are read back. Returns how many requests the kernel acknowledged (all of them
        on success); raises naming the addresses that did not get onto the link.
        """
        index = self.require(name).index
        extra = [("IFA_LABEL", label)] if label is not None else []
        ifaces = [ipaddress.IPv4Interface(cidr) for cidr in cidrs]
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        acked = self._address_batches(
            f"adding addresses to {name}", RTM_NEWADDR, flags, index, ifaces, extra
        )
        if acked < len(ifaces):
            have = {a.interface for a in self.addresses(name)}
            self._refused(f"adding {len(ifaces)} addresses to {name}", ifaces, have, False)
        return acked

    def delete_addresses(self, name: str, cidrs: Sequence[str]) -> int:
        """Delete many addresses from the link, `ADDRESS_BATCH` requests to a write; those
        already gone are skipped. Returns how many were deleted; raises naming the addresses
        still on the link when the kernel refused to delete them."""
        found = self.link(name)
        if found is None or not cidrs:
            return 0
        ifaces = [ipaddress.IPv4Interface(cidr) for cidr in cidrs]
        flags = NLM_F_REQUEST | NLM_F_ACK
        acked = self._address_batches(
            f"deleting addresses from {name}", RTM_DELADDR, flags, found.index, ifaces, []
        )
        if acked < len(ifaces):
            have = {a.interface for a in self.addresses(name)}
            self._refused(f"deleting {len(ifaces)} addresses from {name}", ifaces, have, True)
        return acked

    def _refused(
        self,
        what: str,
        ifaces: list[ipaddress.IPv4Interface],
        have: set[ipaddress.IPv4Interface],
        deleting: bool,
    ) -> None:
        """Raise naming the addresses a batch did not change (still there after a delete,
        not there after an add); nothing when every one is as asked (already so before)."""
        refused = [str(i) for i in ifaces if (i in have) == deleting]
        if refused:
            more = ", ..." if len(refused) > 5 else ""
            raise self.error(
                f"{what} in {self._where}: {len(refused)} refused ({', '.join(refused[:5])}{more})"
            )

    def _address_batches(
        self,
        what: str,
        kind: int,
        flags: int,
        index: int,
        ifaces: list[ipaddress.IPv4Interface],
        extra: list[tuple[str, str]],
    ) -> int:
        """Send one address request per interface, batched; how many the kernel acked (an
        error answer is not counted: the callers check the link to tell which failed)."""
        acked = 0
        for start in range(0, len(ifaces), ADDRESS_BATCH):
            msgs = []
            for iface in ifaces[start : start + ADDRESS_BATCH]:
                msg = ifaddrmsg()
                msg["family"] = socket.AF_INET
                msg["prefixlen"] = iface.network.prefixlen
                msg["index"] = index
                address = str(iface.ip)
                msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address), *extra]
                msg["header"]["type"] = kind
                msg["header"]["flags"] = flags
                msgs.append(msg)
            answers = self._call(what, "nlm_request_batch", msgs, noraise=True)
            acked += sum(1 for answer in answers if answer.get("error") == 0)
        return acked

    def labelled_addresses(self, label: str) -> list[Address]:
        """IPv4 addresses carrying exactly this IFA_LABEL, on any link."""
        return [
            Address(int(m["index"]), str(m.get_attr("IFA_ADDRESS")), int(m["prefixlen"]))
            for m in self._call("listing addresses", "get_addr", family=socket.AF_INET)
            if m.get_attr("IFA_LABEL") == label
        ]

    def ensure_dummy(self, name: str) -> Link | None:
        """A dummy link (created down, like kube-ipvs0); None when the kernel has no dummy
        driver (EOPNOTSUPP), so callers can choose another holder for local addresses."""
        existing = self.link(name)
        if existing is not None:
            if existing.kind == "dummy":
                return existing
            raise self.error(f"link {name!r} exists in {self._where} but is a {existing.kind}")
        try:
            self._ipr.link("add", ifname=name, kind="dummy")
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.ENOENT):
                return None
            if exc.code != errno.EEXIST:
                raise self.error(
                    f"creating dummy {name} in {self._where} failed: {os.strerror(exc.code)}",
                    exc.code,
                ) from exc
        return self.require(name)

    def delete_address(self, name: str, cidr: str) -> bool:
        iface = ipaddress.IPv4Interface(cidr)
        found = self.link(name)
        if found is None:
            return False
        try:
            self._ipr.addr(
                "del", index=found.index, address=str(iface.ip), prefixlen=iface.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code == errno.EADDRNOTAVAIL:
                return False
            raise LinkError(f"deleting {cidr} from {name}: {exc}", exc.code) from exc
        return True

    def flush_addresses(self, name: str) -> int:
        """Remove every IPv4 address of the link; returns how many were removed."""
        removed = 0
        for have in self.addresses(name):
            removed += self.delete_address(name, have.cidr)
        return removed

    # routes --------------------------------------------------------------------------

    def routes(self, table: int = MAIN_TABLE) -> list[Route]:
        msgs = self._call("listing routes", "get_routes", family=socket.AF_INET, table=table)
        return [_to_route(m) for m in msgs if int(m.get_attr("RTA_TABLE") or m["table"]) == table]

    def replace_route(
        self,
        dst: str,
        gateway: str | None = None,
        dev: str | None = None,
        onlink: bool = False,
        src: str | None = None,
        scope: int | None = None,
        table: int = MAIN_TABLE,
    ) -> Route:
        """`ip route replace DST [via GW] [dev DEV] [onlink] [src SRC]`; returns the route."""
        network = normalize_cidr(dst)
        kwargs: dict[str, Any] = {"dst": network, "table": table, "proto": RTPROT_STATIC}
        oif: int | None = None
        if dev is not None:
            oif = self.require(dev).index
            kwargs["oif"] = oif
        if gateway is not None:
            kwargs["gateway"] = gateway
        if onlink:
            kwargs["flags"] = RTNH_F_ONLINK
        if src is not None:
            kwargs["prefsrc"] = src
        if scope is None:
            scope = RT_SCOPE_LINK if gateway is None and dev is not None else RT_SCOPE_UNIVERSE
        kwargs["scope"] = scope
        self._call(f"replacing route {network}", "route", "replace", **kwargs)
        return Route(network, gateway, oif, onlink, src, scope, table, RTPROT_STATIC)

    def delete_route(self, dst: str, table: int = MAIN_TABLE) -> bool:
        """Delete the route to `dst` in `table`; False if there was none."""
        network = normalize_cidr(dst)
        try:
            self._ipr.route("del", dst=network, table=table, scope=RT_SCOPE_NOWHERE)
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT):
                return False
            raise LinkError(f"deleting route {network}: {exc}", exc.code) from exc
        return True


class FakeNetlink:
    """In-memory `Netlink` for unit tests: links, addresses and routes of one namespace.

    It checks what the kernel would refuse (duplicate names, missing devices, non-bridge
    masters) so planner bugs show up without root.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._links: dict[int, Link] = {1: Link(1, "lo", None, 65536, None, False, "UNKNOWN", None)}
        self._addresses: list[Address] = []
        self._routes: list[Route] = []
        self._next_index = 2
        self.peers: dict[str, tuple[str, str | None]] = {}  # veth name -> (peer, peer netns)
        self.hairpins: set[str] = set()
        self.labels: dict[Address, str] = {}  # IFA_LABEL of each address
        self.dummy_supported = True  # False: a kernel without the dummy driver

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        return None

    def _add(self, name: str, kind: str | None, mtu: int = 1500) -> Link:
        if self.link(name) is not None:
            raise LinkError(f"link {name!r} already exists", errno.EEXIST)
        link = Link(
            self._next_index,
            name,
            kind,
            mtu,
            f"02:00:00:00:00:{self._next_index:02x}",
            False,
            "DOWN",
            None,
        )
        self._links[link.index] = link
        self._next_index += 1
        return link

    def _update(self, name: str, **changes: Any) -> None:
        link = self.require(name)
        self._links[link.index] = replace(link, **changes)

    def links(self) -> list[Link]:
        return sorted(self._links.values(), key=lambda link: link.index)

    def link(self, name: str) -> Link | None:
        return next((lk for lk in self._links.values() if lk.name == name), None)

    def link_by_index(self, index: int) -> Link | None:
        return self._links.get(index)

    def require(self, name: str) -> Link:
        found = self.link(name)
        if found is None:
            raise LinkError(f"link {name!r} does not exist", errno.ENODEV)
        return found

    def ensure_bridge(self, name: str, mtu: int | None = None) -> Link:
        existing = self.link(name)
        if existing is not None and existing.kind != "bridge":
            self.delete_link(name)
            existing = None
        if existing is None:
            self._add(name, "bridge")
        if mtu is not None:
            self._update(name, mtu=mtu)
        self._update(name, up=True, oper_state="UP")
        return self.require(name)

    def create_veth(
        self,
        name: str,
        peer_name: str,
        peer_netns: str | None = None,
        mtu: int | None = None,
        peer_gso_max_segs: int | None = None,
    ) -> Link:
        if peer_gso_max_segs is not None and peer_gso_max_segs > 65535:  # GSO_MAX_SEGS
            raise LinkError(f"too big gso_max_segs {peer_gso_max_segs}", errno.EINVAL)
        link = self._add(name, "veth", mtu or 1500)
        self.peers[name] = (peer_name, peer_netns)
        if peer_netns is None:
            self._add(peer_name, "veth", mtu or 1500)
            self.peers[peer_name] = (name, None)
            if peer_gso_max_segs is not None:
                self._update(peer_name, gso_max_segs=peer_gso_max_segs)
        return link

    def create_tap(self, name: str, mtu: int | None = None) -> Link:
        return self._add(name, "tun", mtu or 1500)

    def set_up(self, name: str) -> None:
        self._update(name, up=True, oper_state="UP")

    def set_mtu(self, name: str, mtu: int) -> None:
        self._update(name, mtu=mtu)

    def set_master(self, name: str, master: str | None) -> None:
        if master is None:
            self._update(name, master=None)
            return
        bridge = self.require(master)
        if bridge.kind != "bridge":
            raise LinkError(f"{master!r} is not a bridge", errno.EINVAL)
        self._update(name, master=bridge.index)

    def set_hairpin(self, name: str, on: bool = True) -> None:
        if self.require(name).master is None:
            raise LinkError(f"{name!r} is not a bridge port", errno.EOPNOTSUPP)
        if on:
            self.hairpins.add(name)
        else:
            self.hairpins.discard(name)

    def hairpin(self, name: str) -> bool:
        self.require(name)
        return name in self.hairpins

    def delete_link(self, name: str) -> bool:
        found = self.link(name)
        if found is None:
            return False
        del self._links[found.index]
        self._addresses = [a for a in self._addresses if a.ifindex != found.index]
        self._routes = [r for r in self._routes if r.oif != found.index]
        peer = self.peers.pop(name, None)
        if peer is not None and peer[1] is None:
            self.peers.pop(peer[0], None)
            self.delete_link(peer[0])
        return True

    def wait_running(self, name: str, timeout: float = 2.0) -> Link:
        return self.require(name)

    def addresses(self, name: str | None = None) -> list[Address]:
        if name is None:
            return list(self._addresses)
        index = self.require(name).index
        return [a for a in self._addresses if a.ifindex == index]

    def ensure_address(self, name: str, cidr: str, label: str | None = None) -> bool:
        iface = ipaddress.IPv4Interface(cidr)
        if any(a.interface == iface for a in self.addresses(name)):
            return False
        link = self.require(name)
        address = Address(link.index, str(iface.ip), iface.network.prefixlen)
        self._addresses.append(address)
        self.labels[address] = label or name
        return True

    def add_addresses(self, name: str, cidrs: Sequence[str], label: str | None = None) -> int:
        for cidr in cidrs:
            self.ensure_address(name, cidr, label)
        return len(cidrs)

    def delete_addresses(self, name: str, cidrs: Sequence[str]) -> int:
        if self.link(name) is None:
            return 0
        return sum(self.delete_address(name, cidr) for cidr in cidrs)

    def labelled_addresses(self, label: str) -> list[Address]:
        return [a for a in self._addresses if self.labels.get(a) == label]

    def ensure_dummy(self, name: str) -> Link | None:
        if not self.dummy_supported:
            return None
        existing = self.link(name)
        if existing is not None:
            if existing.kind != "dummy":
                raise LinkError(f"link {name!r} exists but is a {existing.kind}", errno.EEXIST)
            return existing
        return self._add(name, "dummy")

    def delete_address(self, name: str, cidr: str) -> bool:
        iface = ipaddress.IPv4Interface(cidr)
        before = len(self._addresses)
        self._addresses = [a for a in self._addresses if a.interface != iface]
        return len(self._addresses) != before

    def flush_addresses(self, name: str) -> int:
        return sum(self.delete_address(name, a.cidr) for a in self.addresses(name))

    def routes(self, table: int = MAIN_TABLE) -> list[Route]:
        return [r for r in self._routes if r.table == table]

    def replace_route(
        self,
        dst: str,
        gateway: str | None = None,
        dev: str | None = None,
        onlink: bool = False,
        src: str | None = None,
        scope: int | None = None,
        table: int = MAIN_TABLE,
    ) -> Route:
        network = normalize_cidr(dst)
        oif = self.require(dev).index if dev is not None else None
        if scope is None:
            scope = RT_SCOPE_LINK if gateway is None and dev is not None else RT_SCOPE_UNIVERSE
        route = Route(network, gateway, oif, onlink, src, scope, table, RTPROT_STATIC)
        self._routes = [r for r in self._routes if (r.dst, r.table) != (network, table)]
        self._routes.append(route)
        return route

    def delete_route(self, dst: str, table: int = MAIN_TABLE) -> bool:
        network = normalize_cidr(dst)
        before = len(self._routes)
        self._routes = [r for r in self._routes if (r.dst, r.table) != (network, table)]
        return len(self._routes) != before


if TYPE_CHECKING:  # mypy proves both classes implement `NetlinkApi`; nothing runs here

    def _conforms(real: Netlink, fake: FakeNetlink) -> tuple[NetlinkApi, NetlinkApi]:
        return real, fake
