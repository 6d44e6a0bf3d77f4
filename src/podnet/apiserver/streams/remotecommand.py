"""exec and attach: a client's streams relayed to the agent's v5 WebSocket, as they happen.

What belongs here: the `pods/exec` and `pods/attach` handlers. The client end is one of
- a WebSocket speaking v5, v4, v1 or a base64 variant (`WebSocketEnd`; text messages from the
  Python client are accepted on binary protocols),
- a SPDY/3.1 connection speaking v5, v4, v3, v2 or v1 (`SpdyEnd`: one stream per channel);
the agent end is always a v5 WebSocket (`dial.AgentDialer.websocket`). `relay` moves stdin,
resize and stdin's end towards the agent, stdout and stderr back, and ends with the agent's
exit status translated for the client's protocol.

Invariants:
- Pod, container, phase, parameters and the agent connection are all checked before the
  client's connection is upgraded: a failure is a Status with an HTTP code (kubectl falls back
  from WebSocket to SPDY only on such a refusal, and shows the Status).
- Back-pressure both ways: a relay reads its source only after the previous chunk was
  accepted by the other side's transport.
- The client always gets an exit status (or the reason there is none) and a normal close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import aiohttp
from aiohttp import web

from podnet.api import remotecommand as rc
from podnet.api.errors import ApiError, bad_request
from podnet.api.upgrade import UpgradedResponse
from podnet.apiserver.registry import Registry
from podnet.apiserver.streams.dial import AgentDialer, agent_path
from podnet.apiserver.streams.locate import locate
from podnet.apiserver.streams.session import SpdySession, SpdyStream

log = logging.getLogger(__name__)

STREAM_CREATION_SECONDS = 30.0  # kubelet's streamCreationTimeout
CLIENT_CLOSE_GRACE = 5.0  # after the last frame, how long the client gets to hang up first
SPDY_UPGRADE = "SPDY/3.1"
AGENT_MESSAGE = 1024 * 1024  # largest message sent to the agent (aiohttp's default limit: 4 MiB)


def parse_flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise bad_request(f"parameter {name}={request.query[name]!r} must be true or false")


def upgrade_kind(request: web.Request) -> str:
    """'websocket', 'spdy', or a 400 saying what is needed."""
    upgrade = request.headers.get("Upgrade", "").lower()
    if upgrade == "websocket":
        return "websocket"
    if upgrade == SPDY_UPGRADE.lower():
        return "spdy"
    raise bad_request(
        "Upgrade request required: streaming subresources are served over a WebSocket "
        f"({', '.join(rc.WEBSOCKET_PROTOCOLS)}) or SPDY/3.1"
    )


def offered_protocols(request: web.Request, header: str) -> list[str]:
    return [
        p.strip() for h in request.headers.getall(header, []) for p in h.split(",") if p.strip()
    ]


# -- client ends ----------------------------------------------------------------------------


class ClientEnd(Protocol):
    def inputs(self) -> AsyncIterator[rc.Frame]:
        """stdin data, resize events and stdin's end, until the client goes away."""
        ...

    async def output(self, channel: int, payload: bytes) -> None: ...

    async def finish(self, status_json: bytes) -> None:
        """Deliver the exit status for the client's protocol, then close."""
        ...


