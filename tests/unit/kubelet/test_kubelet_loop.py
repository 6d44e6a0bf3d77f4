"""The pod sync loop against in-memory stand-ins (conftest.py): lifecycle, restart policies,
back-off, image errors, graceful deletion and adoption after an agent restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from podnet.agent.kubelet.pods import PodManager

NODE = "node1"
CIDR = "10.244.3.0/24"


async def until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_manager(
    api: Any, runtime: Any, sandboxes: Any, cidr: str | None = CIDR, base: float = 0.3
) -> AsyncIterator[PodManager]:
    manager = PodManager(
        api,
        NODE,
        "172.31.0.11",
        runtime,
        sandboxes,
        pod_cidr=lambda: cidr,
        bindings=runtime.bindings,
        backoff_base=base,
        backoff_cap=2.0,
        resync_seconds=0.05,
        full_resync_seconds=0.5,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop))
    try:
        await until(manager.synced.is_set)
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


def status_of(api: Any, name: str) -> dict[str, Any]:
    return api.pod(name).get("status") or {}


def cstatus(api: Any, name: str, container: str = "app") -> dict[str, Any]:
    for cs in status_of(api, name).get("containerStatuses") or ():
        if cs["name"] == container:
            return dict(cs)
    return {}


@pytest.mark.asyncio
async def test_pod_runs_with_sandbox_and_reports_status(
    fake_api, fake_runtime, fake_sandboxes
) -> None:
    await fake_api.create(
        "pods",
        pod("web", {"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}),
        "default",
    )
    await fake_api.create("pods", pod("elsewhere", node="node2"), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(lambda: status_of(fake_api, "web").get("phase") == "Running")
        status = status_of(fake_api, "web")
        assert status["podIP"] == "10.244.3.2" and status["hostIP"] == "172.31.0.11"
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        assert sorted(fake_runtime.started) == [("a", 0), ("b", 0)]
        sandbox = fake_runtime.sandboxes[0]
        assert sandbox["hostname"] == "web" and "10.244.3.2\tweb\n" in sandbox["hosts"]
        assert "search default.svc.cluster.local" in sandbox["resolv_conf"]
        writes = len(fake_api.status_writes)
        await asyncio.sleep(0.3)  # several resyncs: nothing changed, nothing written
        assert len(fake_api.status_writes) == writes
    assert status_of(fake_api, "elsewhere") == {"phase": "Pending"}


@pytest.mark.asyncio
async def test_no_sandbox_before_pod_cidr(fake_api, fake_runtime, fake_sandboxes) -> None:
    await fake_api.create("pods", pod("web"), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes, cidr=None):
        await asyncio.sleep(0.2)
        assert fake_sandboxes.live == {} and fake_runtime.started == []


@pytest.mark.asyncio
async def test_always_restarts_with_back_off(fake_api, fake_runtime, fake_sandboxes) -> None:
    await fake_api.create("pods", pod("crash"), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes, base=0.4):
        await until(lambda: fake_runtime.started == [("app", 0)])
        fake_runtime.exit("app", 1)
        await until(lambda: ("app", 1) in fake_runtime.started)  # first restart: immediate
        await until(lambda: cstatus(fake_api, "crash").get("restartCount") == 1)
        fake_runtime.exit("app", 1)
        await until(
            lambda: cstatus(fake_api, "crash").get("state", {}).get("waiting", {}).get("reason")
            == "CrashLoopBackOff"
        )
        cs = cstatus(fake_api, "crash")
        assert cs["lastState"]["terminated"]["exitCode"] == 1
        assert "back-off 0.4s restarting failed container=app" in cs["state"]["waiting"]["message"]
        assert ("app", 2) not in fake_runtime.started
        await until(lambda: ("app", 2) in fake_runtime.started, within=2)
        assert status_of(fake_api, "crash")["phase"] == "Running"
        # the attempt before the previous one is removed; current + previous are kept
        await until(lambda: cstatus(fake_api, "crash").get("restartCount") == 2)
        assert [s.attempt for s in fake_runtime.list()] == [1, 2]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("policy", "code", "phase"),
    [("OnFailure", 0, "Succeeded"), ("Never", 3, "Failed"), ("Never", 0, "Succeeded")],
)
async def test_terminal_phases_release_the_sandbox(
    fake_api, fake_runtime, fake_sandboxes, policy: str, code: int, phase: str
) -> None:
    await fake_api.create("pods", pod("job", policy=policy), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(lambda: status_of(fake_api, "job").get("phase") == "Running")
        fake_runtime.exit("app", code)
        await until(lambda: status_of(fake_api, "job").get("phase") == phase)
        await asyncio.sleep(0.2)
        assert fake_runtime.started == [("app", 0)]
        uid = fake_api.pod("job")["metadata"]["uid"]
        assert fake_sandboxes.torn_down == [uid]
        assert status_of(fake_api, "job")["podIP"] == "10.244.3.2"
        assert cstatus(fake_api, "job")["state"]["terminated"]["exitCode"] == code


@pytest.mark.asyncio
async def test_on_failure_restarts_failed_container(fake_api, fake_runtime, fake_sandboxes) -> None:
    await fake_api.create("pods", pod("job", policy="OnFailure"), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(lambda: fake_runtime.started == [("app", 0)])
        fake_runtime.exit("app", 2)
        await until(lambda: ("app", 1) in fake_runtime.started)
        fake_runtime.exit("app", 0)
        await until(lambda: status_of(fake_api, "job").get("phase") == "Succeeded")


@pytest.mark.asyncio
async def test_image_error_waits_and_crashes_nothing(
    fake_api, fake_runtime, fake_sandboxes
) -> None:
    await fake_api.create(
        "pods",
        pod("bad", {"name": "app", "image": "missing:1"}, {"name": "ok", "image": "busybox"}),
        "default",
    )
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(
            lambda: cstatus(fake_api, "bad").get("state", {}).get("waiting", {}).get("reason")
            == "ErrImagePull"
        )
        assert "is not available" in cstatus(fake_api, "bad")["state"]["waiting"]["message"]
        await until(
            lambda: cstatus(fake_api, "bad")["state"]["waiting"]["reason"] == "ImagePullBackOff",
            within=3,
        )
        assert status_of(fake_api, "bad")["phase"] == "Pending"
        assert cstatus(fake_api, "bad", "ok")["state"].get("running") is not None


@pytest.mark.asyncio
async def test_graceful_deletion(fake_api, fake_runtime, fake_sandboxes) -> None:
    await fake_api.create("pods", pod("web"), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(lambda: status_of(fake_api, "web").get("phase") == "Running")
        uid = fake_api.pod("web")["metadata"]["uid"]
        await fake_api.delete("pods", "web", "default", grace_period_seconds=7)
        await until(lambda: ("pods", "default", "web") not in fake_api.objects)
        assert [g for _, g in fake_runtime.stopped] == [7.0]
        assert fake_sandboxes.torn_down == [uid] and fake_runtime.cleaned[0] == uid
        assert fake_api.deletes[-1] == ("pods", "web", 0, uid)


@pytest.mark.asyncio
async def test_restart_adopts_running_containers_and_cleans_gone_pods(
    fake_api, fake_runtime, fake_sandboxes
) -> None:
    await fake_api.create("pods", pod("keep"), "default")
    await fake_api.create("pods", pod("gone"), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(lambda: len(fake_runtime.started) == 2)
        await until(lambda: status_of(fake_api, "keep").get("phase") == "Running")
    gone_uid = fake_api.pod("gone")["metadata"]["uid"]
    del fake_api.objects[("pods", "default", "gone")]  # deleted while the agent was down
    fake_sandboxes.orphans.append("pnt5-pod-halfmade")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(lambda: gone_uid in fake_runtime.cleaned)
        await asyncio.sleep(0.2)
        assert len(fake_runtime.started) == 2  # nothing restarted
        assert gone_uid in fake_sandboxes.torn_down
        assert fake_sandboxes.deleted_netns == ["pnt5-pod-halfmade"]
        assert status_of(fake_api, "keep")["phase"] == "Running"
        assert cstatus(fake_api, "keep")["ready"] is True


@pytest.mark.asyncio
async def test_liveness_failure_restarts_the_container(
    fake_api, fake_runtime, fake_sandboxes
) -> None:
    probe = {"exec": {"command": ["check", "live"]}, "periodSeconds": 0.05, "failureThreshold": 2}
    ready = {"exec": {"command": ["check", "ready"]}, "periodSeconds": 0.05}
    fake_runtime.exec_results["ready"] = 1
    await fake_api.create(
        "pods",
        pod(
            "probed",
            {"name": "app", "image": "busybox", "livenessProbe": probe, "readinessProbe": ready},
        ),
        "default",
    )
    async with running_manager(fake_api, fake_runtime, fake_sandboxes):
        await until(lambda: status_of(fake_api, "probed").get("phase") == "Running")
        await asyncio.sleep(0.2)
        assert cstatus(fake_api, "probed")["ready"] is False
        fake_runtime.exec_results["ready"] = 0
        await until(lambda: cstatus(fake_api, "probed").get("ready") is True)
        fake_runtime.exec_results["live"] = 1
        await until(lambda: ("app", 1) in fake_runtime.started)
        assert fake_runtime.stopped and fake_runtime.stopped[0][1] == 30.0
        await until(lambda: cstatus(fake_api, "probed").get("restartCount") == 1)
        assert cstatus(fake_api, "probed")["lastState"]["terminated"]["exitCode"] == 137


@pytest.mark.asyncio
async def test_resolve_follows_the_current_container(
    fake_api, fake_runtime, fake_sandboxes
) -> None:
    await fake_api.create("pods", pod("web"), "default")
    async with running_manager(fake_api, fake_runtime, fake_sandboxes) as manager:
        await until(lambda: manager.resolve("default", "web", "app") is not None)
        first = manager.resolve("default", "web", "app")
        assert manager.resolve("default", "web", "nope") is None
        fake_runtime.exit("app", 1)
        await until(lambda: manager.resolve("default", "web", "app") != first)
        assert manager.resolve("other", "web", "app") is None
