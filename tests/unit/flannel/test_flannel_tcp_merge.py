"""The udp datapath's receive-side merging: runs of TCP segments written to the TUN as one
GSO packet (virtio_net_hdr + one IPv4/TCP packet), decided exactly as the kernel's GRO."""

from __future__ import annotations

import struct

from podnet.agent.flannel.datapath import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR_LEN,
    build_merged_run,
    build_merged_tcp,
    ipv4_checksum,
    tcp_merge_groups,
    tcp_run_groups,
)
from podnet.testing.packets import ipv4_header, tcp_checksum

SRC, DST = "10.244.1.2", "10.244.3.2"
OPTIONS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1000, 2000)  # NOP NOP timestamps


def segment(
    seq: int,
    payload: bytes,
    flags: int = 0x10,
    sport: int = 40000,
    dst: str = DST,
    ident: int = 1,
    proto: int = 6,
    ack: int = 77,
    window: int = 500,
    tsval: int = 1000,
) -> bytes:
    options = bytes([1, 1, 8, 10]) + struct.pack("!II", tsval, 2000)  # NOP NOP timestamps
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH", sport, 5201, seq, ack, (20 + len(options)) // 4 << 4, flags, window, 0, 0
        )
        + options
    )
    struct.pack_into("!H", tcp, 16, tcp_checksum(SRC, dst, bytes(tcp) + payload))
    total = 20 + len(tcp) + len(payload)
    ip = ipv4_header(SRC, dst, protocol=proto, total=total, ident=ident, ttl=63)
    return bytes(ip + tcp + payload)


def lay_out(packets: list[bytes]) -> tuple[bytearray, list[tuple[int, int]]]:
    buf = bytearray(b"".join(packets))
    bounds, pos = [], 0
    for p in packets:
        bounds.append((pos, len(p)))
        pos += len(p)
    return buf, bounds


MSS = 1000


def payload(i: int, size: int = MSS) -> bytes:
    return bytes([i % 251]) * size


def test_flannel_contiguous_full_segments_merge() -> None:
    packets = [segment(1 + i * MSS, payload(i)) for i in range(4)]
    buf, bounds = lay_out(packets)
    assert tcp_merge_groups(buf, bounds) == [4]


def test_flannel_runs_break_where_the_kernels_gro_would() -> None:
    a, b = 1 + 4 * MSS, 90000
    run = [
        segment(1, payload(0)),
        segment(1 + MSS, payload(1)),
        segment(1 + 3 * MSS, payload(3)),  # a sequence gap: a new run
        segment(a, payload(4), sport=40001),  # another flow: a new run
        segment(a + MSS, payload(5), sport=40001, flags=0x18),  # PSH joins and ends the run
        segment(a + 2 * MSS, payload(6), sport=40001),
        segment(a + 3 * MSS, payload(7), sport=40001, flags=0x11),  # FIN: never merged
        segment(b, payload(8)),
        segment(b + MSS, payload(9, 300)),  # a short segment joins and ends the run
        segment(b + MSS + 300, payload(10)),
        segment(b, b"", flags=0x10),  # a pure ACK
        segment(1, payload(11), proto=17),  # not TCP
    ]
    buf, bounds = lay_out(run)
    assert tcp_merge_groups(buf, bounds) == [2, 1, 2, 1, 1, 2, 1, 1, 1]


