"""The pod sync loop against `InMemoryApi` and the runtime/sandbox stand-ins of conftest.py:
lifecycle, restart policies, back-off, image errors, graceful deletion, adoption after an
agent restart, and in-cluster identity (the projected token, ca.crt and namespace with the
Service variables; containers waiting for a volume's ConfigMap)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from podnet.agent.kubelet.pods import PodManager
from podnet.apiserver.auth.serviceaccount import MOUNT_PATH
from podnet.testing.api import Call, InMemoryApi
from podnet.testing.kubelet import FakeRuntime, FakeSandboxes
from podnet.testing.waiting import eventually

NODE = "node1"
CIDR = "10.244.3.0/24"


@contextlib.asynccontextmanager
async def running_manager(
    api: Any, runtime: Any, sandboxes: Any, cidr: str | None = CIDR, base: float = 0.3
) -> AsyncIterator[PodManager]:
    with tempfile.TemporaryDirectory(prefix="pnt5-volumes-") as volumes:
        manager = PodManager(
            api,
            NODE,
            "172.31.0.11",
            runtime,
            sandboxes,
            pod_cidr=lambda: cidr,
            backoff_base=base,
            backoff_cap=2.0,
            resync_seconds=0.05,
            full_resync_seconds=0.5,
            volumes_dir=Path(volumes),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(manager.run(stop))
        try:
            await eventually(manager.synced.is_set)
            yield manager
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


def pod(
    name: str, *containers: dict[str, Any], policy: str = "Always", node: str = NODE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": policy,
            "containers": list(containers) or [{"name": "app", "image": "busybox"}],
        },
        "status": {"phase": "Pending"},
    }


def status_of(api: InMemoryApi, name: str) -> dict[str, Any]:
    return (api.peek("pods", name, "default") or {}).get("status") or {}


def status_writes(api: InMemoryApi, name: str | None = None) -> list[Call]:
    return [
        c
        for c in api.writes("pods")
        if c.subresource == "status" and (name is None or c.name == name)
    ]


def events_of(api: InMemoryApi, name: str) -> list[tuple[str, str, str, str, int]]:
    """(type, reason, container field path, message, count) of the pod's events, oldest first."""
    return [
        (
            e["type"],
            e["reason"],
            e["involvedObject"].get("fieldPath", ""),
            e["message"],
            e["count"],
        )
        for e in sorted(api.peek_list("events", "default"), key=lambda e: e["metadata"]["name"])
        if e["involvedObject"]["name"] == name
        and e["source"] == {"component": "kubelet", "host": NODE}
    ]


def uid_of(api: InMemoryApi, name: str) -> str:
    return str((api.peek("pods", name, "default") or {})["metadata"]["uid"])


def cstatus(api: InMemoryApi, name: str, container: str = "app") -> dict[str, Any]:
    for cs in status_of(api, name).get("containerStatuses") or ():
        if cs["name"] == container:
            return dict(cs)
    return {}


