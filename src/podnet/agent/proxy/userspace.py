"""userspace mode: the agent itself is the data path (the explainer's first kube-proxy design).

What belongs here: `RoundRobin` (upstream LoadBalancerRR: per service port a shuffled list,
round robin, ClientIP affinity with timeout), `render_portal_rules` (pure: the nat/filter
rules that send ClusterIP/NodePort traffic to the proxy sockets), the TCP and UDP relays and
`UserspaceProxier`, which keeps one listening socket per service port on a kernel-chosen port.

Design (kube-proxy.md §4, with two deliberate changes):
- Traffic from pods arrives through nat PREROUTING `-j REDIRECT --to-ports P`; traffic from the
  node itself through nat OUTPUT `-j DNAT --to-destination <nodeIP>:P` (REDIRECT does not work
  for locally generated packets to a non-local VIP). NodePorts get the same pair.
- Rules are rendered whole and loaded with one `iptables-restore --noflush` per sync instead of
  upstream's rule-by-rule `iptables -A/-D` (DESIGN.md contract 2).
- TCP: dial the chosen endpoint with timeouts 250 ms, 500 ms, 1 s, 2 s, moving to the next
  endpoint (and past a sticky one) on failure; then relay with asyncio Protocols: no coroutine
  per chunk, 256 KiB reads, back-pressure by pausing the reading side. Not zero-copy:
  `os.splice` would need a pipe pair per connection and a readiness loop of our own beside
  the event loop; with uvloop the protocol relay moves data in C with one copy each way
  (throughput in README.md / benchmarks/results/proxy.json).
- UDP: one connected socket per client address towards its endpoint, replies sent back from
  the service socket; a session ends after `udp_idle_timeout` without traffic.
- A service port with no endpoints keeps its socket; a new connection is reset at once
  (SO_LINGER 0), so clients fail immediately instead of timing out.

Invariants: the sockets exist only while the agent runs; rules are kept on stop (a restart
re-creates sockets on new ports and rewrites the rules). Chains are ours by name
(`KUBE-PORTALS-*`, `KUBE-NODEPORT-*`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.iptables import JumpRule
from podnet.agent.proxy.model import DEFAULT_AFFINITY_SECONDS, ServicePort, ServicePortName
from podnet.agent.proxy.modes import (
    ProxyKernel,
    SyncResult,
    delete_chains,
    ensure_jump_rules,
    remove_jump_rules,
)
from podnet.agent.proxy.tracker import ProxyState
from podnet.kernel.rules import Iptables

log = logging.getLogger(__name__)

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)
UDP_IDLE_TIMEOUT = 0.25  # upstream --udp-timeout default
READ_SIZE = 256 * 1024
HIGH_WATER = 1024 * 1024

PORTALS_CONTAINER = "KUBE-PORTALS-CONTAINER"
PORTALS_HOST = "KUBE-PORTALS-HOST"
NODEPORT_CONTAINER = "KUBE-NODEPORT-CONTAINER"
NODEPORT_HOST = "KUBE-NODEPORT-HOST"
NODEPORT_NON_LOCAL = "KUBE-NODEPORT-NON-LOCAL"
NAT_CHAINS = (PORTALS_CONTAINER, PORTALS_HOST, NODEPORT_CONTAINER, NODEPORT_HOST)

_CLUSTER_IPS = "handle ClusterIPs; NOTE: this must be before the NodePort rules"
_NODEPORTS = "handle service NodePorts; NOTE: this must be the last rule in the chain"
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule(
        "nat", "PREROUTING", ("-m", "comment", "--comment", _CLUSTER_IPS, "-j", PORTALS_CONTAINER)
    ),
    JumpRule("nat", "OUTPUT", ("-m", "comment", "--comment", _CLUSTER_IPS, "-j", PORTALS_HOST)),
    JumpRule(
        "nat",
        "PREROUTING",
        (
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-m",
            "comment",
            "--comment",
            _NODEPORTS,
            "-j",
            NODEPORT_CONTAINER,
        ),
    ),
    JumpRule(
        "nat",
        "OUTPUT",
        (
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-m",
            "comment",
            "--comment",
            _NODEPORTS,
            "-j",
            NODEPORT_HOST,
        ),
    ),
    JumpRule(
        "filter",
        "INPUT",
        (
            "-m",
            "comment",
            "--comment",
            "Ensure that non-local NodePort traffic can flow",
            "-j",
            NODEPORT_NON_LOCAL,
        ),
    ),
)


# --- load balancing ---------------------------------------------------------------------


@dataclass(slots=True)
class _Affinity:
    endpoint: str
    last_used: float


@dataclass(slots=True)
class _Balancer:
    endpoints: list[str]
    index: int = 0
    affinity_seconds: int = 0
    sticky: dict[str, _Affinity] = field(default_factory=dict)


class RoundRobin:
    """Per service port: shuffled round robin with optional ClientIP affinity (pure; time in)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()  # noqa: S311 - load spreading, not secrets
        self.services: dict[ServicePortName, _Balancer] = {}

    def update(self, spn: ServicePortName, endpoints: Sequence[str], affinity_seconds: int) -> None:
        current = self.services.get(spn)
        if current is not None and sorted(current.endpoints) == sorted(endpoints):
            current.affinity_seconds = affinity_seconds
            return
        shuffled = list(endpoints)
        self.rng.shuffle(shuffled)
        balancer = _Balancer(shuffled, 0, affinity_seconds)
        if current is not None:  # keep sticky clients whose endpoint survived
            balancer.sticky = {c: a for c, a in current.sticky.items() if a.endpoint in endpoints}
        self.services[spn] = balancer

    def remove(self, spn: ServicePortName) -> None:
        self.services.pop(spn, None)

    def next(
        self, spn: ServicePortName, client_ip: str, now: float, skip_affinity: bool = False
    ) -> str | None:
        b = self.services.get(spn)
        if b is None or not b.endpoints:
            return None
        if b.affinity_seconds and not skip_affinity:
            sticky = b.sticky.get(client_ip)
            if sticky is not None and now - sticky.last_used < b.affinity_seconds:
                sticky.last_used = now
                return sticky.endpoint
        endpoint = b.endpoints[b.index]
        b.index = (b.index + 1) % len(b.endpoints)
        if b.affinity_seconds:
            b.sticky[client_ip] = _Affinity(endpoint, now)
        return endpoint

    def cleanup_stale(self, now: float) -> None:
        for b in self.services.values():
            ttl = b.affinity_seconds or DEFAULT_AFFINITY_SECONDS
            b.sticky = {c: a for c, a in b.sticky.items() if now - a.last_used < ttl}


