"""Streamed rule-tool runs end by their deadline: `IptablesRunner.scan` within `SAVE_TIMEOUT`
for the whole dump, a chunked restore within `restore_timeout` of what it was sent.

The tools are small shell scripts run as real child processes (`exec` keeps the pid the
runner watches); deadlines are a fraction of a second, so a hung tool costs the test that.
A tool that exits just as its deadline passes is put at the boundary by events, not by timing:
the run waits, after the tool's exit, until the watchdog has acted (`at_the_boundary`).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from podnet.kernel import rules
from podnet.kernel.rules import IptablesRunner, RuleLoadError

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


class Boundary:
    """The runs' watchdogs, observed: `acted` is set when one has seen its deadline pass (and
    sent its kill); `procs` are the tools they watched."""

    def __init__(self) -> None:
        self.acted = threading.Event()
        self.procs: list[subprocess.Popen[object]] = []

    def wait_for_exit(self) -> None:
        """Until the watched tool has exited, without reaping it (it stays a zombie)."""
        os.waitid(os.P_PID, self.procs[-1].pid, os.WEXITED | os.WNOWAIT)


@pytest.fixture
def at_the_boundary(monkeypatch: pytest.MonkeyPatch) -> Boundary:
    """Runs whose `with _Watchdog` block cannot end before the watchdog has seen the deadline
    pass: the window between the tool's exit and the block's end, held open."""
    boundary = Boundary()

    class Observed(rules._Watchdog):
        def __init__(self, proc: subprocess.Popen[object], deadline: float) -> None:
            boundary.procs.append(proc)
            super().__init__(proc, deadline)

        def _watch(self) -> None:
            super()._watch()
            boundary.acted.set()

        def __exit__(self, *exc_info: object) -> None:
            assert boundary.acted.wait(10), "the watchdog never saw its deadline"
            super().__exit__(*exc_info)

    monkeypatch.setattr(rules, "_Watchdog", Observed)
    return boundary


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


def test_a_restore_that_committed_as_its_deadline_passed_is_not_reported_cut_off(
    tool: Callable[[str], tuple[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
    at_the_boundary: Boundary,
    tmp_path: Path,
) -> None:
    """The tool read its whole input and exited 0 (reaped by the runner); the deadline passed
    before the run's `with` block ended. Before, the watchdog's late kill was a TimeoutExpired."""
    monkeypatch.setattr(rules, "RESTORE_TIMEOUT", 0.3)
    monkeypatch.setattr(rules, "RESTORE_SECONDS_PER_MB", 0.0)
    committed = tmp_path / "committed"
    runner = IptablesRunner()
    runner.restore_tool, _ = tool(f"cat > {committed}")
    payload = "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
    runner.restore([payload])
    assert at_the_boundary.acted.is_set()
    assert at_the_boundary.procs[-1].returncode == 0
    assert committed.read_text() == payload


def test_a_restore_that_failed_as_its_deadline_passed_reports_its_own_error(
    tool: Callable[[str], tuple[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
    at_the_boundary: Boundary,
) -> None:
    monkeypatch.setattr(rules, "RESTORE_TIMEOUT", 0.3)
    monkeypatch.setattr(rules, "RESTORE_SECONDS_PER_MB", 0.0)
    runner = IptablesRunner()
    runner.restore_tool, _ = tool("cat > /dev/null\necho 'Error occurred at line: 2' >&2\nexit 1")
    with pytest.raises(RuleLoadError) as info:
        runner.restore("*nat\n-X NOPE\nCOMMIT\n")
    assert at_the_boundary.acted.is_set()
    assert (info.value.returncode, info.value.line) == (1, 2)


def test_a_dump_that_ended_as_its_deadline_passed_is_the_answer(
    saving: Callable[[str], tuple[IptablesRunner, Path]], at_the_boundary: Boundary
) -> None:
    """The tool wrote its whole dump and exited 0; the watchdog's kill reached it as a zombie,
    not yet reaped. Before, that kill was a TimeoutExpired and the whole dump was thrown away."""
    runner, _ = saving(f"printf '{DUMP_HEAD}COMMIT\\n'")

    def read_to_the_boundary(lines: Iterable[str]) -> list[str]:
        kept = _whole(lines)
        at_the_boundary.wait_for_exit()
        assert at_the_boundary.acted.wait(10)
        return kept

    dump = runner.scan(read_to_the_boundary)
    assert dump == ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", "COMMIT"]
    assert at_the_boundary.procs[-1].returncode == 0


def test_a_tool_the_watchdog_kills_at_the_boundary_timed_out(
    saving: Callable[[str], tuple[IptablesRunner, Path]], at_the_boundary: Boundary
) -> None:
    """The other side of the boundary: alive when the deadline passes, killed, a timeout."""
    runner, pidfile = saving(f"printf '{DUMP_HEAD}COMMIT\\n'\nexec 1>&-\nexec sleep 60")
    with pytest.raises(subprocess.TimeoutExpired):
        runner.scan(_whole)
    assert at_the_boundary.procs[-1].returncode == -9
    assert _reaped(pidfile)
