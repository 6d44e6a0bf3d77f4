"""Scheduler and node IPAM planners, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from podnet.controllers.nodeipam import plan_node_cidrs
from podnet.controllers.scheduler import (
    Bind,
    NodeFits,
    Unschedulable,
    feasible_nodes_to_find,
    plan_schedule,
    unschedulable_conditions,
    wants_scheduling,
)

Obj = dict[str, Any]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(
    name: str,
    ready: str = "True",
    labels: dict[str, str] | None = None,
    taints: list[Obj] | None = None,
    unschedulable: bool = False,
    cidr: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> Obj:
    spec: Obj = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    if cidr:
        spec["podCIDR"] = cidr
        spec["podCIDRs"] = [cidr]
    return {
        "metadata": {"name": name, "labels": labels or {}, "creationTimestamp": created},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def pod(
    selector: dict[str, str] | None = None, tolerations: list[Obj] | None = None, **spec: Any
) -> Obj:
    body: Obj = {"containers": [{"name": "c", "image": "x"}]}
    if selector:
        body["nodeSelector"] = selector
    if tolerations:
        body["tolerations"] = tolerations
    body.update(spec)
    return {"metadata": {"name": "p", "namespace": "default"}, "spec": body}


UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}


@pytest.mark.parametrize(
    ("case", "the_pod", "nodes", "counts", "expected"),
    [
        ("fewest pods wins", pod(), [node("a"), node("b")], {"a": 3, "b": 1}, Bind("b")),
        ("tie broken by name", pod(), [node("b"), node("a")], {}, Bind("a")),
        ("not ready skipped", pod(), [node("a", ready="False"), node("b")], {"b": 9}, Bind("b")),
        (
            "nodeSelector",
            pod({"disk": "ssd"}),
            [node("a"), node("b", labels={"disk": "ssd"})],
            {"b": 5},
            Bind("b"),
        ),
        (
            "taint tolerated",
            pod(tolerations=[{"operator": "Exists"}]),
            [node("a", taints=[UNREACHABLE])],
            {},
            Bind("a"),
        ),
        ("no nodes", pod(), [], {}, Unschedulable("no nodes available to schedule pods")),
        (
            "selector mismatch",
            pod({"disk": "ssd"}),
            [node("a"), node("b")],
            {},
            Unschedulable(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node "
                "affinity/selector. preemption: 0/2 nodes are available: 2 Preemption "
                "is not helpful for scheduling."
            ),
        ),
        (
            "mixed reasons sorted",
            pod({"disk": "ssd"}),
            [
                node("a"),
                node("b", taints=[UNREACHABLE]),
                node("c", unschedulable=True),
                node("d", ready="Unknown"),
            ],
            {},
            Unschedulable(
                "0/4 nodes are available: 1 node(s) didn't match Pod's node "
                "affinity/selector, 1 node(s) had untolerated taint "
                "{node.kubernetes.io/unreachable: }, 1 node(s) were not ready, 1 node(s) "
                "were unschedulable. preemption: 0/4 nodes are available: 4 Preemption "
                "is not helpful for scheduling."
            ),
        ),
    ],
)
def test_plan_schedule(
    case: str,
    the_pod: Obj,
    nodes: list[Obj],
    counts: dict[str, int],
    expected: Bind | Unschedulable,
) -> None:
    assert plan_schedule(the_pod, nodes, counts) == expected, case
    fits = NodeFits()  # what the controller passes: the same answers, twice (kept fits)
    assert plan_schedule(the_pod, nodes, counts, fit_of=fits) == expected, case
    assert plan_schedule(the_pod, nodes, counts, fit_of=fits) == expected, case


def test_node_fits_follow_the_informers_objects() -> None:
    """A node's fit is read again when the informer hands out a new object for it."""
    fits = NodeFits()
    nodes = [node("a"), node("b")]
    assert plan_schedule(pod(), nodes, {"b": 1}, fit_of=fits) == Bind("a")
    nodes[0] = node("a", taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}])
    assert plan_schedule(pod(), nodes, {"b": 1}, fit_of=fits) == Bind("b")
    nodes[1] = node("b", ready="False")
    decision = plan_schedule(pod(), nodes, {}, fit_of=fits)
    assert decision == Unschedulable(
        "0/2 nodes are available: 1 node(s) had untolerated taint {k: v}, 1 node(s) were not "
        "ready. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    )
    fits.forget("a")
    nodes[0] = node("a")
    assert plan_schedule(pod(), nodes, {}, fit_of=fits) == Bind("a")
    # found by the object's identity, one kept fit per node name
    same = nodes[1]
    assert fits(same) is fits(same) and fits(same).name == "b"
    assert len(fits._fits) == len(fits._by_id) == 2
    replaced = node("b")
    assert fits(replaced).ready and fits(replaced).node is replaced
    assert len(fits._fits) == len(fits._by_id) == 2
    fits.forget("b")
    assert len(fits._fits) == len(fits._by_id) == 1


@pytest.mark.parametrize(
    ("the_pod", "expected"),
    [
        (pod(), True),
        (pod(nodeName="n1"), False),
        (pod(schedulerName="other"), False),
        (pod(schedulerName="default-scheduler"), True),
        ({**pod(), "status": {"phase": "Failed"}}, False),
    ],
)
def test_wants_scheduling(the_pod: Obj, expected: bool) -> None:
    assert wants_scheduling(the_pod) is expected


def test_unschedulable_condition_written_once() -> None:
    p = pod()
    conds = unschedulable_conditions(p, "msg", NOW)
    assert conds == [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "msg",
            "lastProbeTime": None,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ]
    p["status"] = {"conditions": conds}
    assert unschedulable_conditions(p, "msg", NOW) is None
    assert unschedulable_conditions(p, "other", NOW) is not None


@pytest.mark.parametrize(
    ("case", "nodes", "remembered", "in_flight", "expected"),
    [
        ("first node gets the first subnet", [node("a")], {}, {}, {"a": "10.244.0.0/24"}),
        (
            "skips used subnets",
            [node("a", cidr="10.244.0.0/24"), node("b")],
            {},
            {},
            {"b": "10.244.1.0/24"},
        ),
        (
            "oldest first",
            [
                node("late", created="2026-01-02T00:00:00Z"),
                node("early", created="2026-01-01T00:00:00Z"),
            ],
            {},
            {},
            {"early": "10.244.0.0/24", "late": "10.244.1.0/24"},
        ),
        (
            "re-registration gets its old subnet",
            [node("a", cidr="10.244.0.0/24"), node("b")],
            {"b": "10.244.7.0/24"},
            {},
            {"b": "10.244.7.0/24"},
        ),
        (
            "old subnet taken meanwhile",
            [node("a", cidr="10.244.7.0/24"), node("b")],
            {"b": "10.244.7.0/24"},
            {},
            {"b": "10.244.0.0/24"},
        ),
        (
            "in-flight assignments count as used",
            [node("a"), node("b")],
            {},
            {"a": "10.244.0.0/24"},
            {"b": "10.244.1.0/24"},
        ),
    ],
)
def test_plan_node_cidrs(
    case: str,
    nodes: list[Obj],
    remembered: dict[str, str],
    in_flight: dict[str, str],
    expected: dict[str, str],
) -> None:
    assert plan_node_cidrs(nodes, "10.244.0.0/16", 24, remembered, in_flight) == expected, case


def test_exhausted_cluster_cidr_assigns_what_it_can() -> None:
    nodes = [node(f"n{i}", created=f"2026-01-01T00:00:0{i}Z") for i in range(5)]
    plan = plan_node_cidrs(nodes, "10.244.0.0/23", 24)
    assert plan == {"n0": "10.244.0.0/24", "n1": "10.244.1.0/24"}


@pytest.mark.parametrize(
    ("nodes", "wanted"), [(3, 3), (99, 99), (100, 100), (1000, 420), (5000, 500), (6000, 300)]
)
def test_feasible_nodes_to_find_is_upstreams(nodes: int, wanted: int) -> None:
    assert feasible_nodes_to_find(nodes) == wanted


def test_large_clusters_search_part_of_the_nodes_in_turn() -> None:
    nodes = [node(f"n{i:04d}") for i in range(1000)]
    # 420 feasible nodes are enough: from n0000 the least loaded of n0000..n0419
    counts = {f"n{i:04d}": 1 for i in range(1000) if i != 419}
    assert plan_schedule(pod(), nodes, counts) == Bind("n0419")
    # starting at 900 the search wraps; n0500 (empty) is not among the 420 it looks at
    counts = {f"n{i:04d}": 1 for i in range(1000) if i not in (500, 100)}
    assert plan_schedule(pod(), nodes, counts, start=900) == Bind("n0100")
    # an infeasible cluster is still searched in full for the message
    down = [node(f"n{i:04d}", ready="False") for i in range(1000)]
    decision = plan_schedule(pod(), down, {}, start=500)
    assert isinstance(decision, Unschedulable)
    assert decision.message.startswith("0/1000 nodes are available: 1000 node(s) were not ready")
