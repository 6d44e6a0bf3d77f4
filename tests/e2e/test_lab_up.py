"""`podnet up` for real: server + agents in node namespaces, every Node Ready, kubectl works
through the merged context, and `podnet down` leaves no namespace, link, process or file.

Marks: root + slow. Needs `podnet server` and `podnet agent` to work; the lab is always
taken down, and the test then checks that nothing of it is left.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from podnet import procs
from podnet.kernel import netns
from podnet.kernel.links import Netlink

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_up_status_kubectl_down(tmp_path: Path) -> None:
    from podnet.lab import Lab, LabSpec, down_lab

    name = f"t1e{secrets.token_hex(2)}"
    user_kubeconfig = tmp_path / "kube" / "config"
    user_kubeconfig.parent.mkdir()
    user_kubeconfig.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [],
                        "contexts": [{"name": "mine", "context": {}}],
                        "current-context": "mine"})
    )  # fmt: skip
    spec = LabSpec(name=name, nodes=2, state_root=tmp_path / "state")
    started = time.monotonic()
    lab = Lab.up(spec, user_kubeconfig=user_kubeconfig, timeout=120)
    try:
        bring_up = time.monotonic() - started
        print(f"2-node lab up in {bring_up:.2f} s")
        status = lab.status()
        assert status.healthy, status
        assert [n.ip for n in status.nodes] == [lab["node1"].ip, lab["node2"].ip]

        merged = yaml.safe_load(user_kubeconfig.read_text())
        assert merged["current-context"] == f"podnet-{name}"
        assert {c["name"] for c in merged["contexts"]} == {"mine", f"podnet-{name}"}
        out = subprocess.run(
            ["kubectl", "--kubeconfig", str(user_kubeconfig), "--cache-dir",
             str(tmp_path / "cache"), "get", "nodes", "-o", "json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        nodes = json.loads(out.stdout)["items"]
        addresses = {
            n["metadata"]["name"]: [a["address"] for a in n["status"]["addresses"]
                                    if a["type"] == "InternalIP"]
            for n in nodes
        }  # fmt: skip
        assert addresses == {"node1": [lab["node1"].ip], "node2": [lab["node2"].ip]}

        shown = podnet("status", "--name", name, "--state-root", str(tmp_path / "state"))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "node2" in shown.stdout and "alive" in shown.stdout
        printed = podnet("kubeconfig", "--name", name, "--state-root", str(tmp_path / "state"))
        assert printed.returncode == 0 and "certificate-authority-data" in printed.stdout
    finally:
        pid_dirs = [lab.state_dir, *(p for p in lab.state_dir.rglob("*") if p.is_dir())]
        recorded = [r for d in pid_dirs for r in procs.recorded(d)]
        down_lab(name, tmp_path / "state")
    assert recorded and not any(procs.is_alive(r) for r in recorded)
    assert netns.list_names(f"podnet-{name}-") == []
    with Netlink() as host:
        assert [link for link in lab.plan.host_links if host.link(link)] == []
    assert not lab.state_dir.exists()
    after = yaml.safe_load(user_kubeconfig.read_text())
    assert [c["name"] for c in after["contexts"]] == ["mine"]
