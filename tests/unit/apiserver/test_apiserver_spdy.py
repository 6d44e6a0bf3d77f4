"""SPDY/3.1 framing and connection state (`apiserver.streams.spdy`), without sockets.

The captures in `spdy_captures/` are real sessions between kubectl and podnet's API server
(see `spdy_captures/record.py`): what the client sent was produced by client-go and moby's
spdystream (Go's zlib, its own stream ids and flags), so decoding it checks our framing and
header decompression against theirs; what the server sent was accepted by that kubectl.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from podnet.apiserver.streams import spdy

CAPTURES = Path(__file__).parent / "spdy_captures"


def capture(name: str, side: str) -> bytes:
    return (CAPTURES / f"{name}.{side}.bin").read_bytes()


def websocket_payloads(data: bytes) -> bytes:
    """The concatenated payloads of a run of (client-masked) WebSocket binary frames."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        opcode, second = data[pos] & 0x0F, data[pos + 1]
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack_from(">H", data, pos), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack_from(">Q", data, pos), pos + 8
        mask = b""
        if second & 0x80:
            mask, pos = data[pos : pos + 4], pos + 4
        payload = data[pos : pos + length]
        pos += length
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if opcode == 2:
            out += payload
    return bytes(out)


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    # client-go's first header block names its zlib dictionary by adler32: it must be ours
    first_block = capture("exec-1.29", "client")[18:24]
    assert first_block == b"\x78\xf9" + struct.pack(">I", zlib.adler32(spdy.DICTIONARY))


def test_kubectl_exec_session_decodes() -> None:
    frames = spdy.Decoder().feed(capture("exec-1.29", "client"))
    opened = [(f.stream_id, dict(f.headers)) for f in frames if isinstance(f, spdy.SynStream)]
    assert opened == [
        (1, {"streamtype": "error"}),
        (3, {"streamtype": "stdin"}),
        (5, {"streamtype": "stdout"}),
        (7, {"streamtype": "stderr"}),
    ]
    assert spdy.Data(3, b"recorded input\n") in frames
    assert spdy.Data(3, b"", fin=True) in frames  # stdin's end is a half-close
    assert frames[-1] == spdy.GoAway(0, spdy.GoAwayStatus.OK)


def test_server_side_of_the_exec_capture() -> None:
    frames = spdy.Decoder().feed(capture("exec-1.29", "server"))
    assert [f for f in frames if isinstance(f, spdy.SynReply)] == [
        spdy.SynReply(sid, ()) for sid in (1, 3, 5, 7)
    ]
    status = [f.data for f in frames if isinstance(f, spdy.Data) and f.stream_id == 1 and f.data]
    assert json.loads(status[0]) == {"metadata": {}, "status": "Success"}
    finished = [f.stream_id for f in frames if isinstance(f, spdy.Data) and f.fin]
    assert sorted(finished) == [1, 5, 7]


@pytest.mark.parametrize(
    ("name", "unwrap"),
    [("portforward-1.30", False), ("portforward-1.32-websocket", True)],
)
def test_kubectl_port_forward_sessions_decode(name: str, unwrap: bool) -> None:
    data = capture(name, "client")
    frames = spdy.Decoder().feed(websocket_payloads(data) if unwrap else data)
    syns = [f for f in frames if isinstance(f, spdy.SynStream)]
    assert [dict(f.headers) for f in syns] == [
        {"streamtype": "error", "port": "80", "requestid": "0"},
        {"streamtype": "data", "port": "80", "requestid": "0"},
    ]
    error, data_stream = syns[0].stream_id, syns[1].stream_id
    assert frames[frames.index(syns[0]) + 1] == spdy.Data(error, b"", fin=True)
    request = b"".join(
        f.data for f in frames if isinstance(f, spdy.Data) and f.stream_id == data_stream
    )
    assert request.startswith(b"GET / HTTP/1.1\r\n")


def test_a_server_connection_answers_the_recorded_client() -> None:
    """Feeding kubectl's bytes to a server Connection yields what kubectl accepted."""
    conn = spdy.Connection(client=False)
    events = conn.receive_data(capture("portforward-1.30", "client"))
    for event in events:
        if isinstance(event, spdy.SynStream):
            conn.reply(event.stream_id)
    replies = spdy.Decoder().feed(conn.data_to_send())
    recorded = [f for f in spdy.Decoder().feed(capture("portforward-1.30", "server"))]
    assert replies == [f for f in recorded if isinstance(f, spdy.SynReply)]


def test_frames_round_trip_through_encoder_and_decoder() -> None:
    frames: list[spdy.Frame] = [
        spdy.SynStream(1, (("streamtype", "data"), ("port", "80")), priority=3, fin=False),
        spdy.SynReply(1, (("x-multi", "a"), ("x-multi", "b"))),
        spdy.HeadersFrame(1, (("k", "v"),), fin=True),
        spdy.Data(1, b"x" * 70000, fin=True),
        spdy.RstStream(3, spdy.RstStatus.CANCEL),
        spdy.Settings(((spdy.Setting.INITIAL_WINDOW_SIZE, 1 << 20),)),
        spdy.Ping(7),
        spdy.GoAway(5, spdy.GoAwayStatus.PROTOCOL_ERROR),
        spdy.WindowUpdate(0, 4096),
    ]
    encoder, decoder = spdy.Encoder(), spdy.Decoder()
    wire = b"".join(encoder.encode(f) for f in frames)
    # fed a byte at a time: frames come out only once complete
    decoded: list[spdy.Frame] = []
    for i in range(len(wire)):
        decoded += decoder.feed(wire[i : i + 1])
    assert decoded == frames


