"""Security of a real lab (`podnet up`): private state, in-cluster identity, RBAC, the kubelet
endpoint's TLS and authentication.

Marks: root + slow. One lab (two nodes) is brought up for the module and always taken down.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Path]:
    """The lab's state dir."""
    name = f"ta{secrets.token_hex(2)}"
    up = podnet("up", "--name", name, "--nodes", "2", "--no-kubeconfig")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield Path(f"/var/lib/podnet/{name}")
    finally:
        down = podnet("down", "--name", name)
        assert down.returncode == 0, down.stdout + down.stderr


def kubectl(state: Path, *args: str, stdin: str | None = None, ok: bool = True) -> str:
    env = {**os.environ, "KUBECONFIG": str(state / "kubeconfig")}
    out = subprocess.run(
        ["kubectl", "--cache-dir", str(state / "kubectl-cache"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if ok:
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout + out.stderr


def test_state_dir_and_its_files_are_private(lab: Path) -> None:
    """#19 item 2: the store, its WAL, logs, lab.json, keys and kubeconfigs: 0600 in 0700."""
    dirs = [lab, lab / "nodes", *sorted((lab / "nodes").iterdir())]
    for directory in dirs:
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, directory
    files = [p for d in dirs for p in d.iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"state.db", "state.db-wal", "lab.json", "ca.key", "server.log", "agent.log"} <= names
    wide = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {p: m for p, m in wide.items() if m != "0o600"} == {}
