"""The log reader behind `kubectl logs`: options, partial lines and rotation, on plain files."""

from __future__ import annotations

from pathlib import Path

from podnet.agent.kubelet.logformat import LineSplitter, LogLine, LogOptions
from podnet.agent.kubelet.server import LogStreamer

T0 = 1_764_419_400_000_000_000


def records(*lines: str, start: int = 0) -> bytes:
    out = LineSplitter("stdout")
    return b"".join(out.feed(f"{line}\n".encode(), T0 + i) for i, line in enumerate(lines, start))


def text(lines: list[LogLine]) -> str:
    return b"".join(line.content for line in lines).decode()


def test_first_read_takes_the_rotated_file_then_the_current_one(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    (tmp_path / "0.log.1").write_bytes(records("a", "b"))
    log.write_bytes(records("c", "d", start=2))
    streamer = LogStreamer(log, LogOptions(tail_lines=3))
    try:
        assert text(streamer.initial(complete_only=False)) == "b\nc\nd\n"
    finally:
        streamer.close()


def test_a_follower_crosses_a_rotation_without_losing_lines(tmp_path: Path) -> None:
    log = tmp_path / "3.log"
    log.write_bytes(records("one"))
    streamer = LogStreamer(log, LogOptions())
    try:
        assert text(streamer.initial(complete_only=True)) == "one\n"
        with log.open("ab") as fh:
            fh.write(records("two", start=1))
        log.replace(tmp_path / "3.log.1")  # what the shim does at the size limit
        log.write_bytes(records("three", start=2))
        assert text(streamer.more()) == "two\nthree\n"
        with log.open("ab") as fh:
            fh.write(b"2025-11-29T12:30:09.000000000Z stdout P tail-without-newline\n")
        assert streamer.more() == []  # a partial line waits while following
        assert text(streamer.finish()) == "tail-without-newline"
    finally:
        streamer.close()
