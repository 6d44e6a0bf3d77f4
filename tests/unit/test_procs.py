"""`podnet.procs`: stopping recorded processes by pid, the stubborn ones too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

from podnet import procs

# ignores SIGTERM, as a shell running as a container's pid 1 does
STUBBORN = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def test_stop_all_stops_every_recorded_process_in_the_tree(tmp_path: Path) -> None:
    started = []
    for i, where in enumerate((tmp_path, tmp_path / "node1" / "pod", tmp_path / "node2")):
        proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started.append((proc, procs.record(where, f"p{i}", proc.pid)))
    polite = subprocess.Popen(["sleep", "60"])
    started.append((polite, procs.record(tmp_path / "node1", "polite", polite.pid)))
    try:
        assert procs.stop_all(tmp_path, grace_seconds=0.2) == 4
        for proc, rec in started:
            assert proc.wait(5) is not None and not procs.is_alive(rec)
        assert not list(tmp_path.rglob("*.pid"))
        assert procs.stop_all(tmp_path) == 0  # nothing recorded any more
    finally:
        for proc, _ in started:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def exited_unreaped(proc: subprocess.Popen[bytes]) -> None:
    """Until `proc` has exited, without collecting its status: it stays a zombie."""
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)


def test_an_own_child_that_exited_before_it_was_recorded_is_recorded_as_gone(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=PIPE)
    try:
        start = procs.process_start_time(proc.pid)
        assert start is not None
        assert proc.stdin is not None
        proc.stdin.close()  # it exits; nothing has waited for it yet
        exited_unreaped(proc)
        assert procs.process_start_time(proc.pid) is None  # a zombie is gone ...
        with pytest.raises(ProcessLookupError, match=r"\(p\) exited before it could be recorded"):
            procs.record(tmp_path, "p", proc.pid)  # ... for a pid that may be anyone's
        # ... but our unreaped child keeps its pid and start time: it is recorded, as gone
        rec = procs.record(tmp_path, "p", proc.pid, own_child=True)
        assert (rec.pid, rec.start_time) == (proc.pid, start)
        assert procs.recorded(tmp_path) == [rec]
        assert not procs.is_alive(rec)
        assert procs.stop_all(tmp_path, grace_seconds=0) == 0  # nothing is signalled
        assert proc.wait(5) == 0
        # once waited for, the pid is free for anyone: no longer ours to record
        with pytest.raises(ProcessLookupError, match="was waited for before it could be recorded"):
            procs.record(tmp_path, "p", proc.pid, own_child=True)
    finally:
        proc.kill()
        proc.wait()


def test_a_stopped_process_is_alive_and_stopped(tmp_path: Path) -> None:
    """`podnet fault stop node` SIGSTOPs the agent: `podnet status` said "alive" for a node
    that answered nothing; `is_stopped` tells the two apart."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        rec = procs.record(tmp_path, "p", proc.pid, own_child=True)
        assert procs.is_alive(rec) and not procs.is_stopped(rec)
        os.kill(proc.pid, signal.SIGSTOP)
        os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WNOWAIT)
        assert procs.is_alive(rec) and procs.is_stopped(rec)
        os.kill(proc.pid, signal.SIGCONT)
        os.waitid(os.P_PID, proc.pid, os.WCONTINUED | os.WNOWAIT)
        assert procs.is_alive(rec) and not procs.is_stopped(rec)
    finally:
        proc.kill()
        proc.wait()
