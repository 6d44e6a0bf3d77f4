"""The explainer's story on a live lab: a pod dies, the Service survives.

A 3-replica Deployment of agnhost `netexec` sits behind a ClusterIP Service; a client pod
asks the Service for `/hostname` every 100 ms. One backend pod is deleted: the ReplicaSet starts
a replacement (new name, new IP), the endpoints drop the dead pod and pick up the new one
within a second of each change, and the client keeps getting answers.

Marks: root + slow. Needs the whole lab (`podnet up`: server with controllers, agents with
kubelet, flannel and kube-proxy); the lab is always taken down again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

BACKEND = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.47
        args: ["netexec", "--http-port=8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""

CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: loop
    image: busybox
    command:
    - sh
    - -c
    - |
      while true; do
        r=$(printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 1 %s 80 | tail -n 1)
        if [ -n "$r" ]; then echo "$r"; else echo FAIL; fi
        sleep 0.1
      done
"""


class Kubectl:
    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.cache = cache

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--cache-dir", str(self.cache), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        out = self.run(*args, stdin=stdin)
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))


@contextlib.contextmanager
def lab(tmp_path: Path) -> Iterator[Kubectl]:
    from podnet.lab import Lab, LabSpec, down_lab

    name = f"c5s{secrets.token_hex(2)}"
    state = tmp_path / "state"
    lab = Lab.up(LabSpec(name=name, nodes=2, state_root=state), timeout=120)
    try:
        yield Kubectl(lab.kubeconfig, tmp_path / "cache")
    finally:
        down_lab(name, state)


def wait(check: Callable[[], bool], what: str, limit: float, step: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            pytest.fail(f"timed out after {limit}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


def ready_ips(kubectl: Kubectl) -> set[str]:
    ep = kubectl.json("get", "endpoints", "web")
    return {a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}


def pods(kubectl: Kubectl) -> list[Any]:
    return [
        p
        for p in kubectl.json("get", "pods", "-l", "app=web")["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]


@pytest.mark.asyncio
async def test_pod_dies_service_survives(tmp_path: Path) -> None:
    # The lab's own code calls asyncio.run; running the story in a worker thread keeps that
    # away from the main thread's event loop (pytest-asyncio's), which it would otherwise close.
    await asyncio.to_thread(story, tmp_path)


def story(tmp_path: Path) -> None:
    with lab(tmp_path) as kubectl:
        run_story(kubectl)


def run_story(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=BACKEND)
    wait(lambda: len(ready_ips(kubectl)) == 3, "3 ready endpoints", 90, step=0.5)
    cluster_ip = kubectl.json("get", "service", "web")["spec"]["clusterIP"]
    kubectl("apply", "-f", "-", stdin=CLIENT % cluster_ip)

    def answers() -> list[str]:
        out = kubectl.run("logs", "client")  # fails until the container has started
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    wait(
        lambda: sum(1 for a in answers() if a.startswith("web-")) >= 10,
        "the client reaching the Service",
        60,
        step=0.5,
    )

    serving = pods(kubectl)
    names_before = {p["metadata"]["name"] for p in serving}
    victim = serving[0]
    victim_ip = victim["status"]["podIP"]
    before = len(answers())
    kubectl("delete", "pod", victim["metadata"]["name"], "--wait=false")
    dropped = wait(lambda: victim_ip not in ready_ips(kubectl), "endpoints to drop the pod", 5)

    def replacement() -> dict[str, Any] | None:
        """A Ready pod that did not exist before the deletion."""
        for p in pods(kubectl):
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions") or []}
            if conds.get("Ready") == "True" and p["metadata"]["name"] not in names_before:
                return p
        return None

    wait(lambda: replacement() is not None, "a Ready replacement pod", 60, step=0.1)
    new_pod = replacement()
    assert new_pod is not None
    assert new_pod["status"]["podIP"] != victim_ip, "the replacement has a new IP"
    followed = wait(
        lambda: new_pod["status"]["podIP"] in ready_ips(kubectl),
        "endpoints to add the replacement",
        5,
    )
    print(
        f"endpoints dropped the dead pod after {dropped:.2f}s and added the replacement "
        f"{followed:.2f}s after it was seen Ready"
    )
    assert dropped < 1.0 and followed < 1.0
    assert len(ready_ips(kubectl)) == 3

    # the Service kept answering, and answers now come from the new pod too
    wait(
        lambda: new_pod["metadata"]["name"] in answers()[before:],
        "an answer from the replacement",
        30,
        step=0.5,
    )
    after = answers()[before:]
    failures = sum(1 for a in after if a == "FAIL")
    print(f"{len(after)} requests after the deletion, {failures} failed")
    assert failures <= 0.2 * len(after), after
    assert all(a != "FAIL" for a in answers()[-5:])
