"""The DNS server: the asyncio shell around `records.answer`, as the `coredns` pods run it.

What belongs here: the UDP and TCP listeners on port 53, the reflectors that keep the
`ClusterView` current (Services, EndpointSlices, Namespaces; Pods in `verified` mode), the
`Resolver` that turns query bytes into reply bytes, and the HTTP endpoints CoreDNS has —
`/health` on 8080, `/ready` on 8181, `/metrics` on 9153.

How a query is answered (`Resolver.answer`):
1. a plain query asked before, for a view that has not changed since, is answered from the
   `AnswerCache` by patching the ID and flags — no parsing, no rendering;
2. otherwise it is parsed and `records.answer` decides; an in-zone reply is rendered (and
   cached unless it is SERVFAIL);
3. a name outside the zone (or a reverse name the cluster does not know) goes to the
   `Forwarder`; an ExternalName's target is looked up there too (`records.complete`).
Steps 1 and 2 run inside the datagram callback; only step 3 becomes a task.

Invariants: nothing in the zone is answered from anything but the view (SERVFAIL until every
resource has had its first list, like CoreDNS); every view change clears the answer cache
before the next query is read; on stop the server keeps answering for `lameduck` seconds
while /ready says 503 (CoreDNS's `health { lameduck 5s }`), so a replica being replaced
drops no query that kube-proxy still sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import dns.rcode
import dns.rdataclass
import dns.rdatatype

from podnet.api.interface import Api
from podnet.api.reflector import PAGE_SIZE, reflect
from podnet.dns import http
from podnet.dns.cluster import RESOURCES, ClusterView, Entry, entry
from podnet.dns.forward import Forwarder, ReplyCache, Upstream
from podnet.dns.metrics import DnsMetrics
from podnet.dns.records import DnsConfig, Reply, answer, complete
from podnet.dns.wire import (
    AnswerCache,
    FormatError,
    Query,
    parse_query,
    render,
    render_error,
    render_format_error,
)

log = logging.getLogger(__name__)

TCP_IDLE_SECONDS = 10.0
VERIFIED_POD_FIELDS = "status.phase!=Succeeded,status.phase!=Failed,status.phase!=Unknown"
METRICS_TYPE = "text/plain; version=0.0.4"  # Prometheus' text format


@dataclass(frozen=True, slots=True)
class ServerOptions:
    config: DnsConfig = field(default_factory=DnsConfig)
    upstreams: tuple[Upstream, ...] = ()
    address: str = "0.0.0.0"
    dns_port: int = 53
    health_port: int = 8080  # 0: pick a free port (tests)
    ready_port: int = 8181
    metrics_port: int = 9153
    cache_ttl: int = 30
    lameduck: float = 5.0


# metric labels, once per value: dnspython's enum-to-text took 3/4 of a cached answer's time
@functools.lru_cache(maxsize=1024)
def _type_name(qtype: int) -> str:
    try:
        return dns.rdatatype.to_text(dns.rdatatype.RdataType(qtype))
    except ValueError:
        return "other"


@functools.lru_cache(maxsize=64)
def _rcode_name(rcode: int) -> str:
    return dns.rcode.to_text(dns.rcode.Rcode(rcode))


class Resolver:
    """Query bytes in, reply bytes out (see the module docstring)."""

    def __init__(
        self, view: ClusterView, config: DnsConfig, forwarder: Forwarder, metrics: DnsMetrics
    ) -> None:
        self.view = view
        self.config = config
        self.forwarder = forwarder
        self.metrics = metrics
        self.cache = AnswerCache()
        self.generation = view.generation

    def answer(
        self, data: bytes, tcp: bool, started: float
    ) -> bytes | None | Coroutine[Any, Any, bytes | None]:
        """The reply now, or a coroutine to await for it (forwarding); None: send nothing."""
        if self.generation != self.view.generation:
            self.cache.clear()
            self.generation = self.view.generation
        proto = "tcp" if tcp else "udp"
        hit = self.cache.respond(data, tcp)
        if hit is not None:
            wire, cached = hit
            qtype = int.from_bytes(data[-4:-2], "big")
            self._count(proto, qtype, cached.rcode, "kubernetes", started)
            return wire
        try:
            query = parse_query(data)
        except FormatError as exc:
            return render_format_error(exc)
        if query.opcode != 0:
            return render_error(query, dns.rcode.NOTIMP)
        if query.qclass != dns.rdataclass.IN:
            return render_error(query, dns.rcode.REFUSED)
        reply = answer(self.view, self.config, query.qname, query.qtype)
        if not isinstance(reply, Reply):  # FORWARD
            return self._forward(query, data, tcp, started)
        if reply.chase is not None:
            return self._chase(query, reply, tcp, started)
        wire = render(query, reply, tcp=tcp)
        if reply.rcode != dns.rcode.SERVFAIL:
            self.cache.store(query, wire, reply.rcode, tcp)
        self._count(proto, query.qtype, reply.rcode, "kubernetes", started)
        return wire

    async def _forward(self, query: Query, data: bytes, tcp: bool, started: float) -> bytes | None:
        wire, source = await self.forwarder.forward(query, data, tcp)
        rcode = int.from_bytes(wire[2:4], "big") & 0xF
        self._count("tcp" if tcp else "udp", query.qtype, rcode, source, started)
        return wire

    async def _chase(self, query: Query, reply: Reply, tcp: bool, started: float) -> bytes | None:
        assert reply.chase is not None
        looked_up, truncated = await self.forwarder.lookup(reply.chase.target, reply.chase.rdtype)
        done = complete(reply, looked_up, truncated)
        self._count("tcp" if tcp else "udp", query.qtype, done.rcode, "kubernetes", started)
        return render(query, done, tcp=tcp)

    def _count(self, proto: str, qtype: int, rcode: int, plugin: str, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.request(proto, _type_name(qtype), _rcode_name(rcode), plugin, seconds)


class _Tasks:
    """Tasks answering queries that had to wait (forwarding), kept until they finish."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[None]] = set()

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def cancel(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, tasks: _Tasks) -> None:
        self.resolver = resolver
        self.tasks = tasks
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # (selector's is no subclass)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        result = self.resolver.answer(data, False, time.perf_counter())
        if isinstance(result, bytes):
            assert self.transport is not None
            self.transport.sendto(result, addr)
        elif result is not None:
            self.tasks.start(self._later(result, addr))

    async def _later(self, pending: Coroutine[Any, Any, bytes | None], addr: Any) -> None:
        reply = await pending
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class _Tcp(asyncio.Protocol):
    """DNS over TCP: 2-byte length-prefixed messages, pipelined; idle connections close."""

    def __init__(self, resolver: Resolver, tasks: _Tasks) -> None:
        self.resolver = resolver
        self.tasks = tasks
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        transport = self.transport
        if transport is not None:
            self.idle = asyncio.get_running_loop().call_later(TCP_IDLE_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._touch()
        while len(self.buffer) >= 2:
            length = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + length:
                break
            message = bytes(self.buffer[2 : 2 + length])
            del self.buffer[: 2 + length]
            result = self.resolver.answer(message, True, time.perf_counter())
            if isinstance(result, bytes):
                self._send(result)
            elif result is not None:
                self.tasks.start(self._later(result))

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(reply).to_bytes(2, "big") + reply)

    async def _later(self, pending: Coroutine[Any, Any, bytes | None]) -> None:
        reply = await pending
        if reply is not None:
            self._send(reply)


