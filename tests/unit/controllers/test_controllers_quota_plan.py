"""`quota_usage`: what a namespace uses of a ResourceQuota, as `kubectl describe quota` shows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from podnet.controllers.resourcequota import format_quantity, quota_usage

Obj = dict[str, Any]


def pod(
    cpu: str | None = None, memory: str | None = None, phase: str = "Running", **spec: Any
) -> Obj:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    container: Obj = {"name": "c", "image": "x"}
    if requests:
        container["resources"] = {"requests": requests, "limits": requests}
    return {
        "metadata": {"name": "p"},
        "spec": {"containers": [container], **spec},
        "status": {"phase": phase},
    }


OBJECTS: dict[str, list[Obj]] = {
    "pods": [pod("250m", "64Mi"), pod("1", "128Mi"), pod("2", "1Gi", phase="Succeeded"), pod()],
    "services": [
        {
            "metadata": {"name": "a"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]},
        },
        {"metadata": {"name": "b"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}},
    ],
    "configmaps": [{"metadata": {"name": "x"}}],
    "persistentvolumeclaims": [
        {"metadata": {"name": "d"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}
    ],
}


def quota(hard: dict[str, str], scopes: list[str] | None = None) -> Obj:
    spec: Obj = {"hard": hard}
    if scopes:
        spec["scopes"] = scopes
    return {"metadata": {"name": "q"}, "spec": spec}


def test_usage_of_pods_objects_and_storage() -> None:
    hard = {
        "pods": "10",
        "requests.cpu": "4",
        "limits.memory": "8Gi",
        "services": "5",
        "services.nodeports": "2",
        "count/configmaps": "10",
        "requests.storage": "10Gi",
        "count/deployments.apps": "3",
    }
    status = quota_usage(quota(hard), lambda plural: OBJECTS.get(plural, []))
    assert status["hard"] == hard
    assert status["used"] == {
        "count/configmaps": "1",
        "count/deployments.apps": "0",
        "limits.memory": "192Mi",
        "pods": "3",
        "requests.cpu": "1250m",
        "requests.storage": "1Gi",
        "services": "2",
        "services.nodeports": "1",
    }


def test_scopes_narrow_the_pods() -> None:
    best_effort = quota_usage(quota({"pods": "5"}, ["BestEffort"]), lambda p: OBJECTS.get(p, []))
    assert best_effort["used"] == {"pods": "1"}
    terminating = quota_usage(quota({"pods": "5"}, ["Terminating"]), lambda p: OBJECTS.get(p, []))
    assert terminating["used"] == {"pods": "0"}


@pytest.mark.parametrize(
    ("value", "cpu", "text"),
    [
        ("2", True, "2"),
        ("0.5", True, "500m"),
        ("1073741824", False, "1Gi"),
        ("1000", False, "1000"),
    ],
)
def test_quantities(value: str, cpu: bool, text: str) -> None:
    assert format_quantity(Decimal(value), cpu) == text
