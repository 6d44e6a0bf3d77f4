"""SPDY/3.1 framing and connection state, sans-I/O: bytes in, frames out; calls in, bytes out.

What belongs here: the wire format of SPDY/3.1 (draft-mbelshe-httpbis-spdy-00 and the 3.1
amendment: session flow control) as kubectl, client-go and the kubelet speak it through
moby/spdystream — SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS,
WINDOW_UPDATE and DATA frames, header blocks compressed with one zlib context per direction
primed with the SPDY/3 dictionary — and a `Connection` that tracks streams and windows. No
sockets, no asyncio, no clocks: `Connection.receive_data(bytes)` returns frames, every
`send_*` call queues bytes that `data_to_send()` hands out (h11's shape). The asyncio driver
is `streams.session`.

Frame layout (all integers big-endian):

    control: |1| version(15) | type(16) |  flags(8) | length(24) | payload
    data:    |0| stream id(31)          |  flags(8) | length(24) | payload

Invariants:
- Header blocks are compressed and decompressed in frame order through one zlib stream per
  direction (each block ends with a sync flush); a frame whose block does not decompress is a
  session error, after which nothing more can be decoded.
- Stream ids: a client opens odd ids, a server even ones, strictly increasing; a SYN_STREAM
  breaking that is a session-level protocol error (GOAWAY), data for a stream that does not
  exist (or is closed for the peer) is answered with RST_STREAM and dropped.
- Windows are granted back (WINDOW_UPDATE) only for bytes the application reports as consumed
  (`acknowledge`), so a slow consumer slows a flow-controlling sender.
- spdystream (kubectl, the kubelet) never sends WINDOW_UPDATE and ignores windows both ways.
  A sender enforcing the 64 KiB initial window against it would stall every stream after
  64 KiB, so our send windows are enforced only once the peer has shown it does flow control
  (it sent WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE); and a peer overrunning the window
  we granted is tolerated, not reset. Against such a peer, back-pressure is TCP's: the driver
  stops reading while the application is behind.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

VERSION = 3
DEFAULT_WINDOW = 64 * 1024
MAX_WINDOW = 2**31 - 1
MAX_FRAME_PAYLOAD = 2**24 - 1
MAX_HEADER_BLOCK = 1024 * 1024  # decompressed; far above what any Kubernetes client sends
MAX_FRAME = 2 * 1024 * 1024  # accepted frame payload (clients write 32 KiB at a time)

_HEAD = struct.Struct(">II")


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class Setting(IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (spec section 2.6.10.1): length-prefixed
    header names and values, then a run of common status codes, reasons, dates and types."""
    words = (
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    )
    prefixed = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    return prefixed + tail.encode()


DICTIONARY = _dictionary()


