"""The udp datapath's forwarding loops, run for real without root: a SOCK_DGRAM socketpair
stands in for the vnet-header TUN (one message per packet, as a TUN read/write) and loopback
UDP sockets for the tunnel. Covers what the packet-code tests cannot: what a whole receive
writes to the TUN, and that a receive whose every datagram is dropped leaves the loop alive."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from podnet.agent.flannel.datapath import (
    PLAIN_VNET_HDR,
    SOL_UDP,
    UDP_SEGMENT,
    VNET_HDR_LEN,
    Forwarder,
    RouteTable,
    decrement_ttl,
    ipv4_checksum,
)
from podnet.testing.packets import ipv4_header, tcp_checksum

POD1, POD2 = "10.244.1.2", "10.244.2.2"


def icmp_echo(ttl: int, ident: int, src: str = POD1, dst: str = POD2) -> bytes:
    """An IPv4 ICMP echo request with valid IP and ICMP checksums."""
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"podnet-ping-payload!")
    struct.pack_into("!H", icmp, 2, ipv4_checksum(icmp))
    total = 20 + len(icmp)
    ip = ipv4_header(src, dst, protocol=socket.IPPROTO_ICMP, total=total, ident=ident, ttl=ttl)
    return bytes(ip + icmp)


def tcp_segment(seq: int, payload: bytes, ident: int, sport: int = 40000) -> bytes:
    """An IPv4/TCP ACK segment POD1:sport -> POD2:5201, TTL 64 (checksums as the wire has)."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 5201, seq, 1, 5 << 4, 0x10, 500, 0, 0))
    struct.pack_into("!H", tcp, 16, tcp_checksum(POD1, POD2, tcp + payload))
    total = 20 + len(tcp) + len(payload)
    ip = ipv4_header(POD1, POD2, protocol=socket.IPPROTO_TCP, total=total, ident=ident)
    return bytes(ip + tcp + payload)


class Harness:
    def __init__(self, forwarder: Forwarder, tun_peer: socket.socket, sock: socket.socket):
        self.forwarder = forwarder
        self.tun_peer = tun_peer  # the kernel's side of the "TUN"
        self.sock = sock  # the datapath's tunnel socket
        self.failures: list[str] = []

    def read_tun(self, timeout: float = 2.0) -> bytes | None:
        ready, _, _ = select.select([self.tun_peer], [], [], timeout)
        return self.tun_peer.recv(65535) if ready else None


@pytest.fixture
def harness() -> Iterator[Harness]:
    tun_end, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    failures: list[str] = []
    forwarder = Forwarder(
        tun_end.fileno(), sock, "10.244.2.0", vnet_header=True, on_loop_failure=failures.append
    )
    h = Harness(forwarder, tun_peer, sock)
    h.failures = failures
    forwarder.start()
    try:
        yield h
    finally:
        forwarder.stop()
        for s in (tun_end, tun_peer, sock):
            s.close()


