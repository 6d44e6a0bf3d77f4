"""The NFQUEUE reader's netlink messages, byte for byte (the kernel side: the delay fault in
tests/e2e/test_lab_faults.py)."""

from __future__ import annotations

import struct

from podnet.kernel import nfqueue


def test_config_binds_the_queue_with_metadata_only_and_fail_open() -> None:
    msg = nfqueue.config_message(4201, seq=1)
    length, msg_type, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, msg_type, flags, seq) == (len(msg), 0x0302, 0x5, 1)
    family, version, queue = struct.unpack_from("!BBH", msg, 16)
    assert (family, version, queue) == (0, 0, 4201)
    attrs = msg[20:]
    assert attrs[:8] == struct.pack("=HH", 8, 1) + struct.pack("!BxH", 1, 2)  # BIND, AF_INET
    assert struct.pack("!IB", 0, 1) in attrs  # copy range 0, NFQNL_COPY_META
    assert attrs.endswith(struct.pack("=HH", 8, 5) + struct.pack("!I", 1))  # FAIL_OPEN


def test_verdicts_and_packet_ids() -> None:
    verdict = nfqueue.verdict_message(7, 99)
    assert struct.unpack_from("=H", verdict, 4)[0] == 0x0301
    assert verdict[-8:] == struct.pack("!II", nfqueue.NF_ACCEPT, 99)

    def packet(packet_id: int) -> bytes:
        hdr = struct.pack("!IHB", packet_id, 0x0800, 3) + b"\0"
        attrs = struct.pack("=HH", 4 + 7, 1) + hdr[:7] + b"\0"
        attrs += struct.pack("=HH", 8, 9) + b"\0" * 4  # another attribute, skipped
        body = struct.pack("!BBH", 2, 0, 7) + attrs
        return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body

    assert nfqueue.packet_ids(packet(5) + packet(6)) == [5, 6]
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + b"\0" * 16
    assert nfqueue.netlink_error(ack) == 0
    assert nfqueue.packet_ids(ack) == []