# --- rules ------------------------------------------------------------------------------


def render_portal_rules(
    portals: Mapping[ServicePortName, tuple[ServicePort, int]], node_ip: str
) -> str:
    """iptables-restore input for all portals: (service port, proxy port) per name."""
    out = ["*filter", f":{NODEPORT_NON_LOCAL} - [0:0]"]
    for spn in sorted(portals):
        sp, proxy_port = portals[spn]
        if sp.node_port:
            out.append(
                f"-A {NODEPORT_NON_LOCAL} -m comment --comment {spn} -m {sp.protocol} "
                f"-p {sp.protocol} --dport {proxy_port} -j ACCEPT"
            )
    out += ["COMMIT", "*nat"] + [f":{c} - [0:0]" for c in NAT_CHAINS]
    for spn in sorted(portals):
        sp, proxy_port = portals[spn]
        match = f"-m comment --comment {spn} -m {sp.protocol} -p {sp.protocol}"
        for ip in (sp.cluster_ip, *sp.external_ips):
            out.append(
                f"-A {PORTALS_CONTAINER} {match} -d {ip}/32 --dport {sp.port} "
                f"-j REDIRECT --to-ports {proxy_port}"
            )
            out.append(
                f"-A {PORTALS_HOST} {match} -d {ip}/32 --dport {sp.port} "
                f"-j DNAT --to-destination {node_ip}:{proxy_port}"
            )
        if sp.node_port:
            out.append(
                f"-A {NODEPORT_CONTAINER} {match} --dport {sp.node_port} "
                f"-j REDIRECT --to-ports {proxy_port}"
            )
            out.append(
                f"-A {NODEPORT_HOST} {match} --dport {sp.node_port} "
                f"-j DNAT --to-destination {node_ip}:{proxy_port}"
            )
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def cleanup_userspace_leftovers(runner: Iptables) -> None:
    remove_jump_rules(runner, JUMP_RULES)
    delete_chains(runner, "nat", lambda c: c in NAT_CHAINS)
    delete_chains(runner, "filter", lambda c: c == NODEPORT_NON_LOCAL)


# --- TCP relay --------------------------------------------------------------------------


