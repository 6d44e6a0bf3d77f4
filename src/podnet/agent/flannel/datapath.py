"""The udp backend's userspace datapath: flannel0 (TUN) ⇄ UDP, in its own process.

What belongs here: the packet code (`ipv4_checksum`, `decrement_ttl`, `net_unreachable`,
`RouteTable` — longest-prefix match of a destination over the leases), the forwarding loops,
and `main()`, the entry point of the datapath process that `udp.py` starts with the TUN fd,
the UDP socket and one end of a control socketpair (flannel's `proxy_amd64.c` + its
`CMD_SET_ROUTE` control socket). Only the standard library is imported, so the process
starts fast and shares no GIL with the agent: a busy agent loop cannot delay packets.

    pod ─▶ cni0 ─▶ route 10.244.0.0/16 dev flannel0 ─▶ readv(tun) ─▶ LPM(dst) ─▶ TTL-1
        ─▶ sendto(remote public IP:8285, the raw IP packet) ··· recv_into ─▶ TTL-1 ─▶ write(tun)

Control protocol (SOCK_SEQPACKET, one JSON object per message):
    {"routes": {"10.244.2.0/24": ["172.31.1.12", 8285], ...}}   replace the route table
    {"stats": true}                                               reply with the counters
EOF on the control socket (the agent stopped or died) ends the process; its TUN fd closes and
flannel0 disappears with it.

Invariants:
- The UDP payload is the inner IPv4 packet exactly (flannel's wire format).
- TTL is decremented on each side with an incremental checksum update (RFC 1624, as the
  kernel's `ip_decrease_ttl`); a packet whose TTL would reach 0 is dropped. A destination no
  lease covers gets an ICMP net-unreachable (type 3 code 0) from the flannel0 address written
  back into the TUN — never about an ICMP packet or a non-first fragment (RFC 792).
- The hot loops allocate nothing per packet beyond what the socket API forces: one
  preallocated buffer per direction and memoryview slices of it; each wakeup drains its fd
  until EAGAIN, so one poll serves a batch of packets.
- Batching never delays a packet: a run of equal-sized packets to one peer that are already
  queued in the TUN leaves in one UDP GSO send (the kernel cuts it into the same datagrams
  a sendto per packet would make, so the wire format is unchanged), and UDP GRO hands the
  receiving side a run of datagrams per receive. Both fall back to one packet per call where
  the kernel lacks them.
- The route table is replaced as a whole (one reference swap): the loops never see a
  half-updated table and need no lock.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass

BUFFER_SIZE = 65535
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: GSO size of a send (kernel >= 4.18)
UDP_GRO = 104  # linux/udp.h: coalesce received datagrams (kernel >= 5.0)
GSO_BYTES = 63 * 1024  # a run sent in one go stays under the 64 KiB IP length
GSO_SEGMENTS = 64  # and under the kernel's UDP_MAX_SEGMENTS
ICMP_TTL = 8  # flannel's proxy.c sends its net-unreachable with TTL 8
POLL_MS = 500  # an idle loop looks at its stop flag this often
SWITCH_INTERVAL = 0.0002  # s; the two loop threads hand the GIL over quickly


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
    None (send nothing) for an ICMP offender (no ICMP about ICMP), for a fragment other than
    the first, and for a malformed header — as flannel's `send_net_unreachable`.
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
            bytes(offender[12:16]),
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
        for subnet, (address, port) in routes.items():
            net = ipaddress.IPv4Network(subnet)
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = (address, int(port))
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


# -- the forwarding loops ------------------------------------------------------------------


@dataclass
class DatapathStats:
    tun_to_udp: int = 0
    udp_to_tun: int = 0
    dropped_ttl: int = 0
    unreachable: int = 0
    errors: int = 0
    udp_sends: int = 0  # send calls: tun_to_udp / udp_sends is the GSO batching factor
    udp_receives: int = 0  # receive calls: udp_to_tun / udp_receives is the GRO factor


class Forwarder:
    """The two loops of one node: flannel0 → UDP and UDP → flannel0, one thread each."""

    def __init__(self, tun: int, sock: socket.socket, local_address: str) -> None:
        self.tun = tun
        self.sock = sock
        self.local_address = local_address  # the flannel0 address: source of our ICMP errors
        self.table = RouteTable()
        self.stats = DatapathStats()
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.gso = True  # UDP GSO sends; turned off if the kernel refuses them

    def start(self) -> None:
        os.set_blocking(self.tun, False)
        self.sock.setblocking(False)
        # without UDP GRO every receive is one datagram, which the loop handles as well
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        for target, name in ((self.tun_to_udp, "tun-to-udp"), (self.udp_to_tun, "udp-to-tun")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join(timeout=2)

    def tun_to_udp(self) -> None:
        """flannel0 → UDP. Packets already queued in the TUN are read back to back into one
        buffer; a run of equal-sized packets to one peer leaves in a single UDP GSO send
        (the kernel cuts it into one datagram per packet, as if sent one by one)."""
        buf = bytearray(GSO_BYTES + BUFFER_SIZE)
        view = memoryview(buf)
        tun, readv, sendto, sendmsg = self.tun, os.readv, self.sock.sendto, self.sock.sendmsg
        unpack_from = struct.unpack_from
        poll = select.poll()
        poll.register(tun, select.POLLIN)
        stats = self.stats
        pos = count = size = 0  # the pending run: `count` packets of `size` bytes in buf[:pos]
        target: tuple[str, int] | None = None

        def flush() -> None:
            nonlocal pos, count
            assert target is not None  # a pending run always has its peer
            if count > 1 and self.gso:
                try:
                    sendmsg(
                        [view[:pos]],
                        [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))],
                        0,
                        target,
                    )
                    stats.tun_to_udp += count
                    stats.udp_sends += 1
                except OSError as exc:
                    if exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT):
                        self.gso = False  # no UDP GSO here: send the run one by one
                        flush()
                        return
                    stats.errors += count  # socket buffer full or peer gone: a dropped run
            else:
                for start in range(0, pos, size):
                    try:
                        sendto(view[start : start + size], target)
                        stats.tun_to_udp += 1
                        stats.udp_sends += 1
                    except OSError:
                        stats.errors += 1
            pos = count = 0

        while not self.stopping:
            if not poll.poll(POLL_MS):
                continue
            while True:  # drain: one wakeup, a batch of packets
                try:
                    n = readv(tun, [view[pos:]])
                except BlockingIOError:
                    break
                except OSError:
                    stats.errors += 1
                    break
                if n < 20 or buf[pos] >> 4 != 4:
                    continue
                hop = self.table.lookup(unpack_from("!I", buf, pos + 16)[0])
                if hop is None:
                    stats.unreachable += 1
                    reply = net_unreachable(view[pos : pos + n], self.local_address)
                    if reply is not None:
                        self.write_tun(reply)
                    continue
                # TTL - 1 with the RFC 1624 checksum update, inlined (hot path)
                ttl = buf[pos + 8]
                if ttl <= 1:
                    stats.dropped_ttl += 1
                    continue
                buf[pos + 8] = ttl - 1
                check = (buf[pos + 10] << 8 | buf[pos + 11]) + 0x0100
                if check >= 0xFFFF:
                    check = (check + 1) & 0xFFFF
                buf[pos + 10] = check >> 8
                buf[pos + 11] = check & 0xFF
                if count and (hop != target or n != size):
                    # a different peer or size ends the run; this packet starts the next one
                    packet = bytes(view[pos : pos + n])
                    flush()
                    buf[:n] = packet
                count += 1
                size = n
                target = hop
                pos += n
                if pos + size > GSO_BYTES or count >= GSO_SEGMENTS:
                    flush()
            if count:
                flush()

    def udp_to_tun(self) -> None:
        """UDP → flannel0. With UDP GRO the kernel hands over a run of datagrams from one
        peer in one receive (a cmsg gives the datagram size); each is one inner packet."""
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        recvmsg_into, write, tun = self.sock.recvmsg_into, os.write, self.tun
        cmsg_space = socket.CMSG_SPACE(4)
        buffers = [buf]
        poll = select.poll()
        poll.register(self.sock.fileno(), select.POLLIN)
        stats = self.stats
        while not self.stopping:
            if not poll.poll(POLL_MS):
                continue
            while True:
                try:
                    total, ancillary, _flags, _peer = recvmsg_into(buffers, cmsg_space)
                except BlockingIOError:
                    break
                except OSError:
                    stats.errors += 1
                    break
                stats.udp_receives += 1
                step = total
                for level, kind, data in ancillary:
                    if level == SOL_UDP and kind == UDP_GRO:
                        step = int.from_bytes(data, sys.byteorder) or total
                for start in range(0, total, step):
                    n = min(step, total - start)
                    if n < 20 or buf[start] >> 4 != 4:
                        stats.errors += 1  # not an IPv4 packet: not from a flannel peer
                        continue
                    ttl = buf[start + 8]
                    if ttl <= 1:
                        stats.dropped_ttl += 1
                        continue
                    buf[start + 8] = ttl - 1
                    check = (buf[start + 10] << 8 | buf[start + 11]) + 0x0100
                    if check >= 0xFFFF:
                        check = (check + 1) & 0xFFFF
                    buf[start + 10] = check >> 8
                    buf[start + 11] = check & 0xFF
                    try:
                        write(tun, view[start : start + n])
                    except OSError:  # the TUN queue is full: drop
                        stats.errors += 1
                        continue
                    stats.udp_to_tun += 1

    def write_tun(self, packet: bytes) -> None:
        try:
            os.write(self.tun, packet)
        except OSError:
            self.stats.errors += 1


def serve_control(forwarder: Forwarder, control: socket.socket) -> None:
    """Apply control messages until the agent closes its end (EOF)."""
    while True:
        try:
            message = control.recv(1 << 20)
        except InterruptedError:
            continue
        except OSError:
            return
        if not message:
            return
        request = json.loads(message)
        if "routes" in request:
            forwarder.table = RouteTable.build(
                {subnet: (str(hop[0]), int(hop[1])) for subnet, hop in request["routes"].items()}
            )
        if request.get("stats"):
            control.send(json.dumps(asdict(forwarder.stats)).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podnet.agent.flannel.datapath",
        description="flannel udp datapath (started by the podnet agent, not by hand)",
    )
    parser.add_argument("--tun-fd", type=int, required=True)
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--address", required=True, help="the flannel0 address")
    args = parser.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL)
    sock = socket.socket(fileno=args.socket_fd)
    control = socket.socket(fileno=args.control_fd)
    forwarder = Forwarder(args.tun_fd, sock, args.address)
    forwarder.start()
    try:
        serve_control(forwarder, control)
    finally:
        forwarder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
