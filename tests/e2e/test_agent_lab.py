"""The node agent inside a real lab (`podnet up`): a newcomer's two-container pod with kubectl.

Marks: root + slow. The lab (server + agents in node namespaces) is brought up once for the
module and always taken down again.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: two-containers
spec:
  restartPolicy: Always
  containers:
  - name: web
    image: busybox
    command:
    - sh
    - -c
    - mkdir -p /tmp/w && echo hello-from-web > /tmp/w/index.html && httpd -f -p 8080 -h /tmp/w
    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
  - name: sidecar
    image: busybox
    command: ["sleep", "3600"]
"""


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    pytest.importorskip("podnet.cli.lab", reason="the lab (`podnet up`) is not in this build")
    name = f"t5{secrets.token_hex(2)}"
    up = podnet("up", "--name", name, "--nodes", "2", "--no-dns")  # DNS: test_dns_lab
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield name, Path(f"/var/lib/podnet/{name}/kubeconfig")
    finally:
        down = podnet("down", "--name", name)
        assert down.returncode == 0, down.stdout + down.stderr


def kubectl(kubeconfig: Path, cache: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    out = subprocess.run(
        ["kubectl", "--cache-dir", str(cache), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def agent_logs(name: str) -> str:
    """The kubelet's lines of every agent's log, for failure messages."""
    tails = []
    for log in sorted(Path(f"/var/lib/podnet/{name}/nodes").glob("*/agent.log")):
        lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "kubelet" in line or "podnet.agent:" in line
        ][-30:]
        tails.append(f"--- {log}\n" + "\n".join(lines))
    return "\n".join(tails)


def test_two_container_pod_with_kubectl(lab: tuple[str, Path], tmp_path: Path) -> None:
    name, kubeconfig = lab
    nodes = json.loads(kubectl(kubeconfig, tmp_path, "get", "nodes", "-o", "json"))["items"]
    assert len(nodes) == 2
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    kubectl(kubeconfig, tmp_path, "apply", "-f", "-", stdin=POD)
    deadline = time.monotonic() + 60
    while True:
        pod = json.loads(
            kubectl(kubeconfig, tmp_path, "get", "pod", "two-containers", "-o", "json")
        )
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or ()}
        if conditions.get("Ready") == "True":
            break
        assert time.monotonic() < deadline, json.dumps(pod["status"]) + agent_logs(name)
        time.sleep(0.5)
    assert pod["status"]["podIP"].startswith("10.244.")
    out = kubectl(
        kubeconfig,
        tmp_path,
        "get",
        "pod",
        "two-containers",
        "-o",
        "jsonpath={$.spec.containers[*].image} {$.spec.containers[*].name}",
    )
    assert out == "busybox busybox web sidecar"
    hello = kubectl(
        kubeconfig,
        tmp_path,
        "exec",
        "two-containers",
        "-c",
        "sidecar",
        "--",
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/",
    )
    assert hello.strip() == "hello-from-web"
    assert (
        kubectl(
            kubeconfig, tmp_path, "exec", "two-containers", "-c", "web", "--", "hostname"
        ).strip()
        == "two-containers"
    )
    # the pod's MTU is flannel's (subnet.env of its node: 1450 with vxlan)
    env_file = Path(
        f"/var/lib/podnet/{name}/nodes/{pod['spec']['nodeName']}/run/flannel/subnet.env"
    )
    if env_file.exists():
        mtu = dict(line.split("=", 1) for line in env_file.read_text().split())["FLANNEL_MTU"]
        link = kubectl(
            kubeconfig,
            tmp_path,
            "exec",
            "two-containers",
            "-c",
            "sidecar",
            "--",
            "ip",
            "link",
            "show",
            "eth0",
        )
        assert f"mtu {mtu} " in link, link
    kubectl(kubeconfig, tmp_path, "delete", "pod", "two-containers", "--wait=true", "--timeout=60s")


def wait_ready(kubeconfig: Path, cache: Path, pod: str, lab_name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        obj = json.loads(kubectl(kubeconfig, cache, "get", "pod", pod, "-o", "json"))
        conditions = {c["type"]: c["status"] for c in obj["status"].get("conditions") or ()}
        if conditions.get("Ready") == "True":
            return dict(obj)
        assert time.monotonic() < deadline, json.dumps(obj["status"]) + agent_logs(lab_name)
        time.sleep(0.5)


def test_agent_restart_keeps_pods_running(lab: tuple[str, Path], tmp_path: Path) -> None:
    name, kubeconfig = lab
    manifest = POD.replace("name: two-containers", "name: survivor")
    kubectl(kubeconfig, tmp_path, "apply", "-f", "-", stdin=manifest)
    before = wait_ready(kubeconfig, tmp_path, "survivor", name)
    restart = podnet("proxy-mode", "--name", name, "iptables")  # restarts every agent
    assert restart.returncode == 0, restart.stdout + restart.stderr
    time.sleep(2)  # let the new agents sync
    after = wait_ready(kubeconfig, tmp_path, "survivor", name)
    status_before, status_after = before["status"], after["status"]
    assert isinstance(status_before, dict) and isinstance(status_after, dict)
    assert status_after["podIP"] == status_before["podIP"]
    ids = [
        (c["name"], c["containerID"], c["restartCount"]) for c in status_after["containerStatuses"]
    ]
    assert ids == [(c["name"], c["containerID"], 0) for c in status_before["containerStatuses"]]
    hello = kubectl(
        kubeconfig,
        tmp_path,
        "exec",
        "survivor",
        "-c",
        "sidecar",
        "--",
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/",
    )
    assert hello.strip() == "hello-from-web"
    kubectl(kubeconfig, tmp_path, "delete", "pod", "survivor", "--wait=true", "--timeout=60s")


def test_server_restart_agents_reconnect_quietly(lab: tuple[str, Path], tmp_path: Path) -> None:
    """After the API server restarts, running pods stay, and a pod created once the API
    answers runs: the agents' watches came back by themselves, and they did not flood their
    logs while the server was away (`benchmarks/restart.py` measures how fast)."""
    from podnet.lab.lab import Lab

    name, kubeconfig = lab
    manifest = POD.replace("name: two-containers", "name: before-restart")
    kubectl(kubeconfig, tmp_path, "apply", "-f", "-", stdin=manifest)
    before = wait_ready(kubeconfig, tmp_path, "before-restart", name)
    logs = sorted(Path(f"/var/lib/podnet/{name}/nodes").glob("*/agent.log"))
    sizes = {log: log.stat().st_size for log in logs}
    Lab.load(name).restart_server()
    manifest = POD.replace("name: two-containers", "name: after-restart")
    kubectl(kubeconfig, tmp_path, "apply", "-f", "-", stdin=manifest)
    wait_ready(kubeconfig, tmp_path, "after-restart", name)
    after = wait_ready(kubeconfig, tmp_path, "before-restart", name)

    def container_ids(pod: dict[str, Any]) -> list[str]:
        return [c["containerID"] for c in pod["status"]["containerStatuses"]]

    assert container_ids(after) == container_ids(before)  # nothing restarted
    for log, size in sizes.items():
        with log.open("rb") as fh:
            fh.seek(size)
            warnings = [line for line in fh if b" WARNING " in line or b" ERROR " in line]
        # each of the agent's retry loops (node status; the watches of the kubelet, flannel,
        # the proxy and NetworkPolicy: about ten) reports the outage once; a loop retrying
        # without back-off writes thousands of lines a second
        assert len(warnings) <= 40, b"".join(warnings).decode(errors="replace")
    for pod in ("before-restart", "after-restart"):
        kubectl(kubeconfig, tmp_path, "delete", "pod", pod, "--wait=true", "--timeout=60s")
