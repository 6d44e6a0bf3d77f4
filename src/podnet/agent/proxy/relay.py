"""The userspace proxy's data plane: the proxy sockets and the connections relayed through them,
kept in a small long-lived process per node so an agent restart drops nothing.

    python -m podnet.agent.proxy.relay DIR        (started by the agent; it daemonizes)

What belongs here: `RoundRobin` (upstream LoadBalancerRR), the TCP and UDP relays, `RelayCore`
(one listening socket per service port, relays, the balancer), the relay process (`serve`) and
the two handles the userspace proxier (`userspace.py`) drives: `RemoteRelay` (the process) and
`LocalRelay` (the same core in the caller's event loop: tests and benchmarks).

Why a process and not socket passing: handing the listening sockets to the next agent
(SCM_RIGHTS, systemd's fd store) keeps new connections from being refused, but established
relays live in the old process's memory (bytes read but not yet written) and die with it, and
a `kill -9` gives no chance to hand anything over. A relay process that never restarts with
the agent keeps both, as containerd-shim keeps containers: while the agent is away it goes on
accepting and relaying with the endpoints it last got; the new agent reconnects, sends the same
portals and gets the same ports back, so even the iptables rules stay the same.

Control (JSON lines on `DIR/relay.sock`, one agent connection at a time; a new one replaces it):

    agent -> relay  {"req": n, "op": "sync", "portals": [{key, protocol, endpoints, affinity}],
                     "gate": {"mark": m} | null}        answered {"req": n, "ports": {key: port}}
                    {"req": n, "op": "shutdown"}       answered {"req": n}, then it exits
                    {"ask": k, "allow": bool}          an answer to the relay's question
    relay -> agent  {"ask": k, "client", "endpoint", "port", "protocol"}: NetworkPolicy's say

Invariants:
- Portals are keyed by `ns/svc:port/protocol`; a key that stays keeps its socket and port.
- With a gate, every dial is asked of the agent (NetworkPolicy lives there); while no agent is
  connected the relay uses the last answer for the same question and refuses unknown ones
  (fail closed), so a restart never opens what a policy closed.
- The process records itself (`DIR/relay.pid`, `podnet.procs`); `podnet down` and a switch to
  another proxy mode stop it by that record. It exits on SIGTERM or a shutdown request, never
  because its agent went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from podnet import dial, procs

log = logging.getLogger(__name__)

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)
UDP_IDLE_TIMEOUT = 0.25  # upstream --udp-timeout default
DEFAULT_AFFINITY_SECONDS = 10800  # v1.DefaultClientIPServiceAffinitySeconds (3 h)
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PIPE_BYTES = 1024 * 1024  # per direction in flight (F_SETPIPE_SZ; the kernel default is 64 KiB)
SEND_BUFFER = 4 * PIPE_BYTES  # per relayed socket, so a pipeful never finds it full (`_stream`)
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>: SO_SNDBUF past net.core.wmem_max (CAP_NET_ADMIN)
BURST = 16  # pipefuls one readiness callback moves, so one busy flow cannot starve the rest
ACCEPT_BURST = 64
SOCKET_NAME = "relay.sock"
LABEL = "relay"
ASK_TIMEOUT = 1.0
REQUEST_TIMEOUT = 30.0
START_TIMEOUT = 10.0
# one control message is one JSON line: a sync names every portal (~100 bytes each), so
# asyncio's default 64 KiB line limit ended the connection at ~650 Services
MESSAGE_LIMIT = 64 * 1024 * 1024
MAX_REMEMBERED = 4096  # gate answers kept for when the agent is away


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
        self.services: dict[Hashable, _Balancer] = {}

    def update(self, key: Hashable, endpoints: Sequence[str], affinity_seconds: int) -> None:
        current = self.services.get(key)
        if current is not None and sorted(current.endpoints) == sorted(endpoints):
            current.affinity_seconds = affinity_seconds
            return
        shuffled = list(endpoints)
        self.rng.shuffle(shuffled)
        balancer = _Balancer(shuffled, 0, affinity_seconds)
        if current is not None:  # keep sticky clients whose endpoint survived
            balancer.sticky = {c: a for c, a in current.sticky.items() if a.endpoint in endpoints}
        self.services[key] = balancer

    def remove(self, key: Hashable) -> None:
        self.services.pop(key, None)

    def next(
        self, key: Hashable, client_ip: str, now: float, skip_affinity: bool = False
    ) -> str | None:
        b = self.services.get(key)
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


# --- what the proxier asks for ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortalSpec:
    key: str  # ns/svc:port/protocol
    protocol: str  # tcp | udp
    endpoints: tuple[str, ...]  # ip:port, the ones to balance over
    affinity_seconds: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "protocol": self.protocol,
            "endpoints": list(self.endpoints),
            "affinity": self.affinity_seconds,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PortalSpec:
        protocol = str(raw["protocol"])
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"portal {raw.get('key')!r}: protocol {protocol!r} is not tcp/udp")
        return cls(
            str(raw["key"]),
            protocol,
            tuple(str(e) for e in raw.get("endpoints") or ()),
            int(raw.get("affinity") or 0),
        )


class DialGate(Protocol):
    """Asked before each dial (NetworkPolicy, `podnet.agent.policy.PolicyGate`): may `client`
    reach `endpoint`:`port`/`protocol`? Dials it allows carry `mark` (SO_MARK), which the
    policy table uses to recognise the proxy's connections."""

    mark: int

    def allows(self, client: str, endpoint: str, port: int, protocol: str) -> bool: ...


