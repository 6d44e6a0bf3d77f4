"""`plan_budget`: a PodDisruptionBudget's status from its pods and their controllers' scale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podnet.api.meta import rfc3339
from podnet.controllers.disruption import plan_budget

Obj = dict[str, Any]
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
RS = {"kind": "ReplicaSet", "name": "web-1", "uid": "rs-uid", "controller": True}


def pod(name: str, ready: bool = True, owner: Obj | None = RS, deleting: bool = False) -> Obj:
    meta: Obj = {"name": name, "namespace": "d", "labels": {"app": "web"}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    if deleting:
        meta["deletionTimestamp"] = rfc3339(NOW)
    return {
        "metadata": meta,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def budget(status: Obj | None = None, generation: int = 1, **spec: Any) -> Obj:
    return {
        "metadata": {"name": "web", "namespace": "d", "generation": generation},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec},
        "status": status or {},
    }


def scale(pod: Obj) -> tuple[str, int] | None:
    return ("deploy-uid", 4)  # every pod's ReplicaSet belongs to a Deployment of 4


def status_of(plan: Any) -> Obj | None:
    return plan.writes[0].obj["status"] if plan.writes else None


@pytest.mark.parametrize(
    ("spec", "pods", "expected", "desired", "healthy", "allowed"),
    [
        ({"minAvailable": 2}, [pod("a"), pod("b"), pod("c")], 3, 2, 3, 1),
        ({"minAvailable": 3}, [pod("a"), pod("b"), pod("c", ready=False)], 3, 3, 2, 0),
        ({"minAvailable": "50%"}, [pod("a"), pod("b"), pod("c")], 4, 2, 3, 1),  # from the scale
        ({"maxUnavailable": 1}, [pod("a"), pod("b"), pod("c"), pod("d")], 4, 3, 4, 1),
        ({"maxUnavailable": "30%"}, [pod("a"), pod("b"), pod("c"), pod("d")], 4, 2, 4, 2),
        ({"maxUnavailable": 0}, [pod("a"), pod("b", deleting=True)], 4, 4, 1, 0),
        ({"minAvailable": 0}, [], 0, 0, 0, 0),  # nothing expected: nothing allowed
    ],
)
def test_counts(
    spec: Obj, pods: list[Obj], expected: int, desired: int, healthy: int, allowed: int
) -> None:
    status = status_of(plan_budget(budget(**spec), pods, scale, NOW))
    assert status is not None
    assert (
        status["expectedPods"],
        status["desiredHealthy"],
        status["currentHealthy"],
        status["disruptionsAllowed"],
    ) == (expected, desired, healthy, allowed)
    cond = status["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"], cond["observedGeneration"]) == (
        "DisruptionAllowed",
        "True" if allowed else "False",
        "SufficientPods" if allowed else "InsufficientPods",
        1,
    )


def test_recent_disruptions_do_not_count_and_expire() -> None:
    recent = rfc3339(NOW - timedelta(seconds=30))
    old = rfc3339(NOW - timedelta(minutes=3))
    pdb = budget({"disruptedPods": {"a": recent, "b": old, "gone": recent}}, minAvailable=1)
    plan = plan_budget(pdb, [pod("a"), pod("b"), pod("c")], scale, NOW)
    status = status_of(plan)
    assert status is not None
    assert status["disruptedPods"] == {"a": recent}  # b expired, "gone" has no pod
    assert status["currentHealthy"] == 2
    assert plan.requeue_after == pytest.approx(90.05)  # when a's entry expires


def test_settled_status_writes_nothing() -> None:
    first = status_of(plan_budget(budget(minAvailable=1), [pod("a"), pod("b")], scale, NOW))
    later = NOW + timedelta(minutes=5)
    again = plan_budget(budget(first, minAvailable=1), [pod("a"), pod("b")], scale, later)
    assert again.writes == []
    bumped = plan_budget(budget(first, generation=2, minAvailable=1), [pod("a")], scale, later)
    status = status_of(bumped)
    assert status is not None and status["observedGeneration"] == 2
    cond = status["conditions"][0]
    assert cond["lastTransitionTime"] == rfc3339(later)  # True -> False


def test_unmanaged_pods_and_missing_controllers() -> None:
    plan = plan_budget(budget(maxUnavailable=1), [pod("a"), pod("loose", owner=None)], scale, NOW)
    assert plan.unmanaged == ["loose"]
    status = status_of(plan)
    assert status is not None and status["expectedPods"] == 4
    failed = plan_budget(budget(maxUnavailable=1), [pod("a")], lambda p: None, NOW)
    status = status_of(failed)
    assert status is not None and status["disruptionsAllowed"] == 0
    cond = status["conditions"][0]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False",
        "SyncFailed",
        'found no controllers for pod "a"',
    )
    # minAvailable as a number needs no controller at all
    plain = plan_budget(budget(minAvailable=1), [pod("loose", owner=None)], lambda p: None, NOW)
    assert plain.unmanaged == [] and status_of(plain) is not None
