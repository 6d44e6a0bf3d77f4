"""DNS messages on the wire: read a query, render a `Reply`, and keep rendered answers.

Pure (no sockets). `parse_query` reads the header and the one question (plain queries without
dnspython, anything with an additional section — EDNS — through it); `render` turns a
`records.Reply` into the response bytes; `AnswerCache` keeps rendered in-zone answers so the
server answers a repeated question by patching two header fields.

How a response is built: dnspython renders the reply for the question in lower case, with
name compression; then the question section the client sent is put in its place. Both have
the same length, so every compression pointer stays valid, and owners compressed against the
question come out in the client's spelling (DNS 0x20 clients check that). The rest follows
CoreDNS: the header echoes the ID, opcode, RD and CD; AA is set on the zone's answers, RA
never; a reply too big for the transport (512 bytes over UDP without EDNS, the client's EDNS
size with it, 65535 over TCP) keeps the RRs that fit, in order, and sets TC if any was left
out (miekg/dns `Msg.Truncate`); an EDNS query gets an OPT record back with its size and DO bit.

Invariant: a cached answer is only ever reused for a question that is byte-for-byte the same
apart from letter case, over the same transport, for a query without EDNS; `AnswerCache.clear`
is called whenever the cluster view changes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from podnet.dns.records import Reply

HEADER = struct.Struct("!HHHHHH")
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
ECHOED = RD | CD | 0x7800  # RD, CD and the opcode come back as the client sent them
ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00\x00\x00"
UDP_PLAIN_SIZE = 512
TCP_SIZE = 65535
MAX_LABEL = 63


class FormatError(Exception):
    """The message is not a query we can read (FORMERR, or no reply if even the header is
    missing: `id` is None)."""

    def __init__(self, message: str, query_id: int | None = None, flags: int = 0) -> None:
        super().__init__(message)
        self.query_id = query_id
        self.flags = flags


@dataclass(frozen=True, slots=True)
class Edns:
    payload: int  # the client's UDP buffer size
    do: bool  # DNSSEC OK


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    qname: str  # absolute, in the client's spelling
    qtype: int
    qclass: int
    question: bytes  # the question section exactly as sent
    edns: Edns | None = None

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    def max_size(self, tcp: bool) -> int:
        if tcp:
            return TCP_SIZE
        return max(UDP_PLAIN_SIZE, self.edns.payload if self.edns else UDP_PLAIN_SIZE)


def parse_query(data: bytes) -> Query:
    if len(data) < HEADER.size:
        raise FormatError("shorter than a DNS header")
    query_id, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & QR:
        raise FormatError("a response, not a query")
    if qd != 1:
        raise FormatError(f"{qd} questions (exactly one is supported)", query_id, flags)
    end = _question_end(data)
    if end is not None and an == ns == ar == 0:
        if end != len(data):
            raise FormatError("trailing bytes after the question", query_id, flags)
        qtype, qclass = struct.unpack_from("!HH", data, end - 4)
        return Query(query_id, flags, _name_text(data, end - 4), qtype, qclass, data[12:end])
    try:
        message = dns.message.from_wire(data, ignore_trailing=False)
    except dns.exception.DNSException as exc:
        raise FormatError(f"malformed query: {exc}", query_id, flags) from exc
    question = message.question[0]
    raw = data[HEADER.size : end] if end is not None else _question_wire(question)
    edns = None
    if message.edns >= 0:
        edns = Edns(message.payload, bool(message.ednsflags & dns.flags.DO))
    return Query(
        query_id,
        flags,
        question.name.to_text(),
        question.rdtype,
        question.rdclass,
        raw,
        edns,
    )


def _question_end(data: bytes) -> int | None:
    """Offset after the (uncompressed) question, or None if it uses a compression pointer."""
    pos = HEADER.size
    while True:
        if pos >= len(data):
            raise FormatError("the question name runs past the end", *HEADER.unpack_from(data)[:2])
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > MAX_LABEL:
            return None
        pos += 1 + length
    if pos + 4 > len(data):
        raise FormatError("the question has no type and class", *HEADER.unpack_from(data)[:2])
    return pos + 4


def _name_text(data: bytes, end: int) -> str:
    labels = []
    pos = HEADER.size
    while pos < end and data[pos]:
        length = data[pos]
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return dns.name.Name([*labels, b""]).to_text()


def _question_wire(question: dns.rrset.RRset) -> bytes:
    name = question.name.to_wire()
    assert name is not None  # to_wire without a file returns the bytes
    return name + struct.pack("!HH", question.rdtype, question.rdclass)


def render(query: Query, reply: Reply, *, tcp: bool) -> bytes:
    """The response bytes for `reply` (see the module docstring)."""
    message = dns.message.Message(id=query.id)
    message.flags = QR | (query.flags & ECHOED)
    if reply.authoritative:
        message.flags |= AA
    if reply.truncated:
        message.flags |= TC
    message.set_rcode(dns.rcode.Rcode(reply.rcode))
    question = dns.rrset.RRset(
        dns.name.from_text(query.qname.lower()),
        dns.rdataclass.RdataClass.make(query.qclass),
        dns.rdatatype.RdataType.make(query.qtype),
    )
    message.question = [question]
    message.answer = list(reply.answer)
    message.authority = list(reply.authority)
    message.additional = list(reply.additional)
    if query.edns is not None:
        message.use_edns(
            0, dns.flags.DO if query.edns.do else 0, payload=max(query.edns.payload, 512)
        )
    wire: bytes = message.to_wire(max_size=query.max_size(tcp), prefer_truncation=True)
    fields: tuple[int, ...] = HEADER.unpack_from(wire)
    flags, an, ns, ar = fields[1], fields[3], fields[4], fields[5]
    ar -= query.edns is not None
    if an < len(reply.answer) or ns < len(reply.authority) or ar < len(reply.additional):
        flags |= TC
    start = HEADER.size + len(query.question)
    return wire[:2] + flags.to_bytes(2, "big") + wire[4:12] + query.question + wire[start:]


def render_error(query: Query, rcode: int) -> bytes:
    """A bare reply with this rcode (REFUSED, NOTIMP, SERVFAIL), echoing the question."""
    flags = QR | (query.flags & ECHOED) | rcode
    return HEADER.pack(query.id, flags, 1, 0, 0, 0) + query.question


def render_format_error(error: FormatError) -> bytes | None:
    if error.query_id is None:
        return None
    flags = QR | (error.flags & ECHOED) | dns.rcode.FORMERR
    return HEADER.pack(error.query_id, flags, 0, 0, 0, 0)


def with_id(wire: bytes, query_id: int) -> bytes:
    return query_id.to_bytes(2, "big") + wire[2:]


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    flags: int  # without the echoed bits
    counts: bytes  # QD, AN, NS, AR as rendered
    tail: bytes  # everything after the question
    rcode: int


class AnswerCache:
    """Rendered in-zone answers to plain queries, by question (name lower-cased) and
    transport; see the module docstring for when an entry may be reused."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self.entries: tuple[dict[bytes, CachedAnswer], dict[bytes, CachedAnswer]] = ({}, {})

    @staticmethod
    def key(question: bytes) -> bytes:
        return question[:-4].lower() + question[-4:]

    def respond(self, data: bytes, tcp: bool) -> tuple[bytes, CachedAnswer] | None:
        """The response to `data` if it is a plain one-question query answered before."""
        if len(data) < 17 or data[4:12] != ONE_QUESTION or data[2] & 0x80:
            return None
        hit = self.entries[tcp].get(data[12:-4].lower() + data[-4:])
        if hit is None:
            return None
        flags = hit.flags | (((data[2] << 8) | data[3]) & ECHOED)
        return data[:2] + flags.to_bytes(2, "big") + hit.counts + data[12:] + hit.tail, hit

    def store(self, query: Query, wire: bytes, rcode: int, tcp: bool) -> None:
        if query.edns is not None:
            return
        entries = self.entries[tcp]
        if len(entries) >= self.max_entries:
            entries.clear()  # a flood of distinct names: start over rather than grow
        flags = int.from_bytes(wire[2:4], "big") & ~ECHOED
        tail = wire[HEADER.size + len(query.question) :]
        entries[self.key(query.question)] = CachedAnswer(flags, wire[4:12], tail, rcode)

    def clear(self) -> None:
        for entries in self.entries:
            entries.clear()

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries)
