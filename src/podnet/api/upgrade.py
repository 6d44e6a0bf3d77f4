"""Byte streams over upgraded HTTP connections: what SPDY, tunnels and WebSocket-carried SPDY
run on, on both ends of podnet's streaming paths.

What belongs here: `ByteStream` (read until b"", write, close) and its three shapes —
`UpgradedResponse`, an aiohttp server response that answers 101 and then hands the raw
connection over (SPDY/3.1 from kubectl, the agent's `Upgrade: tcp` port tunnel);
`WebSocketBytes`, a WebSocket whose binary messages carry a byte stream (client-go's
`SPDY/3.1+portforward.k8s.io` tunnel); and `SocketStream`, a plain connection (the API
server's tunnel to an agent, the agent's connection into the pod). Nothing here knows SPDY
or Kubernetes channels.

Invariants:
- `UpgradedResponse` installs its reader before the 101 goes out, so no byte the client sends
  after seeing the 101 can reach aiohttp's HTTP parser; aiohttp's parser knows only the
  `websocket` and `tcp` upgrades and would read anything else as a next request.
- Reading is flow-controlled: while more than `HIGH_WATER` bytes wait unread, the socket is
  not read (TCP then slows the sender); writes wait for the transport to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol, cast

from aiohttp import WSMsgType, web

HIGH_WATER = 256 * 1024


class ByteStream(Protocol):
    async def read(self) -> bytes:
        """The next bytes received; b"" once the peer has finished sending."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def half_close(self) -> None:
        """Tell the peer nothing more will be written (where the transport can say so)."""
        ...

    async def close(self) -> None: ...


async def pipe(source: ByteStream, sink: ByteStream) -> int:
    """Copy `source` into `sink` until the source ends, then half-close the sink; each read
    waits for the previous write to be accepted, so a slow sink slows the source. Returns the
    number of bytes copied."""
    copied = 0
    while data := await source.read():
        await sink.write(data)
        copied += len(data)
    await sink.half_close()
    return copied


async def bridge(
    tunnel: ByteStream, local_in: ByteStream, local_out: ByteStream, grace: float
) -> None:
    """Relay a port-forwarded connection between `tunnel` (TLS: it cannot carry a
    half-close) and the local side (`local_in` → tunnel → `local_out`) until it is over.

    The end of the tunnel means its peer hung up entirely: the local side gets the end
    (half-close) and the relay ends at once. The end of the local side cannot be passed on
    through TLS, so the tunnel's direction gets `grace` seconds to finish, then the relay ends
    (containerd's port-forward rule, after socat: one direction's end ends the connection
    within a second). A failing write or read ends its direction like an end. The caller
    closes the streams."""
    inward = asyncio.create_task(pipe(tunnel, local_out))
    outward = asyncio.create_task(pipe(local_in, tunnel))
    try:
        done, _ = await asyncio.wait({inward, outward}, return_when=asyncio.FIRST_COMPLETED)
        if inward not in done:
            await asyncio.wait({inward}, timeout=grace)
    finally:
        for task in (inward, outward):
            task.cancel()
        results = await asyncio.gather(inward, outward, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, OSError):
            raise result  # ConnectionError is an OSError: a direction that failed has ended


class _ChunkBuffer:
    """Received chunks waiting for `read`; pauses the transport above `HIGH_WATER`. Also
    stands in for aiohttp's payload parser (`feed_data` / `feed_eof`) on upgraded requests."""

    def __init__(self, transport: asyncio.BaseTransport | None = None) -> None:
        self.transport = transport
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)
            if self._size > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                cast(asyncio.ReadTransport, self.transport).pause_reading()
            self._wake()
        return False, b""

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        while not self._chunks and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._chunks:
            return b""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._paused and self.transport is not None:
            self._paused = False
            if not self.transport.is_closing():
                cast(asyncio.ReadTransport, self.transport).resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        if data:
            self._chunks.appendleft(data)
            self._size += len(data)
            self._wake()