def test_flannel_merged_packet_is_one_gso_packet_with_all_payloads() -> None:
    packets = [segment(5000 + i * MSS, payload(i), ident=10 + i) for i in range(3)]
    packets.append(segment(5000 + 3 * MSS, payload(3, 300), flags=0x18, ident=13))
    buf, bounds = lay_out(packets)
    assert tcp_merge_groups(buf, bounds) == [4]
    out = bytearray(VNET_HDR_LEN + 64)
    written = b"".join(build_merged_tcp(memoryview(buf), bounds, out))  # what writev writes
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from(
        "=BBHHHH", written, 0
    )
    header = 20 + 20 + len(OPTIONS)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        header,
        MSS,
        20,
        16,
    )
    ip = written[VNET_HDR_LEN:]
    assert len(ip) == header + 3 * MSS + 300
    assert struct.unpack_from("!H", ip, 2)[0] == len(ip)
    assert ipv4_checksum(ip[:20]) == 0
    assert struct.unpack_from("!H", ip, 4)[0] == 10  # the first segment's IP id
    assert struct.unpack_from("!I", ip, 24)[0] == 5000  # the first sequence number
    assert ip[33] == 0x18  # the last segment's PSH is kept
    assert ip[header:] == b"".join(payload(i) for i in range(3)) + payload(3, 300)
    # NEEDS_CSUM: the field holds the pseudo-header sum; summing the segment from there
    # (what the kernel does) gives the right TCP checksum of the merged packet
    tcp = bytearray(ip[20:])
    finished = ipv4_checksum(tcp)
    tcp[16:18] = b"\0\0"
    assert finished == tcp_checksum(SRC, DST, bytes(tcp))


def run_of(count: int, seq: int = 1, last: bytes | None = None, last_flags: int = 0x10) -> bytes:
    """`count` segments of one flow as a UDP GRO receive lays them out, back to back."""
    seqs = [(seq + i * MSS) & 0xFFFFFFFF for i in range(count)]
    packets = [segment(seqs[i], payload(i), ident=i) for i in range(count - 1)]
    tail = payload(count - 1) if last is None else last
    packets.append(segment(seqs[-1], tail, flags=last_flags, ident=count))
    return b"".join(packets)


STEP = len(segment(1, payload(0)))


def test_flannel_a_whole_receive_is_recognised_as_one_run() -> None:
    for last, flags in ((None, 0x10), (None, 0x18), (payload(9, 300), 0x10), (payload(9, 1), 0x18)):
        received = bytearray(run_of(40, last=last, last_flags=flags))
        assert tcp_run_groups(received, len(received), STEP) == [40], (last, flags)
    # across the wrap of the 32-bit sequence space
    received = bytearray(run_of(5, seq=0xFFFFFFFF - 2 * MSS))
    assert tcp_run_groups(received, len(received), STEP) == [5]
    # a pushed segment inside the receive ends its group, as in the kernel's GRO
    pushed = bytearray(run_of(4, last_flags=0x18) + run_of(3, seq=1 + 4 * MSS))
    assert tcp_run_groups(pushed, len(pushed), STEP) == [4, 3]
    assert tcp_merge_groups(pushed, [(i * STEP, STEP) for i in range(7)]) == [4, 3]


def test_flannel_the_run_check_agrees_with_the_per_packet_grouping() -> None:
    """Any one byte changed in any header: where the whole-run check gives groups, they are
    the per-packet grouping's (the kernel's GRO rules); else the receive goes to that code."""
    for last, flags in ((None, 0x10), (payload(9, 300), 0x18)):
        received = run_of(12, last=last, last_flags=flags)
        bounds = [(i * STEP, min(STEP, len(received) - i * STEP)) for i in range(12)]
        header = 20 + 20 + len(OPTIONS)
        for packet in range(12):
            for offset in range(header):
                for bit in (0x01, 0x04, 0x80):
                    changed = bytearray(received)
                    changed[packet * STEP + offset] ^= bit
                    groups = tcp_run_groups(changed, len(changed), STEP)
                    if offset in (4, 5, 10, 11, 36, 37):  # IP id, checksums: never compared
                        assert groups == [12]
                    assert groups is None or groups == tcp_merge_groups(changed, bounds), (
                        packet,
                        offset,
                        bit,
                    )


def burst(first: int, count: int, ack: int, tsval: int, window: int = 500) -> bytes:
    """`count` full segments from packet `first` on of one TSO burst (one ack, timestamp)."""
    return b"".join(
        segment(1 + i * MSS, payload(i), ident=i, ack=ack, tsval=tsval, window=window)
        for i in range(first, first + count)
    )


