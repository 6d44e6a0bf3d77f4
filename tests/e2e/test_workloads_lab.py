"""Workload kinds on a real lab (`podnet up`, real agents, real pods): a DaemonSet covers every
node and follows one that joins (`podnet add-node`) and leaves (`podnet remove-node`), a
StatefulSet comes up in order and its members resolve by name through the cluster DNS, a Job
with parallelism 3 completes, a CronJob's template runs (`kubectl create job
--from=cronjob/...`), a container's env reads a ConfigMap and a Secret created after its pod.

Marks: root + slow. One lab for the module, always taken down again.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podnet.api.meta import parse_rfc3339

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kubectl, pytest.mark.timeout(300)]

MANIFESTS = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      containers:
      - {name: probe, image: busybox, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: busybox, command: [sleep, "3600"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: crunch}
spec:
  parallelism: 3
  completions: 3
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: work, image: busybox, command: [sh, -c, "sleep 1; echo done $HOSTNAME"]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/30 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - {name: tick, image: busybox, command: [date]}
"""


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


Kubectl = Callable[..., str]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Kubectl]]:
    name = f"wl{secrets.token_hex(2)}"
    cache = tmp_path_factory.mktemp("kcache")
    env = {**os.environ, "KUBECONFIG": f"/var/lib/podnet/{name}/kubeconfig"}

    def kubectl(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            ["kubectl", "--cache-dir", str(cache), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout

    up = podnet("up", "--name", name, "--nodes", "2", "--no-kubeconfig")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        kubectl("apply", "-f", "-", stdin=MANIFESTS)
        yield name, kubectl
    finally:
        down = podnet("down", "--name", name)
        assert down.returncode == 0, down.stdout + down.stderr


def pods(kubectl: Kubectl, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kubectl("get", "pods", "-l", selector, "-o", "json"))[
        "items"
    ]
    return items


def test_daemonset_covers_every_node_and_follows_a_new_one(lab: tuple[str, Kubectl]) -> None:
    name, kubectl = lab
    kubectl("rollout", "status", "daemonset/probe", "--timeout=120s")
    assert sorted(p["spec"]["nodeName"] for p in pods(kubectl, "app=probe")) == ["node1", "node2"]
    added = podnet("add-node", "--name", name)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "node node3 joined" in added.stdout
    deadline = time.monotonic() + 120
    while True:
        running = sorted(
            p["spec"].get("nodeName", "")
            for p in pods(kubectl, "app=probe")
            if p["status"].get("phase") == "Running"
        )
        if running == ["node1", "node2", "node3"]:
            break
        assert time.monotonic() < deadline, f"the daemon did not reach node3: {running}"
        time.sleep(0.5)
    kubectl("rollout", "status", "daemonset/probe", "--timeout=60s")

    # and leaves with it (`podnet remove-node`): the Node stays gone (its agent stopped
    # before the Node was deleted, so nothing registers it again), its pods are deleted
    removed = podnet("remove-node", "--name", name, "node3")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "node node3 left" in removed.stdout
    assert f"removed netns podnet-{name}-node3\n" in removed.stderr
    deadline = time.monotonic() + 120
    while (on := sorted(p["spec"].get("nodeName", "") for p in pods(kubectl, "app=probe"))) != [
        "node1",
        "node2",
    ]:
        assert time.monotonic() < deadline, f"node3's daemon pod stayed: {on}"
        time.sleep(0.5)
    assert kubectl("get", "nodes", "-o", "name").split() == ["node/node1", "node/node2"]
    status = podnet("status", "--name", name)
    assert status.returncode == 0 and "node3" not in status.stdout, status.stdout


def test_statefulset_comes_up_in_order_and_resolves_by_name(lab: tuple[str, Kubectl]) -> None:
    _, kubectl = lab
    kubectl("rollout", "status", "statefulset/web", "--timeout=180s")
    members = {p["metadata"]["name"]: p for p in pods(kubectl, "app=web")}
    assert sorted(members) == ["web-0", "web-1", "web-2"]
    for earlier, later in (("web-0", "web-1"), ("web-1", "web-2")):
        ready = next(c for c in members[earlier]["status"]["conditions"] if c["type"] == "Ready")
        became_ready = parse_rfc3339(ready["lastTransitionTime"])
        created = parse_rfc3339(members[later]["metadata"]["creationTimestamp"])
        assert became_ready is not None and created is not None
        assert created >= became_ready, f"{later} was created before {earlier} was Ready"
    answer = kubectl("exec", "web-0", "--", "nslookup", "web-2.web.default.svc.cluster.local")
    assert members["web-2"]["status"]["podIP"] in answer, answer


def test_job_and_cronjob_template_run_to_completion(lab: tuple[str, Kubectl]) -> None:
    _, kubectl = lab
    kubectl("wait", "--for=condition=complete", "job/crunch", "--timeout=120s")
    row = kubectl("get", "job", "crunch", "--no-headers").split()
    assert row[1:3] == ["Complete", "3/3"]
    done = pods(kubectl, "batch.kubernetes.io/job-name=crunch")
    assert len(done) == 3 and all(p["status"]["phase"] == "Succeeded" for p in done)
    assert "done crunch-" in kubectl("logs", done[0]["metadata"]["name"])
    kubectl("create", "job", "--from=cronjob/tick", "tick-now")
    kubectl("wait", "--for=condition=complete", "job/tick-now", "--timeout=120s")
    owner = json.loads(kubectl("get", "job", "tick-now", "-o", "json"))["metadata"]
    assert owner["ownerReferences"][0]["kind"] == "CronJob"


CONFIGURED = """
apiVersion: v1
kind: Pod
metadata: {name: configured}
spec:
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    resources: {limits: {cpu: 500m, memory: 128Mi}}
    envFrom:
    - configMapRef: {name: settings}
    - {secretRef: {name: creds}, prefix: DB_}
    env:
    - name: LIVES
      valueFrom: {configMapKeyRef: {name: settings, key: lives}}
    - name: USERNAME
      valueFrom: {secretKeyRef: {name: creds, key: username}}
    - name: CPU_LIMIT_M
      valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}
"""

SETTINGS = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {lives: "3", mode: easy}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {username: admin}
"""


def test_env_from_config_maps_and_secrets_waits_for_them(lab: tuple[str, Kubectl]) -> None:
    """The env sources a Kubernetes docs page uses: until the ConfigMap exists the container
    waits in CreateContainerConfigError saying which; then it starts with every value."""
    _, kubectl = lab
    kubectl("apply", "-f", "-", stdin=CONFIGURED)
    deadline = time.monotonic() + 60
    while True:
        pod = json.loads(kubectl("get", "pod", "configured", "-o", "json"))
        waiting = [
            s["state"].get("waiting") or {} for s in pod["status"].get("containerStatuses") or ()
        ]
        if waiting and waiting[0].get("reason") == "CreateContainerConfigError":
            break
        assert time.monotonic() < deadline, f"no CreateContainerConfigError: {pod['status']}"
        time.sleep(0.5)
    assert waiting[0]["message"] in ('configmap "settings" not found', 'secret "creds" not found')
    kubectl("apply", "-f", "-", stdin=SETTINGS)
    kubectl("wait", "--for=condition=Ready", "pod/configured", "--timeout=60s")
    env = dict(
        line.split("=", 1)
        for line in kubectl("exec", "configured", "--", "env").splitlines()
        if "=" in line
    )
    assert {k: env.get(k) for k in ("LIVES", "lives", "mode", "USERNAME", "DB_username")} == {
        "LIVES": "3",
        "lives": "3",
        "mode": "easy",
        "USERNAME": "admin",
        "DB_username": "admin",
    }
    assert env.get("CPU_LIMIT_M") == "500"
