"""Streamed rule-tool runs end by their deadline: `IptablesRunner.scan` within `SAVE_TIMEOUT`
for the whole dump, a chunked restore within `restore_timeout` of what it was sent.

The tools are small shell scripts run as real child processes (`exec` keeps the pid the
runner watches); deadlines are a fraction of a second, so a hung tool costs the test that.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from podnet.kernel import rules
from podnet.kernel.rules import IptablesRunner

DUMP_HEAD = "*nat\\n:KUBE-SERVICES - [0:0]\\n:KUBE-NODEPORTS - [0:0]\\n"
HANGS_MID_DUMP = f"printf '{DUMP_HEAD}'\nexec sleep 60"


@pytest.fixture
def tool(tmp_path: Path) -> Callable[[str], tuple[str, Path]]:
    """A script running `body` after writing its pid; (its path, the pid file)."""

    def make(body: str) -> tuple[str, Path]:
        script, pidfile = tmp_path / "tool", tmp_path / "tool.pid"
        script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\n{body}\n")
        script.chmod(0o755)
        return str(script), pidfile

    return make


@pytest.fixture
def saving(
    tool: Callable[[str], tuple[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], tuple[IptablesRunner, Path]]:
    """A runner whose save tool runs `body`, within a `SAVE_TIMEOUT` of 0.3 s; its pid file."""
    monkeypatch.setattr(rules, "SAVE_TIMEOUT", 0.3)

    def make(body: str) -> tuple[IptablesRunner, Path]:
        runner = IptablesRunner()
        runner.save_tool, pidfile = tool(body)
        return runner, pidfile

    return make


def _reaped(pidfile: Path) -> bool:
    if not pidfile.exists():
        return True  # killed before its first line (a starved machine): reaped by the runner
    try:
        os.kill(int(pidfile.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


def _whole(lines: Iterable[str]) -> list[str]:
    kept = list(lines)
    if kept[-1:] != ["COMMIT"]:
        raise ValueError(f"dump ends without COMMIT after {len(kept)} lines")
    return kept


def test_scan_kills_a_tool_that_hangs_mid_dump_and_says_it_timed_out(
    saving: Callable[[str], tuple[IptablesRunner, Path]],
) -> None:
    runner, pidfile = saving(HANGS_MID_DUMP)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired, match=r"timed out after 0\.3 seconds") as info:
        runner.scan(list, "nat")
    assert time.monotonic() - started < 10  # not the tool's 60 s
    assert info.value.cmd == [runner.save_tool, "-t", "nat"]
    assert _reaped(pidfile)


def test_scan_reports_the_timeout_not_the_reader_choking_on_the_cut_off_dump(
    saving: Callable[[str], tuple[IptablesRunner, Path]],
) -> None:
    runner, pidfile = saving(HANGS_MID_DUMP)
    with pytest.raises(subprocess.TimeoutExpired) as info:
        runner.scan(_whole)
    assert isinstance(info.value.__cause__, ValueError)
    assert _reaped(pidfile)


def test_scan_kills_a_tool_that_wrote_its_dump_but_never_exits(
    saving: Callable[[str], tuple[IptablesRunner, Path]],
) -> None:
    runner, pidfile = saving(f"printf '{DUMP_HEAD}COMMIT\\n'\nexec 1>&-\nexec sleep 60")
    with pytest.raises(subprocess.TimeoutExpired):
        runner.scan(_whole)
    assert _reaped(pidfile)


def test_scan_of_a_tool_that_finishes_in_time_gives_the_answer(
    tool: Callable[[str], tuple[str, Path]],
) -> None:
    runner = IptablesRunner()
    runner.save_tool, _ = tool(f"printf '{DUMP_HEAD}COMMIT\\n'")
    dump = runner.scan(_whole)
    assert dump == ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", "COMMIT"]


def test_restore_kills_a_tool_that_stops_reading_its_input(
    tool: Callable[[str], tuple[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules, "RESTORE_TIMEOUT", 0.3)
    monkeypatch.setattr(rules, "RESTORE_SECONDS_PER_MB", 0.0)
    runner = IptablesRunner()
    runner.restore_tool, pidfile = tool("exec sleep 60")
    chunks = [f"-A KUBE-SERVICES -m comment --comment {n:0>200}\n" for n in range(2_000)]
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):  # 400 kB: the pipe fills, the write blocks
        runner.restore(chunks)
    assert time.monotonic() - started < 10
    assert _reaped(pidfile)


def test_a_restore_deadline_grows_as_its_chunks_are_sent(
    tool: Callable[[str], tuple[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules, "RESTORE_TIMEOUT", 0.5)
    monkeypatch.setattr(rules, "RESTORE_SECONDS_PER_MB", 5_000.0)  # 5 s per kB sent
    runner = IptablesRunner()
    runner.restore_tool, _ = tool("exec cat > /dev/null")

    def slowly() -> Iterator[str]:
        for n in range(4):
            yield f"# chunk {n} {'.' * 1000}\n"
            time.sleep(0.2)  # past the first 0.5 s, within what the chunks sent allow

    runner.restore(slowly())