def test_flannel_a_receive_across_two_bursts_is_two_groups_without_the_per_packet_walk() -> None:
    """The peer's GRO run goes on across its GSO sends, so one receive often holds the end
    of one TSO burst and the start of the next: another ack number and timestamp (or window)
    from there on. The kernel's GRO starts a new packet there; so does the run check."""
    cases = [
        (burst(0, 5, ack=77, tsval=1000) + burst(5, 7, ack=99, tsval=1001), [5, 7]),
        (burst(0, 3, ack=77, tsval=1000) + burst(3, 4, ack=77, tsval=1000, window=600), [3, 4]),
        (
            burst(0, 2, ack=77, tsval=1)
            + burst(2, 2, ack=78, tsval=1)
            + burst(4, 1, ack=78, tsval=2)
            + burst(5, 3, ack=79, tsval=2),
            [2, 2, 1, 3],
        ),
    ]
    pushed = bytearray(burst(0, 6, ack=77, tsval=1000) + burst(6, 4, ack=80, tsval=1002))
    pushed[3 * STEP + 33] = 0x18  # PSH on the 4th: its group ends there, then the new burst
    cases.append((pushed, [4, 2, 4]))
    for received, groups in cases:
        count = len(received) // STEP
        bounds = [(i * STEP, STEP) for i in range(count)]
        assert tcp_merge_groups(bytearray(received), bounds) == groups
        assert tcp_run_groups(bytearray(received), len(received), STEP) == groups


def test_flannel_a_run_whose_tcp_header_length_changes_is_left_to_the_grouping() -> None:
    received = bytearray(run_of(4))
    received[2 * STEP + 32] = 0x50  # the third segment claims a 20-byte TCP header
    assert tcp_run_groups(received, len(received), STEP) is None


def test_flannel_runs_that_are_not_one_flow_are_left_to_the_grouping() -> None:
    flows = run_of(3) + segment(1 + 3 * MSS, payload(3), sport=40001)
    short_middle = (
        segment(1, payload(0))
        + segment(1 + MSS, payload(1, 10))
        + b"\0" * (STEP - 20 - 20 - len(OPTIONS) - 10)
    )
    not_tcp = run_of(2)[:STEP] + segment(1 + MSS, payload(1), proto=17)
    for received in (flows, short_middle, not_tcp):
        assert tcp_run_groups(bytearray(received), len(received), STEP) is None
    single = bytearray(run_of(1))
    assert tcp_run_groups(single, len(single), STEP) is None


def test_flannel_a_merged_run_is_the_merged_packet_of_its_segments() -> None:
    """The receive of one group (`build_merged_run`, payload slices kept per layout) writes
    what `build_merged_tcp` writes for the same segments, receive after receive in the same
    buffer: the kept slices carry the new receive's payloads, the header its fields."""
    buf = bytearray(65535)
    view = memoryview(buf)
    payloads: dict[tuple[int, int, int], list[memoryview]] = {}
    cases = [
        run_of(40),
        run_of(40, seq=90_000, last=payload(7), last_flags=0x18),  # the same layout: kept
        run_of(12, last=payload(9, 300)),
        run_of(5, seq=0xFFFFFFFF - 2 * MSS, last=payload(3, 1)),
    ]
    for received in cases:
        total = len(received)
        buf[:total] = received
        assert tcp_run_groups(buf, total, STEP) is not None
        bounds = [(at, min(STEP, total - at)) for at in range(0, total, STEP)]
        expected = b"".join(build_merged_tcp(view, bounds, bytearray(VNET_HDR_LEN + 64)))
        written = b"".join(
            build_merged_run(view, total, STEP, bytearray(VNET_HDR_LEN + 64), payloads)
        )
        assert written == expected
        ip = written[VNET_HDR_LEN:]
        assert struct.unpack_from("!H", ip, 2)[0] == len(ip) and ipv4_checksum(ip[:20]) == 0
    assert len(payloads) == 3