class Gate(Protocol):
    """The relay's view of a gate: asking may take a round trip (to the agent)."""

    @property
    def mark(self) -> int: ...

    async def allows(self, client: str, endpoint: str, port: int, protocol: str) -> bool: ...


@dataclass(slots=True)
class LocalGate:
    gate: DialGate

    @property
    def mark(self) -> int:
        return self.gate.mark

    async def allows(self, client: str, endpoint: str, port: int, protocol: str) -> bool:
        return self.gate.allows(client, endpoint, port, protocol)


# --- TCP relay --------------------------------------------------------------------------


class _Spliced:
    """One proxied TCP connection, relayed in the kernel: each direction moves bytes from one
    socket into a pipe and from the pipe into the other socket with `splice`, so they are never
    copied into Python. The event loop only says when a socket is readable (or, while the
    other side is full, writable); back-pressure is the pipe filling up.

    A direction that reads EOF shuts the other socket's writing side (half-close, as the
    client sent it); the connection closes when both directions have, or on any error."""

    def __init__(self, client: socket.socket, backend: socket.socket, live: set[_Spliced]) -> None:
        self.loop = asyncio.get_running_loop()
        self.sockets = (client, backend)
        self.live = live
        self.closed = False
        live.add(self)
        self.directions = (_Direction(self, client, backend), _Direction(self, backend, client))
        for direction in self.directions:
            self.loop.add_reader(direction.src, direction.pump)

    def finished(self) -> None:
        if all(d.done for d in self.directions):
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.live.discard(self)
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            self.loop.remove_writer(sock.fileno())
        for direction in self.directions:
            os.close(direction.r)
            os.close(direction.w)
        for sock in self.sockets:
            sock.close()


