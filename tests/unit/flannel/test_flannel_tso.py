"""TSO on flannel0: a superpacket cut into its segments by header arithmetic
(`segment_tso`), partial checksums marked with PARTIAL_FLAG on the sender and handed to the
receiving kernel as NEEDS_CSUM. The checksums are checked by finishing them the way the
kernel does (`complete_checksum`) and comparing with segments built from scratch."""

from __future__ import annotations

import random
import select
import socket
import struct
import time

from podnet.agent.flannel.datapath import (
    PARTIAL_FLAG,
    SOL_UDP,
    UDP_MAX_PAYLOAD,
    UDP_SEGMENT,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR_LEN,
    Forwarder,
    RouteTable,
    adjust_ip_checksum,
    complete_checksum,
    fold,
    ipv4_checksum,
    mark_partial,
    pseudo_header_sum,
    segment_tso,
    tcp_merge_groups,
    tcp_run_groups,
    tso_cut,
    tso_steps,
    unmark_partial,
)
from podnet.agent.flannel.udp import pod_gso_max_segs
from podnet.testing.packets import ipv4_header

POD1, POD2 = "10.244.1.2", "10.244.2.2"
OPTIONS = bytes([1, 1, 8, 10]) + bytes(range(8))  # NOP NOP timestamps: a 32-byte header


def tcp_packet(
    seq: int, payload: bytes, ident: int, flags: int = 0x10, ttl: int = 64, partial: bool = False
) -> bytearray:
    """IPv4/TCP POD1:40000 -> POD2:5201 with timestamps; the TCP checksum full or, with
    `partial`, the pseudo-header sum (what a CHECKSUM_PARTIAL packet carries)."""
    tcp = bytearray(
        struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 8 << 4, flags, 500, 0, 0) + OPTIONS
    )
    total = 20 + len(tcp) + len(payload)
    ip = ipv4_header(POD1, POD2, protocol=socket.IPPROTO_TCP, total=total, ident=ident, ttl=ttl)
    packet = ip + tcp + payload
    struct.pack_into("!H", packet, 36, pseudo_header_sum(packet, 0, len(packet)))
    if not partial:
        complete_checksum(packet, 0, len(packet), 20, 16)
    return packet


def finished(segment: bytes) -> bytearray:
    """A marked segment as its receiver's kernel ends up with it: flag cleared, checksum
    finished."""
    packet = bytearray(segment)
    assert packet[6] & PARTIAL_FLAG
    unmark_partial(packet, 0)
    complete_checksum(packet, 0, len(packet), 20, 16)
    return packet


def test_flannel_checksum_adjustments_agree_with_a_full_recompute() -> None:
    rng = random.Random(7)
    for _ in range(500):
        header = bytearray(rng.randbytes(20))
        header[0], header[6] = 0x45, header[6] & 0x7F
        header[10:12] = b"\0\0"
        struct.pack_into("!H", header, 10, ipv4_checksum(header))
        marked = bytearray(header)
        mark_partial(marked, 0)
        assert marked[6] & PARTIAL_FLAG and ipv4_checksum(marked) == 0
        unmark_partial(marked, 0)
        assert ipv4_checksum(marked) == 0 and marked[6] == header[6]
        adjust_ip_checksum(marked, 0, 0)
        assert ipv4_checksum(marked) == 0


