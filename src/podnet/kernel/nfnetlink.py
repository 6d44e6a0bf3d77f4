"""The netlink wire format nfnetlink messages share: headers and attributes, both ways.

What belongs here: `messages(data)` (a buffer → (type, body) per nlmsghdr), `attributes(body,
offset)` (nlattrs → {type: payload}, flags masked) and `attribute(type, payload)` (one padded
nlattr) — the halves `nflog.py` (NFLOG) and `nftrace.py` (nftables trace events) both need,
since pyroute2 parses neither family. Pure; a truncated message or attribute ends the walk
instead of raising.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import TypeVar

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
ATTR = struct.Struct("=HH")  # nlattr: length, type
NFGENMSG_SIZE = 4  # family, version, resource id: what precedes an nfnetlink body's attributes


def messages(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            break
        out.append((kind, data[offset + HEADER.size : offset + length]))
        offset += (length + 3) & ~3
    return out


def attributes(body: bytes, offset: int = NFGENMSG_SIZE) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + ATTR.size <= len(body):
        length, kind = ATTR.unpack_from(body, offset)
        if length < ATTR.size or offset + length > len(body):
            break
        found[kind & 0x3FFF] = body[offset + ATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def attribute(kind: int, payload: bytes) -> bytes:
    data = ATTR.pack(ATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


T = TypeVar("T")


def drain(sock: socket.socket, parse: Callable[[bytes], list[T]]) -> list[T]:
    """Every message waiting on a non-blocking netlink group socket, parsed; a kernel that
    dropped some for a full buffer (ENOBUFS) is read on."""
    out: list[T] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return out
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                continue
            raise
        out += parse(data)
