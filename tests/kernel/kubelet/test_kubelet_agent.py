"""The kubelet against a real `podnet server`, real sandboxes and the real runtime (root).

Covers issue #3 item 3 for one node: two containers of a pod talk over localhost, restart
policies with back-off, probes, graceful deletion, adoption after an agent restart (healthy
containers keep running, IPAM continues), and cleanup of pods deleted while it was down.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.kernel import netns

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

HTTPD = [
    "sh",
    "-c",
    "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
]
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]


async def kubectl(node: Any, *args: str) -> str:
    """Real kubectl, run without blocking the loop the in-process kubelet serves on."""
    env = {**os.environ, "KUBECONFIG": str(node.kubeconfig)}
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        "--cache-dir",
        str(node.state_dir / "kubectl-cache"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {out.decode()}{err.decode()}"
    return out.decode()


def busybox(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": command, **extra}


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


async def phase(node: Any, name: str) -> str | None:
    return ((await node.pod(name)).get("status") or {}).get("phase")


async def ready(node: Any, name: str) -> bool:
    return condition(await node.pod(name), "Ready") == "True"


@pytest.mark.asyncio
async def test_pod_with_two_containers_runs_and_reports(node: Any) -> None:
    kubelet = await node.start_kubelet()
    await node.assign_pod_cidr()
    await node.create_pod("duo", [busybox("web", HTTPD), busybox("client", SLEEPER)])
    await node.until(lambda: ready(node, "duo"), 20, "pod duo Ready")
    pod = await node.pod("duo")
    status = pod["status"]
    assert status["phase"] == "Running"
    assert status["podIP"].startswith("10.244.9.") and status["hostIP"] == "127.0.0.1"
    assert {c["type"] for c in status["conditions"]} >= {
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
    }
    client = next(c for c in status["containerStatuses"] if c["name"] == "client")
    assert client["containerID"].startswith("podnet://") and client["restartCount"] == 0
    assert client["state"]["running"]["startedAt"]
    cid = client["containerID"].removeprefix("podnet://")
    assert kubelet.pods.resolve("default", "duo", "client") == cid
    runtime = kubelet.runtime
    code, out = await runtime.exec_sync(cid, ["wget", "-qO-", "http://127.0.0.1:8080/"], 5)
    assert (code, out.strip()) == (0, b"hello")
    code, out = await runtime.exec_sync(cid, ["hostname"], 5)
    assert out.strip() == b"duo"
    code, out = await runtime.exec_sync(cid, ["cat", "/etc/hosts", "/etc/resolv.conf"], 5)
    text = out.decode()
    assert f"{status['podIP']}\tduo" in text and "search default.svc.cluster.local" in text

    # the explainer's own commands, with real kubectl through the API server's exec relay
    out = await kubectl(
        node,
        "get",
        "pod",
        "duo",
        "-o",
        "jsonpath={$.spec.containers[*].image} {$.spec.containers[*].name}",
    )
    assert out == "busybox busybox web client"
    assert (await kubectl(node, "exec", "duo", "-c", "client", "--", "hostname")).strip() == "duo"
    hello = await kubectl(
        node, "exec", "duo", "-c", "client", "--", "wget", "-qO-", "http://127.0.0.1:8080/"
    )
    assert hello.strip() == "hello"

    # status is written only when it changes: the pod object stays put
    version = (await node.pod("duo"))["metadata"]["resourceVersion"]
    await asyncio.sleep(2.5)
    assert (await node.pod("duo"))["metadata"]["resourceVersion"] == version

    node_obj = await node.api.get("nodes", "pnt5-node")
    assert condition(node_obj, "Ready") == "True"
    labels = node_obj["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "pnt5-node" and labels["kubernetes.io/os"] == "linux"
    assert node_obj["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    lease = await node.api.get("leases", "pnt5-node", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == "pnt5-node"
    assert lease["spec"]["leaseDurationSeconds"] == 40


@pytest.mark.asyncio
async def test_restart_policies_and_back_off(node: Any) -> None:
    await node.start_kubelet(backoff_base=0.5)
    await node.assign_pod_cidr()
    await node.create_pod("always", [busybox("c", ["sh", "-c", "exit 3"])])
    await node.create_pod("ok", [busybox("c", ["sh", "-c", "exit 0"])], restartPolicy="OnFailure")
    await node.create_pod("fail", [busybox("c", ["sh", "-c", "exit 4"])], restartPolicy="Never")
    await node.create_pod("nosuch", [{"name": "c", "image": "example.com/nope:1"}])
    await node.until(lambda: phase_is(node, "ok", "Succeeded"), 20)
    await node.until(lambda: phase_is(node, "fail", "Failed"), 20)
    fail = await node.container_status("fail", "c")
    assert fail["state"]["terminated"]["exitCode"] == 4
    assert fail["state"]["terminated"]["reason"] == "Error"

    async def crash_looping() -> bool:
        cs = await node.container_status("always", "c")
        return cs.get("restartCount", 0) >= 2 and (
            cs.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"
        )

    await node.until(crash_looping, 20, "CrashLoopBackOff after 2 restarts")
    cs = await node.container_status("always", "c")
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert await phase(node, "always") == "Running"

    async def image_backoff() -> bool:
        cs = await node.container_status("nosuch", "c")
        reason = cs.get("state", {}).get("waiting", {}).get("reason")
        return reason in ("ErrImagePull", "ImagePullBackOff")

    await node.until(image_backoff, 10)
    cs = await node.container_status("nosuch", "c")
    assert "nope" in cs["state"]["waiting"]["message"]
    assert await phase(node, "nosuch") == "Pending"


async def phase_is(node: Any, name: str, want: str) -> bool:
    return await phase(node, name) == want


@pytest.mark.asyncio
async def test_probes(node: Any) -> None:
    kubelet = await node.start_kubelet()
    await node.assign_pod_cidr()
    readiness = {"httpGet": {"path": "/ready.html", "port": 8080}, "periodSeconds": 1}
    tcp = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    liveness = {
        "exec": {"command": ["cat", "/tmp/alive"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
        "initialDelaySeconds": 1,
    }
    await node.create_pod(
        "probed",
        [
            busybox("web", HTTPD, readinessProbe=readiness, livenessProbe=tcp),
            busybox(
                "worker", ["sh", "-c", "touch /tmp/alive; " + SLEEPER[2]], livenessProbe=liveness
            ),
        ],
    )
    await node.until(lambda: phase_is(node, "probed", "Running"), 20)
    await asyncio.sleep(1.5)
    web = await node.container_status("probed", "web")
    assert web["ready"] is False  # /ready.html does not exist yet: HTTP 404
    assert not await ready(node, "probed")
    web_id = web["containerID"].removeprefix("podnet://")
    await kubelet.runtime.exec_sync(web_id, ["sh", "-c", "echo ok > /tmp/www/ready.html"], 5)
    await node.until(lambda: ready(node, "probed"), 10, "Ready after readiness passes")

    worker = await node.container_status("probed", "worker")
    worker_id = worker["containerID"].removeprefix("podnet://")
    await kubelet.runtime.exec_sync(worker_id, ["rm", "/tmp/alive"], 5)

    async def restarted() -> bool:
        return (await node.container_status("probed", "worker")).get("restartCount") == 1

    await node.until(restarted, 20, "liveness failure restarts the worker")
    assert (await node.container_status("probed", "web"))["restartCount"] == 0


@pytest.mark.asyncio
async def test_graceful_deletion(node: Any) -> None:
    kubelet = await node.start_kubelet()
    await node.assign_pod_cidr()
    await node.create_pod("polite", [busybox("c", SLEEPER)])
    await node.create_pod(
        "stubborn", [busybox("c", ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])]
    )
    await node.until(lambda: phase_is(node, "polite", "Running"), 20)
    await node.until(lambda: phase_is(node, "stubborn", "Running"), 20)
    polite = await node.pod("polite")
    sandbox = kubelet.sandboxes.records()[polite["metadata"]["uid"]]
    assert netns.exists(sandbox.netns)

    # exited on SIGTERM: gone long before a 10-minute grace period ends
    await node.api.delete("pods", "polite", "default", grace_period_seconds=600)
    await node.until(lambda: gone(node, "polite"), 60)
    assert not netns.exists(sandbox.netns)

    started = time.monotonic()
    await node.api.delete("pods", "stubborn", "default", grace_period_seconds=1)
    await node.until(lambda: gone(node, "stubborn"), 60)
    assert time.monotonic() - started >= 0.9  # SIGKILL only after the grace period
    assert kubelet.runtime.list() == []


async def gone(node: Any, name: str) -> bool:
    try:
        await node.pod(name)
    except ApiError as exc:
        return exc.code == 404
    return False


@pytest.mark.asyncio
async def test_agent_restart_adopts_pods_and_ipam_continues(node: Any) -> None:
    await node.start_kubelet()
    await node.assign_pod_cidr()
    await node.create_pod("stay", [busybox("c", SLEEPER)])
    await node.create_pod("leave", [busybox("c", SLEEPER)])
    await node.until(lambda: ready(node, "stay"), 20)
    await node.until(lambda: ready(node, "leave"), 20)
    before = await node.container_status("stay", "c")
    stay_ip = (await node.pod("stay"))["status"]["podIP"]
    leave = await node.pod("leave")
    await node.stop_kubelets()

    # while the agent is down the pod is force-deleted
    await node.api.delete("pods", "leave", "default", grace_period_seconds=0)
    kubelet = await node.start_kubelet()
    leave_sandbox = f"{node.marker}pod-"
    await node.until(lambda: leave["metadata"]["uid"] not in kubelet.sandboxes.records(), 10)
    after = await node.container_status("stay", "c")
    assert after["containerID"] == before["containerID"] and after["restartCount"] == 0
    assert await ready(node, "stay")
    await node.create_pod("new", [busybox("c", SLEEPER)])
    await node.until(lambda: ready(node, "new"), 20)
    new_ip = (await node.pod("new"))["status"]["podIP"]
    assert new_ip not in (stay_ip, leave["status"]["podIP"])
    assert len(netns.list_names(leave_sandbox)) == 2  # stay + new
