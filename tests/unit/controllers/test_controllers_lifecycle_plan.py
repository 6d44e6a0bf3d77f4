"""Garbage collector, node lifecycle and leader-election decisions; the work queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podnet.api.meta import rfc3339
from podnet.controllers.expectations import Expectations, rv_at_least
from podnet.controllers.garbagecollector import Dependent, plan_garbage
from podnet.controllers.leaderelection import may_take_lease
from podnet.controllers.nodelifecycle import (
    UNREACHABLE,
    NodeHealthInput,
    plan_node_health,
    plan_orphan_pods,
)
from podnet.controllers.workqueue import WorkQueue

Obj = dict[str, Any]
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def obj(
    name: str,
    owners: list[tuple[str, bool]] = (),
    deleting: bool = False,  # type: ignore[assignment]
    finalizers: list[str] | None = None,
    uid: str | None = None,
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": "ns",
        "uid": uid or f"uid-{name}",
        "resourceVersion": "3",
    }
    if owners:
        meta["ownerReferences"] = [
            {"kind": "ReplicaSet", "name": o, "uid": f"uid-{o}", "blockOwnerDeletion": block}
            for o, block in owners
        ]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if finalizers:
        meta["finalizers"] = finalizers
    return {"metadata": meta}


# --- garbage collector -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "states", "expected"),
    [
        ("owner present", {"uid-o": "present"}, []),
        ("owner gone", {"uid-o": "absent"}, [("delete", "Background")]),
        ("owner unknown kind", {"uid-o": "unknown"}, []),
        ("owner deleting in foreground", {"uid-o": "deleting-foreground"}, []),
    ],
)
def test_gc_single_owner(
    case: str, states: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    writes = plan_garbage("pods", obj("p", [("o", True)]), states, [])
    assert [(w.verb, w.options.get("propagation_policy")) for w in writes] == expected, case


def test_gc_removes_only_dangling_references() -> None:
    p = obj("p", [("gone", True), ("alive", True)])
    writes = plan_garbage("pods", p, {"uid-gone": "absent", "uid-alive": "present"}, [])
    assert [w.verb for w in writes] == ["patch"]
    assert [r["uid"] for r in writes[0].patch["metadata"]["ownerReferences"]] == ["uid-alive"]
    assert writes[0].patch["metadata"]["resourceVersion"] == "3"


def test_gc_foreground_deletes_dependents_then_drops_finalizer() -> None:
    owner = obj("o", deleting=True, finalizers=["foregroundDeletion"])
    deps = [
        Dependent("replicasets", obj("rs", [("o", True)]), has_dependents=True),
        Dependent("pods", obj("p", [("o", False)])),
    ]
    writes = plan_garbage("deployments", owner, {}, deps)
    assert [(w.verb, w.name, w.options.get("propagation_policy")) for w in writes] == [
        ("delete", "rs", "Foreground"),
        ("delete", "p", "Background"),
    ]
    # only a non-blocking dependent is left: the owner may go
    writes = plan_garbage("deployments", owner, {}, [deps[1]])
    assert [w.verb for w in writes] == ["delete", "update"]
    assert writes[1].obj["metadata"]["finalizers"] == []


def test_gc_orphan_strips_owner_references_then_finalizer() -> None:
    owner = obj("o", deleting=True, finalizers=["orphan", "other"])
    writes = plan_garbage(
        "deployments", owner, {}, [Dependent("replicasets", obj("rs", [("o", True)]))]
    )
    assert [(w.verb, w.name) for w in writes] == [("patch", "rs")]
    assert writes[0].patch["metadata"]["ownerReferences"] is None
    writes = plan_garbage("deployments", owner, {}, [])
    assert writes[0].obj["metadata"]["finalizers"] == ["other"]


# --- node lifecycle --------------------------------------------------------------------------


def node(
    ready: str = "True", taints: list[Obj] | None = None, transition: str = "2026-01-01T11:00:00Z"
) -> Obj:
    return {
        "metadata": {"name": "n1", "resourceVersion": "8"},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": ready,
                    "reason": "KubeletReady",
                    "lastTransitionTime": transition,
                    "lastHeartbeatTime": transition,
                },
                {"type": "MemoryPressure", "status": "False"},
            ]
        },
    }


def pod(name: str, ready: bool = True) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}"},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def health(n: Obj, pods: list[Obj], silent: float) -> list[Any]:
    return plan_node_health(
        NodeHealthInput(
            node=n, pods=lambda: pods, silent_for=silent, grace=20, eviction_timeout=60, now=NOW
        )
    )


def test_healthy_node_needs_nothing() -> None:
    assert health(node(), [pod("a")], silent=5) == []


def test_a_node_heard_from_is_planned_without_its_pods() -> None:
    """Every node is planned every second: its pods are looked up only once it fell silent."""
    asked: list[str] = []

    def pods() -> list[Obj]:
        asked.append("pods")
        return [pod("a")]

    def plan(silent: float) -> list[Any]:
        return plan_node_health(
            NodeHealthInput(
                node=node(), pods=pods, silent_for=silent, grace=20, eviction_timeout=60, now=NOW
            )
        )

    assert plan(5) == [] and asked == []
    assert plan(25) and asked == ["pods"]


def test_silent_node_goes_unknown_tainted_and_its_pods_unready() -> None:
    writes = health(node(), [pod("a"), pod("b", ready=False)], silent=25)
    assert [(w.verb, w.resource, w.subresource) for w in writes] == [
        ("patch", "nodes", "status"),
        ("patch", "nodes", None),
        ("patch", "pods", "status"),
    ]
    conds = writes[0].patch["status"]["conditions"]
    assert {c["type"]: (c["status"], c["reason"], c["message"]) for c in conds} == {
        "Ready": ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
        "MemoryPressure": ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
    }
    taints = writes[1].patch["spec"]["taints"]
    assert [(t["key"], t["effect"]) for t in taints] == [
        (UNREACHABLE, "NoSchedule"),
        (UNREACHABLE, "NoExecute"),
    ]
    assert writes[2].name == "a"
    assert writes[2].patch["status"]["conditions"][0]["status"] == "False"


def test_pods_are_evicted_after_the_timeout() -> None:
    unknown_since = rfc3339(NOW - timedelta(seconds=61))
    taints = [{"key": UNREACHABLE, "effect": "NoExecute"}]
    n = node(ready="Unknown", taints=taints, transition=unknown_since)
    for c in n["status"]["conditions"]:
        c.update({"status": "Unknown", "reason": "NodeStatusUnknown"})
    writes = health(n, [pod("a", ready=False)], silent=90)
    assert [(w.verb, w.name) for w in writes] == [("delete", "a")]
    # not yet: unknown for only 30 s
    recent = rfc3339(NOW - timedelta(seconds=30))
    for c in n["status"]["conditions"]:
        c["lastTransitionTime"] = recent
    assert health(n, [pod("a", ready=False)], silent=90) == []


def test_recovered_node_loses_its_taints() -> None:
    n = node(
        taints=[
            {"key": UNREACHABLE, "effect": "NoSchedule"},
            {"key": "mine", "effect": "NoSchedule"},
        ]
    )
    writes = health(n, [], silent=1)
    assert [w.patch["spec"]["taints"] for w in writes] == [
        [{"key": "mine", "effect": "NoSchedule"}]
    ]


def test_pods_on_missing_nodes_are_deleted_with_grace_zero() -> None:
    gone = pod("a")
    gone["spec"]["nodeName"] = "ghost"
    writes = plan_orphan_pods([pod("b"), gone], {"n1"})
    assert [(w.name, w.options) for w in writes] == [("a", {"grace_period_seconds": 0})]


# --- leader election -------------------------------------------------------------------------


def lease(holder: str, renewed: datetime) -> Obj:
    return {
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": rfc3339(renewed, 6),
        }
    }


@pytest.mark.parametrize(
    ("case", "the_lease", "unchanged_for", "expected"),
    [
        ("free", lease("", NOW), 0, True),
        ("ours", lease("box_42_def", NOW), 0, True),
        ("held and fresh", lease("other", NOW), 100, False),
        ("expired by both clocks", lease("other", NOW - timedelta(seconds=20)), 16, True),
        ("expired by their clock only", lease("other", NOW - timedelta(seconds=20)), 3, False),
        ("expired, same host", lease("box_41_abc", NOW - timedelta(seconds=20)), 0, True),
        ("fresh, same host", lease("box_41_abc", NOW - timedelta(seconds=2)), 0, False),
    ],
)
def test_may_take_lease(case: str, the_lease: Obj, unchanged_for: float, expected: bool) -> None:
    assert may_take_lease(the_lease, "box_42_def", NOW, unchanged_for) is expected, case


# --- work queue and expectations -------------------------------------------------------------


@pytest.mark.asyncio
async def test_workqueue_dedups_and_requeues_dirty_keys() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert len(q) == 2
    key = await q.get()
    assert key == "a"
    q.add("a")  # while processing: marked dirty, not queued twice
    assert len(q) == 1
    q.done("a")
    assert len(q) == 2
    assert [await q.get(), await q.get()] == ["b", "a"]


@pytest.mark.asyncio
async def test_workqueue_key_wakes_one_idle_worker() -> None:
    q = WorkQueue()
    getters = [asyncio.create_task(q.get()) for _ in range(4)]
    await asyncio.sleep(0)  # all four idle, waiting
    q.add("a")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    done = [g for g in getters if g.done()]
    assert [g.result() for g in done] == ["a"]  # the first to wait, and only it
    assert done == getters[:1]
    q.add("b")
    q.add("c")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [g.result() for g in getters if g.done()] == ["a", "b", "c"]
    assert not getters[3].done()
    getters[3].cancel()
    await asyncio.gather(getters[3], return_exceptions=True)
    assert not q._waiters  # a cancelled worker leaves no waiter behind


@pytest.mark.asyncio
async def test_workqueue_wakeup_of_a_cancelled_worker_goes_to_the_next() -> None:
    q = WorkQueue()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add("a")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: the key must not wait for a worker
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    assert await asyncio.wait_for(second, 1.0) == "a"


@pytest.mark.asyncio
async def test_workqueue_backoff_grows_and_resets() -> None:
    q = WorkQueue(base_delay=0.01, max_delay=0.04, rand=lambda: 0.5)  # jitter: +10 %
    delays = [q.retry("k") for _ in range(4)]
    assert delays == pytest.approx([0.011, 0.022, 0.044, 0.044])
    q.forget("k")
    assert q.failures("k") == 0
    got = await asyncio.wait_for(q.get(), 1.0)
    assert got == "k"
    q.close()


def test_expectations_wait_for_the_cache() -> None:
    cache: dict[str, Obj] = {}
    exp = Expectations(cache.get, timeout=10)
    exp.expect_present("rs", "ns/p1", "10")
    exp.expect_absent("rs", "ns/p0")
    cache["ns/p0"] = {"metadata": {"resourceVersion": "4"}}
    assert not exp.satisfied("rs")
    cache["ns/p1"] = {"metadata": {"resourceVersion": "10"}}
    assert exp.observe("ns/p1") is None  # p0 still there
    del cache["ns/p0"]
    assert exp.observe("ns/p0") == "rs"
    assert exp.satisfied("rs")


def test_expectations_remember_an_object_seen_then_gone() -> None:
    """A pod seen at its version and deleted before its sibling arrived does not keep the
    owner waiting for the deadline (owner loops wait up to 5 min, as upstream)."""
    cache: dict[str, Obj] = {}
    exp = Expectations(cache.get, timeout=300)
    exp.expect_present("rs", "ns/p1", "10")
    exp.expect_present("rs", "ns/p2", "11")
    cache["ns/p1"] = {"metadata": {"resourceVersion": "10"}}
    assert exp.observe("ns/p1") is None  # the owner did not ask yet
    assert not exp.satisfied("rs")  # p2 not seen yet
    del cache["ns/p1"]  # deleted (evicted) before p2 arrived
    cache["ns/p2"] = {"metadata": {"resourceVersion": "11"}}
    assert exp.observe("ns/p2") == "rs"
    assert exp.satisfied("rs")


def test_expectations_expire() -> None:
    exp = Expectations(lambda key: None, timeout=0)
    exp.expect_present("rs", "ns/p1", "10")
    assert exp.satisfied("rs")


@pytest.mark.parametrize(
    ("have", "want", "ok"), [("10", "9", True), ("9", "10", False), ("abc", "abc", True)]
)
def test_rv_at_least(have: str, want: str, ok: bool) -> None:
    assert rv_at_least(have, want) is ok


def test_event_for_names_the_object_like_upstream() -> None:
    from podnet.controllers.events import event_for

    pod_obj = {
        "metadata": {"name": "web-1", "namespace": "ns", "uid": "u1", "resourceVersion": "12"}
    }
    ev = event_for(
        pod_obj,
        "Pod",
        "v1",
        "Normal",
        "Scheduled",
        "Successfully assigned ns/web-1 to n1",
        "default-scheduler",
        NOW,
        0x1F,
    )
    assert ev["metadata"] == {"name": "web-1.1f", "namespace": "ns"}
    assert ev["involvedObject"] == {
        "kind": "Pod",
        "name": "web-1",
        "uid": "u1",
        "apiVersion": "v1",
        "resourceVersion": "12",
        "namespace": "ns",
    }
    assert (ev["type"], ev["reason"], ev["source"], ev["count"]) == (
        "Normal",
        "Scheduled",
        {"component": "default-scheduler"},
        1,
    )
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-01-01T12:00:00Z"
    node_event = event_for(
        {"metadata": {"name": "n1"}},
        "Node",
        "v1",
        "Normal",
        "NodeNotReady",
        "x",
        "node-controller",
        NOW,
        1,
    )
    assert node_event["metadata"]["namespace"] == "default"
    assert "namespace" not in node_event["involvedObject"]