def settles(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """True once `condition` holds (the loop counts a packet just after writing it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def send_from_peer(h: Harness, *packets: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        for packet in packets:
            peer.sendto(packet, h.sock.getsockname())


def test_flannel_packets_after_an_all_dropped_receive_still_reach_the_tun(
    harness: Harness,
) -> None:
    # a traceroute probe whose TTL runs out here: the receive keeps no packet at all
    send_from_peer(harness, icmp_echo(ttl=1, ident=1))
    assert harness.read_tun(timeout=0.5) is None
    # the next ping must still come through, with its TTL decremented and a valid checksum
    send_from_peer(harness, icmp_echo(ttl=64, ident=2))
    written = harness.read_tun()
    assert written is not None, f"nothing written to the TUN; loop failures: {harness.failures}"
    assert written[:VNET_HDR_LEN] == PLAIN_VNET_HDR
    packet = written[VNET_HDR_LEN:]
    expected = bytearray(icmp_echo(ttl=63, ident=2))
    assert packet == expected
    assert ipv4_checksum(packet[:20]) == 0
    assert harness.failures == []
    stats = harness.forwarder.stats
    assert settles(lambda: stats.udp_to_tun == 1), stats
    assert stats.dropped_ttl == 1


def test_flannel_non_ipv4_datagram_is_counted_and_the_loop_goes_on(harness: Harness) -> None:
    send_from_peer(harness, b"\x60" + bytes(39))  # an IPv6-looking datagram: not from flannel
    send_from_peer(harness, icmp_echo(ttl=5, ident=3))
    written = harness.read_tun()
    assert written is not None and written[VNET_HDR_LEN:] == icmp_echo(ttl=4, ident=3)
    stats = harness.forwarder.stats
    assert settles(lambda: stats.udp_to_tun == 1), stats
    assert stats.errors == 1
    assert harness.failures == []


def test_flannel_a_failing_loop_is_reported_not_swallowed() -> None:
    failures: list[str] = []
    tun_end, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            forwarder = Forwarder(
                tun_end.fileno(), sock, "10.244.2.0", True, on_loop_failure=failures.append
            )

            def broken() -> None:
                raise RuntimeError("boom")

            forwarder.guarded(broken, "udp-to-tun")
    finally:
        tun_end.close()
        tun_peer.close()
    assert failures == ["udp-to-tun"]
    assert forwarder.stats.errors == 1


def test_flannel_a_received_tcp_run_is_written_as_one_gso_packet(harness: Harness) -> None:
    """A peer's UDP GSO send of one TCP run arrives as one GRO receive and leaves as one
    merged GSO write: the run's header (TTL - 1) and every payload, in order."""
    mss, count = 1000, 6
    segments = [
        tcp_segment(seq=7000 + i * mss, payload=bytes([i]) * mss, ident=i) for i in range(count)
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.sendmsg(
            [b"".join(segments)],
            [(SOL_UDP, UDP_SEGMENT, len(segments[0]).to_bytes(2, "little"))],
            0,
            harness.sock.getsockname(),
        )
    written = harness.read_tun()
    assert written is not None, f"nothing written to the TUN; loop failures: {harness.failures}"
    flags, gso_type, hdr_len, gso_size = struct.unpack_from("=BBHH", written)
    assert (flags, gso_type, hdr_len, gso_size) == (1, 1, 40, mss)
    packet = written[VNET_HDR_LEN:]
    assert len(packet) == 40 + count * mss
    assert packet[8] == 63 and ipv4_checksum(packet[:20]) == 0
    assert packet[40:] == b"".join(bytes([i]) * mss for i in range(count))
    stats = harness.forwarder.stats
    assert settles(lambda: stats.udp_to_tun == count), stats
    assert (stats.tun_merged, stats.udp_receives) == (1, 1)


def test_flannel_queued_packets_leave_in_one_send_per_flow() -> None:
    """Packets already queued in the TUN leave as one UDP GSO send per run of one flow (so a
    receive on the other side is one flow's run), each datagram one packet, TTL - 1."""
    tun_end, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    failures: list[str] = []
    forwarder = Forwarder(
        tun_end.fileno(), sock, "10.244.1.0", vnet_header=True, on_loop_failure=failures.append
    )
    forwarder.table = RouteTable.build({"10.244.2.0/24": peer.getsockname()})
    try:
        flow_a = [tcp_segment(seq=1 + i * 100, payload=bytes(100), ident=i) for i in range(3)]
        flow_b = [tcp_segment(seq=9, payload=bytes(100), ident=9, sport=40001)] * 2
        for packet in flow_a + flow_b:  # queued before the loop looks
            tun_peer.send(PLAIN_VNET_HDR + packet)
        forwarder.start()
        received = []
        while len(received) < 5:
            ready, _, _ = select.select([peer], [], [], 2.0)
            assert ready, f"got {len(received)} datagrams; loop failures: {failures}"
            received.append(peer.recv(65535))
        expected = [bytearray(p) for p in flow_a + flow_b]
        for packet in expected:
            assert decrement_ttl(packet)
        assert received == expected
        assert settles(lambda: forwarder.stats.tun_to_udp == 5), forwarder.stats
        assert forwarder.stats.udp_sends == 2
    finally:
        forwarder.stop()
        for s in (tun_end, tun_peer, sock, peer):
            s.close()
