"""pods/portforward: every connection a client forwards, relayed to a port inside the pod.

What belongs here: the port-forward handler and its three client protocols —
- SPDY/3.1 over an HTTP upgrade (`X-Stream-Protocol-Version: portforward.k8s.io`; kubectl
  up to 1.30, and later ones when WebSockets are refused),
- the same SPDY inside a WebSocket (`SPDY/3.1+portforward.k8s.io`; kubectl from 1.31),
- the WebSocket channel protocol (`v4.channel.k8s.io`, `?ports=80,8080`; the Python client).
Each forwarded connection becomes one agent tunnel (`dial.AgentDialer.tunnel`): a byte stream
to `localhost:<port>` in the pod's network namespace, as the kubelet connects.

SPDY (client-go `tools/portforward`, kubelet `portforward/httpstream.go`): per local connection
the client opens an *error* stream, then a *data* stream, both with headers `streamType`,
`port` and `requestID`; it half-closes the error stream at once and reads it to its end; any
text there is shown as "an error occurred forwarding L -> R: <text>". The pair is relayed
once both streams are open; it ends when the pod's side of the connection ends (data and
error streams are then closed), or a second after the client ended or reset the data stream
(the TLS tunnel to the agent cannot pass a half-close on: containerd's rule, `upgrade.bridge`).

WebSocket channels (kubelet `portforward/websocket.go`): port i of `ports` uses channel 2i for
data and 2i+1 for errors; the first message on each channel is the channel byte and the port
as a little-endian uint16; the socket closes when every port's connection has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable

import aiohttp
from aiohttp import web

from podnet.api.errors import ApiError, bad_request
from podnet.api.upgrade import ByteStream, SocketStream, UpgradedResponse, WebSocketBytes, bridge
from podnet.apiserver.registry import Registry
from podnet.apiserver.streams.dial import AgentDialer
from podnet.apiserver.streams.locate import Located, locate
from podnet.apiserver.streams.remotecommand import SPDY_UPGRADE, offered_protocols, upgrade_kind
from podnet.apiserver.streams.session import SpdySession, SpdyStream

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
TUNNELED = "SPDY/3.1+" + PROTOCOL
CHANNEL_PROTOCOLS = ("v4.channel.k8s.io",)
PAIR_SECONDS = 30.0  # kubelet's streamCreationTimeout for the second stream of a pair
CLIENT_END_GRACE = 1.0  # after the client's side ends, the pod's gets this long (containerd)


def parse_port(value: str | None) -> int:
    try:
        port = int(value or "")
    except ValueError:
        raise ValueError(f"unable to parse {value!r} as a port") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {value!r} must be between 1 and 65535")
    return port


def parse_ports(values: list[str]) -> list[int]:
    """`?ports=80,8080` (and repeated `ports`/`port`), as the kubelet parses them."""
    ports: list[int] = []
    for value in values:
        for part in value.split(","):
            try:
                ports.append(parse_port(part.strip()))
            except ValueError as exc:
                raise bad_request(str(exc)) from None
    if not ports:
        raise bad_request('query parameter "ports" is required')
    return ports


def forward_error(located: Located, port: int, error: ApiError) -> bytes:
    """kubelet's wording for a port that cannot be reached."""
    uid = located.pod["metadata"].get("uid", "")
    return (
        f"error forwarding port {port} to pod {located.name}, uid {uid}: {error.message}".encode()
    )


async def forward(tunnel: SocketStream, client_in: ByteStream, client_out: ByteStream) -> None:
    """Relay one connection until the pod's side ends, or the client's side ended (or failed)
    `CLIENT_END_GRACE` ago (`upgrade.bridge`: the TLS tunnel cannot tell the agent)."""
    try:
        await bridge(tunnel, client_in, client_out, CLIENT_END_GRACE)
    finally:
        await tunnel.close()


# -- SPDY --------------------------------------------------------------------------------------


class _Pair:
    def __init__(self) -> None:
        self.error: SpdyStream | None = None
        self.data: SpdyStream | None = None
        self.complete = asyncio.Event()


async def _serve_pair(dialer: AgentDialer, located: Located, pair: _Pair) -> None:
    try:
        async with asyncio.timeout(PAIR_SECONDS):
            await pair.complete.wait()
    except TimeoutError:
        for stream in (pair.error, pair.data):
            if stream is not None:
                with contextlib.suppress(ConnectionError):
                    if stream is pair.error:
                        await stream.write(b"timed out waiting for the data and error streams")
                    await stream.close()
        return
    assert pair.error is not None and pair.data is not None
    error, data = pair.error, pair.data
    try:
        port = parse_port(data.header("port"))
        try:
            tunnel = await dialer.tunnel(located.agent, located.namespace, located.name, port)
        except ApiError as exc:
            await error.write(forward_error(located, port, exc))
            return
        await forward(tunnel, data, data)
    except (ConnectionError, ValueError) as exc:
        log.debug("port-forward to %s/%s ended: %s", located.namespace, located.name, exc)
    finally:
        for stream in (data, error):
            with contextlib.suppress(ConnectionError):
                await stream.close()


def _forget_pair(pairs: dict[str, _Pair], request_id: str) -> Callable[[object], None]:
    def forget(_task: object) -> None:
        pairs.pop(request_id, None)

    return forget