@pytest.mark.asyncio
async def test_pod_runs_with_sandbox_and_reports_status(
    memory_api, fake_runtime, fake_sandboxes
) -> None:
    await memory_api.create(
        "pods",
        pod("web", {"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}),
        "default",
    )
    await memory_api.create("pods", pod("elsewhere", node="node2"), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await eventually(lambda: status_of(memory_api, "web").get("phase") == "Running")
        status = status_of(memory_api, "web")
        assert status["podIP"] == "10.244.3.2" and status["hostIP"] == "172.31.0.11"
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        assert sorted(fake_runtime.started) == [("a", 0), ("b", 0)]
        sandbox = fake_runtime.sandboxes[0]
        assert sandbox.hostname == "web" and "10.244.3.2\tweb\n" in sandbox.hosts
        assert "search default.svc.cluster.local" in sandbox.resolv_conf
        writes = len(status_writes(memory_api))
        await asyncio.sleep(0.3)  # several resyncs: nothing changed, nothing written
        assert len(status_writes(memory_api)) == writes
    assert status_writes(memory_api, "elsewhere") == []  # another node's pod
    assert status_of(memory_api, "elsewhere")["phase"] == "Pending"


@pytest.mark.asyncio
async def test_no_sandbox_before_pod_cidr(memory_api, fake_runtime, fake_sandboxes) -> None:
    await memory_api.create("pods", pod("web"), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes, cidr=None):
        await asyncio.sleep(0.2)
        assert fake_sandboxes.live == {} and fake_runtime.started == []


@pytest.mark.asyncio
async def test_always_restarts_with_back_off(memory_api, fake_runtime, fake_sandboxes) -> None:
    await memory_api.create("pods", pod("crash"), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes, base=0.4):
        await eventually(lambda: fake_runtime.started == [("app", 0)])
        fake_runtime.exit("app", 1)
        await eventually(lambda: ("app", 1) in fake_runtime.started)  # first restart: immediate
        await eventually(lambda: cstatus(memory_api, "crash").get("restartCount") == 1)
        fake_runtime.exit("app", 1)
        await eventually(
            lambda: cstatus(memory_api, "crash").get("state", {}).get("waiting", {}).get("reason")
            == "CrashLoopBackOff"
        )
        cs = cstatus(memory_api, "crash")
        assert cs["lastState"]["terminated"]["exitCode"] == 1
        assert "back-off 0.4s restarting failed container=app" in cs["state"]["waiting"]["message"]
        uid = uid_of(memory_api, "crash")
        told = f"Back-off restarting failed container app in pod crash_default({uid})"
        await eventually(
            lambda: ("Warning", "BackOff", "spec.containers{app}", told)
            in [e[:4] for e in events_of(memory_api, "crash")]
        )
        assert ("app", 2) not in fake_runtime.started
        await eventually(lambda: ("app", 2) in fake_runtime.started, timeout=2)
        assert status_of(memory_api, "crash")["phase"] == "Running"
        # the attempt before the previous one is removed; current + previous are kept
        await eventually(lambda: cstatus(memory_api, "crash").get("restartCount") == 2)
        assert [s.attempt for s in fake_runtime.list()] == [1, 2]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("policy", "code", "phase"),
    [("OnFailure", 0, "Succeeded"), ("Never", 3, "Failed"), ("Never", 0, "Succeeded")],
)
async def test_terminal_phases_release_the_sandbox(
    memory_api, fake_runtime, fake_sandboxes, policy: str, code: int, phase: str
) -> None:
    await memory_api.create("pods", pod("job", policy=policy), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await eventually(lambda: status_of(memory_api, "job").get("phase") == "Running")
        fake_runtime.exit("app", code)
        await eventually(lambda: status_of(memory_api, "job").get("phase") == phase)
        await asyncio.sleep(0.2)
        assert fake_runtime.started == [("app", 0)]
        uid = uid_of(memory_api, "job")
        assert fake_sandboxes.torn_down == [uid]
        assert status_of(memory_api, "job")["podIP"] == "10.244.3.2"
        assert cstatus(memory_api, "job")["state"]["terminated"]["exitCode"] == code


@pytest.mark.asyncio
async def test_on_failure_restarts_failed_container(
    memory_api, fake_runtime, fake_sandboxes
) -> None:
    await memory_api.create("pods", pod("job", policy="OnFailure"), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await eventually(lambda: fake_runtime.started == [("app", 0)])
        fake_runtime.exit("app", 2)
        await eventually(lambda: ("app", 1) in fake_runtime.started)
        fake_runtime.exit("app", 0)
        await eventually(lambda: status_of(memory_api, "job").get("phase") == "Succeeded")


@pytest.mark.asyncio
async def test_image_error_waits_and_crashes_nothing(
    memory_api, fake_runtime, fake_sandboxes
) -> None:
    await memory_api.create(
        "pods",
        pod("bad", {"name": "app", "image": "missing:1"}, {"name": "ok", "image": "busybox"}),
        "default",
    )
    # a back-off of 2 s (the cap): a failed pull is ErrImagePull for its first second, then
    # ImagePullBackOff for the next until the retry (shorter back-offs retry before it shows)
    async with running_manager(memory_api, fake_runtime, fake_sandboxes, base=2.0):
        await eventually(
            lambda: cstatus(memory_api, "bad").get("state", {}).get("waiting", {}).get("reason")
            == "ErrImagePull"
        )
        assert "is not available" in cstatus(memory_api, "bad")["state"]["waiting"]["message"]
        await eventually(
            lambda: cstatus(memory_api, "bad")["state"]["waiting"]["reason"] == "ImagePullBackOff",
            timeout=30,
        )
        assert status_of(memory_api, "bad")["phase"] == "Pending"
        assert cstatus(memory_api, "bad", "ok")["state"].get("running") is not None
        pulled = cstatus(memory_api, "bad")["state"]["waiting"]["message"]
        await eventually(lambda: len(events_of(memory_api, "bad")) == 2)  # written in background
        failed = [e for e in events_of(memory_api, "bad") if e[1] == "Failed"]
        assert [e[:3] for e in failed] == [("Warning", "Failed", "spec.containers{app}")] * 2
        assert failed[1][3] == "Error: ErrImagePull"
        assert failed[0][3] in pulled  # "Failed to pull image ...", what the status says
        # the retries after the back-off count up in the same two events
        await eventually(
            lambda: [e[4] >= 2 for e in events_of(memory_api, "bad")] == [True, True], timeout=30
        )


@pytest.mark.asyncio
async def test_graceful_deletion(memory_api, fake_runtime, fake_sandboxes) -> None:
    await memory_api.create("pods", pod("web"), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await eventually(lambda: status_of(memory_api, "web").get("phase") == "Running")
        uid = uid_of(memory_api, "web")
        await memory_api.delete("pods", "web", "default", grace_period_seconds=7)
        await eventually(lambda: memory_api.peek("pods", "web", "default") is None)
        assert [g for _, g in fake_runtime.stopped] == [7.0]
        assert fake_sandboxes.torn_down == [uid] and fake_runtime.cleaned[0] == uid
        last = memory_api.writes("pods")[-1]
        assert (last.verb, last.name, last.grace_period_seconds, last.uid) == (
            "delete",
            "web",
            0,
            uid,
        )


@pytest.mark.asyncio
async def test_restart_adopts_running_containers_and_cleans_gone_pods(
    memory_api, fake_runtime, fake_sandboxes
) -> None:
    await memory_api.create("pods", pod("keep"), "default")
    await memory_api.create("pods", pod("gone"), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await eventually(lambda: len(fake_runtime.started) == 2)
        await eventually(lambda: status_of(memory_api, "keep").get("phase") == "Running")
    gone_uid = uid_of(memory_api, "gone")
    await memory_api.remove("pods", "gone", "default")  # deleted while the agent was down
    fake_sandboxes.orphans.append("pnt5-pod-halfmade")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await eventually(lambda: gone_uid in fake_runtime.cleaned)
        await asyncio.sleep(0.2)
        assert len(fake_runtime.started) == 2  # nothing restarted
        assert gone_uid in fake_sandboxes.torn_down
        assert fake_sandboxes.deleted_netns == ["pnt5-pod-halfmade"]
        assert status_of(memory_api, "keep")["phase"] == "Running"
        assert cstatus(memory_api, "keep")["ready"] is True


@pytest.mark.asyncio
async def test_liveness_failure_restarts_the_container(
    memory_api, fake_runtime, fake_sandboxes
) -> None:
    # the API's shortest period is 1 s; thresholds are counted in test_kubelet_probe_logic
    probe = {"exec": {"command": ["check", "live"]}, "periodSeconds": 1, "failureThreshold": 1}
    ready = {"exec": {"command": ["check", "ready"]}, "periodSeconds": 1}
    fake_runtime.exec_results["ready"] = 1
    await memory_api.create(
        "pods",
        pod(
            "probed",
            {"name": "app", "image": "busybox", "livenessProbe": probe, "readinessProbe": ready},
        ),
        "default",
    )
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await eventually(lambda: status_of(memory_api, "probed").get("phase") == "Running")
        await asyncio.sleep(0.2)
        assert cstatus(memory_api, "probed")["ready"] is False
        fake_runtime.exec_results["ready"] = 0
        await eventually(lambda: cstatus(memory_api, "probed").get("ready") is True)
        fake_runtime.exec_results["live"] = 1
        await eventually(lambda: ("app", 1) in fake_runtime.started)
        assert fake_runtime.stopped and fake_runtime.stopped[0][1] == 30.0
        await eventually(lambda: cstatus(memory_api, "probed").get("restartCount") == 1)
        assert cstatus(memory_api, "probed")["lastState"]["terminated"]["exitCode"] == 137
        # the new run fails its liveness probe too: Killing may have counted up already
        killing = ("Normal", "Killing", "spec.containers{app}",
                   "Container app failed liveness probe, will be restarted")  # fmt: skip
        await eventually(lambda: killing in [e[:4] for e in events_of(memory_api, "probed")])
        seen = events_of(memory_api, "probed")
        unhealthy = {e[3].split(":")[0] for e in seen if e[1] == "Unhealthy"}
        assert unhealthy == {"Readiness probe failed", "Liveness probe failed"}


@pytest.mark.asyncio
async def test_resolve_follows_the_current_container(
    memory_api, fake_runtime, fake_sandboxes
) -> None:
    await memory_api.create("pods", pod("web"), "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes) as manager:
        await eventually(lambda: manager.resolve("default", "web", "app") is not None)
        first = manager.resolve("default", "web", "app")
        assert manager.resolve("default", "web", "nope") is None
        fake_runtime.exit("app", 1)
        await eventually(lambda: manager.resolve("default", "web", "app") != first)
        assert manager.resolve("other", "web", "app") is None


KUBERNETES_SERVICE = {
    "metadata": {"name": "kubernetes", "namespace": "default"},
    "spec": {
        "clusterIP": "10.96.0.1",
        "ports": [{"name": "https", "port": 443, "targetPort": 6443}],
    },
}


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


@pytest.mark.asyncio
async def test_a_pod_gets_its_token_ca_namespace_and_service_variables(
    memory_api: InMemoryApi, fake_runtime: FakeRuntime, fake_sandboxes: FakeSandboxes
) -> None:
    await memory_api.put("services", KUBERNETES_SERVICE)
    await memory_api.put(
        "services",
        {"metadata": {"name": "db", "namespace": "default"},
         "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 5432}]}},
    )  # fmt: skip
    created = await memory_api.create("pods", pod("web"), "default")
    uid = created["metadata"]["uid"]
    async with running_manager(memory_api, fake_runtime, fake_sandboxes) as manager:
        await eventually(lambda: status_of(memory_api, "web").get("phase") == "Running")
        config = fake_runtime.configs[0]
        env = dict(config.env)
        assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
        assert env["KUBERNETES_PORT_443_TCP"] == "tcp://10.96.0.1:443"
        assert env["DB_SERVICE_HOST"] == "10.96.7.7"
        (mount,) = config.mounts
        assert mount.target == MOUNT_PATH and mount.read_only
        volume = Path(mount.source)
        assert volume.parent == manager.pod_sync.volumes.directory(uid)
        assert (volume / "namespace").read_text() == "default"
        assert (volume / "ca.crt").exists()
        token = claims((volume / "token").read_text())
        assert token["sub"] == "system:serviceaccount:default:default"
        assert token["kubernetes.io"]["pod"] == {"name": "web", "uid": uid}
        assert token["exp"] - token["iat"] == 3607
        await memory_api.delete("pods", "web", "default", grace_period_seconds=0)
        await eventually(lambda: not volume.parent.exists())


@pytest.mark.asyncio
async def test_no_containers_until_a_mounted_config_map_exists(
    memory_api: InMemoryApi, fake_runtime: FakeRuntime, fake_sandboxes: FakeSandboxes
) -> None:
    body = pod("web", {"name": "app", "image": "busybox",
                       "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}]})  # fmt: skip
    body["spec"]["volumes"] = [{"name": "conf", "configMap": {"name": "settings"}}]
    body["spec"]["automountServiceAccountToken"] = False
    await memory_api.create("pods", body, "default")
    async with running_manager(memory_api, fake_runtime, fake_sandboxes):
        await asyncio.sleep(0.3)
        assert fake_runtime.started == []
        waiting = status_of(memory_api, "web")["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "ContainerCreating"
        await memory_api.create(
            "configmaps", {"metadata": {"name": "settings"}, "data": {"a.conf": "x=1"}}, "default"
        )
        await eventually(lambda: fake_runtime.started == [("app", 0)], 15)
        (mount,) = fake_runtime.configs[0].mounts
        assert (Path(mount.source) / "a.conf").read_text() == "x=1"
