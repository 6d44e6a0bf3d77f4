"""Everything one network namespace's kernel says about where a packet goes, read at once.

What belongs here: `read_inventory(netns)` — links (kind, MAC, bridge master, veth peer index,
vxlan VNI / local address / port / underlay device), IPv4 addresses, the routes of every table
with their type (unicast, local, broadcast, ...), the policy rules, neighbour entries, bridge and
vxlan fdb entries, the forwarding sysctls and the TCP/UDP sockets bound to a port — as frozen
dataclasses that convert to and from plain JSON (`inventory_to_dict`, `inventory_from_dict`),
so a trace's snapshot can be saved and replayed without a kernel. The packet filter's text
(iptables-save, `nft -a list ruleset`) is read through `podnet.kernel.rules`.

Invariants: read-only, IPv4 only, everything through pyroute2 (rtnetlink and sock_diag); a
namespace that vanishes while it is read raises `InventoryError` naming it.
"""

from __future__ import annotations

import re
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pyroute2 import DiagSocket, IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.kernel import netns as netns_ops
from podnet.kernel import sysctl

RTN_TYPES = {
    1: "unicast",
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
}
RT_TABLES = {253: "default", 254: "main", 255: "local"}
RTNH_F_ONLINK = 0x4
NUD_STATES = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}
NTF_SELF = 0x02
NTF_MASTER = 0x04
TCP_LISTEN = 10
UDP_UNCONNECTED = 7  # TCP_CLOSE: a bound UDP socket with no peer


class InventoryError(Exception):
    """The namespace could not be read (it vanished, or netlink refused)."""


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    name: str
    kind: str | None  # bridge, veth, vxlan, tun, None (lo, physical)
    mac: str | None
    mtu: int
    up: bool
    master: int | None  # index of the bridge this link is a port of
    peer_index: int | None = None  # IFLA_LINK: a veth's peer (an index in the peer's netns)
    vni: int | None = None  # vxlan only
    vxlan_local: str | None = None
    vxlan_port: int | None = None
    vxlan_underlay: int | None = None
    hairpin: bool = False  # bridge ports only


@dataclass(frozen=True, slots=True)
class AddressInfo:
    index: int
    address: str
    prefixlen: int


@dataclass(frozen=True, slots=True)
class RouteInfo:
    table: int
    type: str  # unicast, local, broadcast, blackhole, unreachable, ...
    dst: str  # CIDR; 0.0.0.0/0 for the default route
    gateway: str | None = None
    oif: int | None = None
    src: str | None = None  # preferred source address
    scope: int = 0
    onlink: bool = False
    metric: int = 0

    @property
    def table_name(self) -> str:
        return RT_TABLES.get(self.table, str(self.table))


@dataclass(frozen=True, slots=True)
class RuleInfo:
    priority: int
    table: int
    action: int  # 1: look up the table (FR_ACT_TO_TBL); others are not followed


@dataclass(frozen=True, slots=True)
class NeighbourInfo:
    index: int
    ip: str
    mac: str | None
    state: str  # PERMANENT, REACHABLE, STALE, ...


@dataclass(frozen=True, slots=True)
class FdbInfo:
    index: int  # the port (or the vxlan device) the entry belongs to
    mac: str
    dst: str | None  # vxlan: the remote VTEP address
    master: int | None  # the bridge of a port's entry
    local: bool  # the bridge's own address on that port (delivered up, not forwarded)
    self_entry: bool  # NTF_SELF: the device's own table (vxlan), not the bridge's


@dataclass(frozen=True, slots=True)
class SocketInfo:
    protocol: str  # tcp (listening) or udp (bound)
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Inventory:
    netns: str
    links: tuple[LinkInfo, ...]
    addresses: tuple[AddressInfo, ...]
    routes: tuple[RouteInfo, ...]
    rules: tuple[RuleInfo, ...]
    neighbours: tuple[NeighbourInfo, ...]
    fdb: tuple[FdbInfo, ...]
    sockets: tuple[SocketInfo, ...]
    ip_forward: bool
    bridge_nf_call_iptables: bool | None  # None: br_netfilter is not loaded

    def link(self, index: int | None) -> LinkInfo | None:
        return next((lk for lk in self.links if lk.index == index), None)

    def link_named(self, name: str) -> LinkInfo | None:
        return next((lk for lk in self.links if lk.name == name), None)

    def addresses_of(self, index: int) -> list[AddressInfo]:
        return [a for a in self.addresses if a.index == index]


_PARTS: dict[str, type[Any]] = {
    "links": LinkInfo,
    "addresses": AddressInfo,
    "routes": RouteInfo,
    "rules": RuleInfo,
    "neighbours": NeighbourInfo,
    "fdb": FdbInfo,
    "sockets": SocketInfo,
}


def inventory_to_dict(inv: Inventory) -> dict[str, Any]:
    return asdict(inv)


