"""Names outside the cluster zone: forwarded to the upstream resolvers, answers cached.

CoreDNS's `forward . /etc/resolv.conf` and `cache 30`, in the small:
- the client's query goes to an upstream unchanged except for its ID (a fresh random one,
  so a stray or forged reply cannot match), over the client's transport; the reply must come
  from that upstream, carry that ID and the same question; a timeout or error tries the next
  upstream (rotating where each query starts), and when all fail the client gets SERVFAIL;
- at most `max_concurrent` queries are upstream at once; beyond that the client gets REFUSED;
- replies are cached by (name lower-cased, type, class, EDNS, DO): NOERROR with records for
  the smallest TTL in it, NXDOMAIN / NODATA for the SOA's negative TTL, both capped at
  `max_ttl` (30 s); like CoreDNS's cache, every TTL in such a reply becomes that duration (so a
  client never keeps an answer longer than the cache would), and a hit is the stored reply
  with the client's ID and question and every TTL lowered by the time it spent in the cache.
  Truncated, SERVFAIL and other replies are passed on unchanged and not cached.

`lookup(name, type)` is the same path for the server's own questions (an ExternalName's
target): it returns the answer RRsets, or None when no upstream gave a usable reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from podnet.dns.metrics import DnsMetrics
from podnet.dns.wire import HEADER, TC, Query, parse_query, render_error, with_id

log = logging.getLogger(__name__)

OPT = 41
SOA = 6
DEFAULT_TIMEOUT = 2.0
Upstream = tuple[str, int]


@dataclass(slots=True)
class _Cached:
    wire: bytes  # ID 0, every TTL = `ttl`
    stored: float  # monotonic seconds
    ttl: int  # how long it may be served
    offsets: list[int]  # where the TTL fields are
    denial: bool
    aged: bytes = b""  # `wire` with TTLs lowered for `aged_by` seconds
    aged_by: int = 0


def set_ttls(wire: bytes, offsets: list[int], ttl: int) -> bytes:
    out = bytearray(wire)
    for offset in offsets:
        struct.pack_into("!I", out, offset, max(0, ttl))
    return bytes(out)


def record_ttls(wire: bytes) -> list[tuple[int, int]]:
    """(offset, value) of the TTL of every RR in the reply (the OPT record's is flags)."""
    _id, _flags, qd, an, ns, ar = HEADER.unpack_from(wire)
    pos = HEADER.size
    for _ in range(qd):
        pos = _skip_name(wire, pos) + 4
    out = []
    for _ in range(an + ns + ar):
        pos = _skip_name(wire, pos)
        rdtype, _class, ttl, length = struct.unpack_from("!HHIH", wire, pos)
        if rdtype != OPT:
            out.append((pos + 4, ttl))
        pos += 10 + length
    if pos > len(wire):
        raise ValueError("the reply is shorter than its records")
    return out


def _skip_name(wire: bytes, pos: int) -> int:
    while True:
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def cache_ttl(wire: bytes, ttls: list[tuple[int, int]], max_ttl: int) -> tuple[int, bool] | None:
    """How long a reply may be cached and whether it is a denial; None: not cacheable."""
    _id, flags, _qd, an, _ns, _ar = HEADER.unpack_from(wire)
    rcode = flags & 0xF
    if flags & TC or rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return None
    denial = rcode == dns.rcode.NXDOMAIN or an == 0
    if denial:
        message = dns.message.from_wire(wire)
        soa = next((r for r in message.authority if r.rdtype == SOA), None)
        if soa is None:
            return None
        return min(soa.ttl, soa[0].minimum, max_ttl), True
    if not ttls:
        return None
    return min(min(ttl for _, ttl in ttls), max_ttl), False


class ReplyCache:
    def __init__(self, max_ttl: int = 30, max_entries: int = 10_000) -> None:
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        self.entries: dict[tuple[str, int, int, bool, bool], _Cached] = {}

    @staticmethod
    def key(query: Query) -> tuple[str, int, int, bool, bool]:
        do = query.edns.do if query.edns is not None else False
        return query.qname.lower(), query.qtype, query.qclass, query.edns is not None, do

    def get(self, query: Query, now: float) -> tuple[bytes, bool] | None:
        """The cached reply for this query (its ID and question), and whether it is a denial."""
        entry = self.entries.get(self.key(query))
        if entry is None:
            return None
        age = int(now - entry.stored)
        if now - entry.stored >= entry.ttl:
            del self.entries[self.key(query)]
            return None
        if not entry.aged or entry.aged_by != age:
            entry.aged, entry.aged_by = set_ttls(entry.wire, entry.offsets, entry.ttl - age), age
        start = HEADER.size + len(query.question)
        wire = with_id(entry.aged, query.id)
        return wire[: HEADER.size] + query.question + wire[start:], entry.denial

    def put(self, query: Query, wire: bytes, now: float) -> bytes:
        """Keep a reply from upstream; returns it as the client gets it (TTLs capped)."""
        try:
            ttls = record_ttls(wire)
            decision = cache_ttl(wire, ttls, self.max_ttl)
        except (ValueError, IndexError, struct.error, dns.exception.DNSException):
            return wire
        if decision is None or decision[0] <= 0:
            return wire
        if len(self.entries) >= self.max_entries:
            self._evict(now)
        ttl, denial = decision
        offsets = [offset for offset, _ in ttls]
        capped = set_ttls(wire, offsets, ttl)
        self.entries[self.key(query)] = _Cached(with_id(capped, 0), now, ttl, offsets, denial)
        return capped

    def _evict(self, now: float) -> None:
        for key, entry in list(self.entries.items()):
            if now - entry.stored >= entry.ttl:
                del self.entries[key]
        if len(self.entries) >= self.max_entries:
            self.entries.clear()


class _UpstreamSocket(asyncio.DatagramProtocol):
    """One UDP socket to one upstream; replies are matched to waiters by ID."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, asyncio.Future[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # (selector's is no subclass)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < HEADER.size:
            return
        future = self.waiting.pop(int.from_bytes(data[:2], "big"), None)
        if future is not None and not future.done():
            future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)
        self.waiting.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionError("upstream socket closed"))
        self.transport = None


class Forwarder:
    """Forwards queries to `upstreams` (see the module docstring)."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        metrics: DnsMetrics,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_concurrent: int = 1000,
        cache: ReplyCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = list(upstreams)
        self.metrics = metrics
        self.timeout = timeout
        self.max_concurrent = max_concurrent
        self.cache = cache or ReplyCache()
        self.clock = clock
        self.in_flight = 0
        self._next = 0
        self._sockets: dict[Upstream, _UpstreamSocket] = {}

    async def close(self) -> None:
        for sock in self._sockets.values():
            if sock.transport is not None:
                sock.transport.close()
        self._sockets.clear()

    async def forward(self, query: Query, data: bytes, tcp: bool) -> tuple[bytes, str]:
        """The reply for the client and where it came from ("cache" or "forward")."""
        now = self.clock()
        cached = self.cache.get(query, now)
        if cached is not None:
            self.metrics.cache_hit(cached[1])
            return cached[0], "cache"
        self.metrics.cache_miss()
        if not self.upstreams:
            return render_error(query, dns.rcode.SERVFAIL), "forward"
        if self.in_flight >= self.max_concurrent:
            return render_error(query, dns.rcode.REFUSED), "forward"
        self.in_flight += 1
        try:
            reply = await self._exchange(query, data, tcp)
        finally:
            self.in_flight -= 1
        if reply is None:
            return render_error(query, dns.rcode.SERVFAIL), "forward"
        reply = self.cache.put(query, reply, self.clock())
        return with_id(reply, query.id), "forward"

    async def lookup(self, name: str, rdtype: int) -> tuple[list[dns.rrset.RRset] | None, bool]:
        """Answer RRsets for a question of the server's own, and whether the reply was TC."""
        request = dns.message.make_query(name, dns.rdatatype.RdataType.make(rdtype))
        data = request.to_wire()
        query = parse_query(data)
        wire, _source = await self.forward(query, data, tcp=False)
        try:
            reply = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, False
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None, False
        return list(reply.answer), bool(reply.flags & dns.flags.TC)

    async def _exchange(self, query: Query, data: bytes, tcp: bool) -> bytes | None:
        start = self._next
        self._next = (self._next + 1) % len(self.upstreams)
        for i in range(len(self.upstreams)):
            upstream = self.upstreams[(start + i) % len(self.upstreams)]
            target = f"{upstream[0]}:{upstream[1]}"
            self.metrics.forward_requests.inc((target,))
            query_id = random.getrandbits(16)
            outgoing = with_id(data, query_id)
            try:
                if tcp:
                    reply = await asyncio.wait_for(self._tcp(upstream, outgoing), self.timeout)
                else:
                    reply = await self._udp(upstream, outgoing, query_id)
            except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s failed for %s: %s", target, query.qname, exc)
                continue
            if not _matches(reply, query_id, query):
                continue
            rcode = dns.rcode.to_text(dns.rcode.Rcode(_rcode(reply)))
            self.metrics.forward_responses.inc((rcode, target))
            return reply
        return None

    async def _udp(self, upstream: Upstream, data: bytes, query_id: int) -> bytes:
        sock = self._sockets.get(upstream)
        if sock is None or sock.transport is None:
            loop = asyncio.get_running_loop()
            _transport, sock = await loop.create_datagram_endpoint(
                _UpstreamSocket, remote_addr=upstream
            )
            self._sockets[upstream] = sock
        while query_id in sock.waiting:
            query_id = random.getrandbits(16)
            data = with_id(data, query_id)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        sock.waiting[query_id] = future
        assert sock.transport is not None
        sock.transport.sendto(data)
        try:
            return await asyncio.wait_for(future, self.timeout)
        finally:
            sock.waiting.pop(query_id, None)

    @staticmethod
    async def _tcp(upstream: Upstream, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*upstream)
        try:
            writer.write(len(data).to_bytes(2, "big") + data)
            await writer.drain()
            length = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(length)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _rcode(wire: bytes) -> int:
    return int.from_bytes(wire[2:4], "big") & 0xF


def _matches(reply: bytes, query_id: int, query: Query) -> bool:
    if len(reply) < HEADER.size + len(query.question):
        return False
    if int.from_bytes(reply[:2], "big") != query_id:
        return False
    asked = reply[HEADER.size : HEADER.size + len(query.question)]
    return asked.lower() == query.question.lower()
