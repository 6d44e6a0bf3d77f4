"""CRI log records: splitting output into records, joining them back, kubectl's options."""

from __future__ import annotations

from podnet.agent.kubelet import logformat as lf

T0 = 1_764_419_400_123_456_789  # 2025-11-29T12:30:00.123456789Z


def test_timestamps_have_nine_fraction_digits_and_parse_back() -> None:
    assert lf.format_timestamp(T0) == "2025-11-29T12:30:00.123456789Z"
    assert abs(lf.parse_timestamp("2025-11-29T12:30:00.123456789Z") - T0 / 1e9) < 1e-6


def test_splitter_writes_full_and_partial_records() -> None:
    out = lf.LineSplitter("stdout")
    data = out.feed(b"one\ntw", T0) + out.feed(b"o\nthree", T0 + 1) + out.flush(T0 + 2)
    assert data.decode() == (
        "2025-11-29T12:30:00.123456789Z stdout F one\n"
        "2025-11-29T12:30:00.123456790Z stdout F two\n"
        "2025-11-29T12:30:00.123456791Z stdout P three\n"
    )


def test_overlong_lines_are_split_and_joined_back() -> None:
    out = lf.LineSplitter("stderr")
    line = b"x" * (lf.MAX_LINE * 2 + 5)
    data = out.feed(line + b"\n", T0)
    records, used = lf.parse_records(data)
    assert used == len(data)
    assert [r.partial for r in records] == [True, True, False]
    assert lf.join_lines(records) == [
        lf.LogLine("2025-11-29T12:30:00.123456789Z", line + b"\n", records[0].epoch)
    ]


def test_rendering_reproduces_the_output_and_interleaves_streams() -> None:
    out, err = lf.LineSplitter("stdout"), lf.LineSplitter("stderr")
    data = (
        out.feed(b"a\nb", T0)
        + err.feed(b"oops\n", T0 + 5)
        + out.feed(b"c\n", T0 + 9)
        + out.feed(b"tail", T0 + 10)
        + out.flush(T0 + 11)
    )
    records, _ = lf.parse_records(data + b"2025-11-29T12:30:01.0Z stdout F torn")
    lines = lf.join_lines(records)
    assert b"".join(line.content for line in lines) == b"a\noops\nbc\ntail"
    assert lf.render_line(lines[1], timestamps=True) == b"2025-11-29T12:30:00.123456794Z oops\n"


def test_tail_and_since_select_lines() -> None:
    lines = [lf.LogLine("t", f"{i}\n".encode(), float(i)) for i in range(10)]
    assert [x.content for x in lf.select_lines(lines, lf.LogOptions(tail_lines=2))] == [
        b"8\n",
        b"9\n",
    ]
    assert lf.select_lines(lines, lf.LogOptions(tail_lines=0)) == []
    since = lf.select_lines(lines, lf.LogOptions(since_epoch=7.0, tail_lines=5))
    assert [x.content for x in since] == [b"7\n", b"8\n", b"9\n"]


def test_joiner_keeps_partial_lines_across_reads() -> None:
    joiner = lf.LineJoiner()
    first, _ = lf.parse_records(b"2025-11-29T12:30:00.000000000Z stdout P hel\n")
    assert joiner.feed(first) == []
    second, _ = lf.parse_records(b"2025-11-29T12:30:00.500000000Z stdout F lo\n")
    [line] = joiner.feed(second)
    assert (line.timestamp, line.content) == ("2025-11-29T12:30:00.000000000Z", b"hello\n")
    assert joiner.finish() == []
