"""When a lab process dies during `podnet up`, the error says how it ended and shows the log
lines that explain it (regression: the message ended with an empty log tail)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from podnet import procs
from podnet.lab.lab import exited_error, explain_log, start_recorded


def wait_gone(rec: procs.Recorded) -> None:
    deadline = time.monotonic() + 10
    while procs.is_alive(rec) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not procs.is_alive(rec)


FAILING_SERVER = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')\n"
    "for i in range(40): logging.info('busy %d', i)\n"
    "try:\n"
    "    raise OSError(98, 'address already in use')\n"
    "except OSError:\n"
    "    logging.exception('the store could not be opened')\n"
    "for i in range(30): logging.info('shutting down %d', i)\n"
    "sys.exit(1)\n"
)


def assert_failed_start_explained(rec: procs.Recorded, log: Path) -> None:
    message = str(exited_error("the API server", rec, log))
    assert message.startswith(f"the API server exited (exit code 1); see {log}:")
    # the error and its traceback are shown even though 30 lines were logged after them
    assert "ERROR the store could not be opened" in message
    assert "OSError: [Errno 98] address already in use" in message
    assert "busy 39" not in message


def test_a_failed_start_shows_the_exit_code_and_the_traceback(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    rec = start_recorded([sys.executable, "-c", FAILING_SERVER], log, tmp_path / "pids", "server")
    wait_gone(rec)
    assert_failed_start_explained(rec, log)


def test_a_start_that_ends_before_it_is_recorded_is_still_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a busy machine does at random (the process runs to its end before `up` reads
    its start time; regression: ProcessLookupError instead of the exit report), every time:
    recording waits until the process has ended."""
    real_record = procs.record

    def record_once_ended(directory: Path, label: str, pid: int, **kw: bool) -> procs.Recorded:
        deadline = time.monotonic() + 10
        while procs.process_start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procs.process_start_time(pid) is None, "it did not end"
        return real_record(directory, label, pid, **kw)

    monkeypatch.setattr(procs, "record", record_once_ended)
    log = tmp_path / "server.log"
    rec = start_recorded([sys.executable, "-c", FAILING_SERVER], log, tmp_path / "pids", "server")
    assert procs.recorded(tmp_path / "pids") == [rec]
    assert not procs.is_alive(rec)
    assert_failed_start_explained(rec, log)


def test_a_killed_process_with_an_empty_log_says_so(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    rec = start_recorded(["sleep", "30"], log, tmp_path / "pids", "agent-n1")
    procs.stop(rec, grace_seconds=0)  # SIGTERM: sleep dies of it
    wait_gone(rec)
    message = str(exited_error("the agent of n1", rec, log))
    assert f"(killed by {signal.SIGTERM.name})" in message
    assert message.endswith("(the log is empty: the process ended before it wrote anything)")


def test_explain_log_without_errors_is_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\n\n")
    assert explain_log(log).splitlines() == [f"line {i}" for i in range(85, 100)]
    assert explain_log(tmp_path / "missing.log") == "(no log written)"
