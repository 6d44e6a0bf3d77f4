"""The udp datapath's packet code: TTL decrement with incremental checksum, ICMP
net-unreachable, and longest-prefix match over the leases."""

from __future__ import annotations

import ipaddress
import random
import struct

from podnet.agent.flannel.datapath import (
    RouteTable,
    decrement_ttl,
    ipv4_checksum,
    net_unreachable,
)
from podnet.testing.packets import ipv4_header

SENDER, PEER, NOWHERE = "10.244.1.2", "10.244.3.2", "10.244.200.9"
UDP, ICMP = 17, 1


def test_flannel_checksum_of_a_valid_header_is_zero() -> None:
    header = ipv4_header(SENDER, PEER, protocol=UDP, total=48)
    assert ipv4_checksum(header) == 0


def test_flannel_ttl_decrement_keeps_the_checksum_valid() -> None:
    rng = random.Random(4)
    for _ in range(5000):
        ttl = rng.randint(2, 255)
        header = ipv4_header(
            str(ipaddress.IPv4Address(rng.getrandbits(32))),
            str(ipaddress.IPv4Address(rng.getrandbits(32))),
            ident=rng.getrandbits(16),
            protocol=rng.choice([1, 6, 17]),
            total=rng.randint(20, 1500),
            ttl=ttl,
        )
        packet = header + bytearray(b"payload!")
        assert decrement_ttl(packet)
        assert packet[8] == ttl - 1
        assert ipv4_checksum(packet[:20]) == 0, packet[:20].hex()
        recomputed = bytearray(packet[:20])
        recomputed[10:12] = b"\0\0"
        assert struct.unpack("!H", packet[10:12])[0] == ipv4_checksum(recomputed) or (
            # 0x0000 and 0xffff are the same number in one's complement
            {struct.unpack("!H", packet[10:12])[0], ipv4_checksum(recomputed)} == {0, 0xFFFF}
        )
        assert packet[20:] == b"payload!"


def test_flannel_ttl_one_is_dropped_untouched() -> None:
    packet = ipv4_header(SENDER, PEER, protocol=UDP, total=48, ttl=1)
    before = bytes(packet)
    assert not decrement_ttl(packet)
    assert bytes(packet) == before


def test_flannel_net_unreachable_quotes_the_offender() -> None:
    offender = ipv4_header(SENDER, NOWHERE, protocol=UDP, total=28, ttl=63)
    offender += b"\x1f\x90\x1f\x91\0\x08\0\0"
    icmp_packet = net_unreachable(offender, "10.244.1.0")
    assert icmp_packet is not None
    header = icmp_packet[:20]
    assert ipv4_checksum(header) == 0
    version_ihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack("!BBHHHBBH4s4s", header)
    assert (version_ihl, total, ttl, proto) == (0x45, len(icmp_packet), 8, 1)
    assert ipaddress.IPv4Address(src) == ipaddress.IPv4Address("10.244.1.0")
    assert ipaddress.IPv4Address(dst) == ipaddress.IPv4Address("10.244.1.2")  # back to the sender
    icmp = icmp_packet[20:]
    assert icmp[:2] == b"\x03\x00"  # destination unreachable, net unreachable
    assert ipv4_checksum(icmp) == 0
    assert icmp[8:] == bytes(offender[:28])  # the IP header + 8 bytes of the offender


def test_flannel_no_icmp_about_icmp_or_later_fragments() -> None:
    payload = bytearray(8)
    icmp_offender = ipv4_header(SENDER, NOWHERE, protocol=ICMP, total=48, ttl=63) + payload
    assert net_unreachable(icmp_offender, "10.244.1.0") is None
    fragment = ipv4_header(SENDER, NOWHERE, protocol=UDP, total=48, ttl=63) + payload
    struct.pack_into("!H", fragment, 6, 0x2000 | 185)  # MF, offset 185*8
    assert net_unreachable(fragment, "10.244.1.0") is None
    header = ipv4_header(SENDER, NOWHERE, protocol=UDP, total=48, ttl=63)
    assert net_unreachable(header[:24], "10.244.1.0") is None


def test_flannel_longest_prefix_match() -> None:
    table = RouteTable.build(
        {
            "10.244.2.0/24": ("172.31.1.12", 8285),
            "10.244.0.0/16": ("172.31.1.99", 8285),
            "10.244.2.128/25": ("172.31.1.13", 8285),
        }
    )

    def lookup(ip: str) -> tuple[str, int] | None:
        return table.lookup(int(ipaddress.IPv4Address(ip)))

    assert lookup("10.244.2.200") == ("172.31.1.13", 8285)
    assert lookup("10.244.2.5") == ("172.31.1.12", 8285)
    assert lookup("10.244.7.5") == ("172.31.1.99", 8285)
    assert lookup("10.245.0.1") is None
    assert RouteTable().lookup(1) is None
