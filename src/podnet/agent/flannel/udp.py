"""The udp backend: TUN `flannel0` and a userspace datapath carrying whole IP packets in UDP.

What belongs here: the packet code (`decrement_ttl`, `ipv4_checksum`, `net_unreachable`,
`RouteTable` — longest-prefix match of a destination against the leases), the `Datapath`
(two threads moving packets TUN → UDP and UDP → TUN), and `UdpBackend` / `UdpNetwork`
(flannel's `udp_amd64.go`, `udp_network_amd64.go` and the C loop in `proxy_amd64.c`).

    pod ─▶ cni0 ─▶ route 10.244.0.0/16 dev flannel0 ─▶ read(tun) ─▶ LPM(dst) ─▶ TTL-1
        ─▶ sendto(remote public IP:8285, the raw IP packet) ··· recv ─▶ TTL-1 ─▶ write(tun)

Invariants:
- The UDP payload is the inner IPv4 packet exactly, nothing prepended (flannel's wire format),
  so podnet and flanneld udp nodes interoperate.
- TTL is decremented on both sides with an incremental checksum update (RFC 1624, as the
  kernel's `ip_decrease_ttl`); a packet whose TTL would reach 0 is dropped. A destination no
  lease covers gets an ICMP net-unreachable (type 3 code 0) written back into the TUN, from
  the flannel0 address (accept_local is on for flannel0 so the kernel takes it).
- The hot loops allocate nothing per packet beyond what the socket API forces: one
  preallocated buffer per direction, `readv`/`recv_into` into it, a memoryview slice to send.
  Each wakeup drains the fd until EAGAIN (a batch), so one poll serves many packets.
- The route table is replaced as a whole (one reference swap), so the datapath threads never
  see a half-updated table and need no lock.
- The TUN device exists only while the agent runs (like flanneld's): a restart interrupts
  udp traffic for that moment; the address, route and rules are restored on start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podnet.agent.flannel.backend import ExternalInterface, FlannelError, Network
from podnet.agent.flannel.config import NetConfig
from podnet.agent.flannel.leases import Lease, LeaseEvents
from podnet.kernel import sysctl
from podnet.kernel.links import LinkError, Netlink
from podnet.kernel.overlay import OverlayError, open_tun, udp_socket

log = logging.getLogger(__name__)

BACKEND_TYPE = "udp"
DEVICE = "flannel0"
DEFAULT_PORT = 8285
ENCAP_OVERHEAD = 28  # 20 outer IPv4 + 8 UDP
BUFFER_SIZE = 65535
ICMP_TTL = 8  # flannel's proxy.c sends its net-unreachable with TTL 8
POLL_MS = 200  # how often an idle datapath thread looks at its stop flag


# -- packet code (pure) --------------------------------------------------------------------


def ipv4_checksum(header: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of `header` (an even-length byte string)."""
    total = 0
    for (word,) in struct.iter_unpack("!H", header):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def decrement_ttl(packet: bytearray | memoryview) -> bool:
    """Decrement the IPv4 TTL in place, fixing the checksum; False if the packet must drop.

    RFC 1624 incremental update for "TTL - 1": the 16-bit word holding TTL drops by 0x0100,
    so the checksum grows by 0x0100 with end-around carry (the kernel's `ip_decrease_ttl`).
    """
    ttl = packet[8]
    if ttl <= 1:
        return False
    packet[8] = ttl - 1
    check = (packet[10] << 8 | packet[11]) + 0x0100
    if check >= 0xFFFF:
        check = (check + 1) & 0xFFFF
    packet[10] = check >> 8
    packet[11] = check & 0xFF
    return True


