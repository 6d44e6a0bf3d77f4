"""The asyncio side of a SPDY/3.1 session: `spdy.Connection` driven over a `ByteStream`.

What belongs here: reading frames off the connection and handing streams and their data to
the relays (exec, attach, port-forward), writing what the relays send, answering pings, and
ending the session. The protocol itself (frames, windows, stream ids) is `spdy.py`'s.

Invariants:
- Only the reader task reads the byte stream; every write goes through `_flush` under one
  lock, so frames leave in the order the (stateful, compressed) encoder produced them.
- Back-pressure: when a stream holds more than `STREAM_HIGH_WATER` unread bytes, the reader
  stops reading the connection until the relay catches up (TCP then slows the client, since
  spdystream does not honour SPDY windows).
- Streams the peer opens are answered with SYN_REPLY at once (as apimachinery's server does:
  client-go waits for the reply before it opens the next stream) and queued for `accept()`.
- When the connection ends, every stream reads EOF and every pending `accept()` gets None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from podnet.api.upgrade import ByteStream
from podnet.apiserver.streams import spdy

log = logging.getLogger(__name__)

STREAM_HIGH_WATER = 1024 * 1024


class SpdyStream:
    """One stream of a session, as a relay sees it."""

    def __init__(self, session: SpdySession, stream_id: int, headers: spdy.Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._reset = False
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    def header(self, name: str) -> str | None:
        return spdy.header(self.headers, name)

    # called by the session's reader
    def _feed(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > STREAM_HIGH_WATER:
                self._drained.clear()
        self._readable.set()

    def _finish(self, reset: bool = False) -> None:
        self._eof = True
        self._reset = self._reset or reset
        self._readable.set()
        self._drained.set()

    async def read(self) -> bytes:
        """Received bytes (as many as are buffered); b"" once the peer finished or reset."""
        while not self._chunks:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._drained.set()
        self.session.conn.acknowledge(self.id, len(data))
        return data

    async def write(self, data: bytes) -> None:
        """Send `data` (waiting for the peer's window if it does flow control)."""
        view = memoryview(data)
        while view:
            if self._reset or not self.session.conn.is_open(self.id):
                raise ConnectionResetError(f"SPDY stream {self.id} is closed")
            sent = self.session.conn.send_data(self.id, view)
            view = view[sent:]
            await self.session.flush()
            if view:
                await self.session.window_opened()

    async def half_close(self) -> None:
        await self.close()

    async def close(self) -> None:
        """Half-close: tell the peer we send nothing more (FIN)."""
        if self.session.conn.is_open(self.id):
            self.session.conn.send_data(self.id, b"", fin=True)
            await self.session.flush()
        self.session._forget(self.id)

    async def reset(self) -> None:
        self.session.conn.reset(self.id)
        self._finish(reset=True)
        self.session._forget(self.id)
        await self.session.flush()


class SpdySession:
    """A server-side SPDY session over `io` (a raw upgraded connection or a WebSocket)."""

    def __init__(self, io: ByteStream) -> None:
        self.io = io
        self.conn = spdy.Connection(client=False)
        self.streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._window = asyncio.Event()
        self._closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="spdy-reader")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        """GOAWAY, then close the connection; streams read EOF."""
        if not self._closed.is_set():
            self.conn.go_away()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.flush()
        await self._shutdown()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _shutdown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for stream in self.streams.values():
            stream._finish()
        self._window.set()
        self._incoming.put_nowait(None)
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            await self.io.close()

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened, or None once the session is over."""
        stream = await self._incoming.get()
        if stream is None:
            self._incoming.put_nowait(None)  # every later accept() sees the end too
        return stream

    # -- writing -----------------------------------------------------------------------------

    async def flush(self) -> None:
        async with self._write_lock:
            data = self.conn.data_to_send()
            if data and not self._closed.is_set():
                await self.io.write(data)

    async def window_opened(self) -> None:
        self._window.clear()
        await self._window.wait()

    # -- reading -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.io.read()
                if not data:
                    break
                try:
                    frames = self.conn.receive_data(data)
                except spdy.SpdyError as exc:
                    log.warning("SPDY protocol error from the client: %s", exc)
                    self.conn.go_away(exc.status)
                    await self.flush()
                    break
                for frame in frames:
                    await self._dispatch(frame)
                await self.flush()
                if self.conn.going_away and not self.streams:
                    break
        except (ConnectionError, OSError) as exc:
            log.debug("SPDY connection lost: %s", exc)
        finally:
            await self._shutdown()

    async def _dispatch(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.SynStream(stream_id=sid, headers=headers, fin=fin):
                stream = SpdyStream(self, sid, headers)
                self.streams[sid] = stream
                self.conn.reply(sid)
                if fin:
                    stream._finish()
                self._incoming.put_nowait(stream)
            case spdy.Data(stream_id=sid, data=payload, fin=fin):
                stream_or_none = self.streams.get(sid)
                if stream_or_none is None:
                    return
                stream_or_none._feed(payload)
                if fin:
                    stream_or_none._finish()
                    self._forget(sid)
                elif not stream_or_none._drained.is_set():
                    await self.flush()
                    await stream_or_none._drained.wait()
            case spdy.RstStream(stream_id=sid):
                found = self.streams.pop(sid, None)
                if found is not None:
                    found._finish(reset=True)
                self._window.set()
            case spdy.WindowUpdate() | spdy.Settings():
                self._window.set()
            case spdy.GoAway():
                pass  # no new streams will come; open ones finish normally
            case _:
                pass

    def _forget(self, stream_id: int) -> None:
        if not self.conn.is_open(stream_id):
            self.streams.pop(stream_id, None)
