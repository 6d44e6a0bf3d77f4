"""The kernel's nftables trace events (NFNLGRP_NFTRACE), read from one network namespace.

What belongs here: `TraceReader` — a netlink socket (NETLINK_NETFILTER) inside a namespace,
subscribed to the nftables trace group, so every rule, return and policy a packet marked with
`meta nftrace set 1` meets in that namespace's tables (iptables-nft's included) arrives as a
message — and the pure halves the tests check without a kernel: `parse_events` (netlink
messages → `TraceEvent`: table, chain, rule handle, verdict, interfaces, mark and the packet's
IPv4 and transport headers) and `Header`, the headers decoded. pyroute2 0.9 has the group's
number but no parser for its messages; the format is small and stable
(include/uapi/linux/netfilter/nf_tables.h, `nft_trace_attributes`), like NFLOG's in nflog.py
(both use nfnetlink.py for the generic netlink halves).

Invariants: IPv4 only; a malformed message or attribute is skipped, never raised; the socket is
non-blocking and stays in the namespace it was made in (the caller polls `fileno()`); the
kernel copies the headers only into the first event of each base chain a packet enters, later
events of that call carry the same `trace_id` and no headers. A chain the packet leaves
because its rules ran out also reports an event (kind rule, no handle, verdict continue);
`nft monitor trace` hides those, and so does `TraceEvent.chain_end`.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from podnet.kernel import netns as netns_ops
from podnet.kernel.nfnetlink import attributes, drain, messages

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTRACE = 9
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_TRACE = 17
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 4 << 20

TRACE_TABLE = 1
TRACE_CHAIN = 2
TRACE_RULE_HANDLE = 3
TRACE_TYPE = 4
TRACE_VERDICT = 5
TRACE_ID = 6
TRACE_NETWORK_HEADER = 8
TRACE_TRANSPORT_HEADER = 9
TRACE_IIF = 10
TRACE_OIF = 12
TRACE_MARK = 14
TRACE_POLICY = 16
VERDICT_CODE = 1
VERDICT_CHAIN = 2

TYPES = {1: "policy", 2: "return", 3: "rule"}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop"}
NFT_VERDICTS = {-1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}


class TraceError(Exception):
    """The trace group could not be joined in a namespace."""


@dataclass(frozen=True, slots=True)
class Header:
    """The packet's IPv4 and transport headers, as the event copied them."""

    proto: str
    src: str
    dst: str
    ip_id: int
    sport: int | None = None  # tcp/udp; the echo identifier for icmp
    dport: int | None = None
    tcp_flags: int | None = None
    icmp_type: int | None = None


@dataclass(frozen=True, slots=True)
class TraceEvent:
    trace_id: int
    family: str  # ip, inet, ...
    table: str
    chain: str
    kind: str  # rule, return, policy
    handle: int | None  # the rule's handle (rule events)
    verdict: str  # accept, drop, continue, jump X, goto X, return, break; the policy's verdict
    header: Header | None = None  # only on a base chain's first event
    iif: int | None = None
    oif: int | None = None
    mark: int = 0

    @property
    def table_key(self) -> str:
        return f"{self.family} {self.table}"

    @property
    def chain_end(self) -> bool:
        """The chain ran out of rules (an implicit return, or the way to the policy)."""
        return self.kind == "rule" and self.handle is None


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: bytes | None) -> int | None:
    return struct.unpack(">I", value[:4])[0] if value is not None and len(value) >= 4 else None


def parse_header(network: bytes, transport: bytes) -> Header | None:
    """IPv4 (+ TCP/UDP ports and flags, or the ICMP echo id) from the copied headers."""
    if len(network) < 20 or network[0] >> 4 != 4:
        return None
    proto = PROTOCOLS.get(network[9], str(network[9]))
    src = str(ipaddress.IPv4Address(network[12:16]))
    dst = str(ipaddress.IPv4Address(network[16:20]))
    ip_id = struct.unpack(">H", network[4:6])[0]
    if proto in ("tcp", "udp", "sctp") and len(transport) >= 4:
        sport, dport = struct.unpack(">HH", transport[:4])
        flags = transport[13] if proto == "tcp" and len(transport) >= 14 else None
        return Header(proto, src, dst, ip_id, sport, dport, flags)
    if proto == "icmp" and len(transport) >= 6:
        ident = struct.unpack(">H", transport[4:6])[0]
        return Header(proto, src, dst, ip_id, ident, None, None, transport[0])
    return Header(proto, src, dst, ip_id)


def _verdict(kind: str, attrs: dict[int, bytes]) -> str:
    if kind == "policy":
        code = _u32(attrs.get(TRACE_POLICY))
        return VERDICTS.get(code & 0xFF if code is not None else 1, "accept")
    nested = attributes(attrs.get(TRACE_VERDICT, b""), 0)
    raw = nested.get(VERDICT_CODE)
    if raw is None or len(raw) < 4:
        return "continue"
    code = struct.unpack(">i", raw[:4])[0]
    if code >= 0:
        return VERDICTS.get(code & 0xFF, str(code))
    word = NFT_VERDICTS.get(code, str(code))
    chain = nested.get(VERDICT_CHAIN)
    return f"{word} {_text(chain)}" if chain is not None and word in ("jump", "goto") else word


def parse_events(data: bytes) -> list[TraceEvent]:
    """The trace events in a buffer of netlink messages (other messages are skipped)."""
    out: list[TraceEvent] = []
    for kind, body in messages(data):
        if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE or len(body) < 4:
            continue
        attrs = attributes(body)
        trace_type = TYPES.get(_u32(attrs.get(TRACE_TYPE)) or 0)
        if trace_type is None or TRACE_TABLE not in attrs or TRACE_CHAIN not in attrs:
            continue
        handle = attrs.get(TRACE_RULE_HANDLE)
        header = None
        if TRACE_NETWORK_HEADER in attrs:
            header = parse_header(
                attrs[TRACE_NETWORK_HEADER], attrs.get(TRACE_TRANSPORT_HEADER, b"")
            )
        out.append(
            TraceEvent(
                trace_id=_u32(attrs.get(TRACE_ID)) or 0,
                family=FAMILIES.get(body[0], str(body[0])),
                table=_text(attrs[TRACE_TABLE]),
                chain=_text(attrs[TRACE_CHAIN]),
                kind=trace_type,
                handle=struct.unpack(">Q", handle[:8])[0] if handle and len(handle) >= 8 else None,
                verdict=_verdict(trace_type, attrs),
                header=header,
                iif=_u32(attrs.get(TRACE_IIF)),
                oif=_u32(attrs.get(TRACE_OIF)),
                mark=_u32(attrs.get(TRACE_MARK)) or 0,
            )
        )
    return out


class TraceReader:
    """Reads the trace events of one namespace (`None`: the caller's). Open it before the
    traced packet is sent: the kernel only reports while someone listens."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.sock: socket.socket | None = None

    def open(self) -> None:
        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        where = f" in {self.netns!r}" if self.netns else ""
        try:
            sock = netns_ops.call_in(self.netns, make)
        except OSError as exc:
            raise TraceError(f"cannot open a netfilter netlink socket{where}: {exc}") from exc
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TraceError(f"cannot join the nftables trace group{where}: {exc}") from exc
        self.sock = sock

    def fileno(self) -> int:
        if self.sock is None:
            raise TraceError("the trace reader is not open")
        return self.sock.fileno()

    def read(self) -> list[TraceEvent]:
        """Every event waiting on the socket (none: an empty list)."""
        if self.sock is None:
            return []
        return drain(self.sock, parse_events)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
