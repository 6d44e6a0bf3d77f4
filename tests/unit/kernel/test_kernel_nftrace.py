"""The nftables trace message parser against hand-built netlink messages (the layout of
include/uapi/linux/netfilter/nf_tables.h), including the forms `podnet trace --verify`
relies on: the first event of a base chain with the packet's headers, later events without,
a jump's target chain, a policy verdict and the no-handle event of a chain running out."""

from __future__ import annotations

import socket
import struct

from podnet.kernel import nftrace
from podnet.kernel.nfnetlink import attribute as attr
from podnet.kernel.nftrace import Header, parse_events


def message(family: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    kind = (nftrace.NFNL_SUBSYS_NFTABLES << 8) | nftrace.NFT_MSG_TRACE
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def verdict(code: int, chain: str | None = None) -> bytes:
    nested = attr(nftrace.VERDICT_CODE, struct.pack(">i", code))
    if chain is not None:
        nested += attr(nftrace.VERDICT_CHAIN, chain.encode() + b"\0")
    return attr(nftrace.TRACE_VERDICT | 0x8000, nested)


def ipv4_tcp(
    src: str, dst: str, ip_id: int, sport: int, dport: int, flags: int
) -> tuple[bytes, bytes]:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 60, ip_id, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 64240, 0, 0)
    return ip, tcp


def common(table: str, chain: str, kind: int, trace_id: int = 7) -> list[bytes]:
    return [
        attr(nftrace.TRACE_TABLE, table.encode() + b"\0"),
        attr(nftrace.TRACE_CHAIN, chain.encode() + b"\0"),
        attr(nftrace.TRACE_TYPE, struct.pack(">I", kind)),
        attr(nftrace.TRACE_ID, struct.pack(">I", trace_id)),
    ]


def test_events_of_one_base_chain() -> None:
    ip, tcp = ipv4_tcp("10.244.1.4", "10.96.0.10", 4242, 40000, 53, 0x02)
    first = message(
        2,
        *common("nat", "PREROUTING", 3),
        attr(nftrace.TRACE_RULE_HANDLE, struct.pack(">Q", 88)),
        verdict(-3, "KUBE-SERVICES"),
        attr(nftrace.TRACE_NETWORK_HEADER, ip),
        attr(nftrace.TRACE_TRANSPORT_HEADER, tcp),
        attr(nftrace.TRACE_IIF, struct.pack(">I", 4)),
    )
    end = message(2, *common("nat", "KUBE-SERVICES", 3), verdict(-1))
    policy = message(
        2, *common("nat", "PREROUTING", 1), attr(nftrace.TRACE_POLICY, struct.pack(">I", 1))
    )
    dropped = message(
        1,
        *common("podnet-policy", "ingress", 3),
        attr(nftrace.TRACE_RULE_HANDLE, struct.pack(">Q", 26)),
        verdict(0),
    )
    events = parse_events(first + end + policy + dropped + b"\x01\x02")  # + a torn tail
    assert [(e.table_key, e.chain, e.kind, e.handle, e.verdict) for e in events] == [
        ("ip nat", "PREROUTING", "rule", 88, "jump KUBE-SERVICES"),
        ("ip nat", "KUBE-SERVICES", "rule", None, "continue"),
        ("ip nat", "PREROUTING", "policy", None, "accept"),
        ("inet podnet-policy", "ingress", "rule", 26, "drop"),
    ]
    assert events[0].header == Header("tcp", "10.244.1.4", "10.96.0.10", 4242, 40000, 53, 0x02)
    assert events[0].iif == 4 and events[0].trace_id == 7
    assert [e.chain_end for e in events] == [False, True, False, False]
    assert all(e.header is None for e in events[1:])


def test_icmp_and_foreign_messages() -> None:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 9, 0, 64, 1, 0,
                     socket.inet_aton("10.244.0.3"), socket.inet_aton("10.244.1.4"))  # fmt: skip
    icmp = struct.pack(">BBHHH", 3, 3, 0, 0, 0)
    event = message(
        2,
        *common("filter", "FORWARD", 3),
        attr(nftrace.TRACE_RULE_HANDLE, struct.pack(">Q", 5)),
        verdict(1),
        attr(nftrace.TRACE_NETWORK_HEADER, ip),
        attr(nftrace.TRACE_TRANSPORT_HEADER, icmp),
    )
    other = struct.pack("=IHHII", 20, (nftrace.NFNL_SUBSYS_NFTABLES << 8) | 3, 0, 0, 0) + b"\0" * 4
    (parsed,) = parse_events(other + event)
    assert parsed.header is not None and parsed.header.icmp_type == 3
    assert (parsed.header.proto, parsed.verdict) == ("icmp", "accept")