def inventory_from_dict(raw: dict[str, Any]) -> Inventory:
    parts = {key: tuple(kind(**item) for item in raw[key]) for key, kind in _PARTS.items()}
    return Inventory(
        netns=raw["netns"],
        ip_forward=bool(raw["ip_forward"]),
        bridge_nf_call_iptables=raw["bridge_nf_call_iptables"],
        **parts,
    )


def restrict(inv: Inventory, indexes: set[int]) -> Inventory:
    """Only what concerns these links (the host namespace holds every lab's underlay; a
    trace needs one bridge and its ports)."""
    return replace(
        inv,
        links=tuple(lk for lk in inv.links if lk.index in indexes),
        addresses=tuple(a for a in inv.addresses if a.index in indexes),
        routes=tuple(r for r in inv.routes if r.oif in indexes),
        neighbours=tuple(n for n in inv.neighbours if n.index in indexes),
        fdb=tuple(f for f in inv.fdb if f.index in indexes),
        sockets=(),
    )


def _link(msg: Any, hairpins: dict[int, bool]) -> LinkInfo:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None and kind == "vxlan" else None

    def vx(name: str) -> Any:
        return data.get_attr(name) if data is not None else None

    index = int(msg["index"])
    return LinkInfo(
        index=index,
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=kind,
        mac=msg.get_attr("IFLA_ADDRESS"),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        up=bool(msg["flags"] & 1),
        master=msg.get_attr("IFLA_MASTER"),
        peer_index=msg.get_attr("IFLA_LINK") if kind == "veth" else None,
        vni=vx("IFLA_VXLAN_ID"),
        vxlan_local=vx("IFLA_VXLAN_LOCAL"),
        vxlan_port=vx("IFLA_VXLAN_PORT"),
        vxlan_underlay=vx("IFLA_VXLAN_LINK"),
        hairpin=hairpins.get(index, False),
    )


def _route(msg: Any) -> RouteInfo:
    dst = msg.get_attr("RTA_DST")
    length = int(msg["dst_len"])
    return RouteInfo(
        table=int(msg.get_attr("RTA_TABLE") or msg["table"]),
        type=RTN_TYPES.get(int(msg["type"]), str(msg["type"])),
        dst=f"{dst or '0.0.0.0'}/{length}",
        gateway=msg.get_attr("RTA_GATEWAY"),
        oif=msg.get_attr("RTA_OIF"),
        src=msg.get_attr("RTA_PREFSRC"),
        scope=int(msg["scope"]),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
        metric=int(msg.get_attr("RTA_PRIORITY") or 0),
    )


def _state(value: int) -> str:
    names = [name for bit, name in NUD_STATES.items() if value & bit]
    return "|".join(names) or "NONE"


def _hairpins(ipr: IPRoute, links: list[Any]) -> dict[int, bool]:
    found: dict[int, bool] = {}
    for msg in links:
        if msg.get_attr("IFLA_MASTER") is None:
            continue
        index = int(msg["index"])
        for port in ipr.brport("show", index=index):
            protinfo = port.get_attr("IFLA_PROTINFO")
            if protinfo is not None:
                found[index] = bool(protinfo.get_attr("IFLA_BRPORT_MODE"))
    return found


def _sockets() -> tuple[SocketInfo, ...]:
    out: list[SocketInfo] = []
    with DiagSocket() as diag:
        diag.bind()
        for protocol, number, states in (
            ("tcp", socket.IPPROTO_TCP, 1 << TCP_LISTEN),
            ("udp", socket.IPPROTO_UDP, 1 << UDP_UNCONNECTED),
        ):
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in diag.get_sock_stats(family=family, protocol=number, states=states):
                    address = str(msg["idiag_src"])
                    if family == socket.AF_INET6:
                        if address != "::":
                            continue  # only a wildcard IPv6 socket also takes IPv4
                        address = "0.0.0.0"
                    out.append(SocketInfo(protocol, address, int(msg["idiag_sport"])))
    return tuple(sorted(set(out), key=lambda s: (s.protocol, s.port, s.address)))


