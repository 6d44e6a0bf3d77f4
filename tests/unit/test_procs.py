"""`podnet.procs`: stopping recorded processes by pid, the stubborn ones too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