class DnsServer:
    """One DNS server over one API; `run(stop)` serves until `stop` is set."""

    def __init__(self, api: Api, options: ServerOptions) -> None:
        self.api = api
        self.options = options
        self.config = options.config
        resources = RESOURCES + (("pods",) if self.config.pods == "verified" else ())
        self.view = ClusterView(resources)
        self.metrics = DnsMetrics()
        self.forwarder = Forwarder(
            options.upstreams, self.metrics, cache=ReplyCache(max_ttl=options.cache_ttl)
        )
        self.resolver = Resolver(self.view, self.config, self.forwarder, self.metrics)
        self.tasks = _Tasks()
        self.stopping = False
        self.ports: dict[str, int] = {}  # bound ports: dns, health, ready, metrics
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []

    @property
    def ready(self) -> bool:
        return self.view.synced and not self.stopping

    # -- feeding the view ---------------------------------------------------------------

    def _replace(self, resource: str) -> Callable[[list[Entry]], None]:
        def replace(entries: list[Entry]) -> None:
            was_synced = self.view.synced
            self.view.replace_entries(resource, entries)
            self.view.serial = int(time.time())
            if self.view.synced and not was_synced:
                view = self.view
                log.info("cluster view synced: %d services, %d ready slices, %d namespaces",
                         len(view.services), len(view.slices), len(view.namespaces))  # fmt: skip

        return replace

    def _apply(self, resource: str) -> Callable[[str, dict[str, Any]], None]:
        def apply(event: str, obj: dict[str, Any]) -> None:
            self.view.apply(resource, event, obj)
            self.view.serial = int(time.time())

        return apply

    async def _reflect(self, resource: str, stop: asyncio.Event) -> None:
        await reflect(
            self.api,
            resource,
            replace=self._replace(resource),
            apply=self._apply(resource),
            stop=stop,
            field_selector=VERIFIED_POD_FIELDS if resource == "pods" else None,
            who="dns",
            page_size=PAGE_SIZE,
            transform=lambda obj: entry(resource, obj),
        )

    # -- serving ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener (port 0 picks a free one; see `ports`)."""
        address = self.options.address
        await self._bind_dns(address, self.options.dns_port)
        for name, port, path, handler, content_type in (
            ("health", self.options.health_port, "/health", self._health, "text/plain"),
            ("ready", self.options.ready_port, "/ready", self._ready, "text/plain"),
            ("metrics", self.options.metrics_port, "/metrics", self._metrics, METRICS_TYPE),
        ):
            server = await http.serve(address, port, path, handler, content_type)
            self.ports[name] = int(server.sockets[0].getsockname()[1])
            self._closers.append(_closer(server))

    async def _bind_dns(self, address: str, wanted: int) -> None:
        """UDP and TCP on one port; with port 0, a port free for both."""
        loop = asyncio.get_running_loop()
        for _attempt in range(20):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self.resolver, self.tasks), local_addr=(address, wanted)
            )
            port = int(udp.get_extra_info("sockname")[1])
            try:
                tcp = await loop.create_server(
                    lambda: _Tcp(self.resolver, self.tasks), address, port, reuse_address=True
                )
            except OSError:
                udp.close()
                if wanted:
                    raise
                continue  # the UDP port's TCP twin is taken: try another
            break
        else:
            raise OSError(f"no port on {address} is free for both UDP and TCP")
        self.ports["dns"] = port

        async def close() -> None:
            udp.close()
            tcp.close()
            await tcp.wait_closed()

        self._closers.append(close)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then the lame-duck period, then close everything."""
        if not self.ports:
            await self.start()
        watch_stop = asyncio.Event()
        reflectors = [
            asyncio.create_task(self._reflect(resource, watch_stop))
            for resource in self.view.resources
        ]
        log.info("serving DNS for %s on %s:%d (udp, tcp); upstreams %s",
                 self.config.zone, self.options.address, self.ports["dns"],
                 ", ".join(f"{h}:{p}" for h, p in self.options.upstreams) or "none")  # fmt: skip
        try:
            await stop.wait()
            self.stopping = True
            if self.options.lameduck > 0:
                log.info("lame duck: still answering for %.1fs", self.options.lameduck)
                await asyncio.sleep(self.options.lameduck)
        finally:
            watch_stop.set()
            for task in reflectors:
                task.cancel()
            await asyncio.gather(*reflectors, return_exceptions=True)
            await self.close()

    async def close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()
        self._closers.clear()
        await self.tasks.cancel()
        await self.forwarder.close()

    def _health(self) -> http.Response:
        return 200, "OK"

    def _ready(self) -> http.Response:
        if self.ready:
            return 200, "OK"
        return 503, "shutting down" if self.stopping else "kubernetes"

    def _metrics(self) -> http.Response:
        return 200, self.metrics.render()


def _closer(server: asyncio.Server) -> Callable[[], Coroutine[Any, Any, None]]:
    async def close() -> None:
        server.close()
        await server.wait_closed()

    return close


def read_upstreams(resolv_conf: str, port: int = 53) -> tuple[Upstream, ...]:
    """The nameservers of a resolv.conf as (ip, port)."""
    from podnet.dns.resolvconf import parse_resolv_conf

    return tuple((server, port) for server in parse_resolv_conf(resolv_conf).nameservers)