def test_flannel_a_superpacket_becomes_the_kernels_segments() -> None:
    """Every segment equals the one built from scratch: short and full last segments, the IP
    id wrapping (65534), the sequence number wrapping, and random ids (some of which wrap the
    folded IP checksum sum inside the superpacket)."""
    rng = random.Random(17)
    mss = 1420
    starts = [(65534, 1_000_000), (100, 1_000_000), (7, 0xFFFFFFFF - 5000)]
    starts += [(rng.randrange(0x10000), rng.randrange(1 << 32)) for _ in range(12)]
    # an id that puts the first segment's folded IP sum 10 below 0xFFFF: it wraps inside
    probe = tcp_packet(0, b"", ident=0, partial=True)
    mark_partial(probe, 0)
    words = struct.unpack_from("!10H", probe)
    base = sum(words) - words[1] - words[2] - words[5] + 52 + mss  # a full segment's length
    starts.append(((0xFFFF - 10 - fold(base)) % 0xFFFF, 5))
    sizes = ((mss * 45 + 333, 0x18), (mss * 44, 0x10), (mss * 3, 0x19), (mss + 1, 0x90), (9, 0x18))
    for ident, seq in starts:
        for payload_len, flags in sizes:
            payload = rng.randbytes(payload_len)
            superpacket = tcp_packet(seq, payload, ident=ident, flags=flags, partial=True)
            view = memoryview(superpacket)
            headers = bytearray(64 * 120)
            buffers, size = segment_tso(view, 0, len(superpacket), mss, headers)
            assert size == 52 + mss
            segments = [
                bytes(buffers[i]) + bytes(buffers[i + 1]) for i in range(0, len(buffers), 2)
            ]
            assert len(segments) == -(-payload_len // mss)
            for i, segment in enumerate(segments):
                last = i == len(segments) - 1
                chunk = payload[i * mss : (i + 1) * mss]
                seg_flags = flags & ~(0x01 | 0x08 | 0x80)
                if last:
                    seg_flags |= flags & (0x01 | 0x08)
                if i == 0:
                    seg_flags |= flags & 0x80
                expected = tcp_packet(
                    (seq + i * mss) & 0xFFFFFFFF, chunk, (ident + i) & 0xFFFF, seg_flags
                )
                assert segment[6] & PARTIAL_FLAG and ipv4_checksum(segment[:20]) == 0
                assert finished(segment) == expected, (
                    f"segment {i} of {len(segments)}, id {ident}, seq {seq}"
                )


def test_flannel_tso_steps_turn_one_header_into_each_segments() -> None:
    """Three copies of a 40-byte IPv4/TCP header read as one integer, plus the steps for a
    1000-byte mss, are the three segments' headers: id +1, IP checksum -1, sequence +1000."""
    ip = "45000414 {id} 4000 4006 {check} 0af40102 0af40202"
    tcp = "9c401451 {seq} 0000004d 501001f4 00000000"
    header = bytes.fromhex((ip + tcp).format(id="0007", check="abcd", seq="00000064"))
    stepped = int.from_bytes(header * 3, "big") + tso_steps(3, 20, 20, 1000)
    assert stepped.to_bytes(120, "big") == bytes.fromhex(
        (ip + tcp).format(id="0007", check="abcd", seq="00000064")  # seq 100
        + (ip + tcp).format(id="0008", check="abcc", seq="0000044c")  # seq 1100
        + (ip + tcp).format(id="0009", check="abcb", seq="00000834")  # seq 2100
    )


def test_flannel_a_marked_packet_is_finished_by_the_receiving_kernel() -> None:
    """The receiver writes a marked single packet with NEEDS_CSUM (TCP offset 16) and the
    pseudo-header sum in the field, whatever the sender left there."""
    tun_end, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    failures: list[str] = []
    forwarder = Forwarder(tun_end.fileno(), sock, "10.244.2.0", True, failures.append)
    forwarder.start()
    try:
        ack = tcp_packet(5, b"", ident=3, partial=True)
        mark_partial(ack, 0)
        ack[36:38] = b"\xde\xad"  # not even the pseudo-header sum: the receiver recomputes it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(ack, sock.getsockname())
        ready, _, _ = select.select([tun_peer], [], [], 2.0)
        assert ready, f"nothing written; loop failures: {failures}"
        written = tun_peer.recv(65535)
        flags, gso_type, _, _, csum_start, csum_offset = struct.unpack_from("=BBHHHH", written)
        assert (flags, gso_type, csum_start, csum_offset) == (
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            0,
            20,
            16,
        )
        packet = bytearray(written[VNET_HDR_LEN:])
        complete_checksum(packet, 0, len(packet), 20, 16)
        assert packet == tcp_packet(5, b"", ident=3, ttl=63)
    finally:
        forwarder.stop()
        for s in (tun_end, tun_peer, sock):
            s.close()


def test_flannel_a_superpacket_read_from_the_tun_leaves_as_marked_segments() -> None:
    tun_end, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    failures: list[str] = []
    forwarder = Forwarder(tun_end.fileno(), sock, "10.244.1.0", True, failures.append)
    forwarder.table = RouteTable.build({"10.244.2.0/24": peer.getsockname()})
    mss, count = 1400, 46  # more than one datagram's worth (45 segments): two GSO sends
    payload = random.Random(3).randbytes(mss * count - 100)
    superpacket = tcp_packet(42, payload, ident=100, flags=0x18, partial=True)
    vnet = struct.pack("=BBHHHH", 1, VIRTIO_NET_HDR_GSO_TCPV4, 52, mss, 20, 16)
    # two packets queued ahead of it: a pending run, sent first (the superpacket is read
    # behind them in the same buffer and must be cut from where it was read)
    before = [tcp_packet(1 + i * 10, bytes([i]) * 10, ident=i) for i in range(2)]
    try:
        for packet in before:
            tun_peer.send(bytes(VNET_HDR_LEN) + packet)
        tun_peer.send(vnet + superpacket)
        forwarder.start()
        received = []
        while len(received) < count + 2:
            ready, _, _ = select.select([peer], [], [], 2.0)
            assert ready, f"got {len(received)} datagrams; loop failures: {failures}"
            received.append(peer.recv(65535))
        for packet, datagram in zip(before, received[:2], strict=True):
            assert datagram == tcp_packet(
                *struct.unpack_from("!I", packet, 24), packet[52:], ident=packet[5], ttl=63
            )
        received = received[2:]
        for i, datagram in enumerate(received):
            chunk = payload[i * mss : (i + 1) * mss]
            flags = 0x18 if i == count - 1 else 0x10
            assert finished(datagram) == tcp_packet(42 + i * mss, chunk, 100 + i, flags, ttl=63)
        stats = forwarder.stats
        deadline = time.monotonic() + 2  # the counters move just after each send
        while stats.tun_to_udp < count + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (stats.tun_superpackets, stats.udp_sends, stats.tun_to_udp) == (1, 3, count + 2)
    finally:
        forwarder.stop()
        for s in (tun_end, tun_peer, peer, sock):
            s.close()


def test_flannel_a_superpacket_within_the_pods_gso_max_segs_leaves_in_one_send() -> None:
    """The udp backend gives its pods' eth0 gso_max_segs = pod_gso_max_segs(MTU): a
    superpacket of that many full segments is one UDP GSO send (one more would be two)."""
    mtu, mss = 1472, 1420  # FLANNEL_MTU on a 1500 underlay; TCP with timestamps
    count = pod_gso_max_segs(mtu)
    assert (count, pod_gso_max_segs(1450), pod_gso_max_segs(8972)) == (44, 45, 7)
    assert count * mtu <= UDP_MAX_PAYLOAD < (count + 1) * mtu
    tun_end, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    failures: list[str] = []
    forwarder = Forwarder(tun_end.fileno(), sock, "10.244.1.0", True, failures.append)
    forwarder.table = RouteTable.build({"10.244.2.0/24": peer.getsockname()})
    payload = random.Random(5).randbytes(mss * count)
    superpacket = tcp_packet(7, payload, ident=9, flags=0x18, partial=True)
    assert len(superpacket) == count * mss + 52
    vnet = struct.pack("=BBHHHH", 1, VIRTIO_NET_HDR_GSO_TCPV4, 52, mss, 20, 16)
    try:
        tun_peer.send(vnet + superpacket)
        forwarder.start()
        received = []
        while len(received) < count:
            ready, _, _ = select.select([peer], [], [], 2.0)
            assert ready, f"got {len(received)} datagrams; loop failures: {failures}"
            received.append(peer.recv(65535))
        assert [len(datagram) for datagram in received] == [mtu] * count
        stats = forwarder.stats
        deadline = time.monotonic() + 2  # the counters move just after each send
        while stats.tun_to_udp < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (stats.tun_superpackets, stats.udp_sends, stats.tun_to_udp) == (1, 1, count)
    finally:
        forwarder.stop()
        for s in (tun_end, tun_peer, peer, sock):
            s.close()


def test_flannel_marked_segments_sent_by_gso_are_written_as_one_merged_packet() -> None:
    tun_end, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    failures: list[str] = []
    forwarder = Forwarder(tun_end.fileno(), sock, "10.244.2.0", True, failures.append)
    forwarder.start()
    mss = 1000
    superpacket = tcp_packet(9, bytes(range(250)) * 24, ident=1, partial=True)
    buffers, size = segment_tso(memoryview(superpacket), 0, len(superpacket), mss, bytearray(9000))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendmsg(
                buffers, [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))], 0, sock.getsockname()
            )
        ready, _, _ = select.select([tun_peer], [], [], 2.0)
        assert ready, f"nothing written; loop failures: {failures}"
        written = tun_peer.recv(65535)
        flags, gso_type, hdr_len, gso_size = struct.unpack_from("=BBHH", written)
        assert (flags, gso_type, hdr_len, gso_size) == (1, 1, 52, mss)
        packet = bytearray(written[VNET_HDR_LEN:])
        assert not packet[6] & PARTIAL_FLAG and packet[8] == 63 and ipv4_checksum(packet[:20]) == 0
        assert packet[52:] == bytes(range(250)) * 24
    finally:
        forwarder.stop()
        for s in (tun_end, tun_peer, sock):
            s.close()


