"""Packets an nft `log group N` rule hands to userspace (nfnetlink_log), read from one namespace.

What belongs here: `NflogReader` — a netlink socket (NETLINK_NETFILTER) bound to one NFLOG
group inside a network namespace, configured to copy the first bytes of each packet and to
deliver every packet at once (queue threshold 1) — and the pure halves it uses and the tests
check without a kernel: `config_message` (the bind + mode + threshold request) and
`parse_packets` (netlink messages → `LoggedPacket`: the rule's prefix, addresses, protocol and
ports read from the IPv4 and transport headers). pyroute2 0.9 has no nfnetlink_log client, and
the wire format is small and stable (linux/netfilter/nfnetlink_log.h; the generic netlink
halves are in nfnetlink.py).

Invariants: IPv4 only (the cluster is IPv4); a malformed message is skipped, never raised; the
socket is non-blocking and keeps the namespace it was created in, so the caller polls it from
its own event loop (`fileno()` + `read()`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from podnet.kernel import netns as netns_ops
from podnet.kernel.nfnetlink import HEADER, attribute, attributes, drain, messages

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
COPY_RANGE = 64  # IPv4 header with options + the ports
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}


class NflogError(Exception):
    """The NFLOG group could not be bound (another reader holds it, or no nfnetlink_log)."""


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    prefix: str
    src: str
    dst: str
    protocol: str
    sport: int | None = None
    dport: int | None = None


def config_message(group: int, seq: int = 1) -> bytes:
    """One request: bind `group`, copy COPY_RANGE bytes of each packet, no batching."""
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", group)
    body += attribute(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND))
    body += attribute(NFULA_CFG_MODE, struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0))
    body += attribute(NFULA_CFG_QTHRESH, struct.pack(">I", 1))
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _packet(prefix: str, payload: bytes) -> LoggedPacket | None:
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    header = (payload[0] & 0x0F) * 4
    protocol = PROTOCOLS.get(payload[9], str(payload[9]))
    src = str(ipaddress.IPv4Address(payload[12:16]))
    dst = str(ipaddress.IPv4Address(payload[16:20]))
    if protocol in ("tcp", "udp", "sctp") and len(payload) >= header + 4:
        sport, dport = struct.unpack_from(">HH", payload, header)
        return LoggedPacket(prefix, src, dst, protocol, sport, dport)
    return LoggedPacket(prefix, src, dst, protocol)


def parse_packets(data: bytes) -> list[LoggedPacket]:
    """The logged packets in a buffer of netlink messages (other messages are skipped)."""
    out: list[LoggedPacket] = []
    for kind, body in messages(data):
        if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            continue
        attrs = attributes(body)
        prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
        packet = _packet(prefix, attrs.get(NFULA_PAYLOAD, b""))
        if packet is not None:
            out.append(packet)
    return out


class NflogReader:
    """Reads one NFLOG group of one namespace (`None`: the caller's)."""

    def __init__(self, group: int, netns: str | None = None) -> None:
        self.group = group
        self.netns = netns
        self.sock: socket.socket | None = None

    def open(self) -> None:
        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        sock = netns_ops.call_in(self.netns, make)
        try:
            sock.bind((0, 0))
            sock.settimeout(5)
            sock.send(config_message(self.group))
            for kind, body in messages(sock.recv(65536)):
                code = -struct.unpack_from("=i", body)[0] if kind == NLMSG_ERROR else 0
                if code:
                    where = f" in {self.netns!r}" if self.netns else ""
                    reason = errno.errorcode.get(code, str(code))
                    raise NflogError(
                        f"cannot bind NFLOG group {self.group}{where}: {reason} (is another "
                        "reader bound to it, or is nfnetlink_log missing?)"
                    )
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        if self.sock is None:
            raise NflogError("the NFLOG reader is not open")
        return self.sock.fileno()

    def read(self) -> list[LoggedPacket]:
        """Every packet waiting on the socket (none: an empty list)."""
        if self.sock is None:
            return []
        return drain(self.sock, parse_packets)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
