"""`plan_statefulset`: stable names and DNS identity, ordered and parallel management, rolling
updates with a partition, claim templates as emptyDir volumes, status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from podnet.controllers.history import REVISION_HASH, plan_history
from podnet.controllers.statefulset import plan_statefulset

Obj = dict[str, Any]
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def sts(replicas: int = 3, image: str = "web:1", **spec: Any) -> Obj:
    body: Obj = {
        "replicas": replicas,
        "serviceName": "web",
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "w", "image": image}]},
        },
        "podManagementPolicy": "OrderedReady",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
    }
    body.update(spec)
    return {
        "metadata": {"name": "web", "namespace": "d", "uid": "ss-uid", "generation": 1},
        "spec": body,
        "status": {},
    }


def revision(owner: Obj, number: int) -> Obj:
    current = plan_history(owner, "StatefulSet", [], set()).current
    assert current is not None
    return {**current, "revision": number}


def pod(ordinal: int, rev: Obj, ready: bool = True, phase: str = "Running") -> Obj:
    return {
        "metadata": {
            "name": f"web-{ordinal}",
            "namespace": "d",
            "uid": f"uid-{ordinal}",
            "labels": {"app": "web", REVISION_HASH: rev["metadata"]["name"]},
            "ownerReferences": [
                {"kind": "StatefulSet", "name": "web", "uid": "ss-uid", "controller": True}
            ],
        },
        "spec": {},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_ordered_creation_one_at_a_time_with_identity() -> None:
    owner = sts()
    rev = revision(owner, 1)
    first = plan_statefulset(owner, [], [rev], NOW)
    [created] = first.creates
    assert created["metadata"]["name"] == "web-0"
    assert (created["spec"]["hostname"], created["spec"]["subdomain"]) == ("web-0", "web")
    labels = created["metadata"]["labels"]
    assert labels["statefulset.kubernetes.io/pod-name"] == "web-0"
    assert labels["apps.kubernetes.io/pod-index"] == "0"
    assert labels[REVISION_HASH] == rev["metadata"]["name"]
    # web-0 not ready yet: web-1 waits
    assert plan_statefulset(owner, [pod(0, rev, ready=False)], [rev], NOW).creates == []
    assert [
        p["metadata"]["name"] for p in plan_statefulset(owner, [pod(0, rev)], [rev], NOW).creates
    ] == ["web-1"]
    parallel = sts(podManagementPolicy="Parallel")
    assert [p["metadata"]["name"] for p in plan_statefulset(parallel, [], [rev], NOW).creates] == [
        "web-0",
        "web-1",
        "web-2",
    ]


def test_ordered_creation_waits_min_ready_seconds_and_looks_again_then() -> None:
    """The tutorial's web (minReadySeconds: 10): web-1 comes once web-0 has been Ready for
    10 s, not at once, and the plan asks to be run again when web-0 becomes available (its
    availableReplicas stayed 0 for good before: nothing woke the loop)."""
    owner = sts(minReadySeconds=10)
    rev = revision(owner, 1)
    web0 = pod(0, rev)
    web0["status"]["conditions"][0]["lastTransitionTime"] = "2024-05-01T11:59:56Z"  # 4 s ago
    early = plan_statefulset(owner, [web0], [rev], NOW)
    assert early.creates == []
    assert early.requeue_after is not None and 6.0 <= early.requeue_after < 6.5
    [status] = [w.patch["status"] for w in early.writes if w.subresource == "status"]
    assert (status["readyReplicas"], status["availableReplicas"]) == (1, 0)
    later = plan_statefulset(owner, [web0], [rev], NOW + timedelta(seconds=6))
    assert [p["metadata"]["name"] for p in later.creates] == ["web-1"]
    assert later.requeue_after is None
    [status] = [w.patch["status"] for w in later.writes if w.subresource == "status"]
    assert status["availableReplicas"] == 1


def test_scale_down_removes_the_highest_ordinal_first() -> None:
    owner = sts(replicas=1)
    rev = revision(owner, 1)
    pods = [pod(i, rev) for i in range(3)]
    plan = plan_statefulset(owner, pods, [rev], NOW)
    assert [w.name for w in plan.writes if w.verb == "delete"] == ["web-2"]
    unready = [pod(0, rev), pod(1, rev, ready=False), pod(2, rev)]
    assert not [
        w for w in plan_statefulset(owner, unready, [rev], NOW).writes if w.verb == "delete"
    ]


def test_rolling_update_from_the_top_down_to_the_partition() -> None:
    old = sts(image="web:1")
    new = sts(
        image="web:2", updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}
    )
    r1, r2 = revision(old, 1), revision(new, 2)
    new["status"] = {"currentRevision": r1["metadata"]["name"]}
    pods = [pod(i, r1) for i in range(3)]
    plan = plan_statefulset(new, pods, [r1, r2], NOW)
    assert [w.name for w in plan.writes if w.verb == "delete"] == ["web-2"]
    updated = [pod(0, r1), pod(1, r1), pod(2, r2)]
    plan = plan_statefulset(new, updated, [r1, r2], NOW)
    assert [w.name for w in plan.writes if w.verb == "delete"] == ["web-1"]
    done = [pod(0, r1), pod(1, r2), pod(2, r2)]
    plan = plan_statefulset(new, done, [r1, r2], NOW)
    assert not [w for w in plan.writes if w.verb == "delete"]  # web-0 is below the partition
    status = plan.writes[-1].patch["status"]
    assert (status["currentReplicas"], status["updatedReplicas"]) == (1, 2)
    assert status["updateRevision"] == r2["metadata"]["name"]
    # a pod below the partition that is recreated comes back at the current revision
    recreated = plan_statefulset(new, done[1:], [r1, r2], NOW).creates
    assert recreated[0]["metadata"]["labels"][REVISION_HASH] == r1["metadata"]["name"]


def test_claim_templates_become_empty_dirs_and_failed_pods_return() -> None:
    claims = [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
    owner = sts(replicas=1, volumeClaimTemplates=claims)
    rev = revision(owner, 1)
    plan = plan_statefulset(owner, [], [rev], NOW)
    assert plan.creates[0]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert plan.events[0][1] == "VolumeClaimTemplatesAsEmptyDir"
    failed = plan_statefulset(owner, [pod(0, rev, phase="Failed")], [rev], NOW)
    assert [w.name for w in failed.writes if w.verb == "delete"] == ["web-0"]
    status = plan_statefulset(owner, [pod(0, rev)], [rev], NOW).writes[-1].patch["status"]
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (1, 1, 1)
    assert status["currentRevision"] == status["updateRevision"] == rev["metadata"]["name"]
