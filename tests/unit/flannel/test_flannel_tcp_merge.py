"""The udp datapath's receive-side merging: runs of TCP segments written to the TUN as one
GSO packet (virtio_net_hdr + one IPv4/TCP packet), decided exactly as the kernel's GRO."""

from __future__ import annotations

import ipaddress
import struct

from podnet.agent.flannel.datapath import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR_LEN,
    build_merged_tcp,
    ipv4_checksum,
    tcp_merge_groups,
)

SRC, DST = "10.244.1.2", "10.244.3.2"
OPTIONS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1000, 2000)  # NOP NOP timestamps


def tcp_checksum(src: str, dst: str, segment: bytes) -> int:
    pseudo = (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!BBH", 0, 6, len(segment))
    )
    data = pseudo + segment + (b"\0" if len(segment) % 2 else b"")
    return ipv4_checksum(data)


def segment(
    seq: int,
    payload: bytes,
    flags: int = 0x10,
    sport: int = 40000,
    dst: str = DST,
    ident: int = 1,
    proto: int = 6,
) -> bytes:
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH", sport, 5201, seq, 77, (20 + len(OPTIONS)) // 4 << 4, flags, 500, 0, 0
        )
        + OPTIONS
    )
    struct.pack_into("!H", tcp, 16, tcp_checksum(SRC, dst, bytes(tcp) + payload))
    total = 20 + len(tcp) + len(payload)
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            ident,
            0x4000,
            63,
            proto,
            0,
            ipaddress.IPv4Address(SRC).packed,
            ipaddress.IPv4Address(dst).packed,
        )
    )
    struct.pack_into("!H", ip, 10, ipv4_checksum(ip))
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
    out = bytearray(VNET_HDR_LEN + 65535)
    length = build_merged_tcp(memoryview(buf), bounds, out)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from(
        "=BBHHHH", out, 0
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
    ip = bytes(out[VNET_HDR_LEN:length])
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
