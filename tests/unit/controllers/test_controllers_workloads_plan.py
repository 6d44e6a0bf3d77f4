"""ReplicaSet and Deployment planners: counts, rollout arithmetic, status, revisions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podnet.api.meta import rfc3339
from podnet.controllers.deployment import (
    POD_TEMPLATE_HASH,
    REVISION,
    SAFE_ALPHANUMS,
    deployment_status,
    plan_deployment,
    pod_template_hash,
    resolve_fenceposts,
    scaled_value,
)
from podnet.controllers.replicaset import plan_replicaset

Obj = dict[str, Any]
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
LABELS = {"app": "web"}


def rs(name: str = "web-abc", replicas: int = 3, uid: str = "rs-uid", **spec: Any) -> Obj:
    body: Obj = {
        "replicas": replicas,
        "selector": {"matchLabels": LABELS},
        "template": {
            "metadata": {"labels": LABELS},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    }
    body.update(spec)
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 2},
        "spec": body,
    }


def pod(
    name: str,
    owner: str | None = "rs-uid",
    ready: bool = True,
    phase: str = "Running",
    node: str | None = "n1",
    labels: dict[str, str] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    ready_since: datetime | None = None,
    deleting: bool = False,
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "labels": LABELS if labels is None else labels,
        "creationTimestamp": created,
        "resourceVersion": "5",
    }
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-abc",
                "uid": owner,
                "controller": True,
            }
        ]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    since = rfc3339(ready_since or NOW - timedelta(hours=1))
    spec: Obj = {"containers": [{"name": "c"}]}
    if node:
        spec["nodeName"] = node
    return {
        "metadata": meta,
        "spec": spec,
        "status": {
            "phase": phase,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": since,
                }
            ],
        },
    }


# --- ReplicaSet ------------------------------------------------------------------------------


def test_replicaset_creates_missing_pods_from_the_template() -> None:
    plan = plan_replicaset(rs(replicas=3), [pod("a")], NOW)
    assert len(plan.creates) == 2
    p = plan.creates[0]
    assert p["metadata"]["generateName"] == "web-abc-"
    assert p["metadata"]["labels"] == LABELS
    assert p["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-abc",
            "uid": "rs-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert p["spec"] == {"containers": [{"name": "c", "image": "busybox"}]}


def test_replicaset_scale_down_removes_least_valuable_first() -> None:
    pods = [
        pod("running-old", created="2026-01-01T00:00:00Z"),
        pod("running-new", created="2026-01-01T00:05:00Z"),
        pod("not-ready", ready=False),
        pod("unscheduled", node=None, phase="Pending", ready=False),
    ]
    plan = plan_replicaset(rs(replicas=1), pods, NOW)
    assert [p["metadata"]["name"] for p in plan.deletes] == [
        "unscheduled",
        "not-ready",
        "running-new",
    ]
    assert plan.creates == []


def test_replicaset_adopts_orphans_and_releases_mismatches() -> None:
    pods = [
        pod("orphan", owner=None),
        pod("mine"),
        pod("relabeled", labels={"app": "x"}),
        pod("foreign", owner="other-uid"),
    ]
    plan = plan_replicaset(rs(replicas=2), pods, NOW)
    assert [p["metadata"]["name"] for p in plan.adopt] == ["orphan"]
    assert [p["metadata"]["name"] for p in plan.release] == ["relabeled"]
    assert plan.creates == [] and plan.deletes == []
    writes = plan.writes(rs(replicas=2))
    assert [(w.verb, w.name) for w in writes] == [("patch", "orphan"), ("patch", "relabeled")]
    assert writes[0].patch["metadata"]["ownerReferences"][0]["uid"] == "rs-uid"
    assert writes[1].patch["metadata"]["ownerReferences"] is None


def test_replicaset_replaces_failed_and_deleting_pods() -> None:
    pods = [pod("ok"), pod("failed", phase="Failed"), pod("going", deleting=True)]
    plan = plan_replicaset(rs(replicas=3), pods, NOW)
    assert [p["metadata"]["name"] for p in plan.deletes] == ["failed"]
    assert len(plan.creates) == 2


def test_replicaset_status_and_min_ready_seconds() -> None:
    pods = [pod("a"), pod("b", ready_since=NOW - timedelta(seconds=2)), pod("c", ready=False)]
    plan = plan_replicaset(rs(replicas=3, minReadySeconds=5), pods, NOW)
    assert plan.status == {
        "replicas": 3,
        "fullyLabeledReplicas": 3,
        "readyReplicas": 2,
        "availableReplicas": 1,
        "observedGeneration": 2,
    }
    assert plan.requeue_after == pytest.approx(3.05)
    current = rs(replicas=3, minReadySeconds=5)
    current["status"] = plan.status
    assert plan_replicaset(current, pods, NOW).status is None  # unchanged: no write


def test_replicaset_being_deleted_does_nothing_to_pods() -> None:
    owner = rs(replicas=3)
    owner["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    plan = plan_replicaset(owner, [pod("a")], NOW)
    assert plan.creates == [] and plan.deletes == [] and plan.adopt == []


# --- Deployment arithmetic -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "total", "up", "expected"),
    [
        (2, 10, True, 2),
        ("25%", 10, True, 3),
        ("25%", 10, False, 2),
        ("0%", 5, True, 0),
        ("100%", 3, False, 3),
        ("33%", 3, True, 1),
        ("33%", 3, False, 0),
    ],
)
def test_scaled_value(value: Any, total: int, up: bool, expected: int) -> None:
    assert scaled_value(value, total, up) == expected


@pytest.mark.parametrize(
    ("surge", "unavailable", "desired", "expected"),
    [
        ("25%", "25%", 4, (1, 1)),
        ("25%", "25%", 3, (1, 0)),
        (0, 0, 3, (0, 1)),
        ("0%", "0%", 10, (0, 1)),
        (2, "50%", 5, (2, 2)),
    ],
)
def test_resolve_fenceposts(
    surge: Any, unavailable: Any, desired: int, expected: tuple[int, int]
) -> None:
    assert resolve_fenceposts(surge, unavailable, desired) == expected


def test_pod_template_hash_shape() -> None:
    template = {"metadata": {"labels": LABELS}, "spec": {"containers": [{"name": "c"}]}}
    h = pod_template_hash(template)
    assert h == pod_template_hash(copy.deepcopy(template))
    assert set(h) <= set(SAFE_ALPHANUMS) and 1 <= len(h) <= 10
    assert pod_template_hash(template, 1) != h
    other = copy.deepcopy(template)
    other["spec"]["containers"][0]["image"] = "nginx"
    assert pod_template_hash(other) != h


# --- Deployment planning ---------------------------------------------------------------------


def deployment(
    replicas: int = 3,
    image: str = "busybox",
    strategy: Obj | None = None,
    generation: int = 1,
    status: Obj | None = None,
    **spec: Any,
) -> Obj:
    body: Obj = {
        "replicas": replicas,
        "selector": {"matchLabels": LABELS},
        "template": {
            "metadata": {"labels": LABELS},
            "spec": {"containers": [{"name": "c", "image": image}]},
        },
        "strategy": strategy
        or {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
        "progressDeadlineSeconds": 600,
        "revisionHistoryLimit": 10,
    }
    body.update(spec)
    d: Obj = {
        "metadata": {"name": "web", "namespace": "ns", "uid": "d-uid", "generation": generation},
        "spec": body,
    }
    if status is not None:
        d["status"] = status
    return d


def owned_rs(
    d: Obj,
    image: str,
    replicas: int,
    available: int,
    revision: int,
    created: str = "2026-01-01T00:00:00Z",
    status_replicas: int | None = None,
) -> Obj:
    template = copy.deepcopy(d["spec"]["template"])
    template["spec"]["containers"][0]["image"] = image
    h = pod_template_hash(template)
    template["metadata"]["labels"] = {**LABELS, POD_TEMPLATE_HASH: h}
    reps = replicas if status_replicas is None else status_replicas
    surge = 0
    if d["spec"]["strategy"]["type"] == "RollingUpdate":
        ru = d["spec"]["strategy"]["rollingUpdate"]
        surge = resolve_fenceposts(ru["maxSurge"], ru["maxUnavailable"], d["spec"]["replicas"])[0]
    annotations = {
        REVISION: str(revision),
        "deployment.kubernetes.io/desired-replicas": str(d["spec"]["replicas"]),
        "deployment.kubernetes.io/max-replicas": str(d["spec"]["replicas"] + surge),
    }
    return {
        "metadata": {
            "name": f"web-{h}",
            "namespace": "ns",
            "uid": f"uid-{h}",
            "creationTimestamp": created,
            "labels": template["metadata"]["labels"],
            "resourceVersion": "9",
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "web",
                    "uid": "d-uid",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "replicas": replicas,
            "template": template,
            "selector": {"matchLabels": {**LABELS, POD_TEMPLATE_HASH: h}},
        },
        "status": {"replicas": reps, "readyReplicas": available, "availableReplicas": available},
    }


def rs_writes(plan: Any) -> list[tuple[str, str, int]]:
    return [
        (
            w.verb,
            w.obj["spec"]["template"]["spec"]["containers"][0]["image"],
            w.obj["spec"]["replicas"],
        )
        for w in plan.writes
        if w.resource == "replicasets" and w.verb in ("create", "update")
    ]


def test_new_deployment_creates_its_replicaset_at_full_size() -> None:
    d = deployment(replicas=3)
    plan = plan_deployment(d, [], NOW)
    assert rs_writes(plan) == [("create", "busybox", 3)]
    created = plan.writes[0].obj
    h = created["spec"]["template"]["metadata"]["labels"][POD_TEMPLATE_HASH]
    assert created["metadata"]["name"] == f"web-{h}"
    assert created["spec"]["selector"]["matchLabels"] == {**LABELS, POD_TEMPLATE_HASH: h}
    assert created["metadata"]["annotations"][REVISION] == "1"
    status = next(w for w in plan.writes if w.subresource == "status").patch["status"]
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetCreated"
    assert progressing["message"] == f'Created new replica set "web-{h}"'


def test_new_replicaset_name_taken_by_another_owner_bumps_the_collision_count() -> None:
    """The controller passes only the Deployment's own and orphan ReplicaSets; a name clash
    with any other one of the namespace is found through `named`."""
    d = deployment(replicas=3)
    taken = owned_rs(d, "busybox", 3, 3, revision=1)
    taken["metadata"]["ownerReferences"][0]["uid"] = "another-deployment"
    plan = plan_deployment(d, [], NOW, named={taken["metadata"]["name"]: taken}.get)
    assert rs_writes(plan) == []
    status = next(w for w in plan.writes if w.subresource == "status").patch["status"]
    assert status["collisionCount"] == 1
    assert plan_deployment(d, [taken], NOW).writes == plan.writes  # the same from the full list


def test_rolling_update_steps_like_upstream() -> None:
    d = deployment(replicas=3, image="nginx")
    old = owned_rs(d, "busybox", 3, 3, revision=1)
    # step 1: the new RS is created with maxSurge (1) pods
    plan = plan_deployment(d, [old], NOW)
    assert rs_writes(plan) == [("create", "nginx", 1)]
    assert plan.writes[0].obj["metadata"]["annotations"][REVISION] == "2"
    # step 2: the new pod is available -> one old pod goes (maxUnavailable 0 keeps 3 up)
    new = owned_rs(d, "nginx", 1, 1, revision=2, created="2026-01-01T00:01:00Z")
    plan = plan_deployment(d, [old, new], NOW)
    assert rs_writes(plan) == [("update", "busybox", 2)]
    # step 3: old at 2 -> new can grow to 2
    old2 = owned_rs(d, "busybox", 2, 2, revision=1)
    plan = plan_deployment(d, [old2, new], NOW)
    assert rs_writes(plan) == [("update", "nginx", 2)]


def test_rolling_update_does_not_scale_down_while_new_pods_are_unavailable() -> None:
    d = deployment(replicas=3, image="nginx")
    old = owned_rs(d, "busybox", 3, 3, revision=1)
    new = owned_rs(d, "nginx", 1, 0, revision=2, created="2026-01-01T00:01:00Z")
    assert rs_writes(plan_deployment(d, [old, new], NOW)) == []


def test_rolling_update_removes_unhealthy_old_pods_first() -> None:
    d = deployment(replicas=4, image="nginx")
    old = owned_rs(d, "busybox", 4, 2, revision=1)  # two old pods are not available
    new = owned_rs(d, "nginx", 1, 0, revision=2, created="2026-01-01T00:01:00Z")
    assert rs_writes(plan_deployment(d, [old, new], NOW)) == [("update", "busybox", 3)]


def test_recreate_scales_old_down_before_creating_new() -> None:
    d = deployment(replicas=2, image="nginx", strategy={"type": "Recreate"})
    old = owned_rs(d, "busybox", 2, 2, revision=1)
    plan = plan_deployment(d, [old], NOW)
    assert rs_writes(plan) == [("update", "busybox", 0)]
    old_draining = owned_rs(d, "busybox", 0, 0, revision=1, status_replicas=1)
    assert rs_writes(plan_deployment(d, [old_draining], NOW)) == []
    old_gone = owned_rs(d, "busybox", 0, 0, revision=1)
    assert rs_writes(plan_deployment(d, [old_gone], NOW)) == [("create", "nginx", 2)]


def test_undo_reuses_the_old_replicaset_and_bumps_its_revision() -> None:
    d = deployment(replicas=2, image="busybox")
    old = owned_rs(d, "busybox", 0, 0, revision=1)
    current = owned_rs(d, "nginx", 2, 2, revision=2, created="2026-01-01T00:01:00Z")
    plan = plan_deployment(d, [old, current], NOW)
    updates = [w for w in plan.writes if w.resource == "replicasets"]
    reused = next(w for w in updates if w.obj["metadata"]["name"] == old["metadata"]["name"])
    assert reused.obj["metadata"]["annotations"][REVISION] == "3"
    assert reused.obj["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    assert reused.obj["spec"]["replicas"] == 1  # surge 1 over the 2 running
    assert not any(w.verb == "create" for w in plan.writes)
    annotation = next(
        w for w in plan.writes if w.resource == "deployments" and w.subresource is None
    )
    assert annotation.patch == {"metadata": {"annotations": {REVISION: "3"}}}


def test_complete_rollout_status_and_history_cleanup() -> None:
    d = deployment(replicas=2, image="nginx", revisionHistoryLimit=1, generation=3)
    olds = [
        owned_rs(d, f"img{i}", 0, 0, revision=i + 1, created=f"2026-01-01T00:0{i}:00Z")
        for i in range(3)
    ]
    new = owned_rs(d, "nginx", 2, 2, revision=4, created="2026-01-01T00:09:00Z")
    plan = plan_deployment(d, [*olds, new], NOW)
    deleted = [w.obj["metadata"]["name"] for w in plan.writes if w.verb == "delete"]
    assert deleted == [olds[0]["metadata"]["name"], olds[1]["metadata"]["name"]]
    status = next(w for w in plan.writes if w.subresource == "status").patch["status"]
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 3,
        "replicas": 2,
        "updatedReplicas": 2,
        "readyReplicas": 2,
        "availableReplicas": 2,
        "unavailableReplicas": 0,
    }
    conds = {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}
    assert conds == {
        "Available": ("True", "MinimumReplicasAvailable", "Deployment has minimum availability."),
        "Progressing": (
            "True",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.',
        ),
    }


def test_progress_deadline_exceeded() -> None:
    stale = rfc3339(NOW - timedelta(seconds=700))
    status = {
        "replicas": 1,
        "updatedReplicas": 1,
        "availableReplicas": 0,
        "readyReplicas": 0,
        "conditions": [
            {
                "type": "Progressing",
                "status": "True",
                "reason": "ReplicaSetUpdated",
                "lastUpdateTime": stale,
                "lastTransitionTime": stale,
                "message": "x",
            }
        ],
    }
    d = deployment(replicas=1, status=status)
    new = owned_rs(d, "busybox", 1, 0, revision=1)
    new_status = deployment_status(d, new, [new], NOW)
    prog = next(c for c in new_status["conditions"] if c["type"] == "Progressing")
    assert (prog["status"], prog["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert prog["message"] == f'ReplicaSet "{new["metadata"]["name"]}" has timed out progressing.'


def test_scale_up_and_down_of_a_settled_deployment() -> None:
    d = deployment(replicas=5)
    new = owned_rs(d, "busybox", 2, 2, revision=1)
    assert rs_writes(plan_deployment(d, [new], NOW)) == [("update", "busybox", 5)]
    d = deployment(replicas=1)
    assert rs_writes(plan_deployment(d, [new], NOW)) == [("update", "busybox", 1)]


def test_deployment_adopts_matching_orphan_replicasets() -> None:
    d = deployment(replicas=1)
    orphan = owned_rs(d, "busybox", 1, 1, revision=1)
    del orphan["metadata"]["ownerReferences"]
    plan = plan_deployment(d, [orphan], NOW)
    adopt = plan.writes[0]
    assert adopt.verb == "patch" and adopt.patch["metadata"]["ownerReferences"][0]["uid"] == "d-uid"
    assert not any(w.verb == "create" for w in plan.writes)  # the orphan is the new RS


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {"a": "1"}, False),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, {"a": "1"}, False),
    ],
)
def test_selector_matches(selector: Obj | None, labels: dict[str, str], expected: bool) -> None:
    from podnet.controllers.objects import selector_matches

    assert selector_matches(selector, labels) is expected