def test_protocol_errors_are_session_errors() -> None:
    encoder = spdy.Encoder()
    conn = spdy.Connection(client=False)
    conn.receive_data(encoder.encode(spdy.SynStream(3, ())))
    with pytest.raises(spdy.SpdyError, match="not a new odd id"):
        conn.receive_data(encoder.encode(spdy.SynStream(1, ())))
    with pytest.raises(spdy.SpdyError, match="version 2"):
        spdy.Decoder().feed(b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01")
    with pytest.raises(spdy.SpdyError, match="does not decompress"):
        spdy.Decoder().feed(b"\x80\x03\x00\x02\x00\x00\x00\x08\x00\x00\x00\x01garbage!")
    with pytest.raises(spdy.SpdyError, match="exceeds"):
        spdy.Decoder(max_frame=1024).feed(b"\x00\x00\x00\x01\x00\x01\x00\x00")


def test_data_for_unknown_streams_is_reset_and_pings_are_echoed() -> None:
    encoder = spdy.Encoder()
    conn = spdy.Connection(client=False)
    events = conn.receive_data(
        encoder.encode(spdy.Data(9, b"stray")) + encoder.encode(spdy.Ping(1))
    )
    assert events == []
    assert spdy.Decoder().feed(conn.data_to_send()) == [
        spdy.RstStream(9, spdy.RstStatus.INVALID_STREAM),
        spdy.Ping(1),
    ]
    conn.ping()  # ours are even; the answer is an event, not echoed again
    assert conn.receive_data(encoder.encode(spdy.Ping(2))) == [spdy.Ping(2)]


def test_windows_are_granted_back_as_the_application_consumes() -> None:
    encoder = spdy.Encoder()
    conn = spdy.Connection(client=False)
    conn.receive_data(encoder.encode(spdy.SynStream(1, ())))
    conn.reply(1)
    conn.data_to_send()
    conn.receive_data(encoder.encode(spdy.Data(1, b"a" * 40000)))
    conn.acknowledge(1, 20000)
    assert conn.data_to_send() == b""  # less than half a window consumed
    conn.acknowledge(1, 20000)
    assert spdy.Decoder().feed(conn.data_to_send()) == [
        spdy.WindowUpdate(0, 40000),
        spdy.WindowUpdate(1, 40000),
    ]


def test_send_windows_apply_only_to_peers_that_do_flow_control() -> None:
    encoder = spdy.Encoder()
    conn = spdy.Connection(client=False)
    conn.receive_data(encoder.encode(spdy.SynStream(1, ())))
    # spdystream never sends WINDOW_UPDATE: everything goes out at once, in frames of at most
    # max_data_frame bytes
    conn.max_data_frame = 32 * 1024
    assert conn.send_data(1, b"z" * 100_000) == 100_000
    sent = spdy.Decoder().feed(conn.data_to_send())
    assert [len(f.data) for f in sent if isinstance(f, spdy.Data)] == [32768, 32768, 32768, 1696]
    conn.receive_data(encoder.encode(spdy.SynStream(3, ())))
    conn.receive_data(encoder.encode(spdy.WindowUpdate(3, 10_000)))  # a flow-controlling peer
    assert conn.send_window(3) == spdy.DEFAULT_WINDOW  # the session window is the smaller
    assert conn.send_data(3, b"y" * 70_000, fin=True) == spdy.DEFAULT_WINDOW
    assert conn.is_open(3)  # FIN waits for the rest
    rest = 70_000 - spdy.DEFAULT_WINDOW
    assert conn.send_data(3, b"y" * rest, fin=True) == 0
    conn.receive_data(encoder.encode(spdy.WindowUpdate(0, 10_000)))
    assert conn.send_data(3, b"y" * rest, fin=True) == rest
    assert conn.send_window(3) == 0  # closed for sending
    frames = spdy.Decoder().feed(conn.data_to_send())
    assert frames[-1] == spdy.Data(3, b"y" * rest, fin=True)


def test_stream_state_ends_when_both_sides_finished() -> None:
    encoder = spdy.Encoder()
    conn = spdy.Connection(client=False)
    conn.receive_data(encoder.encode(spdy.SynStream(1, (), fin=True)))
    assert conn.is_open(1)
    conn.reply(1, fin=True)
    assert not conn.is_open(1)
    conn.receive_data(encoder.encode(spdy.SynStream(3, ())))
    conn.reset(3)
    assert not conn.is_open(3)
    conn.go_away()
    conn.receive_data(encoder.encode(spdy.SynStream(5, ())))
    assert spdy.Decoder().feed(conn.data_to_send())[-1] == spdy.RstStream(
        5, spdy.RstStatus.REFUSED_STREAM
    )
