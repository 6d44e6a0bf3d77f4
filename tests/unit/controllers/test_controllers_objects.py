"""The control loops' object readers: conditions and pod availability."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from podnet.controllers.objects import get_condition, pod_available, pod_is_ready, set_condition

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    conditions = set_condition([], {"type": "Ready", "status": "False", "reason": "A"}, T0)
    pod = {"status": {"conditions": conditions}}
    cond = get_condition(pod, "Ready")
    assert cond is not None and cond["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    later = T0 + timedelta(minutes=5)
    # same status, new reason: the transition time stays
    conditions = set_condition(
        conditions, {"type": "Ready", "status": "False", "reason": "B"}, later
    )
    assert conditions == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "B",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
        }
    ]
    conditions = set_condition(conditions, {"type": "Ready", "status": "True"}, later)
    pod = {"status": {"conditions": conditions}}
    cond = get_condition(pod, "Ready")
    assert cond is not None and cond["lastTransitionTime"] == "2024-05-01T12:05:00Z"
    assert pod_is_ready(pod)
    assert get_condition(pod, "Initialized") is None


def test_pod_available_after_min_ready_seconds() -> None:
    pod = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"}
            ]
        }
    }
    assert pod_available(pod, 0, T0)
    assert not pod_available(pod, 10, T0 + timedelta(seconds=9))
    assert pod_available(pod, 10, T0 + timedelta(seconds=10))
    assert not pod_available({"status": {}}, 0, T0)
