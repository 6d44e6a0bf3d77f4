"""Pod status as the kubelet reports it: a pure function from what the node observed to the
`status` object written through `pods/status`.

What belongs here: phase computation (upstream kubelet `getPhase`), the kubelet-owned pod
conditions (PodReadyToStartContainers, Initialized, ContainersReady, Ready) with
lastTransitionTime carried over from the previous status, containerStatuses, and the
comparison that decides whether a write is needed. No I/O, no clock: `now` is an argument.

Invariants:
- A condition's lastTransitionTime changes only when its status changes.
- `PodScheduled` belongs to the scheduler: it is carried over as written, or reported True
  (the pod is on this node) when absent.
- restartCount of a container = the attempt number of its current run (attempts start at 0).
- A terminal phase (Succeeded/Failed) never goes back: the caller passes `terminal=True` once it
  has reported one, and the kubelet stops restarting containers of that pod.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from podnet.agent.kubelet.cri import ContainerState
from podnet.api.meta import rfc3339

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL_PHASES = (SUCCEEDED, FAILED)


@dataclass(frozen=True, slots=True)
class ContainerView:
    """Everything the kubelet knows about one container of the pod spec."""

    name: str
    image: str
    image_id: str
    current: ContainerState | None  # the latest attempt, if any was started
    previous: ContainerState | None  # the attempt before it (lastState)
    waiting_reason: str | None = None  # ContainerCreating, CrashLoopBackOff, ErrImagePull, ...
    waiting_message: str | None = None
    ready: bool = False  # running and readiness probe (if any) succeeding
    started: bool = False  # running and startup probe (if any) passed


def terminated_state(run: ContainerState) -> dict[str, Any]:
    code = run.exit_code if run.exit_code is not None else 137
    state: dict[str, Any] = {
        "exitCode": code,
        "reason": run.reason or ("Completed" if code == 0 else "Error"),
        "containerID": f"podnet://{run.id}",
    }
    if run.message:
        state["message"] = run.message
    if run.started_at is not None:
        state["startedAt"] = rfc3339(run.started_at)
    if run.finished_at is not None:
        state["finishedAt"] = rfc3339(run.finished_at)
    return state


def container_status(view: ContainerView) -> dict[str, Any]:
    run = view.current
    status: dict[str, Any] = {
        "name": view.name,
        "image": view.image,
        "imageID": view.image_id,
        "ready": view.ready,
        "started": view.started,
        "restartCount": run.attempt if run is not None else 0,
        "lastState": {},
    }
    if run is not None:
        status["containerID"] = f"podnet://{run.id}"
    if view.waiting_reason is not None or run is None or run.creating:
        waiting: dict[str, Any] = {"reason": view.waiting_reason or "ContainerCreating"}
        if view.waiting_message:
            waiting["message"] = view.waiting_message
        status["state"] = {"waiting": waiting}
        # a container waiting to restart reports the run that ended as lastState
        if run is not None and not run.running and not run.creating:
            status["lastState"] = {"terminated": terminated_state(run)}
            return status
    elif run.running:
        running: dict[str, Any] = {}
        if run.started_at is not None:
            running["startedAt"] = rfc3339(run.started_at)
        status["state"] = {"running": running}
    else:
        status["state"] = {"terminated": terminated_state(run)}
    if view.previous is not None and not view.previous.running:
        status["lastState"] = {"terminated": terminated_state(view.previous)}
    return status


def compute_phase(views: Sequence[ContainerView], restart_policy: str) -> str:
    """Upstream kubelet `getPhase` for pods without init containers."""
    running = stopped = succeeded = waiting = 0
    for view in views:
        run = view.current
        if run is not None and run.running and view.waiting_reason is None:
            running += 1
        elif run is not None and run.creating:
            waiting += 1
        elif run is not None and not run.running:
            # terminated, or waiting to restart after a terminated run
            stopped += 1
            succeeded += run.exit_code == 0
        else:
            waiting += 1
    if waiting > 0:
        return PENDING
    if running > 0:
        return RUNNING
    if stopped > 0:
        if restart_policy == "Always":
            return RUNNING  # CrashLoopBackOff keeps an Always pod Running
        if stopped == succeeded:
            return SUCCEEDED
        if restart_policy == "Never":
            return FAILED
        return RUNNING  # OnFailure: the failed ones will be restarted
    return PENDING


def _condition(
    previous: Mapping[str, Mapping[str, Any]],
    kind: str,
    value: bool,
    now: datetime,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    status = "True" if value else "False"
    old = previous.get(kind)
    transition = (
        old["lastTransitionTime"]
        if old is not None and old.get("status") == status and old.get("lastTransitionTime")
        else rfc3339(now)
    )
    cond: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": transition,
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def compute_pod_status(
    pod: Mapping[str, Any],
    views: Sequence[ContainerView],
    *,
    pod_ip: str | None,
    host_ip: str,
    start_time: datetime,
    now: datetime,
    sandbox_ready: bool,
    terminal_phase: str | None = None,
) -> dict[str, Any]:
    """The whole `status` the kubelet writes for `pod` (fields it does not own are kept)."""
    old: Mapping[str, Any] = pod.get("status") or {}
    previous = {c.get("type", ""): c for c in old.get("conditions") or []}
    spec = pod.get("spec") or {}
    phase = terminal_phase or compute_phase(views, spec.get("restartPolicy", "Always"))

    unready = [v.name for v in views if not v.ready]
    if phase in TERMINAL_PHASES:
        ready_args: tuple[str | None, str | None] = ("PodCompleted", None)
        all_ready = False
    elif unready:
        names = " ".join(unready)
        ready_args = ("ContainersNotReady", f"containers with unready status: [{names}]")
        all_ready = False
    else:
        ready_args = (None, None)
        all_ready = True

    scheduled = previous.get("PodScheduled") or {
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": rfc3339(start_time),
    }
    conditions = [
        _condition(previous, "PodReadyToStartContainers", sandbox_ready, now),
        _condition(previous, "Initialized", True, now),
        _condition(previous, "Ready", all_ready, now, *ready_args),
        _condition(previous, "ContainersReady", all_ready, now, *ready_args),
        dict(scheduled),
    ]
    status: dict[str, Any] = {
        key: value
        for key, value in old.items()
        if key not in ("phase", "conditions", "containerStatuses", "podIP", "podIPs")
    }
    status.update(
        {
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": old.get("startTime") or rfc3339(start_time),
            "containerStatuses": [container_status(v) for v in views],
        }
    )
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    elif old.get("podIP"):
        # a terminal pod keeps reporting the IP it had
        status["podIP"] = old["podIP"]
        status["podIPs"] = old.get("podIPs") or [{"ip": old["podIP"]}]
    return status


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when `new` differs from what the API holds (so a write is needed)."""
    if not old:
        return True
    return any(old.get(key) != value for key, value in new.items())