async def serve_spdy(dialer: AgentDialer, located: Located, io: ByteStream) -> None:
    """Accept stream pairs until the client closes the session."""
    session = SpdySession(io)
    session.start()
    pairs: dict[str, _Pair] = {}
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (stream := await session.accept()) is not None:
            kind = (stream.header("streamtype") or "").lower()
            try:
                parse_port(stream.header("port"))
            except ValueError as exc:
                log.info("port-forward stream refused: %s", exc)
                await stream.reset()
                continue
            if kind not in ("error", "data"):
                await stream.reset()
                continue
            request_id = stream.header("requestid")
            if request_id is None:  # clients before requestID: pair by consecutive ids
                request_id = str(stream.id if kind == "error" else stream.id - 2)
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = _Pair()
                task = asyncio.create_task(_serve_pair(dialer, located, pair))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(_forget_pair(pairs, request_id))
            if getattr(pair, kind) is not None:
                await stream.reset()
                continue
            setattr(pair, kind, stream)
            if pair.error is not None and pair.data is not None:
                pair.complete.set()
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


# -- WebSocket channels ------------------------------------------------------------------------


class _ChannelIn:
    """The client's bytes for one port's data channel (fed by the WebSocket reader)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    async def read(self) -> bytes:
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def half_close(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _ChannelOut:
    """Writes to one port's data channel."""

    def __init__(self, ws: web.WebSocketResponse, channel: int) -> None:
        self.ws = ws
        self.prefix = bytes([channel])

    async def read(self) -> bytes:
        return b""

    async def write(self, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the client closed the WebSocket")
        await self.ws.send_bytes(self.prefix + data)

    async def half_close(self) -> None:
        pass  # v4 has no half-close: the socket closes when every port is done

    async def close(self) -> None:
        pass


async def _all_done(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


async def serve_channels(
    request: web.Request, dialer: AgentDialer, located: Located, ports: list[int], protocol: str
) -> web.WebSocketResponse:
    tunnels: list[SocketStream | ApiError] = []
    for port in ports:
        try:
            tunnels.append(
                await dialer.tunnel(located.agent, located.namespace, located.name, port)
            )
        except ApiError as exc:
            tunnels.append(exc)
    ws = web.WebSocketResponse(
        protocols=(protocol,) if protocol else (), autoping=True, max_msg_size=0
    )
    await ws.prepare(request)
    inputs = {i: _ChannelIn() for i, t in enumerate(tunnels) if isinstance(t, SocketStream)}
    try:
        for index, port in enumerate(ports):
            for channel in (2 * index, 2 * index + 1):
                await ws.send_bytes(bytes([channel]) + struct.pack("<H", port))
        forwards = []
        for index, (port, tunnel) in enumerate(zip(ports, tunnels, strict=True)):
            if isinstance(tunnel, ApiError):
                await ws.send_bytes(bytes([2 * index + 1]) + forward_error(located, port, tunnel))
                continue
            forwards.append(
                asyncio.create_task(forward(tunnel, inputs[index], _ChannelOut(ws, 2 * index)))
            )

        async def read_client() -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                channel = message.data[0]
                target = inputs.get(channel // 2) if channel % 2 == 0 else None
                if target is not None:
                    await target.queue.put(bytes(message.data[1:]))

        reader = asyncio.create_task(read_client())
        if forwards:
            everything = asyncio.ensure_future(_all_done(forwards))
            await asyncio.wait({reader, everything}, return_when=asyncio.FIRST_COMPLETED)
            everything.cancel()
        reader.cancel()
        for task in forwards:
            task.cancel()
        await asyncio.gather(reader, *forwards, return_exceptions=True)
    finally:
        for tunnel in tunnels:
            if isinstance(tunnel, SocketStream):
                await tunnel.close()
        await ws.close(code=1000)
    return ws


# -- the handler -------------------------------------------------------------------------------


async def serve(
    request: web.Request, registry: Registry, dialer: AgentDialer, namespace: str, pod_name: str
) -> web.StreamResponse:
    located = await locate(registry, namespace, pod_name, None)
    if located.phase != "Running":
        raise bad_request(
            f"unable to forward port because pod is not running. Current status={located.phase}"
        )
    if upgrade_kind(request) == "spdy":
        offered = offered_protocols(request, "X-Stream-Protocol-Version")
        if offered and PROTOCOL not in offered:
            raise ApiError(
                403,
                "Forbidden",
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {[PROTOCOL]}",
            )
        headers = {"Connection": "Upgrade", "Upgrade": SPDY_UPGRADE}
        if offered:
            headers["X-Stream-Protocol-Version"] = PROTOCOL
        response = UpgradedResponse(headers)
        await response.prepare(request)
        await serve_spdy(dialer, located, response)
        return response
    offered = offered_protocols(request, "Sec-WebSocket-Protocol")
    if TUNNELED in offered:
        ws = web.WebSocketResponse(protocols=(TUNNELED,), autoping=True, max_msg_size=0)
        await ws.prepare(request)
        await serve_spdy(dialer, located, WebSocketBytes(ws))
        return ws
    protocol = next((p for p in CHANNEL_PROTOCOLS if p in offered), None)
    if offered and protocol is None:
        raise bad_request(
            f"port-forward supports the WebSocket subprotocols {TUNNELED}, "
            f"{', '.join(CHANNEL_PROTOCOLS)}; the client offered {', '.join(offered)}"
        )
    ports = parse_ports(request.query.getall("ports", []) + request.query.getall("port", []))
    return await serve_channels(request, dialer, located, ports, protocol or "")
