"""`podnet up --nodes 3 --backend B` gives one flat pod network, for every flannel backend.

For each backend a lab is brought up with the real CLI, a busybox web pod is pinned to node1
and one to node3, and each reaches the other by pod IP over HTTP (TCP) and ping (ICMP); the
nodes carry flannel's lease annotations and subnet.env has the backend's MTU. The lab is
always taken down; udp's datapaths (two recorded processes per node) end with it.

Marks: root + slow.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podnet import procs

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

EXPECTED_MTU = {"vxlan": 1450, "udp": 1472, "host-gw": 1500}
WEB_POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: busybox
    command:
    - sh
    - -c
    - mkdir -p /tmp/w && hostname > /tmp/w/index.html && httpd -f -p 8080 -h /tmp/w
"""


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )


def kubectl(kubeconfig: Path, cache: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.mark.parametrize("backend", ["vxlan", "udp", "host-gw"])
def test_flannel_lab_flat_pod_network(backend: str, tmp_path: Path) -> None:
    pytest.importorskip("podnet.cli.lab", reason="the lab (`podnet up`) is not in this build")
    name = f"t6{secrets.token_hex(2)}"
    up = podnet(
        "up", "--name", name, "--nodes", "3", "--backend", backend, "--no-kubeconfig", "--no-dns"
    )
    state = Path("/var/lib/podnet") / name
    datapaths: list[procs.Recorded] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        kubeconfig = state / "kubeconfig"
        for node in ("node1", "node2", "node3"):
            run = state / "nodes" / node / "run"
            env = (run / "flannel" / "subnet.env").read_text()
            assert f"FLANNEL_MTU={EXPECTED_MTU[backend]}\n" in env
            # udp only: the pods' eth0 gso_max_segs, so a superpacket is one UDP GSO send
            assert ("PODNET_GSO_MAX_SEGS=44\n" in env) == (backend == "udp")
            datapaths += procs.recorded(run / "flannel" / "datapath")
        # udp only: each node's datapath and its receiving half, recorded and running
        assert len([rec for rec in datapaths if procs.is_alive(rec)]) == (
            6 if backend == "udp" else 0
        )
        nodes = json.loads(kubectl(kubeconfig, tmp_path, "get", "nodes", "-o", "json"))["items"]
        for node in nodes:
            annotations = node["metadata"]["annotations"]
            assert annotations["flannel.alpha.coreos.com/backend-type"] == backend
            assert annotations["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
        for index in (1, 3):
            kubectl(
                kubeconfig, tmp_path, "apply", "-f", "-",
                stdin=WEB_POD.format(name=f"web{index}", node=f"node{index}"),
            )  # fmt: skip
        ips = wait_for_pod_ips(kubeconfig, tmp_path, ["web1", "web3"])
        for client, server in (("web1", "web3"), ("web3", "web1")):
            body = kubectl(
                kubeconfig, tmp_path, "exec", client, "--",
                "wget", "-qO-", f"http://{ips[server]}:8080/",
            )  # fmt: skip
            assert body.strip(), f"{client} -> {server}: empty answer"
            ping = kubectl(
                kubeconfig,
                tmp_path,
                "exec",
                client,
                "--",
                "ping",
                "-c",
                "1",
                "-W",
                "3",
                ips[server],
            )
            assert "1 packets received" in ping, ping
    finally:
        podnet("down", "--name", name)
    assert not [rec for rec in datapaths if procs.is_alive(rec)], "a datapath outlived the lab"


def wait_for_pod_ips(kubeconfig: Path, cache: Path, names: list[str]) -> dict[str, str]:
    deadline = time.monotonic() + 90
    while True:
        pods = json.loads(kubectl(kubeconfig, cache, "get", "pods", "-o", "json"))["items"]
        ips = {
            p["metadata"]["name"]: p["status"].get("podIP")
            for p in pods
            if p.get("status", {}).get("phase") == "Running"
        }
        if all(ips.get(n) for n in names):
            return {n: ips[n] for n in names}
        if time.monotonic() > deadline:
            raise AssertionError(f"pods not running with an IP after 90 s: {pods}")
        time.sleep(0.5)
