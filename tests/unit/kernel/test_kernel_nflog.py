"""The nfnetlink_log wire format without a kernel: the bind request and packet decoding."""

from __future__ import annotations

import socket
import struct

from podnet.kernel.nflog import (
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    LoggedPacket,
    config_message,
    parse_packets,
)
from podnet.kernel.nfnetlink import drain


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(kind: int, body: bytes) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body
    return data + b"\0" * (-len(data) % 4)


def _ipv4(proto: int, src: str, dst: str, l4: bytes) -> bytes:
    return (
        bytes([0x45, 0]) + struct.pack(">H", 20 + len(l4)) + b"\0" * 5 + bytes([proto])
        + b"\0\0" + socket.inet_aton(src) + socket.inet_aton(dst) + l4
    )  # fmt: skip


def test_config_message_binds_the_group_copies_packets_without_batching() -> None:
    msg = config_message(7, seq=3)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), 0x401, 0x5, 3)
    assert msg[16:20] == b"\x00\x00\x00\x07"  # AF_UNSPEC, version 0, group 7 (big endian)
    assert _attr(1, b"\x01") in msg  # NFULA_CFG_CMD: BIND
    assert _attr(2, struct.pack(">IBB", 64, 2, 0)) in msg  # copy 64 bytes of the packet
    assert _attr(5, struct.pack(">I", 1)) in msg  # deliver every packet at once


def test_packets_are_decoded_and_other_messages_skipped() -> None:
    tcp = _ipv4(6, "10.244.1.10", "10.244.2.11", struct.pack(">HH", 40000, 80) + b"\0" * 16)
    icmp = _ipv4(1, "10.244.1.10", "192.0.2.1", b"\x08\0\0\0")
    nfgen = b"\x02\x00\x00\x07"
    data = (
        _message(0x400, nfgen + _attr(NFULA_PREFIX, b"podnet-policy ingress \0")
                 + _attr(NFULA_PAYLOAD, tcp))
        + _message(0x2, b"\0" * 20)  # an ack: not a packet
        + _message(0x400, nfgen + _attr(NFULA_PAYLOAD, icmp))
        + _message(0x400, nfgen + _attr(NFULA_PAYLOAD, b"\x60" + b"\0" * 39))  # IPv6: skipped
    )  # fmt: skip
    assert parse_packets(data) == [
        LoggedPacket("podnet-policy ingress ", "10.244.1.10", "10.244.2.11", "tcp", 40000, 80),
        LoggedPacket("", "10.244.1.10", "192.0.2.1", "icmp"),
    ]
    assert parse_packets(data[:30]) == []  # truncated: nothing, no exception


def test_drain_reads_every_waiting_message_and_stops_when_none_is_left() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        ours.setblocking(False)
        theirs.send(b"one")
        theirs.send(b"two")
        assert drain(ours, lambda data: [data.decode()]) == ["one", "two"]
        assert drain(ours, lambda data: [data.decode()]) == []