class SpdyError(Exception):
    """The peer broke the protocol at session level: send GOAWAY with `status` and close."""

    def __init__(self, message: str, status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.status = status


# -- frames ---------------------------------------------------------------------------------

Headers = tuple[tuple[str, str], ...]  # (lower-case name, value) in block order


def header(headers: Headers, name: str) -> str | None:
    """The first value of `name` (case-insensitive) in a header block, or None."""
    wanted = name.lower()
    return next((v for k, v in headers if k == wanted), None)


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: Headers
    associated_to: int = 0
    priority: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Settings:
    values: tuple[tuple[int, int], ...]  # (setting id, value)
    clear: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int  # 0: the session's window (SPDY/3.1)
    delta: int


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool = False


Frame = (
    SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data
)


def encode_header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    """The uncompressed name/value block; repeated names are joined with NUL, as SPDY wants."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(value)
    out = [struct.pack(">I", len(merged))]
    for name, values in merged.items():
        raw_name, raw_value = name.encode(), "\x00".join(values).encode()
        out += [struct.pack(">I", len(raw_name)), raw_name]
        out += [struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(out)


def decode_header_block(block: bytes) -> Headers:
    def take(offset: int, n: int) -> tuple[bytes, int]:
        if offset + n > len(block):
            raise SpdyError("truncated header block")
        return block[offset : offset + n], offset + n

    raw, pos = take(0, 4)
    (count,) = struct.unpack(">I", raw)
    pairs: list[tuple[str, str]] = []
    for _ in range(count):
        raw, pos = take(pos, 4)
        name, pos = take(pos, struct.unpack(">I", raw)[0])
        raw, pos = take(pos, 4)
        value, pos = take(pos, struct.unpack(">I", raw)[0])
        if not name:
            raise SpdyError("a header name is empty")
        text = name.decode("latin-1")
        if text != text.lower():
            raise SpdyError(f"header name {text!r} is not lower case")
        pairs += [(text, v) for v in value.decode("utf-8", "replace").split("\x00")]
    if pos != len(block):
        raise SpdyError("header block has trailing bytes")
    return tuple(pairs)


class Encoder:
    """Serializes frames; owns the outgoing header compression context."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def _compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._zlib.compress(block) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control(kind: FrameType, flags: int, payload: bytes) -> bytes:
        if len(payload) > MAX_FRAME_PAYLOAD:
            raise ValueError(f"{kind.name} payload of {len(payload)} bytes is too large")
        return _HEAD.pack(0x80000000 | VERSION << 16 | kind, flags << 24 | len(payload)) + payload

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case Data(stream_id, data, fin):
                if len(data) > MAX_FRAME_PAYLOAD:
                    raise ValueError(f"a DATA frame holds at most {MAX_FRAME_PAYLOAD} bytes")
                flags = FLAG_FIN if fin else 0
                return _HEAD.pack(stream_id & 0x7FFFFFFF, flags << 24 | len(data)) + data
            case SynStream(stream_id, headers, associated_to, priority, fin, unidirectional):
                flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
                fixed = struct.pack(">IIBB", stream_id, associated_to, (priority & 7) << 5, 0)
                return self._control(FrameType.SYN_STREAM, flags, fixed + self._compress(headers))
            case SynReply(stream_id, headers, fin):
                payload = struct.pack(">I", stream_id) + self._compress(headers)
                return self._control(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, payload)
            case HeadersFrame(stream_id, headers, fin):
                payload = struct.pack(">I", stream_id) + self._compress(headers)
                return self._control(FrameType.HEADERS, FLAG_FIN if fin else 0, payload)
            case RstStream(stream_id, status):
                payload = struct.pack(">II", stream_id, status)
                return self._control(FrameType.RST_STREAM, 0, payload)
            case Settings(values, clear):
                body = b"".join(struct.pack(">II", key & 0xFFFFFF, value) for key, value in values)
                payload = struct.pack(">I", len(values)) + body
                return self._control(
                    FrameType.SETTINGS, FLAG_CLEAR_SETTINGS if clear else 0, payload
                )
            case Ping(ping_id):
                return self._control(FrameType.PING, 0, struct.pack(">I", ping_id))
            case GoAway(last_good, status):
                return self._control(FrameType.GOAWAY, 0, struct.pack(">II", last_good, status))
            case WindowUpdate(stream_id, delta):
                payload = struct.pack(">II", stream_id, delta)
                return self._control(FrameType.WINDOW_UPDATE, 0, payload)
        raise TypeError(f"not a SPDY frame: {frame!r}")


class Decoder:
    """Splits a byte stream into frames; owns the incoming header decompression context."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)
        self._max_frame = max_frame

    def _headers(self, block: bytes) -> Headers:
        try:
            raw = self._zlib.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise SpdyError(f"header block does not decompress: {exc}") from None
        if self._zlib.unconsumed_tail:
            raise SpdyError(f"a header block is larger than {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(raw)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buffer
        while len(buf) - pos >= 8:
            first, second = _HEAD.unpack_from(buf, pos)
            length = second & 0xFFFFFF
            if length > self._max_frame:
                raise SpdyError(f"a frame of {length} bytes exceeds {self._max_frame}")
            if len(buf) - pos - 8 < length:
                break
            payload = bytes(buf[pos + 8 : pos + 8 + length])
            pos += 8 + length
            flags = second >> 24
            if first & 0x80000000:
                version = (first >> 16) & 0x7FFF
                if version != VERSION:
                    raise SpdyError(f"SPDY version {version} is not supported (only {VERSION})")
                frame = self._control(first & 0xFFFF, flags, payload)
                if frame is not None:
                    frames.append(frame)
            else:
                frames.append(Data(first & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN)))
        del self._buffer[:pos]
        return frames

    def _control(self, kind: int, flags: int, payload: bytes) -> Frame | None:
        def need(n: int, exact: bool = True) -> None:
            if len(payload) < n or (exact and len(payload) != n):
                raise SpdyError(f"{FrameType(kind).name} frame has {len(payload)} bytes")

        fin = bool(flags & FLAG_FIN)
        if kind == FrameType.SYN_STREAM:
            need(10, exact=False)
            stream_id, associated, pri, _slot = struct.unpack_from(">IIBB", payload)
            return SynStream(
                stream_id & 0x7FFFFFFF,
                self._headers(payload[10:]),
                associated & 0x7FFFFFFF,
                pri >> 5,
                fin,
                bool(flags & FLAG_UNIDIRECTIONAL),
            )
        if kind in (FrameType.SYN_REPLY, FrameType.HEADERS):
            need(4, exact=False)
            (stream_id,) = struct.unpack_from(">I", payload)
            headers = self._headers(payload[4:])
            if kind == FrameType.SYN_REPLY:
                return SynReply(stream_id & 0x7FFFFFFF, headers, fin)
            return HeadersFrame(stream_id & 0x7FFFFFFF, headers, fin)
        if kind == FrameType.RST_STREAM:
            need(8)
            stream_id, status = struct.unpack(">II", payload)
            return RstStream(stream_id & 0x7FFFFFFF, status)
        if kind == FrameType.SETTINGS:
            need(4, exact=False)
            (count,) = struct.unpack_from(">I", payload)
            need(4 + 8 * count)
            values = tuple(
                (key & 0xFFFFFF, value)
                for key, value in struct.iter_unpack(">II", payload[4 : 4 + 8 * count])
            )
            return Settings(values, bool(flags & FLAG_CLEAR_SETTINGS))
        if kind == FrameType.PING:
            need(4)
            return Ping(struct.unpack(">I", payload)[0])
        if kind == FrameType.GOAWAY:
            need(8, exact=False)  # SPDY/3 added the status word; be lenient with 4-byte ones
            last_good, status = struct.unpack_from(">II", payload)
            return GoAway(last_good & 0x7FFFFFFF, status)
        if kind == FrameType.WINDOW_UPDATE:
            need(8)
            stream_id, delta = struct.unpack(">II", payload)
            return WindowUpdate(stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        return None  # unknown control frames are ignored (spec 2.2.1)


# -- connection state -------------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    send_window: int
    local_closed: bool = False  # we sent FIN (or RST)
    remote_closed: bool = False  # the peer sent FIN (or RST)
    consumed: int = 0  # bytes the application consumed since our last WINDOW_UPDATE


@dataclass(slots=True)
class Connection:
    """One SPDY/3.1 session as seen from one end (`client=False` for the API server)."""

    client: bool = False
    window: int = DEFAULT_WINDOW  # what we grant per stream (and the session)
    # large DATA frames: spdystream's cost is per frame (a queue, a channel hand-off), so
    # 256 KiB frames let kubectl move several times more bytes per CPU second than 32 KiB ones
    max_data_frame: int = 256 * 1024
    _encoder: Encoder = field(default_factory=Encoder)
    _decoder: Decoder = field(default_factory=Decoder)
    _out: list[bytes | memoryview] = field(default_factory=list)
    _streams: dict[int, _Stream] = field(default_factory=dict)
    _last_peer_stream: int = 0
    _next_stream: int = 0
    _next_ping: int = 0
    _peer_initial_window: int = DEFAULT_WINDOW
    _peer_flow_control: bool = False
    _session_send_window: int = DEFAULT_WINDOW
    _session_consumed: int = 0
    going_away: bool = False

    def __post_init__(self) -> None:
        self._next_stream = 1 if self.client else 2
        self._next_ping = 1 if self.client else 2
        if self.window != DEFAULT_WINDOW:
            self._emit(Settings(((Setting.INITIAL_WINDOW_SIZE, self.window),)))
            self._emit(WindowUpdate(0, self.window - DEFAULT_WINDOW))

    # -- output ------------------------------------------------------------------------------

    def _emit(self, frame: Frame) -> None:
        self._out.append(self._encoder.encode(frame))

    def data_to_send(self) -> bytes:
        """Everything queued since the last call (possibly b"")."""
        data = b"".join(self._out)
        self._out.clear()
        return data

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Frame]:
        """Frames the application must see; PINGs are answered and windows updated here.

        Raises `SpdyError` on a session-level violation (the caller then calls `go_away`
        with its status and closes)."""
        events: list[Frame] = []
        for frame in self._decoder.feed(data):
            if self._receive(frame):
                events.append(frame)
        return events

    def _peer_opens(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) != self.client

    def _receive(self, frame: Frame) -> bool:
        match frame:
            case SynStream(stream_id=sid):
                if sid == 0 or not self._peer_opens(sid) or sid <= self._last_peer_stream:
                    raise SpdyError(
                        f"stream id {sid} is not a new {'even' if self.client else 'odd'} id "
                        f"above {self._last_peer_stream}"
                    )
                self._last_peer_stream = sid
                if self.going_away:
                    self._emit(RstStream(sid, RstStatus.REFUSED_STREAM))
                    return False
                self._streams[sid] = _Stream(self._peer_initial_window, remote_closed=frame.fin)
                return True
            case Data(stream_id=sid, fin=fin):
                stream = self._streams.get(sid)
                if stream is None or stream.remote_closed:
                    status = (
                        RstStatus.INVALID_STREAM
                        if stream is None
                        else RstStatus.STREAM_ALREADY_CLOSED
                    )
                    self._emit(RstStream(sid, status))
                    return False
                if fin:
                    stream.remote_closed = True
                    self._forget_if_done(sid, stream)
                return True
            case SynReply(stream_id=sid, fin=fin) | HeadersFrame(stream_id=sid, fin=fin):
                stream = self._streams.get(sid)
                if stream is None:
                    return False
                if fin:
                    stream.remote_closed = True
                    self._forget_if_done(sid, stream)
                return True
            case RstStream(stream_id=sid):
                self._streams.pop(sid, None)
                return True
            case Settings(values=values):
                for key, value in values:
                    if key == Setting.INITIAL_WINDOW_SIZE:
                        self._peer_flow_control = True
                        delta = value - self._peer_initial_window
                        self._peer_initial_window = value
                        for stream in self._streams.values():
                            stream.send_window += delta
                return True
            case Ping(ping_id=pid):
                if pid % 2 != self._next_ping % 2:
                    self._emit(frame)  # the peer's ping: echo it
                    return False
                return True  # the answer to one of ours
            case GoAway():
                self.going_away = True
                return True
            case WindowUpdate(stream_id=sid, delta=delta):
                self._peer_flow_control = True
                if sid == 0:
                    self._session_send_window += delta
                elif (stream := self._streams.get(sid)) is not None:
                    stream.send_window += delta
                return True

    # -- application calls --------------------------------------------------------------------

    def open_stream(self, headers: Headers, fin: bool = False) -> int:
        sid = self._next_stream
        self._next_stream += 2
        self._streams[sid] = _Stream(self._peer_initial_window, local_closed=fin)
        self._emit(SynStream(sid, headers, fin=fin))
        return sid

    def reply(self, stream_id: int, headers: Headers = (), fin: bool = False) -> None:
        stream = self._streams.get(stream_id)
        self._emit(SynReply(stream_id, headers, fin))
        if stream is not None and fin:
            stream.local_closed = True
            self._forget_if_done(stream_id, stream)

    def send_window(self, stream_id: int) -> int:
        """How many bytes `send_data` would send now (a large number without flow control)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        if not self._peer_flow_control:
            return MAX_WINDOW
        return max(0, min(stream.send_window, self._session_send_window))

    def send_data(self, stream_id: int, data: bytes | memoryview, fin: bool = False) -> int:
        """Queue as much of `data` as the windows allow (all of it for a peer without flow
        control), in frames of at most `max_data_frame` bytes; FIN goes with the last byte.
        Returns the number of bytes queued; a closed or unknown stream queues nothing. The
        payload is not copied until `data_to_send` joins the output."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        view = memoryview(data)
        allowed = min(len(view), self.send_window(stream_id))
        everything = allowed == len(view)
        chunk = self.max_data_frame
        for start in range(0, allowed, chunk):
            piece = view[start : start + chunk]
            last = fin and everything and start + chunk >= allowed
            head = _HEAD.pack(stream_id & 0x7FFFFFFF, (FLAG_FIN if last else 0) << 24 | len(piece))
            self._out += (head, piece)
        if allowed == 0 and fin and not view:
            self._emit(Data(stream_id, b"", fin=True))
        if self._peer_flow_control:
            stream.send_window -= allowed
            self._session_send_window -= allowed
        if fin and everything:
            stream.local_closed = True
            self._forget_if_done(stream_id, stream)
        return allowed

    def acknowledge(self, stream_id: int, consumed: int) -> None:
        """The application consumed `consumed` received bytes of the stream: grant them back
        (WINDOW_UPDATE for the stream and the session) once half a window has been consumed,
        so updates come in batches rather than one per frame."""
        if consumed <= 0:
            return
        self._session_consumed += consumed
        if self._session_consumed >= self.window // 2:
            self._emit(WindowUpdate(0, self._session_consumed))
            self._session_consumed = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.consumed += consumed
        if stream.consumed >= self.window // 2:
            self._emit(WindowUpdate(stream_id, stream.consumed))
            stream.consumed = 0

    def reset(self, stream_id: int, status: RstStatus = RstStatus.CANCEL) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._emit(RstStream(stream_id, status))

    def ping(self) -> int:
        pid = self._next_ping
        self._next_ping += 2
        self._emit(Ping(pid))
        return pid

    def go_away(self, status: GoAwayStatus = GoAwayStatus.OK) -> None:
        if not self.going_away:
            self.going_away = True
            self._emit(GoAway(self._last_peer_stream, status))

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def _forget_if_done(self, stream_id: int, stream: _Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._streams.pop(stream_id, None)


def headers_from(mapping: Mapping[str, str]) -> Headers:
    return tuple((k.lower(), v) for k, v in mapping.items())
