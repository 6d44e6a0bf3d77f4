"""`podnet up --no-processes` / `status` / `down` through the real command line."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from podnet.kernel import netns
from podnet.lab import down_lab

pytestmark = pytest.mark.root


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_topology_only_lab_round_trip(tmp_path: Path) -> None:
    name = f"t1c{secrets.token_hex(2)}"
    root = ["--name", name, "--state-root", str(tmp_path)]
    try:
        up = podnet("up", *root, "--nodes", "2", "--no-processes", "--timings")
        assert up.returncode == 0, up.stderr
        assert f"lab {name} is up: 2 nodes on 172.31." in up.stderr
        # --timings: each step with its time since the start and its own, then the total
        assert re.search(r"\+\s*\d+\.\d\ds \(\s*\d+\.\d\ds\) underlay", up.stderr), up.stderr
        assert re.search(r"up in \d+\.\d\ds", up.stderr), up.stderr
        assert netns.list_names(f"podnet-{name}-") == [
            f"podnet-{name}-node1",
            f"podnet-{name}-node2",
        ]
        status = podnet("status", *root)
        assert status.returncode == 1  # no server, no agents: not healthy, and it says so
        assert "not running" in status.stdout and "dead" in status.stdout
        again = podnet("up", *root, "--no-processes")
        assert again.returncode == 1 and "already exists" in again.stderr
        down = podnet("down", *root)
        assert down.returncode == 0, down.stderr
        assert f"removed netns podnet-{name}-node1" in down.stderr
        assert netns.list_names(f"podnet-{name}-") == []
    finally:
        down_lab(name, tmp_path)
