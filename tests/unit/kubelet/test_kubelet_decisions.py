"""Container decisions: restart policy, crash-loop back-off, image pull back-off (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from podnet.agent.kubelet.pods import (
    BackOff,
    StartFailure,
    container_env,
    latest_runs,
    next_backoff,
    plan_container,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Run:
    id: str
    name: str
    attempt: int
    running: bool
    exit_code: int | None = None
    started_at: datetime | None = T0
    finished_at: datetime | None = None
    reason: str | None = None
    message: str | None = None


def plan(current: Run | None, policy: str = "Always", now: datetime = T0, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "pod_label": "web_default(u1)",
        "name": "app",
        "image": "busybox",
        "restart_policy": policy,
        "current": current,
        "liveness_failure": None,
        "backoff": None,
        "start_failure": None,
        "now": now,
        "base": 10.0,
        "cap": 300.0,
    }
    args.update(kw)
    return plan_container(**args)  # type: ignore[arg-type]


def exited(code: int, attempt: int = 0, at: datetime = T0) -> Run:
    return Run(f"c{attempt}", "app", attempt, False, code, T0, at)


def test_never_started_container_starts_at_attempt_zero() -> None:
    d = plan(None)
    assert (d.action, d.attempt) == ("start", 0)


def test_running_container_is_kept_and_killed_only_on_liveness_failure() -> None:
    run = Run("c0", "app", 0, True)
    assert plan(run).action == "keep"
    d = plan(run, liveness_failure="Liveness probe failed: HTTP probe failed with statuscode: 500")
    assert d.action == "kill" and "statuscode: 500" in d.kill_reason


@pytest.mark.parametrize(
    ("policy", "code", "action"),
    [
        ("Always", 0, "start"),
        ("Always", 1, "start"),
        ("OnFailure", 0, "keep"),
        ("OnFailure", 1, "start"),
        ("Never", 0, "keep"),
        ("Never", 1, "keep"),
    ],
)
def test_restart_policy(policy: str, code: int, action: str) -> None:
    assert plan(exited(code), policy).action == action


def test_first_restart_is_immediate_then_back_off_doubles_to_the_cap() -> None:
    d = plan(exited(1))
    assert (d.action, d.attempt) == ("start", 1)
    assert d.backoff == BackOff(10.0, T0)
    # crashes again at T0+1s: wait until finished + 10s
    crash = T0 + timedelta(seconds=1)
    d2 = plan(exited(1, 1, crash), now=crash + timedelta(seconds=5), backoff=d.backoff)
    assert d2.action == "wait" and d2.waiting_reason == "CrashLoopBackOff"
    assert d2.waiting_message == (
        "back-off 10s restarting failed container=app pod=web_default(u1)"
    )
    later = crash + timedelta(seconds=10)
    d3 = plan(exited(1, 1, crash), now=later, backoff=d.backoff)
    assert (d3.action, d3.attempt) == ("start", 2)
    assert d3.backoff == BackOff(20.0, later)
    delays = []
    entry: BackOff | None = None
    for _ in range(8):
        entry = next_backoff(entry, T0, 10.0, 300.0)
        delays.append(entry.delay)
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]


def test_stale_back_off_is_forgotten() -> None:
    old = BackOff(160.0, T0)
    now = T0 + timedelta(seconds=601)
    assert next_backoff(old, now, 10.0, 300.0) == BackOff(10.0, now)
    d = plan(exited(1, 3, now), now=now, backoff=old)
    assert d.action == "start"


def test_image_start_failure_then_back_off_then_retry() -> None:
    failure = StartFailure("ErrImagePull", 'image "nope" not found', T0, BackOff(10.0, T0))
    d = plan(None, start_failure=failure, now=T0 + timedelta(milliseconds=100))
    assert (d.action, d.waiting_reason) == ("wait", "ErrImagePull")
    d = plan(None, start_failure=failure, now=T0 + timedelta(seconds=3))
    assert d.waiting_reason == "ImagePullBackOff"
    assert d.waiting_message == 'Back-off pulling image "busybox": image "nope" not found'
    d = plan(None, start_failure=failure, now=T0 + timedelta(seconds=10))
    assert (d.action, d.attempt) == ("start", 0)


def test_latest_runs_keep_current_and_previous_and_list_older() -> None:
    runs = [exited(1, a) for a in range(4)] + [Run("s0", "side", 0, True)]
    out = latest_runs(runs, ["app", "side", "never"])
    current, previous, older = out["app"]
    assert (current.attempt, previous.attempt) == (3, 2)  # type: ignore[union-attr]
    assert [r.attempt for r in older] == [1, 0]
    assert out["side"][0] is runs[-1] and out["side"][1] is None
    assert out["never"] == (None, None, [])


def test_env_resolves_field_refs_after_service_variables() -> None:
    pod = {
        "metadata": {"name": "web", "namespace": "team", "labels": {"app": "x"}},
        "spec": {"nodeName": "node1"},
        "status": {"podIP": "10.244.0.5"},
    }
    container = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "KUBERNETES_SERVICE_HOST", "value": "override"},
        ]
    }
    env = container_env(container, pod, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "Z": "z"})
    assert env == (
        ("KUBERNETES_SERVICE_HOST", "override"),
        ("Z", "z"),
        ("A", "1"),
        ("POD", "web"),
        ("IP", "10.244.0.5"),
        ("APP", "x"),
    )


def test_other_start_failures_keep_their_reason_during_back_off() -> None:
    failure = StartFailure("CreateContainerError", "OSError: no space", T0, BackOff(10.0, T0))
    d = plan(None, start_failure=failure, now=T0 + timedelta(seconds=5))
    assert (d.action, d.waiting_reason, d.waiting_message) == (
        "wait",
        "CreateContainerError",
        "OSError: no space",
    )