def net_unreachable(offender: bytes | bytearray | memoryview, source: str) -> bytes | None:
    """An ICMP destination-unreachable (net, code 0) for `offender`, from `source`, or None.

    The ICMP payload is the offending IP header plus the first 8 bytes of its data (RFC 792).
    None (send nothing) for an ICMP offender (no ICMP about ICMP, RFC 792), for a fragment
    other than the first, and for a malformed header — as flannel's `send_net_unreachable`.
    """
    header_len = (offender[0] & 0x0F) * 4
    if header_len < 20 or len(offender) < header_len + 8:
        return None
    if offender[9] == socket.IPPROTO_ICMP or (offender[6] << 8 | offender[7]) & 0x1FFF:
        return None
    quoted = bytes(offender[: header_len + 8])
    icmp = bytearray(struct.pack("!BBHI", 3, 0, 0, 0) + quoted)
    struct.pack_into("!H", icmp, 2, ipv4_checksum(icmp + (b"\0" if len(icmp) % 2 else b"")))
    total = 20 + len(icmp)
    dst = bytes(offender[12:16])
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            0,
            0,
            ICMP_TTL,
            socket.IPPROTO_ICMP,
            0,
            ipaddress.IPv4Address(source).packed,
            dst,
        )
    )
    struct.pack_into("!H", ip, 10, ipv4_checksum(ip))
    return bytes(ip + icmp)


@dataclass(frozen=True)
class RouteTable:
    """Longest-prefix match of a destination address over the leases' subnets."""

    # (mask, {network int -> (public ip, port)}) from the longest prefix to the shortest
    levels: tuple[tuple[int, dict[int, tuple[str, int]]], ...] = ()

    @classmethod
    def build(cls, routes: Mapping[str, tuple[str, int]]) -> RouteTable:
        by_len: dict[int, dict[int, tuple[str, int]]] = {}
        for subnet, target in routes.items():
            net = ipaddress.IPv4Network(subnet)
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = target
        levels = tuple(
            ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF, by_len[length])
            for length in sorted(by_len, reverse=True)
        )
        return cls(levels)

    def lookup(self, dst: int) -> tuple[str, int] | None:
        for mask, nets in self.levels:
            target = nets.get(dst & mask)
            if target is not None:
                return target
        return None


def udp_routes(leases: Sequence[Lease], port: int) -> dict[str, tuple[str, int]]:
    """subnet → (public IP, port) for the udp leases."""
    return {
        str(lease.subnet): (str(lease.public_ip), port)
        for lease in leases
        if lease.backend_type == BACKEND_TYPE
    }


# -- the datapath --------------------------------------------------------------------------


@dataclass
class DatapathStats:
    tun_to_udp: int = 0
    udp_to_tun: int = 0
    dropped_ttl: int = 0
    unreachable: int = 0
    errors: int = 0