class UpgradedResponse(web.StreamResponse):
    """`101 Switching Protocols`, after which the connection is a `ByteStream`."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__(status=101, headers=headers)
        self._length_check = False
        self._reader: _ChunkBuffer | None = None
        self._closed = False

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self._reader is None:
            protocol, transport = request.protocol, request.transport
            if transport is None:
                raise ConnectionResetError("the client has gone")
            # pausing the transport, not aiohttp's protocol: its HTTP parser must not be
            # involved once the connection carries another protocol
            self._reader = _ChunkBuffer(transport)
            # aiohttp types the parser as its WebSocketReader; only feed_data/feed_eof are used
            protocol.set_parser(cast(Any, self._reader))
            protocol.keep_alive(False)
        return await super().prepare(request)

    async def read(self) -> bytes:
        assert self._reader is not None, "prepare() first"
        return await self._reader.read()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ConnectionResetError("the upgraded connection is closed")
        await super().write(data)

    async def half_close(self) -> None:
        transport = self._req.transport if self._req is not None else None
        if transport is not None and transport.can_write_eof() and not transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    async def close(self) -> None:
        """Close the connection once what was written is flushed."""
        if self._closed:
            return
        self._closed = True
        # (write_eof forgets the request: take its transport first)
        transport = self._req.transport if self._req is not None else None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await super().write_eof()
        if transport is not None:
            transport.close()

    async def write_eof(self, data: bytes = b"") -> None:
        # aiohttp calls this when the handler returns: the stream is over by then
        await self.close()


class WebSocketBytes:
    """A byte stream carried in binary WebSocket messages (one write, one message)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def read(self) -> bytes:
        while True:
            message = await self.ws.receive()
            if message.type == WSMsgType.BINARY:
                if message.data:
                    return bytes(message.data)
                continue
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return b""
            if message.type == WSMsgType.ERROR:
                return b""
            # a text message has no place in a byte tunnel
            await self.ws.close(code=1003, message=b"only binary messages carry the stream")
            return b""

    async def write(self, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        await self.ws.send_bytes(data)

    async def half_close(self) -> None:
        pass  # a WebSocket cannot half-close; the protocol inside says when it is done

    async def close(self) -> None:
        await self.ws.close(code=1000)


class SocketStream(asyncio.Protocol):
    """A TCP (or unix) connection as a `ByteStream`, without asyncio's StreamReader: received
    chunks are kept as the transport hands them over and given out whole, so no byte is
    copied between the kernel and the consumer (StreamReader appends to, and deletes from
    the front of, one bytearray: a copy per read of everything still buffered)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = _ChunkBuffer()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._lost = False

    @classmethod
    async def connect(cls, host: str, port: int, tls: ssl.SSLContext | None = None) -> SocketStream:
        """A connection to `host:port` (over TLS with `tls`, checking the peer's name)."""
        loop = asyncio.get_running_loop()
        _, stream = await loop.create_connection(cls, host, port, ssl=tls)
        return stream

    @classmethod
    async def adopt(cls, sock: socket.socket) -> SocketStream:
        """Wrap a connected socket (the stream owns it from now on)."""
        loop = asyncio.get_running_loop()
        _, stream = await loop.create_connection(cls, sock=sock)
        return stream

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they have its methods)
        self.transport = cast(asyncio.Transport, transport)
        self._reader.transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)

    def eof_received(self) -> bool:
        self._reader.feed_eof()
        # keep our side open: the peer only half-closed (TLS cannot: asyncio closes it anyway)
        return self.transport is None or self.transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._reader.feed_eof()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- ByteStream ---------------------------------------------------------------------------

    async def read(self) -> bytes:
        return await self._reader.read()

    async def read_until(self, separator: bytes, limit: int) -> tuple[bytes, bytes]:
        """(everything up to and including `separator`, what followed it in the same reads);
        ValueError past `limit` bytes, EOFError if the stream ends first."""
        data = b""
        while (end := data.find(separator)) < 0:
            if len(data) > limit:
                raise ValueError(f"no {separator!r} within {limit} bytes")
            chunk = await self.read()
            if not chunk:
                raise EOFError("the connection ended")
            data += chunk
        end += len(separator)
        return data[:end], data[end:]

    def unread(self, data: bytes) -> None:
        """Give bytes back: the next `read` returns them first."""
        self._reader.unread(data)

    async def write(self, data: bytes) -> None:
        if self._lost or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)
        await self._can_write.wait()

    async def half_close(self) -> None:
        transport = self.transport
        if transport is not None and transport.can_write_eof() and not transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