def read_inventory(netns: str | None) -> Inventory:
    """Read everything above from `netns` (None: the calling thread's namespace)."""
    where = netns or "this namespace"

    def read() -> Inventory:
        with IPRoute() as ipr:
            raw_links = list(ipr.get_links())
            hairpins = _hairpins(ipr, raw_links)
            links = tuple(_link(m, hairpins) for m in raw_links)
            addresses = tuple(
                AddressInfo(int(m["index"]), str(m.get_attr("IFA_ADDRESS")), int(m["prefixlen"]))
                for m in ipr.get_addr(family=socket.AF_INET)
            )
            routes = tuple(
                _route(m)
                for table in sorted({255, 254, *_rule_tables(ipr)})
                for m in ipr.get_routes(family=socket.AF_INET, table=table)
                if int(m.get_attr("RTA_TABLE") or m["table"]) == table
            )
            rules = tuple(
                sorted(
                    (
                        RuleInfo(
                            int(m.get_attr("FRA_PRIORITY") or 0),
                            int(m.get_attr("FRA_TABLE") or m["table"]),
                            int(m["action"]),
                        )
                        for m in ipr.get_rules(family=socket.AF_INET)
                    ),
                    key=lambda r: r.priority,
                )
            )
            neighbours = tuple(
                NeighbourInfo(
                    int(m["ifindex"]),
                    str(m.get_attr("NDA_DST")),
                    m.get_attr("NDA_LLADDR"),
                    _state(int(m["state"])),
                )
                for m in ipr.get_neighbours(family=socket.AF_INET)
                if m.get_attr("NDA_DST") not in (None, "0.0.0.0")
            )
            fdb = tuple(
                FdbInfo(
                    index=int(m["ifindex"]),
                    mac=str(m.get_attr("NDA_LLADDR")),
                    dst=m.get_attr("NDA_DST"),
                    master=m.get_attr("NDA_MASTER"),
                    local=bool(m["state"] & 0x80) and m.get_attr("NDA_MASTER") is not None,
                    self_entry=bool(m["flags"] & NTF_SELF),
                )
                for m in ipr.get_neighbours(family=socket.AF_BRIDGE)
                if m.get_attr("NDA_LLADDR") is not None
                and not _multicast(str(m.get_attr("NDA_LLADDR")))
            )
        return Inventory(
            netns=netns or "",
            links=links,
            addresses=addresses,
            routes=routes,
            rules=rules,
            neighbours=neighbours,
            fdb=fdb,
            sockets=_sockets(),
            ip_forward=sysctl.read("net.ipv4.ip_forward") == "1",
            bridge_nf_call_iptables=sysctl.bridge_nf_call_iptables(),
        )

    try:
        return netns_ops.call_in(netns, read)
    except (OSError, NetlinkError, netns_ops.NetnsError) as exc:
        raise InventoryError(f"cannot read the network state of {where}: {exc}") from exc


XT_RECENT = Path("/proc/thread-self/net/xt_recent")  # this thread's namespace, not the process's
TIMER_LIST = Path("/proc/timer_list")
HZ_VALUES = (100, 250, 300, 1000)  # CONFIG_HZ choices


def kernel_clock(timer_list: str) -> tuple[int, int] | None:
    """(jiffies now, HZ) from /proc/timer_list, which prints `jiffies` and the monotonic clock
    (`now at N nsecs`); jiffies start at 2**32 - 300 * HZ on 64-bit kernels, so their count
    against the clock tells HZ. None when it cannot be told (no such lines; a clock within
    a minute of 300 s, where the count is too small to say)."""
    jiffies = re.search(r"^jiffies: (\d+)$", timer_list, re.M)
    now = re.search(r"now at (\d+) nsecs", timer_list)
    if jiffies is None or now is None:
        return None
    ticks, since_start = int(jiffies.group(1)), int(now.group(1)) / 1e9 - 300
    if abs(since_start) < 60:
        return None
    rate = (ticks - 2**32) / since_start
    return ticks, min(HZ_VALUES, key=lambda hz: abs(hz - rate))


def parse_recent_list(text: str, clock: tuple[int, int] | None) -> dict[str, float]:
    """One /proc/net/xt_recent list: each source and the seconds since its `last_seen`
    (`--rcheck --seconds N` matches only a source seen within N seconds; the list keeps
    older ones until reaped); 0 when the kernel clock (`kernel_clock`) is unknown."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        words = line.split()
        if not words or not words[0].startswith("src="):
            continue
        age = 0.0
        if clock is not None and "last_seen:" in words:
            jiffies, hz = clock
            age = max(0.0, (jiffies - int(words[words.index("last_seen:") + 1])) / hz)
        found[words[0].removeprefix("src=")] = age
    return found


def read_recent(netns: str | None) -> dict[str, dict[str, float]]:
    """The source addresses each `-m recent` list of the namespace remembers (ClientIP
    affinity in iptables mode), with the seconds since each was last seen; the kernel
    exposes them only as /proc files."""

    def read() -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = {}
        if not XT_RECENT.is_dir():
            return found
        try:
            clock = kernel_clock(TIMER_LIST.read_text())
        except OSError:
            clock = None
        for entry in sorted(XT_RECENT.iterdir()):
            try:
                text = entry.read_text()
            except OSError:
                continue  # the list vanished while it was read
            found[entry.name] = parse_recent_list(text, clock)
        return found

    return netns_ops.call_in(netns, read)


def _rule_tables(ipr: IPRoute) -> set[int]:
    return {
        int(m.get_attr("FRA_TABLE") or m["table"])
        for m in ipr.get_rules(family=socket.AF_INET)
        if int(m["action"]) == 1
    }


def _multicast(mac: str) -> bool:
    """Multicast and broadcast MACs (the kernel's own all-hosts entries): not forwarding state."""
    return bool(int(mac.split(":")[0], 16) & 1)