def test_flannel_kept_slices_serve_the_next_superpacket_of_the_same_layout() -> None:
    """The sending loop reads every superpacket into one buffer: the buffers list kept for a
    layout must carry the next superpacket's headers and payloads, not the previous ones'."""
    mss = 1000
    buf = bytearray(70000)
    view = memoryview(buf)
    headers, slices = bytearray(9000), {}  # type: ignore[var-annotated]
    rng = random.Random(5)
    for seq in (1, 50_000, 4_294_967_000):  # the last wraps the sequence space
        payload = rng.randbytes(mss * 5 + 17)
        superpacket = tcp_packet(seq, payload, ident=seq & 0xFFFF, flags=0x18, partial=True)
        buf[: len(superpacket)] = superpacket
        buffers, _ = segment_tso(view, 0, len(superpacket), mss, headers, slices)
        segments = [bytes(buffers[i]) + bytes(buffers[i + 1]) for i in range(0, len(buffers), 2)]
        for i, segment in enumerate(segments):
            flags = 0x18 if i == len(segments) - 1 else 0x10
            chunk = payload[i * mss : (i + 1) * mss]
            expected = tcp_packet((seq + i * mss) & 0xFFFFFFFF, chunk, (seq + i) & 0xFFFF, flags)
            assert finished(segment) == expected, f"seq {seq}, segment {i}"
    assert len(slices) == 1