class _Relay(asyncio.Protocol):
    """One side of a proxied TCP connection; writes into the peer with back-pressure."""

    def __init__(self, live: set[_Relay] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None
        self.pending: list[bytes] = []  # data that arrived before the peer was connected
        self.got_eof = False
        self.live = live if live is not None else set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        self.live.add(self)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return True  # still dialing: the EOF is forwarded once attached
        if peer.got_eof or not peer.transport.can_write_eof():
            self.close()
            return False
        peer.transport.write_eof()
        return True

    def close(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def attach(self, peer: _Relay) -> None:
        self.peer = peer
        if peer.transport is None:
            return
        for chunk in self.pending:
            peer.transport.write(chunk)
        self.pending.clear()
        if self.got_eof:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
        elif self.transport is not None:
            self.transport.resume_reading()


def _reset(transport: asyncio.Transport) -> None:
    """Close with RST (SO_LINGER 0): the client fails at once instead of waiting."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TcpPortal:
    def __init__(self, proxier: UserspaceProxier, spn: ServicePortName) -> None:
        self.proxier = proxier
        self.spn = spn
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.server = await loop.create_server(self._protocol, sock=sock)

    def _protocol(self) -> asyncio.Protocol:
        client = _Relay(self.proxier.relays)
        asyncio.get_running_loop().call_soon(self._dial_later, client)
        return client

    def _dial_later(self, client: _Relay) -> None:
        task = asyncio.ensure_future(self._dial(client))
        self.proxier.tasks.add(task)
        task.add_done_callback(self.proxier.tasks.discard)

    async def _dial(self, client: _Relay) -> None:
        transport = client.transport
        if transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        client_ip = peer[0] if peer else ""
        loop = asyncio.get_running_loop()
        rr = self.proxier.balancer
        for attempt, timeout in enumerate(DIAL_TIMEOUTS):
            endpoint = rr.next(self.spn, client_ip, time.monotonic(), skip_affinity=attempt > 0)
            if endpoint is None:
                break
            if not self.proxier.allowed(client_ip, endpoint, "tcp"):
                log.debug("userspace %s: %s may not reach %s", self.spn, client_ip, endpoint)
                continue
            host, _, port = endpoint.rpartition(":")
            sock = _dial_socket(socket.SOCK_STREAM, self.proxier.gate)
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(sock, (host, int(port)))
                _, backend = await loop.create_connection(
                    lambda: _Relay(self.proxier.relays), sock=sock
                )
            except (OSError, TimeoutError) as exc:
                sock.close()
                log.debug("userspace %s: dial %s failed: %s", self.spn, endpoint, exc)
                continue
            if transport.is_closing():
                assert backend.transport is not None
                backend.transport.close()
                return
            self.connections += 1
            backend.attach(client)
            client.attach(backend)
            return
        _reset(transport)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# --- UDP relay --------------------------------------------------------------------------


class _UdpBackend(asyncio.DatagramProtocol):
    def __init__(self, portal: UdpPortal, client: tuple[str, int]) -> None:
        self.portal = portal
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.last = time.monotonic()
        if self.portal.transport is not None:
            self.portal.transport.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        log.debug("userspace udp backend for %s: %s", self.client, exc)


class UdpPortal(asyncio.DatagramProtocol):
    def __init__(self, proxier: UserspaceProxier, spn: ServicePortName) -> None:
        self.proxier = proxier
        self.spn = spn
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.sessions: dict[tuple[str, int], _UdpBackend] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._reaper = asyncio.create_task(self._reap())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        client = (str(addr[0]), int(addr[1]))
        session = self.sessions.get(client)
        if session is not None and session.transport is not None:
            session.last = time.monotonic()
            session.transport.sendto(data)
            return
        task = asyncio.ensure_future(self._open(client, data))
        self.proxier.tasks.add(task)
        task.add_done_callback(self.proxier.tasks.discard)

    async def _open(self, client: tuple[str, int], first: bytes) -> None:
        endpoint = self.proxier.balancer.next(self.spn, client[0], time.monotonic())
        if endpoint is None or not self.proxier.allowed(client[0], endpoint, "udp"):
            return
        host, _, port = endpoint.rpartition(":")
        loop = asyncio.get_running_loop()
        sock = _dial_socket(socket.SOCK_DGRAM, self.proxier.gate)
        try:
            sock.connect((host, int(port)))
            _, backend = await loop.create_datagram_endpoint(
                lambda: _UdpBackend(self, client), sock=sock
            )
        except OSError as exc:
            sock.close()
            log.debug("userspace %s: udp to %s failed: %s", self.spn, endpoint, exc)
            return
        self.sessions[client] = backend
        if backend.transport is not None:
            backend.transport.sendto(first)

    async def _reap(self) -> None:
        idle = self.proxier.udp_idle_timeout
        while True:
            await asyncio.sleep(max(idle / 2, 0.05))
            now = time.monotonic()
            for client, session in list(self.sessions.items()):
                if now - session.last > idle:
                    del self.sessions[client]
                    if session.transport is not None:
                        session.transport.close()

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session in self.sessions.values():
            if session.transport is not None:
                session.transport.close()
        self.sessions.clear()
        if self.transport is not None:
            self.transport.close()


Portal = TcpPortal | UdpPortal


class DialGate(Protocol):
    """Asked before each dial (NetworkPolicy, `podnet.agent.policy.PolicyGate`): may `client`
    reach `endpoint`:`port`/`protocol`? Dials it allows carry `mark` (SO_MARK), which the
    policy table uses to recognise the proxy's connections."""

    mark: int

    def allows(self, client: str, endpoint: str, port: int, protocol: str) -> bool: ...


def _dial_socket(kind: int, gate: DialGate | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if gate is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, gate.mark)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UserspaceProxier:
    mode = "userspace"

    def __init__(
        self,
        cfg: ProxyConfig,
        kernel: ProxyKernel,
        udp_idle_timeout: float = UDP_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cfg.node_ips:
            raise ValueError(
                "proxy mode 'userspace' needs the node's address (--node-ip): traffic from the "
                "node itself is sent to <node-ip>:<proxy port>"
            )
        self.cfg = cfg
        self.iptables: Iptables = kernel.iptables
        self.node_ip = cfg.node_ips[0]
        self.udp_idle_timeout = udp_idle_timeout
        self.balancer = RoundRobin()
        self.portals: dict[ServicePortName, tuple[ServicePort, Portal]] = {}
        self.tasks: set[asyncio.Future[None]] = set()
        self.relays: set[_Relay] = set()  # open TCP connection sides, closed on stop
        self.clock = clock
        self.rules_known = False
        self.gate: DialGate | None = None  # NetworkPolicy's say on each dial, when it runs

    def allowed(self, client: str, endpoint: str, protocol: str) -> bool:
        host, _, port = endpoint.rpartition(":")
        gate = self.gate
        return gate is None or gate.allows(client, host, int(port), protocol)

    async def sync(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult:
        services = state.service_port_map()
        endpoints = state.endpoints_map()
        for spn in [
            s
            for s in self.portals
            if s not in services or services[s].protocol != self.portals[s][0].protocol
        ]:
            _, portal = self.portals.pop(spn)
            self.balancer.remove(spn)
            await portal.stop()
        for spn, sp in services.items():
            if spn not in self.portals:
                if sp.protocol == "sctp":
                    continue  # no SCTP relay in userspace mode
                created: Portal = (
                    TcpPortal(self, spn) if sp.protocol == "tcp" else UdpPortal(self, spn)
                )
                await created.start()
                self.portals[spn] = (sp, created)
            else:
                self.portals[spn] = (sp, self.portals[spn][1])
            ready = [e for e in endpoints.get(spn, ()) if e.ready] or [
                e for e in endpoints.get(spn, ()) if e.serving and e.terminating
            ]
            self.balancer.update(spn, [e.address for e in ready], sp.affinity_seconds)
        self.balancer.cleanup_stale(self.clock())
        text = render_portal_rules(
            {s: (sp, p.port) for s, (sp, p) in self.portals.items()}, self.node_ip
        )
        full = changed is None or not self.rules_known

        def apply() -> None:
            self.iptables.restore(text)
            if full:
                ensure_jump_rules(self.iptables, JUMP_RULES)

        try:
            await asyncio.to_thread(apply)
        except Exception:
            self.rules_known = False
            raise
        self.rules_known = True
        return SyncResult(full, len(text), len(state.services))

    async def cleanup(self) -> None:
        await self.stop()
        await asyncio.to_thread(cleanup_userspace_leftovers, self.iptables)

    async def stop(self) -> None:
        for _, portal in self.portals.values():
            await portal.stop()
        self.portals.clear()
        for task in list(self.tasks):
            task.cancel()
        for relay in list(self.relays):
            relay.close()
        await asyncio.sleep(0)  # let the transports finish closing