class WebSocketEnd:
    def __init__(self, ws: web.WebSocketResponse, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol

    async def inputs(self) -> AsyncIterator[rc.Frame]:
        async for message in self.ws:
            try:
                if message.type == aiohttp.WSMsgType.BINARY:
                    if rc.is_base64(self.protocol):
                        raise rc.ProtocolError(f"{self.protocol} carries text messages only")
                    yield rc.decode(message.data, self.protocol)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    yield rc.decode_text(message.data, self.protocol)
            except rc.ProtocolError as exc:
                log.info("exec client broke the %s protocol: %s", self.protocol, exc)
                await self.ws.close(code=1002, message=str(exc).encode()[:120])
                return

    async def output(self, channel: int, payload: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the client closed the WebSocket")
        if rc.is_base64(self.protocol):
            await self.ws.send_str(rc.encode_text(channel, payload))
        else:
            await self.ws.send_bytes(rc.encode(channel, payload))

    async def finish(self, status_json: bytes) -> None:
        payload = rc.status_for_protocol(status_json, self.protocol)
        with contextlib.suppress(ConnectionError):
            if payload and not self.ws.closed:
                await self.output(rc.ERROR, payload)
        await self.ws.close(code=1000)


class SpdyEnd:
    """The client's SPDY streams (one per channel), collected before the relay starts."""

    def __init__(self, session: SpdySession, protocol: str) -> None:
        self.session = session
        self.protocol = protocol
        self.streams: dict[int, SpdyStream] = {}

    async def collect(self, expected: Sequence[int]) -> None:
        """Wait until the client opened a stream for each expected channel."""
        async with asyncio.timeout(STREAM_CREATION_SECONDS):
            while any(c not in self.streams for c in expected):
                stream = await self.session.accept()
                if stream is None:
                    raise ConnectionResetError("the client closed the connection")
                channel = rc.STREAM_TYPES.get((stream.header(rc.STREAM_TYPE_HEADER) or "").lower())
                if channel is None or channel in self.streams:
                    log.info("exec client opened an unexpected stream %s", stream.headers)
                    await stream.reset()
                    continue
                self.streams[channel] = stream

    async def inputs(self) -> AsyncIterator[rc.Frame]:
        queue: asyncio.Queue[rc.Frame | None] = asyncio.Queue(maxsize=1)

        async def pump(stream: SpdyStream, channel: int) -> None:
            while data := await stream.read():
                await queue.put(rc.Frame(channel, data))
            if channel == rc.STDIN:
                await queue.put(rc.Frame(rc.CLOSE, bytes([rc.STDIN])))

        async def watch_session() -> None:
            await self.session.wait_closed()
            await queue.put(None)

        tasks = [asyncio.create_task(watch_session())]
        for channel in (rc.STDIN, rc.RESIZE):
            if channel in self.streams:
                tasks.append(asyncio.create_task(pump(self.streams[channel], channel)))
        try:
            while (frame := await queue.get()) is not None:
                yield frame
        finally:
            for task in tasks:
                task.cancel()

    async def output(self, channel: int, payload: bytes) -> None:
        stream = self.streams.get(channel)
        if stream is not None and payload:
            await stream.write(payload)

    async def finish(self, status_json: bytes) -> None:
        payload = rc.status_for_protocol(status_json, self.protocol)
        with contextlib.suppress(ConnectionError):
            error = self.streams.get(rc.ERROR)
            if error is not None and payload:
                await error.write(payload)
            for channel in (rc.ERROR, rc.STDOUT, rc.STDERR):
                if channel in self.streams:
                    await self.streams[channel].close()
            # client-go closes the connection once it has read every stream to its end;
            # closing first could lose those last frames to a reset
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.session.wait_closed(), CLIENT_CLOSE_GRACE)
        await self.session.close()


# -- the relay -------------------------------------------------------------------------------


def how_closed(agent: aiohttp.ClientWebSocketResponse) -> str:
    """How the agent's WebSocket ended, for the Status when no exit status came: 1000/1001
    are the agent's own close (1001: it is restarting), 1006 a connection lost (the agent
    died, or the path to it broke)."""
    code = agent.close_code
    error = agent.exception()
    text = f"WebSocket close code {code}" if code is not None else "no WebSocket close"
    return f"{text}: {error}" if error is not None else text


async def relay(client: ClientEnd, agent: aiohttp.ClientWebSocketResponse) -> None:
    status: bytes | None = None
    agent_done = asyncio.Event()

    async def upstream() -> None:
        async for frame in client.inputs():
            # a client's message (or a SPDY read) may be any size; the agent's are bounded
            payload = frame.payload
            for start in range(0, len(payload), AGENT_MESSAGE):
                try:
                    await agent.send_bytes(
                        rc.encode(frame.channel, payload[start : start + AGENT_MESSAGE])
                    )
                except ConnectionError:
                    # the agent closes after the exit status: that is not the client's end
                    await agent_done.wait()
                    return

    async def downstream() -> None:
        nonlocal status
        try:
            async for message in agent:
                if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                channel, payload = message.data[0], bytes(message.data[1:])
                if channel == rc.ERROR:
                    status = payload
                elif channel in (rc.STDOUT, rc.STDERR):
                    await client.output(channel, payload)
        finally:
            agent_done.set()

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    client_gone = False
    failure: BaseException | None = None
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if not down.done():
            # the client went away: closing the agent's socket ends the command there
            client_gone = True
            await agent.close()
            await asyncio.wait({down}, timeout=CLIENT_CLOSE_GRACE)
        elif (error := down.exception()) is not None:
            client_gone = isinstance(error, ConnectionError)
            if not client_gone:  # the relay's own failure, not the agent's
                failure = error
                log.error("exec/attach relay failed", exc_info=error)
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not agent.closed:
            await agent.close()
    if status is None:
        if client_gone:
            reason = "the client went away without an exit status"
        elif failure is not None:
            reason = f"relaying the stream failed without an exit status: {failure!r}"
        else:
            reason = (
                f"the node agent closed the stream without an exit status ({how_closed(agent)})"
            )
            log.warning("exec/attach relay: %s", reason)
        status = json.dumps(rc.internal_error_status(reason)).encode()
    with contextlib.suppress(ConnectionError, RuntimeError):
        await client.finish(status)


# -- the handler -----------------------------------------------------------------------------


async def serve(
    request: web.Request,
    registry: Registry,
    dialer: AgentDialer,
    namespace: str,
    pod_name: str,
    kind: str,
) -> web.StreamResponse:
    """`pods/exec` (kind "exec") or `pods/attach` (kind "attach")."""
    located = await locate(registry, namespace, pod_name, request.query.get("container"))
    verb = "exec into" if kind == "exec" else "attach to"
    if located.phase in ("Succeeded", "Failed"):
        raise bad_request(
            f"cannot {verb} a container in a completed pod; current phase is {located.phase}"
        )
    if located.phase != "Running":
        raise bad_request(
            f"cannot {verb} container {located.container} of pod {pod_name}: the pod is not "
            f"running (phase {located.phase})"
        )
    tty = parse_flag(request, "tty")
    flags = {
        "stdin": parse_flag(request, "stdin"),
        "stdout": parse_flag(request, "stdout"),
        "stderr": parse_flag(request, "stderr") and not tty,
    }
    if not any(flags.values()):
        raise bad_request("you must specify at least 1 of stdin, stdout, stderr")
    params: list[tuple[str, str]] = []
    if kind == "exec":
        commands = request.query.getall("command", [])
        if not commands:
            raise bad_request("you must specify at least 1 command")
        params += [("command", c) for c in commands]
    params += [(k, "true" if v else "false") for k, v in flags.items()]
    params.append(("tty", "true" if tty else "false"))

    upgrade = upgrade_kind(request)
    if upgrade == "websocket":
        offered = offered_protocols(request, "Sec-WebSocket-Protocol")
        protocol = rc.negotiate(offered, rc.WEBSOCKET_PROTOCOLS) if offered else rc.V1
        if protocol is None:
            raise bad_request(
                f"{kind} supports the WebSocket subprotocols {', '.join(rc.WEBSOCKET_PROTOCOLS)};"
                f" the client offered {', '.join(offered)}"
            )
    else:
        offered = offered_protocols(request, "X-Stream-Protocol-Version")
        protocol = rc.negotiate_in_client_order(offered, rc.SPDY_PROTOCOLS) if offered else rc.V1
        if protocol is None:
            raise ApiError(
                403,
                "Forbidden",
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {list(rc.SPDY_PROTOCOLS)}",
            )

    path = agent_path(kind, namespace, pod_name, located.container)
    agent = await dialer.websocket(located.agent, path, params)
    try:
        if upgrade == "websocket":
            ws = web.WebSocketResponse(protocols=(protocol,), autoping=True, max_msg_size=0)
            await ws.prepare(request)
            await relay(WebSocketEnd(ws, protocol), agent)
            return ws
        response = UpgradedResponse(
            {
                "Connection": "Upgrade",
                "Upgrade": SPDY_UPGRADE,
                "X-Stream-Protocol-Version": protocol,
            }
        )
        await response.prepare(request)
        session = SpdySession(response)
        session.start()
        end = SpdyEnd(session, protocol)
        expected = [rc.ERROR] if protocol != rc.V1 else []
        expected += [rc.STDIN] if flags["stdin"] else []
        expected += [rc.STDOUT] if flags["stdout"] else []
        expected += [rc.STDERR] if flags["stderr"] else []
        expected += [rc.RESIZE] if tty and protocol not in (rc.V1, rc.SPDY_V2) else []
        try:
            await end.collect(expected)
        except (TimeoutError, ConnectionError) as exc:
            log.info(
                "%s of %s/%s: the client did not open its streams: %s",
                kind,
                namespace,
                pod_name,
                exc,
            )
            await session.close()
            return response
        await relay(end, agent)
        return response
    finally:
        if not agent.closed:
            await agent.close()
