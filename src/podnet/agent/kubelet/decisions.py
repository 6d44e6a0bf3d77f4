"""What the kubelet does with each container of a live pod: pure decisions, no I/O, no clock.

What belongs here: `plan_container` (start / kill / wait / keep, from the container's current
run, the restart policy, liveness, crash-loop and image-pull back-off), the back-off arithmetic
(`next_backoff`, upstream's `flowcontrol.Backoff`) and `latest_runs`, which sorts a pod's runs
into current, previous and older attempts. The pod loop (`pods.py`) applies the decisions
through the runtime; `tests/unit/kubelet/test_kubelet_decisions.py` holds their tables.

Invariants:
- Back-off per container: the first restart is immediate, then base, 2*base, ... capped
  (upstream 10 s doubling to 5 min); an entry older than 2*cap is forgotten.
- A running container is kept unless its liveness probe failed; a container whose shim is
  still creating it is left alone.
- A start failure (ErrImagePull, CreateContainerError) is reported as its own reason for the
  first second, an image pull failure then as ImagePullBackOff, until its back-off expires.
- Every "wait" says when to look again (`retry_in`), so the loop never polls blindly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from podnet.agent.kubelet.cri import ContainerState

Action = Literal["start", "kill", "wait", "keep"]
START_FAILURE_RECHECK = 1.0  # seconds: a start failure's reason turns into ImagePullBackOff
CRASHLOOP_MIN_RECHECK = 0.05


@dataclass(frozen=True, slots=True)
class BackOff:
    """Restart back-off of one container (or image pull back-off)."""

    delay: float  # seconds to wait after the last failure before the next try
    updated: datetime  # when the delay was last raised


def next_backoff(entry: BackOff | None, now: datetime, base: float, cap: float) -> BackOff:
    """Upstream flowcontrol.Backoff.Next: start at base, double up to cap, reset when stale."""
    if entry is None or (now - entry.updated).total_seconds() > 2 * cap:
        return BackOff(base, now)
    return BackOff(min(entry.delay * 2, cap), now)


@dataclass(frozen=True, slots=True)
class StartFailure:
    """The runtime could not start a container: a bad image (ErrImagePull) or anything else
    (CreateContainerError); retried with back-off, reported as a waiting reason."""

    reason: str
    message: str
    at: datetime
    backoff: BackOff


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    attempt: int = 0  # for start
    waiting_reason: str | None = None
    waiting_message: str | None = None
    backoff: BackOff | None = None  # the container's back-off entry after this decision
    kill_reason: str = ""
    retry_in: float | None = None  # for wait: seconds until the pod should be looked at again


def should_restart(restart_policy: str, exit_code: int | None) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def plan_container(
    *,
    pod_label: str,
    name: str,
    image: str,
    restart_policy: str,
    current: ContainerState | None,
    liveness_failure: str | None,
    backoff: BackOff | None,
    start_failure: StartFailure | None,
    now: datetime,
    base: float,
    cap: float,
) -> Decision:
    """What to do with one container of a live (non-terminal) pod, and what to report."""
    if start_failure is not None and (current is None or not current.running):
        ready_at = start_failure.at + timedelta(seconds=start_failure.backoff.delay)
        if now < ready_at:
            pull_error = start_failure.reason == "ErrImagePull"
            if not pull_error or now - start_failure.at < timedelta(seconds=1):
                return Decision(
                    "wait",
                    waiting_reason=start_failure.reason,
                    waiting_message=start_failure.message,
                    backoff=backoff,
                    retry_in=START_FAILURE_RECHECK,
                )
            return Decision(
                "wait",
                waiting_reason="ImagePullBackOff",
                waiting_message=f'Back-off pulling image "{image}": {start_failure.message}',
                backoff=backoff,
                retry_in=START_FAILURE_RECHECK,
            )
        attempt = 0 if current is None else current.attempt + 1
        return Decision("start", attempt=attempt, backoff=backoff)
    if current is None:
        return Decision("start", attempt=0, backoff=backoff)
    if current.running:
        if liveness_failure is not None:
            return Decision("kill", kill_reason=liveness_failure, backoff=backoff)
        return Decision("keep", backoff=backoff)
    if current.creating:
        return Decision("keep", backoff=backoff)  # its shim is still starting it
    if not should_restart(restart_policy, current.exit_code):
        return Decision("keep", backoff=backoff)
    if backoff is not None and (now - backoff.updated).total_seconds() <= 2 * cap:
        finished = current.finished_at or now
        restart_at = finished + timedelta(seconds=backoff.delay)
        if now < restart_at:
            return Decision(
                "wait",
                waiting_reason="CrashLoopBackOff",
                waiting_message=(
                    f"back-off {backoff.delay:g}s restarting failed container={name} "
                    f"pod={pod_label}"
                ),
                backoff=backoff,
                retry_in=max((restart_at - now).total_seconds(), CRASHLOOP_MIN_RECHECK),
            )
    return Decision(
        "start", attempt=current.attempt + 1, backoff=next_backoff(backoff, now, base, cap)
    )


@dataclass(frozen=True, slots=True)
class Runs:
    """The runs of one container: the latest attempt, the one before (lastState and `logs
    --previous`), and older ones, which the runtime no longer needs to keep."""

    current: ContainerState | None = None
    previous: ContainerState | None = None
    older: tuple[ContainerState, ...] = ()


def latest_runs(runs: Sequence[ContainerState], names: Sequence[str]) -> dict[str, Runs]:
    """Per container name (every name in `names`, and any other name a run has)."""
    by_name: dict[str, list[ContainerState]] = {n: [] for n in names}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    out: dict[str, Runs] = {}
    for name, items in by_name.items():
        items.sort(key=lambda r: r.attempt, reverse=True)
        out[name] = Runs(
            items[0] if items else None, items[1] if len(items) > 1 else None, tuple(items[2:])
        )
    return out
