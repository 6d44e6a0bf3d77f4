"""`plan_daemonset`, `plan_history` and the node-fit predicates: which nodes run a daemon, the
pod for a node, rolling updates within maxUnavailable / maxSurge, revisions, status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from podnet.api.meta import rfc3339
from podnet.controllers.daemonset import daemon_pod, plan_daemonset, should_run
from podnet.controllers.history import REVISION_HASH, plan_history, template_hash
from podnet.controllers.nodefit import matches_node_affinity

Obj = dict[str, Any]
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def ds(image: str = "agent:1", **spec: Any) -> Obj:
    body: Obj = {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "a", "image": image}]},
        },
        "updateStrategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
        },
        "revisionHistoryLimit": 10,
    }
    body.update(spec)
    return {
        "metadata": {"name": "agent", "namespace": "d", "uid": "ds-uid", "generation": 1},
        "spec": body,
        "status": {},
    }


def node(name: str, labels: dict[str, str] | None = None, taints: list[Obj] | None = None) -> Obj:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints or []},
    }


def pod(
    name: str, node_name: str, hash_value: str, ready: bool = True, phase: str = "Running"
) -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": "d",
            "uid": f"uid-{name}",
            "labels": {"app": "agent", REVISION_HASH: hash_value},
            "ownerReferences": [
                {"kind": "DaemonSet", "name": "agent", "uid": "ds-uid", "controller": True}
            ],
            "creationTimestamp": rfc3339(NOW),
        },
        "spec": {"nodeName": node_name},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def revision_for(owner: Obj, number: int = 1) -> Obj:
    history = plan_history(owner, "DaemonSet", [], set())
    assert history.current is not None
    return {**history.current, "revision": number}


def test_eligibility_follows_selectors_affinity_and_taints() -> None:
    plain = ds()
    assert should_run(plain, node("n1")) == (True, True)
    assert should_run(
        plain,
        node("n1", taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
    ) == (True, True)
    assert should_run(
        plain, node("n1", taints=[{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}])
    ) == (True, True)
    assert should_run(
        plain, node("n1", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    ) == (False, True)
    assert should_run(
        plain, node("n1", taints=[{"key": "dedicated", "value": "db", "effect": "NoExecute"}])
    ) == (False, False)
    picky = ds()
    picky["spec"]["template"]["spec"]["nodeSelector"] = {"disk": "ssd"}
    assert should_run(picky, node("n1")) == (False, False)
    assert should_run(picky, node("n2", {"disk": "ssd"})) == (True, True)


@pytest.mark.parametrize(
    ("terms", "matches"),
    [
        ([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}], True),
        ([{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}], False),
        ([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}], True),
        ([{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}], False),
        ([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}], True),
        ([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}], False),
        ([{}, {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}], True),
        ([{}], False),  # an empty term matches nothing
    ],
)
def test_required_node_affinity(terms: list[Obj], matches: bool) -> None:
    spec = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
            }
        }
    }
    assert matches_node_affinity(spec, node("n1", {"zone": "a", "cores": "8"})) is matches


def test_the_pod_for_a_node() -> None:
    created = daemon_pod(ds(), "n7", "abc12")
    assert created["metadata"]["generateName"] == "agent-"
    assert created["metadata"]["labels"] == {
        "app": "agent",
        REVISION_HASH: "abc12",
        "pod-template-generation": "1",
    }
    affinity = created["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert affinity == {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]}
        ]
    }
    keys = [(t["key"], t["effect"]) for t in created["spec"]["tolerations"]]
    assert ("node.kubernetes.io/not-ready", "NoExecute") in keys
    assert ("node.kubernetes.io/unschedulable", "NoSchedule") in keys
    assert ("node.kubernetes.io/network-unavailable", "NoSchedule") not in keys
    assert "nodeName" not in created["spec"]  # the scheduler binds it


def test_every_eligible_node_gets_one_pod() -> None:
    owner = ds()
    current = template_hash(owner)
    nodes = [node("n1"), node("n2"), node("n3", taints=[{"key": "x", "effect": "NoExecute"}])]
    pods = [
        pod("a", "n1", current),
        pod("b", "n3", current),  # may not stay on n3
        pod("c", "gone", current),  # its node was deleted
        pod("d", "n1", current, phase="Failed"),
    ]
    plan = plan_daemonset(owner, nodes, pods, [revision_for(owner)], NOW)
    assert [
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ][0]["matchFields"][0]["values"]
        for p in plan.creates
    ] == [["n2"]]
    assert sorted(w.name for w in plan.writes if w.verb == "delete") == ["b", "c", "d"]
    assert plan.events[0][1] == "FailedDaemonPod"
    status = plan.writes[-1].patch["status"]
    assert (
        status["desiredNumberScheduled"],
        status["currentNumberScheduled"],
        status["numberReady"],
    ) == (2, 1, 1)


def test_rolling_update_keeps_max_unavailable() -> None:
    old_owner = ds("agent:1")
    old_hash = template_hash(old_owner)
    new_owner = ds("agent:2")
    nodes = [node(f"n{i}") for i in range(4)]
    pods = [pod(f"p{i}", f"n{i}", old_hash) for i in range(4)]
    revisions = [revision_for(old_owner, 1)]
    plan = plan_daemonset(new_owner, nodes, pods, revisions, NOW)
    created_revision = [w for w in plan.writes if w.resource == "controllerrevisions"]
    assert [(w.verb, w.obj["revision"]) for w in created_revision] == [("create", 2)]
    assert [w.name for w in plan.writes if w.verb == "delete"] == ["p0"]  # one at a time
    assert plan.creates == []  # the replacement comes once p0 is gone
    status = plan.writes[-1].patch["status"]
    assert status["updatedNumberScheduled"] == 0
    # n0 runs the new pod but it is not ready yet: nothing else may go
    new_hash = template_hash(new_owner)
    rolling = [pod("q0", "n0", new_hash, ready=False), *pods[1:]]
    revisions.append(revision_for(new_owner, 2))
    assert not [
        w
        for w in plan_daemonset(new_owner, nodes, rolling, revisions, NOW).writes
        if w.verb == "delete"
    ]
    # an old pod that is not available anyway is replaced at once
    sick = [pod("q0", "n0", new_hash), pod("p1", "n1", old_hash, ready=False), *pods[2:]]
    deleted = [
        w.name
        for w in plan_daemonset(new_owner, nodes, sick, revisions, NOW).writes
        if w.verb == "delete"
    ]
    assert deleted == ["p1"]


def test_surge_starts_the_new_pod_beside_the_old() -> None:
    old_owner = ds("agent:1")
    old_hash = template_hash(old_owner)
    surge = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    new_owner = ds("agent:2", updateStrategy=surge)
    new_hash = template_hash(new_owner)
    nodes = [node("n0"), node("n1")]
    revisions = [revision_for(old_owner, 1), revision_for(new_owner, 2)]
    plan = plan_daemonset(
        new_owner, nodes, [pod("p0", "n0", old_hash), pod("p1", "n1", old_hash)], revisions, NOW
    )
    assert len(plan.creates) == 1 and not [w for w in plan.writes if w.verb == "delete"]
    ready_new = [pod("p0", "n0", old_hash), pod("q0", "n0", new_hash), pod("p1", "n1", old_hash)]
    plan = plan_daemonset(new_owner, nodes, ready_new, revisions, NOW)
    assert [w.name for w in plan.writes if w.verb == "delete"] == ["p0"]
    assert len(plan.creates) == 1  # and n1 surges next


def test_history_undo_bumps_and_trims() -> None:
    v1, v2 = ds("agent:1"), ds("agent:2")
    revisions = [revision_for(v1, 1), revision_for(v2, 2)]
    back = plan_history(v1, "DaemonSet", revisions, set())
    assert back.current is not None and back.current["revision"] == 3
    assert [(w.verb, w.name) for w in back.writes] == [("update", revisions[0]["metadata"]["name"])]
    data = back.current["data"]["spec"]["template"]
    assert data["$patch"] == "replace" and data["spec"]["containers"][0]["image"] == "agent:1"
    many = [revision_for(ds(f"agent:{i}"), i) for i in range(1, 6)]
    trimmed = plan_history(
        ds("agent:9", revisionHistoryLimit=2), "DaemonSet", many, {template_hash(ds("agent:1"))}
    )
    deleted = [w.name for w in trimmed.writes if w.verb == "delete"]
    assert deleted == [many[1]["metadata"]["name"], many[2]["metadata"]["name"]]  # 1 still runs
