"""Container log files in the CRI format, and rendering them the way `kubectl logs` asks.

Pure functions (no I/O) plus one incremental splitter the shim feeds. A log file is a
sequence of records, one per line:

    2026-11-29T12:30:00.123456789Z stdout F hello world
    <RFC3339, 9 fraction digits>   <stream> <tag> <content>

Tag `F` ends a line; `P` is a partial line (the content continues in the next record, no
newline in between) — written when a line exceeds `MAX_LINE` or the stream ends without a
newline. This is containerd's format (kubelet's `pkg/kubelet/kuberuntime/logs`), which gives
`--timestamps` and `--since` their per-line times for free.

Rotation: when a log reaches `MAX_LOG_BYTES` the shim renames it to `<log>.1` (replacing
the previous one) and starts a new file, at a record boundary; readers read `<log>.1` then
`<log>`.

Invariant: rendering every record of a file with no options reproduces the container's
stdout and stderr bytes exactly (interleaved in arrival order).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LINE = 16 * 1024
MAX_LOG_BYTES = 10 * 1024 * 1024  # kubelet's containerLogMaxSize default; one rotation kept


@dataclass(frozen=True, slots=True)
class LogRecord:
    timestamp: str  # RFC3339 with 9 fraction digits, UTC
    stream: str  # stdout | stderr
    partial: bool
    content: bytes  # without the trailing newline

    @property
    def epoch(self) -> float:
        return parse_timestamp(self.timestamp)


def rotated_path(log_path: str) -> str:
    return log_path + ".1"


def format_timestamp(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def parse_timestamp(text: str) -> float:
    base, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def format_record(timestamp: str, stream: str, partial: bool, content: bytes) -> bytes:
    return b"%s %s %s %s\n" % (
        timestamp.encode(),
        stream.encode(),
        b"P" if partial else b"F",
        content,
    )


class LineSplitter:
    """Turns a stream's chunks into records: whole lines as `F`, overlong ones as `P`."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.pending = b""

    def feed(self, chunk: bytes, now_ns: int) -> bytes:
        data = self.pending + chunk
        out: list[bytes] = []
        ts = format_timestamp(now_ns)
        while True:
            nl = data.find(b"\n")
            if nl < 0:
                break
            line, data = data[:nl], data[nl + 1 :]
            while len(line) > MAX_LINE:
                out.append(format_record(ts, self.stream, True, line[:MAX_LINE]))
                line = line[MAX_LINE:]
            out.append(format_record(ts, self.stream, False, line))
        while len(data) > MAX_LINE:
            out.append(format_record(ts, self.stream, True, data[:MAX_LINE]))
            data = data[MAX_LINE:]
        self.pending = data
        return b"".join(out)

    def flush(self, now_ns: int) -> bytes:
        """At end of stream: what is left is a partial line (no newline was written)."""
        if not self.pending:
            return b""
        out = format_record(format_timestamp(now_ns), self.stream, True, self.pending)
        self.pending = b""
        return out


def parse_records(data: bytes) -> tuple[list[LogRecord], int]:
    """Records in `data`, and how many bytes they used (a torn last line is left over)."""
    records: list[LogRecord] = []
    used = 0
    while True:
        nl = data.find(b"\n", used)
        if nl < 0:
            break
        line = data[used:nl]
        used = nl + 1
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            continue  # not ours: skip rather than fail the whole log
        content = parts[3] if len(parts) == 4 else b""
        records.append(LogRecord(parts[0].decode(), parts[1].decode(), parts[2] == b"P", content))
    return records, used


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line as the user sees it: the concatenation of its records."""

    timestamp: str
    content: bytes  # with the newline, unless the stream ended without one
    epoch: float


class LineJoiner:
    """Merges partial records into lines across reads (a follower feeds it as the file grows)."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, bytes]] = {}

    def feed(self, records: Iterable[LogRecord]) -> list[LogLine]:
        out: list[LogLine] = []
        for record in records:
            first_ts, acc = self.pending.pop(record.stream, (record.timestamp, b""))
            acc += record.content
            if record.partial:
                self.pending[record.stream] = (first_ts, acc)
            else:
                out.append(LogLine(first_ts, acc + b"\n", parse_timestamp(first_ts)))
        return out

    def finish(self) -> list[LogLine]:
        """The stream is over: partial lines are yielded as they are (no newline)."""
        out = [LogLine(ts, acc, parse_timestamp(ts)) for ts, acc in self.pending.values()]
        self.pending.clear()
        return out


def join_lines(records: Iterable[LogRecord]) -> list[LogLine]:
    joiner = LineJoiner()
    return joiner.feed(records) + joiner.finish()


@dataclass(frozen=True, slots=True)
class LogOptions:
    timestamps: bool = False
    tail_lines: int | None = None
    since_epoch: float | None = None
    limit_bytes: int | None = None


def select_lines(lines: Iterable[LogLine], options: LogOptions) -> list[LogLine]:
    """Apply --since then --tail (kubectl's order)."""
    chosen = [
        line for line in lines if options.since_epoch is None or line.epoch >= options.since_epoch
    ]
    if options.tail_lines is not None:
        chosen = chosen[-options.tail_lines :] if options.tail_lines > 0 else []
    return chosen


def render_line(line: LogLine, timestamps: bool) -> bytes:
    if timestamps:
        return line.timestamp.encode() + b" " + line.content
    return line.content
