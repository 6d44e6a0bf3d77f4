"""`decisions.py` as tables: what the kubelet does with one container, and back-off arithmetic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from podnet.agent.kubelet.cri import ContainerState
from podnet.agent.kubelet.decisions import (
    BackOff,
    Decision,
    Runs,
    StartFailure,
    latest_runs,
    next_backoff,
    plan_container,
)
from podnet.testing.kubelet import container_state

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
BASE, CAP = 10.0, 300.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(
    attempt: int = 0,
    *,
    running: bool = False,
    code: int | None = None,
    finished: float | None = None,
    reason: str | None = None,
    name: str = "app",
) -> ContainerState:
    return container_state(
        name,
        attempt,
        running=running,
        exit_code=code,
        started_at=T0,
        finished_at=None if finished is None else at(finished),
        reason=reason,
    )


RUNNING = run(running=True)
CREATING = run(reason="ContainerCreating")
PULL_FAILED = StartFailure("ErrImagePull", 'image "nope" not found', T0, BackOff(10.0, T0))
CREATE_FAILED = StartFailure("CreateContainerError", "OSError: no space", T0, BackOff(10.0, T0))
CRASHLOOP_MESSAGE = "back-off 10s restarting failed container=app pod=web_default(u1)"


@dataclass(frozen=True)
class Case:
    current: ContainerState | None = None
    policy: str = "Always"
    liveness: str | None = None
    backoff: BackOff | None = None
    start_failure: StartFailure | None = None
    now: float = 0.0


CASES: list[tuple[str, Case, Decision]] = [
    # (what, given, expected)
    ("never started: start attempt 0", Case(), Decision("start", 0)),
    ("running: keep", Case(RUNNING), Decision("keep")),
    (
        "running, liveness failed: kill",
        Case(RUNNING, liveness="Liveness probe failed: HTTP probe failed with statuscode: 500"),
        Decision(
            "kill", kill_reason="Liveness probe failed: HTTP probe failed with statuscode: 500"
        ),
    ),
    ("its shim is still creating it: keep", Case(CREATING), Decision("keep")),
    (
        "Always, exit 0: the first restart is immediate, and starts the back-off",
        Case(run(code=0, finished=0)),
        Decision("start", 1, backoff=BackOff(10.0, T0)),
    ),
    ("OnFailure, exit 0: keep", Case(run(code=0), "OnFailure"), Decision("keep")),
    (
        "OnFailure, exit 1: restart",
        Case(run(code=1), "OnFailure"),
        Decision("start", 1, backoff=BackOff(10.0, T0)),
    ),
    ("Never, exit 0: keep", Case(run(code=0), "Never"), Decision("keep")),
    ("Never, exit 1: keep", Case(run(code=1), "Never"), Decision("keep")),
    (
        "second crash within its back-off: CrashLoopBackOff until finished + delay",
        Case(run(1, code=1, finished=1), backoff=BackOff(10.0, T0), now=6),
        Decision(
            "wait",
            waiting_reason="CrashLoopBackOff",
            waiting_message=CRASHLOOP_MESSAGE,
            backoff=BackOff(10.0, T0),
            retry_in=5.0,
        ),
    ),
    (
        "back-off over: restart with the delay doubled",
        Case(run(1, code=1, finished=1), backoff=BackOff(10.0, T0), now=11),
        Decision("start", 2, backoff=BackOff(20.0, at(11))),
    ),
    (
        "a stale back-off (older than 2 * cap) is forgotten",
        Case(run(3, code=1, finished=601), backoff=BackOff(160.0, T0), now=601),
        Decision("start", 4, backoff=BackOff(10.0, at(601))),
    ),
    (
        "image pull failed: ErrImagePull for a second",
        Case(start_failure=PULL_FAILED, now=0.1),
        Decision(
            "wait",
            waiting_reason="ErrImagePull",
            waiting_message='image "nope" not found',
            retry_in=1.0,
        ),
    ),
    (
        "then ImagePullBackOff",
        Case(start_failure=PULL_FAILED, now=3),
        Decision(
            "wait",
            waiting_reason="ImagePullBackOff",
            waiting_message='Back-off pulling image "busybox": image "nope" not found',
            retry_in=1.0,
        ),
    ),
    ("then a new try", Case(start_failure=PULL_FAILED, now=10), Decision("start", 0)),
    (
        "other start failures keep their reason during the back-off",
        Case(start_failure=CREATE_FAILED, now=5),
        Decision(
            "wait",
            waiting_reason="CreateContainerError",
            waiting_message="OSError: no space",
            retry_in=1.0,
        ),
    ),
    (
        "a start failure of a later attempt retries with the next attempt",
        Case(run(2, code=1, finished=0), start_failure=CREATE_FAILED, now=10),
        Decision("start", 3),
    ),
    (
        "a running container is not held back by an old start failure",
        Case(RUNNING, start_failure=CREATE_FAILED, now=1),
        Decision("keep"),
    ),
]


@pytest.mark.parametrize(("given", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_container(given: Case, expected: Decision) -> None:
    decision = plan_container(
        pod_label="web_default(u1)",
        name="app",
        image="busybox",
        restart_policy=given.policy,
        current=given.current,
        liveness_failure=given.liveness,
        backoff=given.backoff,
        start_failure=given.start_failure,
        now=at(given.now),
        base=BASE,
        cap=CAP,
    )
    assert decision == expected


@pytest.mark.parametrize(
    ("entry", "now", "expected"),
    [
        (None, 0, BackOff(10.0, T0)),  # the first restart waits base
        (BackOff(10.0, T0), 5, BackOff(20.0, at(5))),
        (BackOff(160.0, T0), 5, BackOff(300.0, at(5))),  # capped
        (BackOff(300.0, T0), 5, BackOff(300.0, at(5))),
        (BackOff(300.0, T0), 600, BackOff(300.0, at(600))),  # exactly 2 * cap: still kept
        (BackOff(300.0, T0), 601, BackOff(10.0, at(601))),  # older: forgotten
    ],
)
def test_next_backoff(entry: BackOff | None, now: float, expected: BackOff) -> None:
    assert next_backoff(entry, at(now), BASE, CAP) == expected


def test_latest_runs_keep_current_and_previous_and_list_older() -> None:
    side = run(running=True, name="side")
    runs = [run(a, code=1) for a in (1, 3, 0, 2)] + [side]
    out = latest_runs(runs, ["app", "side", "never"])
    assert out["app"] == Runs(run(3, code=1), run(2, code=1), (run(1, code=1), run(0, code=1)))
    assert out["side"] == Runs(side)
    assert out["never"] == Runs()