class _Direction:
    """Bytes from `src` to `dst` through a pipe of our own (see `_Spliced`)."""

    __slots__ = ("conn", "done", "dst", "dst_socket", "held", "r", "src", "w")

    def __init__(self, conn: _Spliced, src: socket.socket, dst: socket.socket) -> None:
        self.conn = conn
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_socket = dst
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep 64 KiB
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.held = 0  # bytes read into the pipe, not yet written out
        self.done = False

    def pump(self) -> None:
        """`src` is readable: move what it has (at most BURST pipefuls, to be fair)."""
        try:
            for _ in range(BURST):
                try:
                    got = os.splice(self.src, self.w, PIPE_BYTES, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    return  # read all there was
                if got == 0:
                    self._eof()
                    return
                self.held = got
                if not self._flush():
                    self.conn.loop.remove_reader(self.src)
                    self.conn.loop.add_writer(self.dst, self._drain)
                    return
        except OSError:  # reset, or the other side is gone
            self.conn.close()

    def _flush(self) -> bool:
        """Write the pipe out; False when `dst` is full (the rest waits for writable)."""
        while self.held:
            try:
                self.held -= os.splice(self.r, self.dst, self.held, flags=SPLICE_FLAGS)
            except BlockingIOError:
                return False
        return True

    def _drain(self) -> None:
        try:
            if not self._flush():
                return
        except OSError:
            self.conn.close()
            return
        self.conn.loop.remove_writer(self.dst)
        self.conn.loop.add_reader(self.src, self.pump)

    def _eof(self) -> None:
        self.conn.loop.remove_reader(self.src)
        self.done = True
        with contextlib.suppress(OSError):  # the other side may be gone already
            self.dst_socket.shutdown(socket.SHUT_WR)
        self.conn.finished()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the client fails at once instead of waiting."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _stream(sock: socket.socket) -> None:
    """A relayed TCP socket: non-blocking, and no Nagle delay (asyncio's transports set the
    same), so request/response traffic is not held back.

    And room to queue a few pipefuls: autotuning starts a socket's send buffer at 16 KiB
    (tcp_wmem) and grows it only as the congestion window grows, so on a fresh connection
    splice after splice found it full: the direction stopped reading, waited for writable and
    started again, four epoll changes and two wakeups a round (8 a 32 MiB download through
    the relay, 2 with this; the relay's CPU per GB a quarter lower). The kernel doubles the
    value (8 MiB, twice the most autotuning reaches), and the memory is only taken while
    bytes wait for a slow peer. Without the privilege to pass net.core.wmem_max (not root),
    autotuning stays."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(PermissionError):
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SEND_BUFFER)


def _dial_socket(kind: int, gate: Gate | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if gate is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, gate.mark)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TcpPortal:
    def __init__(self, core: RelayCore, key: str) -> None:
        self.core = core
        self.key = key
        self.listener: socket.socket | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(ACCEPT_BURST):
            try:
                client, peer = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. out of descriptors: the next readiness retries
                log.warning("relay %s: accept failed: %s", self.key, exc)
                return
            _stream(client)
            self.core.spawn(self._dial(client, str(peer[0])))

    async def _dial(self, client: socket.socket, client_ip: str) -> None:
        rr = self.core.balancer
        for attempt, timeout in enumerate(DIAL_TIMEOUTS):
            endpoint = rr.next(self.key, client_ip, time.monotonic(), skip_affinity=attempt > 0)
            if endpoint is None:
                break
            if not await self.core.allowed(client_ip, endpoint, "tcp"):
                log.debug("relay %s: %s may not reach %s", self.key, client_ip, endpoint)
                continue
            host, _, port = endpoint.rpartition(":")
            sock = _dial_socket(socket.SOCK_STREAM, self.core.gate)
            try:
                async with asyncio.timeout(timeout):
                    await dial.connect(sock, (host, int(port)))
            except (OSError, TimeoutError) as exc:
                sock.close()
                log.debug("relay %s: dial %s failed: %s", self.key, endpoint, exc)
                continue
            except BaseException:  # cancelled (the relay is closing)
                sock.close()
                client.close()
                raise
            _stream(sock)
            self.connections += 1
            _Spliced(client, sock, self.core.relays)
            return
        _reset(client)

    async def stop(self) -> None:
        if self.listener is not None:
            asyncio.get_running_loop().remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None


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
        log.debug("relay udp backend for %s: %s", self.client, exc)


class UdpPortal(asyncio.DatagramProtocol):
    def __init__(self, core: RelayCore, key: str) -> None:
        self.core = core
        self.key = key
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
        self.core.spawn(self._open(client, data))

    async def _open(self, client: tuple[str, int], first: bytes) -> None:
        endpoint = self.core.balancer.next(self.key, client[0], time.monotonic())
        if endpoint is None or not await self.core.allowed(client[0], endpoint, "udp"):
            return
        host, _, port = endpoint.rpartition(":")
        loop = asyncio.get_running_loop()
        sock = _dial_socket(socket.SOCK_DGRAM, self.core.gate)
        try:
            sock.connect((host, int(port)))
            _, backend = await loop.create_datagram_endpoint(
                lambda: _UdpBackend(self, client), sock=sock
            )
        except OSError as exc:
            sock.close()
            log.debug("relay %s: udp to %s failed: %s", self.key, endpoint, exc)
            return
        self.sessions[client] = backend
        if backend.transport is not None:
            backend.transport.sendto(first)

    async def _reap(self) -> None:
        idle = self.core.udp_idle_timeout
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


class RelayCore:
    """One listening socket per portal, the relays through them and the balancer."""

    def __init__(
        self,
        udp_idle_timeout: float = UDP_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.udp_idle_timeout = udp_idle_timeout
        self.clock = clock
        self.balancer = RoundRobin()
        self.portals: dict[str, tuple[PortalSpec, Portal]] = {}
        self.tasks: set[asyncio.Future[None]] = set()
        self.relays: set[_Spliced] = set()  # open TCP connections, closed on close()
        self.gate: Gate | None = None

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def allowed(self, client: str, endpoint: str, protocol: str) -> bool:
        gate = self.gate
        if gate is None:
            return True
        host, _, port = endpoint.rpartition(":")
        return await gate.allows(client, host, int(port), protocol)

    async def apply(self, specs: Sequence[PortalSpec]) -> dict[str, int]:
        """Make the portals exactly `specs`; the port of each (kept for a key that stays)."""
        wanted = {s.key: s for s in specs}
        for key in [k for k in self.portals if k not in wanted]:
            _, gone = self.portals.pop(key)
            self.balancer.remove(key)
            await gone.stop()
        for key, spec in wanted.items():
            current = self.portals.get(key)
            if current is None or current[0].protocol != spec.protocol:
                if current is not None:
                    await current[1].stop()
                portal: Portal = (
                    TcpPortal(self, key) if spec.protocol == "tcp" else UdpPortal(self, key)
                )
                await portal.start()
                self.portals[key] = (spec, portal)
            else:
                self.portals[key] = (spec, current[1])
            self.balancer.update(key, spec.endpoints, spec.affinity_seconds)
        self.balancer.cleanup_stale(self.clock())
        return {key: portal.port for key, (_, portal) in self.portals.items()}

    async def close(self) -> None:
        for _, portal in self.portals.values():
            await portal.stop()
        self.portals.clear()
        for task in list(self.tasks):
            task.cancel()
        for relay in list(self.relays):
            relay.close()
        await asyncio.sleep(0)  # let the transports finish closing


# --- the handles the proxier drives -----------------------------------------------------


class Relay(Protocol):
    async def apply(self, specs: Sequence[PortalSpec], gate: DialGate | None) -> dict[str, int]:
        """Make the portals `specs`; their ports."""
        ...

    async def close(self) -> None:
        """The agent stops (a remote relay keeps running)."""
        ...

    async def shutdown(self) -> None:
        """The node leaves userspace mode: nothing of the data plane may remain."""
        ...


class LocalRelay:
    """The data plane in the caller's event loop: it ends with the caller."""

    def __init__(self, core: RelayCore) -> None:
        self.core = core

    async def apply(self, specs: Sequence[PortalSpec], gate: DialGate | None) -> dict[str, int]:
        self.core.gate = LocalGate(gate) if gate is not None else None
        return await self.core.apply(specs)

    async def close(self) -> None:
        await self.core.close()

    async def shutdown(self) -> None:
        await self.core.close()


def recorded_relay(directory: Path) -> procs.Recorded | None:
    rec = next((r for r in procs.recorded(directory) if r.label == LABEL), None)
    return rec if rec is not None and procs.is_alive(rec) else None


def stop_relay(directory: Path) -> bool:
    """Stop the relay process recorded in `directory` (a mode switch, `podnet down`)."""
    rec = next((r for r in procs.recorded(directory) if r.label == LABEL), None)
    if rec is None:
        return False
    alive = procs.is_alive(rec)
    procs.stop(rec, grace_seconds=2.0)
    with contextlib.suppress(FileNotFoundError):
        (directory / SOCKET_NAME).unlink()
    return alive


class RelayLost(ConnectionError):
    """The relay process went away; the proxier's next full sync starts a new one."""


class RemoteRelay:
    """The agent's side of the relay process: starts it if needed, sends it the portals and
    answers its NetworkPolicy questions. `on_reset` is called when the connection is lost
    (the relay died): the caller's next sync must be a full one."""

    def __init__(
        self,
        directory: Path,
        *,
        python: str = sys.executable,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.python = python
        self.on_reset = on_reset
        self.gate: DialGate | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.listener: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_req = 0
        self.closing = False

    @property
    def socket_path(self) -> Path:
        return self.directory / SOCKET_NAME

    async def _connect(self) -> bool:
        try:
            self.reader, self.writer = await asyncio.open_unix_connection(
                str(self.socket_path), limit=MESSAGE_LIMIT
            )
        except OSError:
            return False
        self.listener = asyncio.create_task(self._listen(self.reader, self.writer))
        return True

    async def _ensure(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            return
        if await self._connect():
            return
        if recorded_relay(self.directory) is not None:
            # alive but not answering (it is starting, or stuck): give it a moment, then
            # replace it; two relays must never fight over the same rules
            deadline = time.monotonic() + START_TIMEOUT / 2
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if await self._connect():
                    return
            await asyncio.to_thread(stop_relay, self.directory)
        await self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while not await self._connect():
            if time.monotonic() > deadline:
                raise RelayLost(
                    f"the userspace proxy's relay process did not start; see "
                    f"{self.directory / 'relay.log'}"
                )
            await asyncio.sleep(0.02)

    async def _spawn(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = self.directory / "relay.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "podnet.agent.proxy.relay",
                str(self.directory),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        await proc.wait()  # it daemonizes: the process we started exits at once
        log.info("proxy: started the userspace relay process (%s)", self.directory)

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "ask" in message:
                    self._answer(message)
                elif "req" in message:
                    future = self.pending.pop(int(message["req"]), None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except (ConnectionError, ValueError) as exc:
            log.warning("proxy: relay connection failed: %s", exc)
        finally:
            writer.close()  # the relay hung up (or is gone): ours is closed too, never leaked
            if self.writer is writer:
                self.writer = None
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(RelayLost("the userspace relay process went away"))
            self.pending.clear()
            if not self.closing and self.on_reset is not None:
                log.warning("proxy: lost the userspace relay process; resyncing")
                self.on_reset()

    def _answer(self, message: Mapping[str, Any]) -> None:
        gate = self.gate
        allow = True
        if gate is not None:
            try:
                allow = gate.allows(
                    str(message["client"]),
                    str(message["endpoint"]),
                    int(message["port"]),
                    str(message["protocol"]),
                )
            except Exception:
                log.exception("proxy: the dial gate failed; refusing the dial")
                allow = False
        self._send({"ask": message["ask"], "allow": allow})

    def _send(self, message: Mapping[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(message).encode() + b"\n")

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._ensure()
        self.next_req += 1
        req = self.next_req
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[req] = future
        self._send({**message, "req": req})
        async with asyncio.timeout(REQUEST_TIMEOUT):
            answer = await future
        if "error" in answer:
            raise RuntimeError(f"the userspace relay refused: {answer['error']}")
        return answer

    async def apply(self, specs: Sequence[PortalSpec], gate: DialGate | None) -> dict[str, int]:
        self.gate = gate
        answer = await self._request(
            {
                "op": "sync",
                "portals": [s.to_json() for s in specs],
                "gate": {"mark": gate.mark} if gate is not None else None,
            }
        )
        return {str(k): int(v) for k, v in answer["ports"].items()}

    async def close(self) -> None:
        self.closing = True
        if self.writer is not None:
            self.writer.close()
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listener

    async def shutdown(self) -> None:
        self.closing = True
        if recorded_relay(self.directory) is not None:
            with contextlib.suppress(RelayLost, OSError, TimeoutError, RuntimeError):
                await self._request({"op": "shutdown"})
        await self.close()
        await asyncio.to_thread(stop_relay, self.directory)


# --- the relay process ------------------------------------------------------------------


class AskingGate:
    """The relay process's gate: asks the connected agent, remembers the answers."""

    def __init__(self, service: RelayService, mark: int) -> None:
        self.service = service
        self.mark = mark
        self.answers: dict[tuple[str, str, int, str], bool] = {}

    async def allows(self, client: str, endpoint: str, port: int, protocol: str) -> bool:
        key = (client, endpoint, port, protocol)
        answer = await self.service.ask(key)
        if answer is None:  # no agent: what it said before, else no (fail closed)
            remembered = self.answers.get(key, False)
            log.info("no agent to ask about %s: %s (remembered)", key, remembered)
            return remembered
        if len(self.answers) >= MAX_REMEMBERED:
            self.answers.pop(next(iter(self.answers)))
        self.answers[key] = answer
        return answer


class RelayService:
    """The relay process: the core plus its control socket."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.core = RelayCore()
        self.agent: asyncio.StreamWriter | None = None
        self.asks: dict[int, asyncio.Future[bool]] = {}
        self.next_ask = 0
        self.stop = asyncio.Event()

    async def ask(self, key: tuple[str, str, int, str]) -> bool | None:
        writer = self.agent
        if writer is None or writer.is_closing():
            return None
        self.next_ask += 1
        ask = self.next_ask
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.asks[ask] = future
        client, endpoint, port, protocol = key
        message = {"ask": ask, "client": client, "endpoint": endpoint}
        writer.write(json.dumps({**message, "port": port, "protocol": protocol}).encode() + b"\n")
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                return await future
        except TimeoutError:
            return None
        finally:
            self.asks.pop(ask, None)

    async def handle(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        if "ask" in message:
            future = self.asks.get(int(message["ask"]))
            if future is not None and not future.done():
                future.set_result(bool(message.get("allow")))
            return None
        op = message.get("op")
        if op == "sync":
            specs = [PortalSpec.from_json(p) for p in message.get("portals") or ()]
            gate = message.get("gate")
            if gate is None:
                self.core.gate = None
            elif not isinstance(self.core.gate, AskingGate) or self.core.gate.mark != int(
                gate["mark"]
            ):
                self.core.gate = AskingGate(self, int(gate["mark"]))
            return {"ports": await self.core.apply(specs)}
        if op == "shutdown":
            self.stop.set()
            return {}
        return {"error": f"unknown op {op!r}"}

    async def serve_agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        previous, self.agent = self.agent, writer
        if previous is not None:
            previous.close()
        log.info("agent connected")
        try:
            while line := await reader.readline():
                message = json.loads(line)
                try:
                    answer = await self.handle(message)
                except (ValueError, KeyError, TypeError, OSError) as exc:
                    answer = {"error": str(exc)}
                if answer is not None and "req" in message:
                    writer.write(json.dumps({**answer, "req": message["req"]}).encode() + b"\n")
        except (ConnectionError, ValueError) as exc:
            log.info("agent connection failed: %s", exc)
        finally:
            if self.agent is writer:
                self.agent = None
                log.info("agent disconnected; relaying on with what it last sent")
            writer.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        path = self.directory / SOCKET_NAME
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            self.serve_agent, path=str(path), limit=MESSAGE_LIMIT
        )
        path.chmod(0o600)
        procs.record(self.directory, LABEL, os.getpid())
        log.info("relay serving in %s (pid %d)", self.directory, os.getpid())
        try:
            await self.stop.wait()
        finally:
            server.close()
            path.unlink(missing_ok=True)
            await self.core.close()
            for rec in procs.recorded(self.directory):
                if rec.label == LABEL and rec.pid == os.getpid():
                    procs.forget(rec)
            log.info("relay exiting")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m podnet.agent.proxy.relay DIR", file=sys.stderr)
        return 2
    directory = Path(argv[0])
    if os.fork() > 0:
        os._exit(0)  # the agent reaps this at once; the relay below belongs to init now
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s relay: %(message)s", force=True
    )
    # a socket per portal and six descriptors per relayed TCP connection (two sockets, two
    # pipes): the soft limit may be 1024; raise it to the hard one, as Go does for kube-proxy
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(RelayService(directory).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
