"""The attach/exec socket framing: stdin of any size reaches the shim as frames it accepts."""

from __future__ import annotations

import pytest

from podnet.agent.kubelet import attachsocket


def test_large_stdin_is_split_into_frames_the_reader_accepts() -> None:
    payload = bytes(range(256)) * (3 * attachsocket.MAX_FRAME // 256 + 7)
    reader = attachsocket.FrameReader()
    encoded = attachsocket.frame(attachsocket.STDIN, payload)
    frames = [
        f
        for start in range(0, len(encoded), 65536)
        for f in reader.feed(encoded[start : start + 65536])
    ]
    assert [kind for kind, _ in frames] == [attachsocket.STDIN] * 4
    assert all(len(data) <= attachsocket.MAX_FRAME for _, data in frames)
    assert b"".join(data for _, data in frames) == payload


def test_small_frames_and_an_oversized_header() -> None:
    reader = attachsocket.FrameReader()
    assert reader.feed(attachsocket.frame(attachsocket.CLOSE_STDIN)) == [
        (attachsocket.CLOSE_STDIN, b"")
    ]
    assert reader.feed(attachsocket.resize_frame(80, 24)[:3]) == []
    with pytest.raises(ValueError, match="too large"):
        attachsocket.FrameReader().feed(attachsocket.HEADER.pack(0, attachsocket.MAX_FRAME + 1))
