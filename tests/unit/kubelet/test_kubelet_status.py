"""Pod phase, conditions and containerStatuses as the kubelet reports them (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from podnet.agent.kubelet.cri import ContainerState
from podnet.agent.kubelet.status import (
    ContainerView,
    compute_phase,
    compute_pod_status,
    container_status,
    status_changed,
)
from podnet.testing.kubelet import container_state

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)


def running(attempt: int = 0) -> ContainerState:
    return container_state("c", attempt, running=True, started_at=T0)


def exited(code: int, attempt: int = 0) -> ContainerState:
    return container_state("c", attempt, exit_code=code, started_at=T0, finished_at=T1)


def view(current: ContainerState | None, **kw: object) -> ContainerView:
    return ContainerView("app", "busybox", "busybox", current, None, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("states", "policy", "phase"),
    [
        ([None], "Always", "Pending"),
        ([running()], "Always", "Running"),
        ([running(), None], "Always", "Pending"),
        ([exited(0)], "Always", "Running"),
        ([exited(1)], "Always", "Running"),
        ([exited(0)], "OnFailure", "Succeeded"),
        ([exited(1)], "OnFailure", "Running"),
        ([exited(0)], "Never", "Succeeded"),
        ([exited(1)], "Never", "Failed"),
        ([exited(0), exited(2)], "Never", "Failed"),
        ([exited(1), running()], "Never", "Running"),
        ([exited(0), exited(0)], "OnFailure", "Succeeded"),
    ],
)
def test_phase_follows_upstream_get_phase(
    states: list[ContainerState | None], policy: str, phase: str
) -> None:
    assert compute_phase([view(s) for s in states], policy) == phase


def test_waiting_for_first_start_after_image_error_is_pending() -> None:
    v = view(None, waiting_reason="ErrImagePull", waiting_message="no such image")
    assert compute_phase([v], "Always") == "Pending"
    assert container_status(v)["state"] == {
        "waiting": {"reason": "ErrImagePull", "message": "no such image"}
    }


def test_crash_loop_reports_waiting_with_last_terminated_state() -> None:
    v = ContainerView(
        "app",
        "busybox",
        "busybox",
        exited(3, attempt=2),
        exited(3, attempt=1),
        waiting_reason="CrashLoopBackOff",
        waiting_message="back-off 20s",
    )
    assert container_status(v) == {
        "name": "app",
        "image": "busybox",
        "imageID": "busybox",
        "ready": False,
        "started": False,
        "restartCount": 2,
        "containerID": "podnet://c2",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
        "lastState": {
            "terminated": {
                "exitCode": 3,
                "reason": "Error",
                "containerID": "podnet://c2",
                "startedAt": "2026-01-01T12:00:00Z",
                "finishedAt": "2026-01-01T12:00:05Z",
            }
        },
    }


def test_running_after_restart_shows_previous_run_as_last_state() -> None:
    v = ContainerView("app", "busybox", "busybox", running(1), exited(0), ready=True, started=True)
    status = container_status(v)
    assert status["state"] == {"running": {"startedAt": "2026-01-01T12:00:00Z"}}
    assert status["lastState"]["terminated"]["reason"] == "Completed"
    assert status["restartCount"] == 1


def pod(status: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
        "spec": {"restartPolicy": "Always", "containers": [{"name": "app"}]},
        "status": status or {"phase": "Pending", "qosClass": "BestEffort"},
    }


def test_pod_status_shape_and_conditions() -> None:
    status = compute_pod_status(
        pod(),
        [view(running(), ready=True, started=True)],
        pod_ip="10.244.0.2",
        host_ip="172.31.0.10",
        start_time=T0,
        now=T1,
        sandbox_ready=True,
    )
    assert status["phase"] == "Running"
    assert status["qosClass"] == "BestEffort"  # fields the kubelet does not own are kept
    assert status["podIP"] == "10.244.0.2" and status["podIPs"] == [{"ip": "10.244.0.2"}]
    assert status["hostIPs"] == [{"ip": "172.31.0.10"}]
    assert status["startTime"] == "2026-01-01T12:00:00Z"
    kinds = {c["type"]: c["status"] for c in status["conditions"]}
    assert kinds == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }


def test_unready_containers_are_named_and_transition_time_is_kept() -> None:
    first = compute_pod_status(
        pod(),
        [view(running())],
        pod_ip="10.244.0.2",
        host_ip="h",
        start_time=T0,
        now=T0,
        sandbox_ready=True,
    )
    ready = next(c for c in first["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ContainersNotReady"
    assert ready["message"] == "containers with unready status: [app]"
    later = compute_pod_status(
        pod(first),
        [view(running())],
        pod_ip="10.244.0.2",
        host_ip="h",
        start_time=T0,
        now=T1,
        sandbox_ready=True,
    )
    assert later["conditions"] == first["conditions"]
    assert not status_changed(first, later)
    flipped = compute_pod_status(
        pod(first),
        [view(running(), ready=True)],
        pod_ip="10.244.0.2",
        host_ip="h",
        start_time=T0,
        now=T1,
        sandbox_ready=True,
    )
    ready = next(c for c in flipped["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"] == "2026-01-01T12:00:05Z"
    assert status_changed(first, flipped)


def test_terminal_pod_keeps_its_ip_and_reports_pod_completed() -> None:
    earlier = {"phase": "Running", "podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}]}
    status = compute_pod_status(
        pod(earlier),
        [view(exited(0))],
        pod_ip=None,
        host_ip="h",
        start_time=T0,
        now=T1,
        sandbox_ready=False,
        terminal_phase="Succeeded",
    )
    assert status["phase"] == "Succeeded"
    assert status["podIP"] == "10.244.0.9"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")