def tso_receive(payload_len: int, ident: int = 9, seq: int = 1000, flags: int = 0x10) -> bytearray:
    """What the receiving datapath gets of one superpacket cut by `segment_tso` and sent in
    one UDP GSO send: its segments back to back (marked, checksums partial)."""
    superpacket = tcp_packet(seq, random.Random(3).randbytes(payload_len), ident, flags, True)
    buffers, _ = segment_tso(memoryview(superpacket), 0, len(superpacket), 1420, bytearray(9000))
    return bytearray(b"".join(bytes(b) for b in buffers))


STEP = 52 + 1420


def test_flannel_a_receive_of_one_tso_cut_is_one_group_by_one_comparison() -> None:
    for payload_len, flags in ((1420 * 44, 0x10), (1420 * 43 + 500, 0x18), (1420 + 1, 0x10)):
        received = tso_receive(payload_len, flags=flags)
        count = -(-payload_len // 1420)
        headers = b"".join(received[i : i + 52] for i in range(0, len(received), STEP))
        last = len(received) - (count - 1) * STEP
        assert tso_cut(headers, count, 52, 1420, last), (payload_len, flags)
        assert tcp_run_groups(received, len(received), STEP) == [count]


def test_flannel_a_tso_cut_near_a_wrap_is_left_to_the_run_check() -> None:
    """An id, IP checksum or sequence number that wraps inside the run: not the one
    comparison (the sum would carry into the next field), but still one group."""
    for ident, seq in ((0xFFF0, 1000), (9, 0xFFFFFFFF - 5000)):
        received = tso_receive(1420 * 20, ident=ident, seq=seq)
        headers = b"".join(received[i : i + 52] for i in range(0, len(received), STEP))
        assert not tso_cut(headers, 20, 52, 1420, STEP)
        assert tcp_run_groups(received, len(received), STEP) == [20]


def test_flannel_a_changed_tso_cut_is_grouped_as_the_kernels_gro_would() -> None:
    """Any one bit changed in any header of a TSO cut: what the run check answers is the
    per-packet grouping's (the kernel's GRO rules), or it leaves the receive to it."""
    received = tso_receive(1420 * 7 + 300, flags=0x18)
    bounds = [(i * STEP, min(STEP, len(received) - i * STEP)) for i in range(8)]
    for packet in range(8):
        for offset in range(52):
            for bit in (0x01, 0x10, 0x80):
                changed = bytearray(received)
                changed[packet * STEP + offset] ^= bit
                groups = tcp_run_groups(changed, len(changed), STEP)
                assert groups is None or groups == tcp_merge_groups(changed, bounds), (
                    packet,
                    offset,
                    bit,
                )
