"""IPv4 packets built field by field for the flannel datapath tests: `ipv4_header` (20 bytes,
no options, DF set, its checksum filled in) and `tcp_checksum` (over the pseudo-header).

What belongs here: the header arithmetic more than one datapath test needs; what a single test
builds (an ICMP echo, a TCP segment with particular options) stays in that test.
"""

from __future__ import annotations

import ipaddress
import struct

from podnet.agent.flannel.datapath import ipv4_checksum

DONT_FRAGMENT = 0x4000


def ipv4_header(
    src: str, dst: str, *, protocol: int, total: int, ident: int = 0, ttl: int = 64
) -> bytearray:
    """An IPv4 header for a packet of `total` bytes (this header included), with a valid
    checksum."""
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,  # version 4, 5 words: no options
            0,
            total,
            ident,
            DONT_FRAGMENT,
            ttl,
            protocol,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
    )
    struct.pack_into("!H", header, 10, ipv4_checksum(header))
    return header


def tcp_checksum(src: str, dst: str, segment: bytes | bytearray) -> int:
    """The TCP checksum of `segment` (header with a zero checksum field, then payload) from
    `src` to `dst`: the Internet checksum over the pseudo-header and the segment."""
    pseudo = (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!BBH", 0, 6, len(segment))
    )
    return ipv4_checksum(pseudo + bytes(segment) + (b"\0" if len(segment) % 2 else b""))