@dataclass
class Datapath:
    """Moves packets between the TUN fd and the UDP socket on two threads."""

    tun: int
    sock: socket.socket
    local_address: str  # the flannel0 address: source of ICMP errors we generate
    table: RouteTable = field(default_factory=RouteTable)
    stats: DatapathStats = field(default_factory=DatapathStats)
    _stopping: bool = False
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.sock.setblocking(False)
        for target, name in (
            (self._tun_to_udp, "flannel0→udp"),
            (self._udp_to_tun, "udp→flannel0"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping = True
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()

    def _tun_to_udp(self) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        buffers = [buf]
        tun = self.tun
        readv = os.readv
        sendto = self.sock.sendto
        unpack = struct.unpack_from
        poller = select.poll()
        poller.register(tun, select.POLLIN)
        stats = self.stats
        while not self._stopping:
            if not poller.poll(POLL_MS):
                continue
            while True:  # drain: one wakeup, many packets
                try:
                    n = readv(tun, buffers)
                except BlockingIOError:
                    break
                except OSError as exc:
                    stats.errors += 1
                    log.warning("udp: reading flannel0 failed: %s", exc)
                    break
                if n < 20 or buf[0] >> 4 != 4:
                    continue
                (dst,) = unpack("!I", buf, 16)
                target = self.table.lookup(dst)
                if target is None:
                    stats.unreachable += 1
                    reply = net_unreachable(view[:n], self.local_address)
                    if reply is not None:
                        self._write_tun(reply)
                    continue
                if not decrement_ttl(buf):
                    stats.dropped_ttl += 1
                    continue
                try:
                    sendto(view[:n], target)
                    stats.tun_to_udp += 1
                except BlockingIOError:
                    stats.errors += 1  # socket buffer full: drop, like a congested link
                except OSError as exc:
                    stats.errors += 1
                    log.debug("udp: sending to %s failed: %s", target, exc)

    def _udp_to_tun(self) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        recv_into = self.sock.recv_into
        write = os.write
        tun = self.tun
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        stats = self.stats
        while not self._stopping:
            if not poller.poll(POLL_MS):
                continue
            while True:
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    break
                except OSError as exc:
                    stats.errors += 1
                    log.debug("udp: receive failed: %s", exc)
                    break
                if n < 20 or buf[0] >> 4 != 4:
                    stats.errors += 1  # not an IPv4 packet: not from a flannel peer
                    continue
                if not decrement_ttl(buf):
                    stats.dropped_ttl += 1
                    continue
                try:
                    write(tun, view[:n])
                    stats.udp_to_tun += 1
                except BlockingIOError:
                    stats.errors += 1
                except OSError as exc:
                    stats.errors += 1
                    log.debug("udp: writing flannel0 failed: %s", exc)

    def _write_tun(self, packet: bytes) -> None:
        try:
            os.write(self.tun, packet)
        except OSError as exc:
            self.stats.errors += 1
            log.debug("udp: writing ICMP into flannel0 failed: %s", exc)


# -- the backend ---------------------------------------------------------------------------


class UdpBackend:
    def __init__(self, ext: ExternalInterface, netns: str | None = None) -> None:
        self.ext = ext
        self.netns = netns

    def register_network(
        self, config: NetConfig, subnet: ipaddress.IPv4Network, stored: Mapping[str, Any]
    ) -> Network:
        port = int(config.backend_option("Port", 0)) or DEFAULT_PORT
        mtu = self.ext.mtu - ENCAP_OVERHEAD
        address = str(subnet.network_address)
        try:
            sock = udp_socket(self.ext.address, port, self.netns)
        except OverlayError as exc:
            raise FlannelError(f"udp: {exc}") from exc
        try:
            tun = open_tun(DEVICE, self.netns)
        except OverlayError as exc:
            sock.close()
            raise FlannelError(f"udp: {exc}") from exc
        try:
            with Netlink(self.netns) as nl:
                nl.set_mtu(DEVICE, mtu)
                nl.ensure_address(DEVICE, f"{address}/32")
                nl.set_up(DEVICE)
                nl.replace_route(str(config.network), dev=DEVICE)
            # our ICMP errors come from the flannel0 address, a local one: without
            # accept_local the kernel would drop them as martians
            sysctl.write(f"net.ipv4.conf.{DEVICE}.accept_local", 1, self.netns)
        except (LinkError, sysctl.SysctlError) as exc:
            sock.close()
            os.close(tun)
            raise FlannelError(f"udp: cannot configure {DEVICE}: {exc}") from exc
        datapath = Datapath(tun, sock, address)
        datapath.start()
        log.info(
            "udp: %s %s/32 mtu %d, UDP %s:%d, route %s dev %s",
            DEVICE, address, mtu, self.ext.address, port, config.network, DEVICE,
        )  # fmt: skip
        return UdpNetwork(datapath, port, mtu)


class UdpNetwork:
    backend_type = BACKEND_TYPE

    def __init__(self, datapath: Datapath, port: int, mtu: int) -> None:
        self.datapath = datapath
        self.port = port
        self.mtu = mtu
        self._routes: dict[str, tuple[str, int]] = {}

    def backend_data(self) -> dict[str, Any] | None:
        return None

    def reconcile(self, leases: Sequence[Lease]) -> None:
        self._routes = udp_routes(leases, self.port)
        self.datapath.table = RouteTable.build(self._routes)
        log.info("udp: %d remote subnets", len(self._routes))

    def handle(self, events: LeaseEvents) -> None:
        routes = dict(self._routes)
        for lease in events.removed:
            routes.pop(str(lease.subnet), None)
        routes.update(udp_routes(events.added, self.port))
        self._routes = routes
        self.datapath.table = RouteTable.build(routes)
        for lease in events.added:
            log.info(
                "udp: node %s: %s via %s:%d", lease.node, lease.subnet, lease.public_ip, self.port
            )

    def close(self) -> None:
        self.datapath.stop()
        self.datapath.sock.close()
        os.close(self.datapath.tun)
