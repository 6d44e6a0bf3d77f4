"""The udp backend's userspace datapath: flannel0 (TUN) ⇄ UDP, in its own process.

What belongs here: the packet code (`ipv4_checksum`, `decrement_ttl`, `net_unreachable`,
`RouteTable` — longest-prefix match of a destination over the leases), the forwarding loops,
and `main()`, the entry point of the datapath process that `udp.py` starts with the TUN fd,
the UDP socket and one end of a control socketpair (flannel's `proxy_amd64.c` + its
`CMD_SET_ROUTE` control socket). Only the standard library is imported, so the process
starts fast and shares no GIL with the agent: a busy agent loop cannot delay packets.

    pod ─▶ cni0 ─▶ route 10.244.0.0/16 dev flannel0 ─▶ readv(tun) ─▶ LPM(dst) ─▶ TTL-1
        ─▶ sendto(remote public IP:8285, the raw IP packet)  [a flow's run: one UDP GSO send]
        ··· recvmsg (UDP GRO: a run) ─▶ TTL-1 ─▶ write(tun)  [TCP runs: one GSO packet]

Control protocol (SOCK_SEQPACKET, one JSON object per message):
    {"receiving_half": 4242}      the datapath's first message: its child's pid (to record)
    {"routes": {"10.244.2.0/24": ["172.31.1.12", 8285], ...}}   replace the route table
    {"stats": true}                                               reply with the counters
EOF on the control socket (the agent stopped or died) ends the process; its TUN fd closes and
flannel0 disappears with it.

Invariants:
- The UDP payload is the inner IPv4 packet exactly (flannel's wire format), with one
  departure between podnet peers: an inner TCP or UDP packet whose L4 checksum is partial
  (the pseudo-header sum, as a CHECKSUM_PARTIAL packet holds it) carries PARTIAL_FLAG, the
  reserved bit of the IPv4 flags (RFC 791: "must be zero"; Linux never sets it), with the IP
  checksum fixed for it. The receiving datapath clears it and writes the packet with
  NEEDS_CSUM (csum_start = the IP header length, csum_offset 16 for TCP, 6 for UDP), putting
  the pseudo-header sum from the packet's own addresses and length in the field, so its
  kernel finishes the checksum on forward or trusts it locally, as for any locally
  offloaded packet. Why: summing every payload byte in Python costs ~2.6 ns/byte (~170 µs
  per 64 KiB); the flag costs no byte (the MTU stays underlay - 28) and no copy. On the
  wire the payload stays covered by the outer UDP checksum (the kernel's, over every byte).
  A real flannel daemon receiving a marked packet would deliver a bad L4 checksum: podnet's
  udp backend talks only to podnet peers. Unmarked datagrams are received exactly as
  flannel sends them.
- TTL is decremented on each side with an incremental checksum update (RFC 1624, as the
  kernel's `ip_decrease_ttl`); a packet whose TTL would reach 0 is dropped. A destination no
  lease covers gets an ICMP net-unreachable (type 3 code 0) from the flannel0 address written
  back into the TUN — never about an ICMP packet or a non-first fragment (RFC 792).
- The hot loops allocate nothing per packet beyond what the socket API forces: one
  preallocated buffer per direction and memoryview slices of it; each wakeup drains its fd
  until EAGAIN, so one poll serves a batch of packets.
- Batching never delays a packet: a run of equal-sized packets of one flow to one peer that
  are already queued in the TUN leaves in one UDP GSO send (the kernel cuts it into the same
  datagrams a sendto per packet would make, so the wire format is unchanged), and UDP GRO
  hands the receiving side a run of datagrams per receive. Both fall back to one packet per
  call where the kernel lacks them.
- flannel0 offers TSO and checksum offload (TUNSETOFFLOAD TUN_F_CSUM | TUN_F_TSO4): one read
  hands over a TCP superpacket of up to 64 KiB (a virtio_net_hdr with GSO_TCPV4 and its
  gso_size), which `segment_tso` cuts into the segments the kernel's `tcp_gso_segment` would
  make — header arithmetic only (length, id, IP checksum, sequence number, FIN/PSH/CWR), the
  payloads left where they were read — and which leave in one UDP GSO send per datagram's
  worth. Their TCP checksums stay partial and marked (above). This replaces ~45 one-packet
  reads per 64 KiB, which were ~half of the sending thread (py-spy, 2026-12-06). A packet
  with a partial checksum that is neither TCP nor UDP is finished here (`complete_checksum`).
- With a vnet-header TUN (IFF_VNET_HDR, what the agent opens), a received run of TCP
  segments that the kernel's own GRO would merge is written as one GSO packet
  (`tcp_merge_groups`, `build_merged_tcp`): one writev (headers from a small buffer, the
  payloads where they were received) and one trip through forwarding instead of one per
  segment; the kernel re-segments it only if it must. Everything else is written as it
  came, behind an all-zero header. A receive that is one flow's contiguous segments (what
  a peer's UDP GSO send of one TCP run becomes) is recognised by `tcp_run_groups` with one
  `struct` unpack of every header and a comparison per field, not ~15 per packet; one that
  is exactly a TSO cut (a podnet peer's send of one superpacket) by a single comparison
  with the headers `segment_tso` would have made of its first one (`tso_cut`).
- A receive whose every datagram is dropped (TTL run out, not IPv4) writes nothing; an
  empty run is never handed to the merge code.
- The route table is replaced as a whole (one reference swap): the loops never see a
  half-updated table and need no lock.
- The two directions run in two processes (`fork_receiving_half`: UDP → flannel0 in a child),
  one GIL each: a flow's data and its ACKs go opposite ways, and in one process each waited
  for the other's Python. The parent serves the control socket and adds the child's counters
  to its own; either ending ends the other.
- A loop that fails ends the whole process (traceback on stderr, exit code 70): a datapath
  with one dead direction would black-hole traffic while still answering the agent, whereas a
  dead process is seen by the agent's next sync, which rebuilds flannel0 and a new datapath.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import functools
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import asdict, dataclass

BUFFER_SIZE = 65535
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: GSO size of a send (kernel >= 4.18)
UDP_GRO = 104  # linux/udp.h: coalesce received datagrams (kernel >= 5.0)
GSO_BYTES = 63 * 1024  # a run sent in one go stays under the 64 KiB IP length
GSO_SEGMENTS = 64  # and under the kernel's UDP_MAX_SEGMENTS
VNET_HDR_LEN = 10  # struct virtio_net_hdr before every TUN read/write (IFF_VNET_HDR)
PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)  # "no offload": a packet as it is
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02  # the TUN may hand over partial checksums, TCPv4 TSO
PARTIAL_FLAG = 0x80  # in byte 6 of the inner IPv4 header (the reserved flag): see below
CSUM_OFFSETS = {6: 16, 17: 6}  # where the L4 checksum sits: TCP, UDP
UDP_MAX_PAYLOAD = 65507  # one UDP datagram over IPv4 (and so one GSO send)
MERGE_LIMIT = 64000  # bytes of one merged IP packet (its length field is 16 bits)
TCP_FIN, TCP_PSH, TCP_ACK, TCP_CWR = 0x01, 0x08, 0x10, 0x80
ICMP_TTL = 8  # flannel's proxy.c sends its net-unreachable with TTL 8
SINGLE = (1,)  # the write groups of a receive that kept one packet
LOOP_FAILED_EXIT = 70  # EX_SOFTWARE: a forwarding loop raised
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


# -- TCP segment merging for TUN writes (GRO done by hand, handed over as one GSO packet) ---


def tcp_merge_groups(buf: bytearray | memoryview, packets: list[tuple[int, int]]) -> list[int]:
    """How many consecutive `packets` (start, length in `buf`) each write takes.

    Consecutive segments of one TCP flow merge when the kernel's own GRO would merge them:
    IPv4 without options or fragmentation, flags ACK (PSH allowed on the last), identical
    IP TOS/TTL/DF and TCP ack/window/options, contiguous sequence numbers, every segment but
    the last exactly the first one's size, at most MERGE_LIMIT bytes. Returns the group sizes
    in order (they sum to len(packets)); a group of 1 is written as it is.
    """
    groups: list[int] = []
    i, count = 0, len(packets)
    while i < count:
        start, length = packets[i]
        size = 1
        thl = (buf[start + 32] >> 4) * 4 if length >= 40 else 0
        mss = length - 20 - thl
        if (
            length >= 40
            and buf[start] == 0x45
            and buf[start + 9] == 6
            and not (buf[start + 6] & 0x3F or buf[start + 7])
            and buf[start + 33] == TCP_ACK
            and buf[start + 2] << 8 | buf[start + 3] == length
            and mss > 0
            and thl >= 20
        ):
            next_seq = (int.from_bytes(buf[start + 24 : start + 28], "big") + mss) & 0xFFFFFFFF
            total = length
            while i + size < count:
                other, other_length = packets[i + size]
                payload = other_length - 20 - thl
                if (
                    payload <= 0
                    or payload > mss
                    or total + payload > MERGE_LIMIT
                    or buf[other] != 0x45
                    or buf[other + 9] != 6
                    or buf[other + 6] != buf[start + 6]
                    or buf[other + 7]
                    or buf[other + 2] << 8 | buf[other + 3] != other_length
                    or buf[other + 1] != buf[start + 1]
                    or buf[other + 8] != buf[start + 8]
                    or buf[other + 33] not in (TCP_ACK, TCP_ACK | TCP_PSH)
                    or buf[other + 12 : other + 24] != buf[start + 12 : start + 24]
                    or buf[other + 28 : other + 33] != buf[start + 28 : start + 33]
                    or buf[other + 34 : other + 36] != buf[start + 34 : start + 36]
                    or buf[other + 38 : other + 20 + thl] != buf[start + 38 : start + 20 + thl]
                    or int.from_bytes(buf[other + 24 : other + 28], "big") != next_seq
                ):
                    break
                size += 1
                total += payload
                next_seq = (next_seq + payload) & 0xFFFFFFFF
                if payload < mss or buf[other + 33] & TCP_PSH:
                    break  # a short or pushed segment ends the run, as in the kernel's GRO
        groups.append(size)
        i += size
    return groups


@functools.lru_cache(maxsize=128)
def tcp_run_headers(step: int, count: int, header: int) -> struct.Struct:
    """Takes the first `header` bytes (IPv4 + TCP headers) of each of `count` packets `step`
    bytes apart out of a receive, in one unpack."""
    return struct.Struct("=" + f"{header}s{step - header}x" * (count - 1) + f"{header}s")


@functools.lru_cache(maxsize=128)
def tcp_run_masks(count: int, header: int) -> tuple[struct.Struct, int, int]:
    """For `count` IPv4/TCP headers of `header` bytes joined back to back: a Struct of each
    packet's (IP total length, sequence number), and two masks over the joined headers read
    as one integer, of the bytes every packet must share. `same_flow`: all but the IP
    length, id and checksum, the sequence number, the TCP flags and checksum (they differ
    from segment to segment and are checked apart) and the ack number, window, urgent
    pointer and options; `same_burst` covers those last four too (a change there starts a
    new group, as in the kernel's GRO)."""
    fields = struct.Struct("!" + f"2xH20xI{header - 28}x" * count)
    per_segment = {2, 3, 4, 5, 10, 11, 24, 25, 26, 27, 33, 36, 37}
    per_burst = {28, 29, 30, 31, 34, 35, *range(38, header)}
    flow = bytes(0 if i in per_segment or i in per_burst else 0xFF for i in range(header))
    burst = bytes(0 if i in per_segment else 0xFF for i in range(header))
    return fields, int.from_bytes(flow * count, "big"), int.from_bytes(burst * count, "big")


def tcp_run_groups(buf: bytearray, total: int, step: int) -> list[int] | None:
    """`tcp_merge_groups` of the `total` bytes of `buf` (datagrams of `step` bytes, the last
    may be shorter) when they are one flow's contiguous segments, else None.

    The common case of a UDP GRO receive, checked over all its headers at once instead of
    ~15 comparisons per packet: the headers are taken out in one `struct` unpack and
    compared with the first one repeated, as one big integer under a mask (every packet has
    the same IP header, addresses and ports but for IP length, id and checksums); then the
    lengths (the last may be shorter), contiguous sequence numbers and flags ACK or ACK|PSH.
    Where the ack number, window or options (timestamps) change, a new group starts, and a
    PSH ends its group, as in the kernel's GRO: a receive spanning two of the sender's TSO
    bursts (its GRO run goes on across the peer's GSO sends) is two groups here, not a walk
    over every packet. None leaves the receive to the per-packet code (another flow inside,
    a gap, other flags, not TCP).
    """
    count = -(-total // step)
    if count < 2 or step < 41 or total > len(buf):
        return None
    if buf[0] != 0x45 or buf[9] != socket.IPPROTO_TCP or buf[6] & 0x3F or buf[7]:
        return None  # not IPv4/TCP without options, or a fragment
    header = 20 + (buf[32] >> 4) * 4
    mss = step - header
    last = total - (count - 1) * step
    if header < 40 or mss <= 0 or last <= header:
        return None
    joined = b"".join(tcp_run_headers(step, count, header).unpack_from(buf))
    if tso_cut(joined, count, header, step - header, last):
        return [count]
    fields, same_flow, same_burst = tcp_run_masks(count, header)
    differs = int.from_bytes(joined, "big") ^ int.from_bytes(joined[:header] * count, "big")
    if differs & same_flow:
        return None
    values = fields.unpack(joined)
    lengths = values[0::2]
    if lengths.count(step) != count - (last != step) or lengths[-1] != last:
        return None
    seq = values[1]
    end = seq + (count - 1) * mss
    if end > 0xFFFFFFFF:  # the sequence space wraps inside this run
        expected = tuple((seq + i * mss) & 0xFFFFFFFF for i in range(count))
    else:
        expected = tuple(range(seq, end + 1, mss))
    if values[1::2] != expected:
        return None
    flags = joined[33::header]
    plain = flags.count(TCP_ACK)
    if plain + flags.count(TCP_ACK | TCP_PSH) != count:
        return None
    starts: set[int] = set()  # packets that begin a group (besides the first)
    if plain != count:
        begin = 0
        for _ in range(count - plain):
            begin = flags.index(TCP_ACK | TCP_PSH, begin) + 1
            starts.add(begin)  # a pushed segment ends its group
    if differs & same_burst:  # the ack, window or options change: a new group from there
        bursts = [
            joined[at + 28 : at + 32] + joined[at + 34 : at + 36] + joined[at + 38 : at + header]
            for at in range(0, count * header, header)
        ]
        starts.update(i for i in range(1, count) if bursts[i] != bursts[i - 1])
    if not starts:
        return [count]
    groups, begin = [], 0
    for start in sorted(starts):
        if start < count:
            groups.append(start - begin)
            begin = start
    groups.append(count - begin)
    return groups


def tso_cut(joined: bytes, count: int, header: int, mss: int, last: int) -> bool:
    """Whether `count` IPv4/TCP headers of `header` bytes (`joined` back to back, no IP
    options; the last segment `last` bytes long) are one superpacket's segments as a TSO cut
    makes them (`segment_tso`, the kernel's `tcp_gso_segment`): every header the first one
    plus its `tso_steps` (IP id +1, IP checksum -1, sequence number + `mss`), but for the
    last one's length, IP checksum, PSH and TCP checksum; the first flagged ACK alone.

    What a receive of one peer's GSO send is: one comparison of all the headers instead of
    `tcp_run_groups`' masks and fields. True means one group of `count` for the kernel's GRO
    rules (one flow, contiguous, same ack, window and options); False leaves the receive to
    that check (ids not counting up, full TCP checksums, a second burst, ...).
    """
    first = joined[:header]
    ident, check = struct.unpack_from("!H4xH", first, 4)
    seq = int.from_bytes(first[24:28], "big")
    if (
        first[33] != TCP_ACK
        or ident + count > 0x10000  # an id, checksum or sequence number that wraps inside
        or check < count - 1  # the run would carry into the field before it in the sum
        or seq + (count - 1) * mss > 0xFFFFFFFF
    ):
        return False
    thl = header - 20
    expected = (int.from_bytes(first * count, "big") + tso_steps(count, 20, thl, mss)).to_bytes(
        count * header, "big"
    )
    at = (count - 1) * header
    if joined[:at] != expected[:at]:
        return False
    tail, want = joined[at:], expected[at:]
    return (
        tail[2] << 8 | tail[3] == last
        and tail[33] in (TCP_ACK, TCP_ACK | TCP_PSH)
        and tail[:2] == want[:2]
        and tail[4:10] == want[4:10]
        and tail[12:33] == want[12:33]
        and tail[34:36] == want[34:36]
        and tail[38:] == want[38:]
    )


def build_merged_tcp(
    view: memoryview, packets: list[tuple[int, int]], out: bytearray
) -> list[memoryview]:
    """The buffers of [virtio_net_hdr][one IPv4/TCP packet carrying every segment's payload].

    The headers are written to `out`; the payloads stay where they are in `view` (the list
    is for one `writev`, no copy in Python). The header asks the kernel to segment it again
    at `gso_size` = the first payload size (VIRTIO_NET_HDR_GSO_TCPV4) and to finish the TCP
    checksum (NEEDS_CSUM: the checksum field holds the pseudo-header sum, as for any
    CHECKSUM_PARTIAL packet).
    """
    if len(packets) < 2:
        raise ValueError(f"build_merged_tcp needs a run of 2 or more segments, got {len(packets)}")
    start, length = packets[0]
    header = 20 + (view[start + 32] >> 4) * 4
    buffers = [view[begin + header : begin + size] for begin, size in packets]
    ip_length = header + sum(size for _, size in packets) - len(packets) * header
    pushed = view[packets[-1][0] + 33] & TCP_PSH
    buffers.insert(0, merged_tcp_header(view, start, header, ip_length, length, pushed, out))
    return buffers


def build_merged_run(
    view: memoryview,
    total: int,
    step: int,
    out: bytearray,
    payloads: dict[tuple[int, int, int], list[memoryview]],
) -> list[memoryview]:
    """`build_merged_tcp` of a whole receive (`total` bytes at the start of `view`, packets
    `step` bytes apart) that is one group of `tcp_run_groups`. `payloads` keeps the payload
    slices per layout (the receiving loop's one buffer: the same slices serve every receive
    of that size), so the ~45 memoryview slices of a run are made once, not per receive."""
    header = 20 + (view[32] >> 4) * 4
    key = (total, step, header)
    slices = payloads.get(key)
    if slices is None:
        slices = [view[at + header : min(at + step, total)] for at in range(0, total, step)]
        if len(payloads) >= 256:
            payloads.clear()  # many layouts (sizes vary): start over rather than grow
        payloads[key] = slices
    ip_length = total - (len(slices) - 1) * header
    pushed = view[(total - 1) // step * step + 33] & TCP_PSH  # the last segment's
    return [merged_tcp_header(view, 0, header, ip_length, step, pushed, out), *slices]


def merged_tcp_header(
    view: memoryview,
    start: int,
    header: int,
    ip_length: int,
    step: int,
    pushed: int,
    out: bytearray,
) -> memoryview:
    """[virtio_net_hdr][the IPv4/TCP header at `start`, for a merged packet of `ip_length`
    bytes] in `out`: GSO_TCPV4 at `step` - `header` (the first segment's payload), NEEDS_CSUM
    with the pseudo-header sum in the TCP checksum field, PSH if the last segment had it."""
    ip = VNET_HDR_LEN
    out[ip : ip + header] = view[start : start + header]
    struct.pack_into("!H", out, ip + 2, ip_length)
    out[ip + 10 : ip + 12] = b"\0\0"
    struct.pack_into("!H", out, ip + 10, ~fold(sum(struct.unpack_from("!10H", out, ip))) & 0xFFFF)
    out[ip + 33] |= pushed
    addresses = sum(struct.unpack_from("!4H", out, ip + 12))
    struct.pack_into("!H", out, ip + 36, fold(addresses + socket.IPPROTO_TCP + ip_length - 20))
    struct.pack_into(
        "=BBHHHH",
        out,
        0,
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        header,
        step - header,
        20,
        16,
    )
    return memoryview(out)[: ip + header]


# -- partial checksums and TSO superpackets (the TUN's offloads) ---------------------------


def fold(total: int) -> int:
    """A ones' complement sum folded to 16 bits (end-around carry)."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def adjust_ip_checksum(buf: bytearray | memoryview, start: int, delta: int) -> None:
    """Add `delta` (a ones' complement 16-bit value) to the sum the IPv4 header checksum at
    `start` covers, as RFC 1624 eqn. 3: HC' = ~(~HC + delta)."""
    check = buf[start + 10] << 8 | buf[start + 11]
    check = ~fold((~check & 0xFFFF) + delta) & 0xFFFF
    buf[start + 10] = check >> 8
    buf[start + 11] = check & 0xFF


def mark_partial(buf: bytearray | memoryview, start: int) -> None:
    """Set PARTIAL_FLAG in the IPv4 header at `start`: its L4 checksum is partial."""
    buf[start + 6] |= PARTIAL_FLAG
    adjust_ip_checksum(buf, start, PARTIAL_FLAG << 8)


def unmark_partial(buf: bytearray | memoryview, start: int) -> None:
    """Clear PARTIAL_FLAG in the IPv4 header at `start` (the receiver, before the TUN)."""
    buf[start + 6] &= ~PARTIAL_FLAG & 0xFF
    adjust_ip_checksum(buf, start, 0xFFFF - (PARTIAL_FLAG << 8))


def pseudo_header_sum(buf: bytearray | memoryview, start: int, length: int) -> int:
    """The folded pseudo-header sum of the IPv4 packet at `start` (`length` bytes): what a
    CHECKSUM_PARTIAL packet carries in its L4 checksum field."""
    ihl = (buf[start] & 0x0F) * 4
    words = struct.unpack_from("!4H", buf, start + 12)
    return fold(sum(words) + buf[start + 9] + length - ihl)


def partial_vnet_header(buf: bytearray | memoryview, start: int, length: int) -> bytes:
    """The virtio_net_hdr for a marked packet (TCP or UDP at `start`, its flag already
    cleared): NEEDS_CSUM from the L4 header on; the checksum field gets the pseudo-header sum
    from this packet's own addresses and length, whatever the peer left there."""
    ihl = (buf[start] & 0x0F) * 4
    offset = CSUM_OFFSETS[buf[start + 9]]
    struct.pack_into("!H", buf, start + ihl + offset, pseudo_header_sum(buf, start, length))
    return struct.pack(
        "=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, ihl, offset
    )


def complete_checksum(
    buf: bytearray | memoryview, start: int, length: int, csum_start: int, csum_offset: int
) -> None:
    """Finish a partial checksum in Python (what the kernel does for NEEDS_CSUM): the ones'
    complement sum from `csum_start` to the end (the field holds the pseudo-header sum) is
    stored complemented at `csum_start + csum_offset`. Only for what is not marked (neither
    TCP nor UDP, or a marked packet written to a TUN without a vnet header): ~2.6 ns/byte."""
    data = bytes(buf[start + csum_start : start + length])
    if len(data) % 2:
        data += b"\0"
    number = int.from_bytes(data, "big")
    total = number % 0xFFFF or (0xFFFF if number else 0)  # 2**16 == 1 (mod 0xFFFF)
    check = ~total & 0xFFFF
    if check == 0 and buf[start + 9] == socket.IPPROTO_UDP:
        check = 0xFFFF  # a computed UDP checksum of 0 is sent as all ones (RFC 768)
    struct.pack_into("!H", buf, start + csum_start + csum_offset, check)


@functools.lru_cache(maxsize=64)
def tso_steps(count: int, ihl: int, thl: int, mss: int) -> int:
    """What each of `count` segment headers (`ihl` + `thl` bytes, packed back to back and read
    as one big-endian integer) adds to the first one's: segment i adds i to the IP id, i *
    `mss` to the sequence number and takes i from the IP checksum (its sum grows by i)."""
    hlen = ihl + thl
    steps = 0
    for i in range(count):
        after = (count - 1 - i) * hlen  # bytes of the headers after segment i's
        steps += i << 8 * (after + hlen - 6)  # the id: bytes 4-5
        steps -= i << 8 * (after + hlen - 12)  # the IP checksum: bytes 10-11
        steps += i * mss << 8 * (after + hlen - ihl - 8)  # the sequence number
    return steps


def segment_tso(
    view: memoryview,
    start: int,
    length: int,
    mss: int,
    headers: bytearray,
    slices: dict[tuple[int, int, int, int], list[memoryview]] | None = None,
) -> tuple[list[memoryview], int]:
    """Cut the TCPv4 superpacket at `start` (what a TSO TUN hands over) into its segments,
    as the kernel's `tcp_gso_segment` would, but with header arithmetic only: returns the
    buffers for a UDP GSO send ([header, payload] per segment: headers written to `headers`,
    the payloads stay in `view`) and the segment size (header + `mss`; the last may be
    shorter).

    Per segment: IP total length, id (+1 each), checksum; TCP sequence number; FIN and PSH
    only on the last, CWR only on the first; the TCP checksum left partial (its
    pseudo-header sum, as the kernel handed it over) and PARTIAL_FLAG set so the receiving
    datapath has its kernel finish it: summing every payload byte is what Python cannot
    afford. TTL is the superpacket's (decrement it first). `slices`, if given, keeps the
    list of buffers per layout (same `view` and `headers` on every call: the sending
    loop's), so the ~90 memoryview slices of a superpacket are made once, not per read.
    """
    ihl = (view[start] & 0x0F) * 4
    thl = (view[start + ihl + 12] >> 4) * 4
    hlen = ihl + thl
    payload = length - hlen
    if mss <= 0 or payload <= 0 or ihl < 20 or thl < 20:
        raise ValueError(f"not a TSO superpacket: {length} bytes, headers {hlen}, mss {mss}")
    count = -(-payload // mss)
    if len(headers) < count * hlen:
        raise ValueError(f"{count} segments of {hlen}-byte headers need a larger buffer")
    # the first segment's header: a full segment's length, marked, flags but CWR cleared
    template = bytearray(view[start : start + hlen])
    template[6] |= PARTIAL_FLAG
    words = struct.unpack_from(f"!{ihl // 2}H", template)
    ip_base = sum(words) - words[1] - words[2] - words[5]  # without length, id, checksum
    ident, seq = words[2], int.from_bytes(template[ihl + 4 : ihl + 8], "big")
    flags = template[ihl + 13]
    pseudo = sum(words[6:10]) + socket.IPPROTO_TCP
    full = hlen + mss
    first = fold(ip_base + full + ident)  # the first segment's IP sum; each next id adds 1
    struct.pack_into("!HH", template, 2, full, ident)
    struct.pack_into("!H", template, 10, ~first & 0xFFFF)
    template[ihl + 13] = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR) & 0xFF
    struct.pack_into("!H", template, ihl + 16, fold(pseudo + thl + mss))
    if (
        ident + count <= 0x10000
        and first + count <= 0x10000
        and seq + (count - 1) * mss <= 0xFFFFFFFF
    ):
        # nothing wraps: every header is the first plus its steps, in one addition over
        # all of them read as one integer
        headers[: count * hlen] = (
            int.from_bytes(template * count, "big") + tso_steps(count, ihl, thl, mss)
        ).to_bytes(count * hlen, "big")
    else:  # the id, the folded IP sum or the sequence space wraps: segment by segment
        for i in range(count):
            at, this_id = i * hlen, (ident + i) & 0xFFFF
            headers[at : at + hlen] = template
            struct.pack_into("!H", headers, at + 4, this_id)
            struct.pack_into("!H", headers, at + 10, ~fold(ip_base + full + this_id) & 0xFFFF)
            struct.pack_into("!I", headers, at + ihl + 4, (seq + i * mss) & 0xFFFFFFFF)
    last = (count - 1) * hlen
    last_total = hlen + payload - (count - 1) * mss
    if last_total != full:  # a short last segment: its length and IP checksum
        struct.pack_into("!H", headers, last + 2, last_total)
        last_sum = ip_base + last_total + ((ident + count - 1) & 0xFFFF)
        struct.pack_into("!H", headers, last + 10, ~fold(last_sum) & 0xFFFF)
    headers[ihl + 13] |= flags & TCP_CWR
    headers[last + ihl + 13] |= flags & (TCP_FIN | TCP_PSH)
    struct.pack_into("!H", headers, last + ihl + 16, fold(pseudo + last_total - ihl))
    key = (start, hlen, mss, length)
    buffers = slices.get(key) if slices is not None else None
    if buffers is None:
        hview = memoryview(headers)
        data = start + hlen
        buffers = []
        for i in range(count):
            buffers.append(hview[i * hlen : i * hlen + hlen])
            buffers.append(view[data + i * mss : data + min(i * mss + mss, payload)])
        if slices is not None:
            if len(slices) >= 256:
                slices.clear()  # many layouts (sizes vary): start over rather than grow
            slices[key] = buffers
    return buffers, full


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
    tun_merged: int = 0  # TUN writes that carried a merged run of TCP segments (GSO)
    tun_superpackets: int = 0  # TSO reads: one TCP superpacket cut into its segments
    partial_sent: int = 0  # datagrams sent with PARTIAL_FLAG (their L4 checksum partial)


class Forwarder:
    """The two loops of one node: flannel0 → UDP and UDP → flannel0, a thread each (in one
    process, as the unit tests run them, or one per process, as `main` does)."""

    def __init__(
        self,
        tun: int,
        sock: socket.socket,
        local_address: str,
        vnet_header: bool = False,
        on_loop_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.tun = tun
        # called with the loop's name after its traceback is printed; ends the process
        self.on_loop_failure = on_loop_failure or exit_on_loop_failure
        self.vnet_header = vnet_header  # the TUN was opened with IFF_VNET_HDR
        self.sock = sock
        self.local_address = local_address  # the flannel0 address: source of our ICMP errors
        self.table = RouteTable()
        self.stats = DatapathStats()
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.gso = True  # UDP GSO sends; turned off if the kernel refuses them
        self.offloads = False  # flannel0 hands over partial checksums and TSO superpackets

    def start(self, loops: Container[str] = ("tun-to-udp", "udp-to-tun")) -> None:
        """Start the named loops (both, or one per process: see `main`), a thread each."""
        os.set_blocking(self.tun, False)
        self.sock.setblocking(False)
        # without UDP GRO every receive is one datagram, which the loop handles as well
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        if self.vnet_header:
            # TSO on flannel0: one read hands over a 64 KiB TCP superpacket, cut in
            # segment_tso (header arithmetic); without it the kernel segments and checksums
            # and every packet is one read. Not a TUN (the unit tests' socketpair): ENOTTY.
            try:
                fcntl.ioctl(self.tun, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
                self.offloads = True
            except OSError:
                self.offloads = False
        for target, name in ((self.tun_to_udp, "tun-to-udp"), (self.udp_to_tun, "udp-to-tun")):
            if name not in loops:
                continue
            thread = threading.Thread(target=self.guarded, args=(target, name), daemon=True)
            thread.start()
            self.threads.append(thread)

    def guarded(self, loop: Callable[[], None], name: str) -> None:
        """Run one forwarding loop; if it raises, report it and hand over to
        `on_loop_failure` (by default: end the process so the agent rebuilds the datapath)."""
        try:
            loop()
        except Exception:
            self.stats.errors += 1
            traceback.print_exc(file=sys.stderr)
            self.on_loop_failure(name)

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
        vnet = bytearray(VNET_HDR_LEN) if self.vnet_header else None
        headers = bytearray(GSO_SEGMENTS * 4 * 120)  # a superpacket's segment headers
        slices: dict[tuple[int, int, int, int], list[memoryview]] = {}  # segment_tso's
        skip = VNET_HDR_LEN if self.vnet_header else 0
        unpack_from = struct.unpack_from
        poll = select.poll()
        poll.register(tun, select.POLLIN)
        stats = self.stats
        pos = count = size = 0  # the pending run: `count` packets of `size` bytes in buf[:pos]
        target: tuple[str, int] | None = None
        flow = bytearray()  # the pending run's addresses and ports

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

        table, last_dst, hop = self.table, -1, None  # the last destination looked up
        while not self.stopping:
            if not poll.poll(POLL_MS):
                continue
            if self.table is not table:  # new routes (a whole new table): forget the last hop
                table, last_dst = self.table, -1
            while True:  # drain: one wakeup, a batch of packets
                try:
                    n = readv(tun, [vnet, view[pos:]] if vnet else [view[pos:]]) - skip
                except BlockingIOError:
                    break
                except OSError:
                    stats.errors += 1
                    break
                if n < 20 or buf[pos] >> 4 != 4:
                    continue
                dst = unpack_from("!I", buf, pos + 16)[0]
                if dst != last_dst:  # a flow's packets come in runs: one lookup per run
                    hop = table.lookup(dst)
                    if hop is None:
                        stats.unreachable += 1
                        reply = net_unreachable(view[pos : pos + n], self.local_address)
                        if reply is not None:
                            self.write_tun(reply)
                        continue
                    last_dst = dst
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
                if vnet is not None and vnet[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                    if vnet[1] == VIRTIO_NET_HDR_GSO_TCPV4:
                        at = pos  # flush() rewinds pos; the superpacket stays where it is
                        if count:
                            flush()  # the packets before it leave first: order kept
                        assert hop is not None
                        self.send_superpacket(view, at, n, vnet, headers, slices, hop)
                        continue
                    if vnet[1] != VIRTIO_NET_HDR_GSO_NONE or not self.partial_checksum(
                        buf, pos, n, vnet
                    ):
                        stats.errors += 1  # a GSO type flannel0 never offered
                        continue
                key = buf[pos + 12 : pos + 24]  # addresses and (for IHL 5) ports
                if count and (hop != target or n != size or key != flow):
                    # a different peer, size or flow ends the run; this packet starts the
                    # next one (a run of one flow arrives as one flow's run, which the
                    # receiving side merges without looking at every packet)
                    packet = bytes(view[pos : pos + n])
                    flush()
                    buf[:n] = packet
                flow = key
                count += 1
                size = n
                target = hop
                pos += n
                if pos + size > GSO_BYTES or count >= GSO_SEGMENTS:
                    flush()
            if count:
                flush()

    def partial_checksum(self, buf: bytearray, pos: int, n: int, vnet: bytearray) -> bool:
        """A packet the kernel left with a partial L4 checksum (NEEDS_CSUM): a TCP or UDP
        one is marked (PARTIAL_FLAG, finished by the receiving kernel), anything else is
        finished here. False if the header makes no sense (dropped)."""
        csum_start, csum_offset = struct.unpack_from("<HH", vnet, 6)
        if csum_start + csum_offset + 2 > n:
            return False
        if csum_start == (buf[pos] & 0x0F) * 4 and CSUM_OFFSETS.get(buf[pos + 9]) == csum_offset:
            mark_partial(buf, pos)
            self.stats.partial_sent += 1
        else:
            complete_checksum(buf, pos, n, csum_start, csum_offset)
        return True

    def send_superpacket(
        self,
        view: memoryview,
        pos: int,
        n: int,
        vnet: bytearray,
        headers: bytearray,
        slices: dict[tuple[int, int, int, int], list[memoryview]],
        target: tuple[str, int],
    ) -> None:
        """Cut a TSO superpacket into its segments (marked partial) and send them in as few
        UDP GSO sends as fit in a datagram each."""
        stats = self.stats
        mss = int.from_bytes(vnet[4:6], "little")
        try:
            buffers, size = segment_tso(view, pos, n, mss, headers, slices)
        except ValueError:
            stats.errors += 1
            return
        segments = len(buffers) // 2
        stats.tun_superpackets += 1
        per_send = max(1, min(GSO_SEGMENTS, UDP_MAX_PAYLOAD // size))
        for first in range(0, segments, per_send):
            chunk = buffers if per_send >= segments else buffers[2 * first : 2 * (first + per_send)]
            sent = len(chunk) // 2
            try:
                if self.gso and sent > 1:
                    try:
                        self.sock.sendmsg(
                            chunk, [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))], 0, target
                        )
                        stats.udp_sends += 1
                    except OSError as exc:
                        if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT):
                            raise
                        self.gso = False  # no UDP GSO here: one datagram per segment
                if not self.gso or sent == 1:
                    for at in range(0, len(chunk), 2):
                        self.sock.sendmsg(chunk[at : at + 2], [], 0, target)
                        stats.udp_sends += 1
                stats.tun_to_udp += sent
                stats.partial_sent += sent
            except OSError:
                stats.errors += sent  # socket buffer full or peer gone: dropped segments

    def udp_to_tun(self) -> None:
        """UDP → flannel0. With UDP GRO the kernel hands over a run of datagrams from one
        peer in one receive (a cmsg gives the datagram size); each is one inner packet."""
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        recvmsg_into, write, writev, tun = self.sock.recvmsg_into, os.write, os.writev, self.tun
        vnet = self.vnet_header
        out = bytearray(VNET_HDR_LEN + 64)  # vnet header + IPv4/TCP header of a merged packet
        packets: list[tuple[int, int]] = []
        payloads: dict[tuple[int, int, int], list[memoryview]] = {}  # build_merged_run's
        partial: set[int] = set()  # starts of this receive's marked packets (PARTIAL_FLAG)
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
                groups = (
                    tcp_run_groups(buf, total, step)
                    if vnet and total > step and buf[8] > 1
                    else None
                )
                if groups is not None and len(groups) == 1:
                    # one flow's run, one group (the common case): one merged write, of the
                    # first packet's header (TTL - 1, unmarked) and every packet's payload
                    decrement_ttl(view[:20])
                    if buf[6] & PARTIAL_FLAG:  # the run check: one value over the run
                        unmark_partial(buf, 0)
                    try:
                        writev(tun, build_merged_run(view, total, step, out, payloads))
                        stats.tun_merged += 1
                        stats.udp_to_tun += groups[0]
                    except OSError:  # the TUN queue is full: drop
                        stats.errors += groups[0]
                    continue
                if groups is not None:
                    # one flow's run: every packet has the same TTL, and only the first of
                    # each group is written, so only those need TTL - 1
                    last = (total - 1) // step * step
                    packets = [(start, step) for start in range(0, last, step)]
                    packets.append((last, total - last))
                    marked = buf[6] & PARTIAL_FLAG  # the run check: one value over the run
                    first = 0
                    for size in groups:
                        start = packets[first][0]
                        decrement_ttl(view[start : start + 20])
                        if marked:
                            unmark_partial(buf, start)
                        first += size
                    self.write_groups(
                        view, packets, groups, out, range(0, total, step) if marked else ()
                    )
                    continue
                packets.clear()
                partial.clear()
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
                    if buf[start + 6] & PARTIAL_FLAG and buf[start + 9] in CSUM_OFFSETS:
                        unmark_partial(buf, start)
                        partial.add(start)
                    packets.append((start, n))
                if not vnet:
                    for start, n in packets:
                        if start in partial:  # no vnet header to hand the kernel: finish it
                            ihl = (buf[start] & 0x0F) * 4
                            offset = CSUM_OFFSETS[buf[start + 9]]
                            struct.pack_into(
                                "!H", buf, start + ihl + offset, pseudo_header_sum(buf, start, n)
                            )
                            complete_checksum(buf, start, n, ihl, offset)
                        try:
                            write(tun, view[start : start + n])
                            stats.udp_to_tun += 1
                        except OSError:  # the TUN queue is full: drop
                            stats.errors += 1
                    continue
                if not packets:
                    continue  # every datagram of this receive was dropped: nothing to write
                self.write_groups(
                    view,
                    packets,
                    tcp_merge_groups(buf, packets) if len(packets) > 1 else SINGLE,
                    out,
                    partial,
                )

    def write_groups(
        self,
        view: memoryview,
        packets: list[tuple[int, int]],
        groups: Sequence[int],
        out: bytearray,
        partial: Container[int] = (),
    ) -> None:
        """Write `packets` to the TUN, each group of 2+ as one merged GSO packet (its TCP
        checksum left to the kernel: NEEDS_CSUM), a single packet as it came or, if it was
        marked (its start in `partial`), with NEEDS_CSUM for its partial checksum."""
        writev, tun, stats = os.writev, self.tun, self.stats
        first = 0
        for size in groups:
            try:
                if size == 1:
                    start, n = packets[first]
                    if start in partial:
                        writev(tun, [partial_vnet_header(view, start, n), view[start : start + n]])
                    else:
                        writev(tun, [PLAIN_VNET_HDR, view[start : start + n]])
                else:
                    writev(tun, build_merged_tcp(view, packets[first : first + size], out))
                    stats.tun_merged += 1
                stats.udp_to_tun += size
            except OSError:  # the TUN queue is full: drop
                stats.errors += size
            first += size

    def write_tun(self, packet: bytes) -> None:
        try:
            if self.vnet_header:
                os.writev(self.tun, [PLAIN_VNET_HDR, packet])
            else:
                os.write(self.tun, packet)
        except OSError:
            self.stats.errors += 1


def exit_on_loop_failure(name: str) -> None:
    """End the datapath process at once: its fds close, flannel0 goes, the agent rebuilds."""
    print(
        f"flannel datapath: the {name} loop failed (traceback above); exiting so that the "
        f"agent rebuilds flannel0 and the datapath",
        file=sys.stderr,
        flush=True,
    )
    os._exit(LOOP_FAILED_EXIT)


RECEIVING_HALF = "udp-to-tun (child process)"  # the loop's name when its process ends


def fork_receiving_half(forwarder: Forwarder, control: socket.socket) -> tuple[int, socket.socket]:
    """Run the UDP → flannel0 loop in a child process of its own; return its pid and the
    parent's end of a socketpair to it. Why: one process per direction, one GIL each, so a
    flow's data (one direction) and its ACKs (the other) never wait for each other's Python
    (with both loops in one process, the GIL handoffs left ~0.25 of the two cores idle under
    four streams). The child answers each message on the socketpair with its counters and
    exits at EOF (its parent gone); a child that dies ends the parent
    (`watch_receiving_half`). Call before any thread is started (fork)."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid:
        child_end.close()
        return pid, parent_end
    try:  # the child: its own loop, its counters on request, until its parent goes
        parent_end.close()
        control.close()
        forwarder.start(("udp-to-tun",))
        while child_end.recv(64):
            child_end.send(json.dumps(asdict(forwarder.stats)).encode())
    except BaseException:
        traceback.print_exc(file=sys.stderr)
    finally:
        os._exit(0)


def watch_receiving_half(forwarder: Forwarder, pid: int) -> None:
    """Wait for the receiving half's process; if it ends while this one is not stopping (its
    loop failed, or it was killed), end this one too, so that the agent rebuilds both."""
    os.waitpid(pid, 0)
    if not forwarder.stopping:
        exit_on_loop_failure(RECEIVING_HALF)


def combined_stats(forwarder: Forwarder, receiving_half: socket.socket | None) -> DatapathStats:
    """This process's counters plus, if the other direction runs in a child, the child's."""
    stats = asdict(forwarder.stats)
    if receiving_half is not None:
        try:
            receiving_half.send(b"stats")
            answer = receiving_half.recv(65536)
        except OSError:  # EPIPE/ECONNRESET: the child is gone
            answer = b""
        if not answer:  # gone before `watch_receiving_half` saw it: end as that would
            exit_on_loop_failure(RECEIVING_HALF)
        for name, value in json.loads(answer).items():
            stats[name] += value
    return DatapathStats(**stats)


def serve_control(
    forwarder: Forwarder, control: socket.socket, receiving_half: socket.socket | None = None
) -> None:
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
            stats = combined_stats(forwarder, receiving_half)
            control.send(json.dumps(asdict(stats)).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podnet.agent.flannel.datapath",
        description="flannel udp datapath (started by the podnet agent, not by hand)",
    )
    parser.add_argument("--tun-fd", type=int, required=True)
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--address", required=True, help="the flannel0 address")
    parser.add_argument(
        "--vnet-header", action="store_true", help="the TUN was opened with IFF_VNET_HDR"
    )
    args = parser.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL)
    sock = socket.socket(fileno=args.socket_fd)
    control = socket.socket(fileno=args.control_fd)
    forwarder = Forwarder(args.tun_fd, sock, args.address, args.vnet_header)
    pid, receiving_half = fork_receiving_half(forwarder, control)
    with contextlib.suppress(OSError):  # the agent gone: serve_control sees it and returns
        control.send(json.dumps({"receiving_half": pid}).encode())
    forwarder.start(("tun-to-udp",))
    threading.Thread(target=watch_receiving_half, args=(forwarder, pid), daemon=True).start()
    try:
        serve_control(forwarder, control, receiving_half)
    finally:
        forwarder.stop()
        receiving_half.close()  # the child sees EOF and exits
    return 0


if __name__ == "__main__":
    sys.exit(main())
