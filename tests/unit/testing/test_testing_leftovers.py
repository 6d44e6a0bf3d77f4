"""The suite's check for processes tests leave running (podnet.testing.leftovers): found by the
session's marker however they were started, attributed to their test, ended by pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from podnet import procs
from podnet.testing import leftovers

# daemonizes as the launcher zygote and the relay do: the process found is nobody's child
DAEMON = (
    "import os, sys, time\n"
    "if os.fork() > 0: os._exit(0)\n"
    "os.setsid(); print(os.getpid(), flush=True); os.close(1); time.sleep(60)\n"
)


def test_a_daemonized_process_is_found_with_its_test_and_stopped() -> None:
    env = dict(os.environ)
    marker = leftovers.SessionMarker(env)
    marker.current_test("tests/x.py::test_leaky")
    out = subprocess.run(
        [sys.executable, "-c", DAEMON], env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    pid = int(out.stdout)
    other = leftovers.SessionMarker(dict(os.environ))  # another session: never matches ours
    try:
        found = marker.leftovers()
        assert [(p.pid, p.test_id) for p in found] == [(pid, "tests/x.py::test_leaky")]
        assert "time.sleep(60)" in found[0].describe()
        assert pid not in {p.pid for p in other.leftovers()}
    finally:
        leftovers.stop(marker.leftovers())
    assert marker.wait_for_leftovers(5.0) == []


def test_nothing_is_found_when_nothing_was_left() -> None:
    marker = leftovers.SessionMarker(dict(os.environ))
    subprocess.run([sys.executable, "-c", "pass"], env=dict(marker.environ), check=True)
    assert marker.leftovers() == []


def test_a_lab_recorded_by_a_process_of_another_run_is_someone_elses(tmp_path: Path) -> None:
    """A benchmark's or an engineer's lab up while the suite runs: its links and namespaces
    are not a leftover of this session. Known by its recorded processes: alive, and without
    this session's token; a lab whose recorded processes carry the token, or have exited, is
    this session's own."""
    ours = leftovers.SessionMarker(dict(os.environ))
    theirs = dict(os.environ)
    theirs.pop(leftovers.SESSION_VAR, None)
    assert not ours.others_labs_running(tmp_path)  # no lab at all
    ran = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
        for env in (dict(ours.environ), theirs)
    ]
    try:
        procs.record(tmp_path / "mine" / "pids", "server", ran[0].pid)
        assert not ours.others_labs_running(tmp_path)
        procs.record(tmp_path / "bench" / "pids", "server", ran[1].pid)
        assert ours.others_labs_running(tmp_path)
        ran[1].kill()
        ran[1].wait()
        assert not ours.others_labs_running(tmp_path)  # its record outlived it: not running
    finally:
        for proc in ran:
            proc.kill()
            proc.wait()
