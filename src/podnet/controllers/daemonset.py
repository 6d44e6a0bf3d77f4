"""The DaemonSet controller: one pod on every eligible node, rolled out node by node.

What belongs here: the pure pieces — `should_run` (is a node eligible), `daemon_pod` (the pod
for one node), `plan_daemonset` (one sync of upstream `daemon_controller.go` + `update.go`) —
and `DaemonSetController`, its thin loop.

Semantics (upstream's):
- A node is eligible when the template's pod fits it: `spec.nodeName` (if set) names it, its
  labels match `nodeSelector` and the required node affinity, and every NoSchedule/NoExecute
  taint is tolerated. Every daemon pod tolerates what upstream adds: `node.kubernetes.io/
  not-ready` and `unreachable` (NoExecute), `disk-pressure`, `memory-pressure`,
  `pid-pressure`, `unschedulable` (NoSchedule), and `network-unavailable` for hostNetwork
  pods — so a cordoned node keeps its daemon, a node the node lifecycle marks unreachable
  keeps it too, and a node tainted NoExecute by the user loses it.
- A pod is bound by the scheduler, not here: it carries a required node affinity
  `metadata.name In [<node>]` (upstream's, replacing the template's terms), the
  `controller-revision-hash` label of its template revision and a controller reference.
- Each eligible node without a pod gets one; a node that may no longer run it loses it
  (NoExecute taints, labels, the node deleted); failed pods are deleted and replaced (Warning
  FailedDaemonPod); extra pods on a node are deleted, the oldest stays.
- RollingUpdate: pods of an older revision are replaced keeping at most `maxUnavailable`
  nodes without an available pod (old pods that are not available go first); with `maxSurge`
  the new pod is started beside the old one, which is deleted once the new one is available.
  OnDelete: new pods come only where the user deleted old ones. History is
  `controllers/history.py`'s (ControllerRevisions, `kubectl rollout history|undo`).
- status: desiredNumberScheduled, currentNumberScheduled, numberMisscheduled, numberReady,
  numberAvailable, numberUnavailable, updatedNumberScheduled, observedGeneration,
  collisionCount — what `kubectl rollout status daemonset` reads.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339
from podnet.controllers.controller import OwnerController
from podnet.controllers.deployment import scaled_value
from podnet.controllers.history import REVISION_HASH, plan_history, revision_hash, template_of
from podnet.controllers.informer import EventType
from podnet.controllers.nodefit import (
    matches_node_affinity,
    matches_node_selector,
    untolerated_taint,
)
from podnet.controllers.objects import (
    controller_ref,
    get_condition,
    is_deleting,
    labels_of,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
    pod_available,
    pod_is_ready,
    selector_matches,
    uid_of,
)
from podnet.controllers.writes import Write, adopt, apply_write, release

log = logging.getLogger(__name__)

Event = tuple[str, str, str]
DEFAULT_TOLERATIONS = (
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
)
HOST_NETWORK_TOLERATION = ("node.kubernetes.io/network-unavailable", "NoSchedule")


@dataclass(slots=True)
class DaemonSetPlan:
    creates: list[Obj] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)  # history, adoption, deletes, status
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def pod_spec_with_tolerations(ds: Obj) -> Obj:
    """The template's pod spec plus the tolerations every daemon pod gets."""
    spec = copy.deepcopy(template_of(ds).get("spec") or {})
    tolerations = list(spec.get("tolerations") or [])
    wanted = list(DEFAULT_TOLERATIONS)
    if spec.get("hostNetwork") is True:
        wanted.append(HOST_NETWORK_TOLERATION)
    for key, effect in wanted:
        if not any(
            isinstance(t, dict)
            and t.get("key") == key
            and t.get("effect") == effect
            and t.get("operator") == "Exists"
            for t in tolerations
        ):
            tolerations.append({"key": key, "operator": "Exists", "effect": effect})
    spec["tolerations"] = tolerations
    return spec


def should_run(ds: Obj, node: Obj) -> tuple[bool, bool]:
    """(should run a pod here, may keep a running one) — upstream NodeShouldRunDaemonPod."""
    spec = pod_spec_with_tolerations(ds)
    if spec.get("nodeName") and spec["nodeName"] != name_of(node):
        return False, False
    if not matches_node_selector(spec, node) or not matches_node_affinity(spec, node):
        return False, False
    runs = untolerated_taint(spec, node) is None
    keeps = untolerated_taint(spec, node, ("NoExecute",)) is None
    return runs, keeps


def daemon_pod(ds: Obj, node: str, hash_value: str) -> Obj:
    template = template_of(ds)
    meta = template.get("metadata") or {}
    spec = pod_spec_with_tolerations(ds)
    affinity = spec.setdefault("affinity", {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        ]
    }
    labels = {**(meta.get("labels") or {}), REVISION_HASH: hash_value}
    labels["pod-template-generation"] = str((ds.get("metadata") or {}).get("generation") or 1)
    pod_meta: Obj = {
        "generateName": f"{name_of(ds)}-",
        "namespace": namespace_of(ds),
        "labels": labels,
        "ownerReferences": [make_owner_reference(ds, "apps/v1", "DaemonSet")],
    }
    if meta.get("annotations"):
        pod_meta["annotations"] = dict(meta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


def target_node(pod: Obj) -> str:
    """The node a daemon pod is for: its nodeName, or before binding its affinity's."""
    bound = (pod.get("spec") or {}).get("nodeName")
    if bound:
        return str(bound)
    terms = (
        (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    for term in terms:
        for f in (term or {}).get("matchFields") or []:
            if f.get("key") == "metadata.name" and f.get("operator") == "In" and f.get("values"):
                return str(f["values"][0])
    return ""


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _created(pod: Obj) -> tuple[str, str]:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or ""), name_of(pod)


def plan_daemonset(
    ds: Obj, nodes: list[Obj], pods: list[Obj], revisions: list[Obj], now: datetime
) -> DaemonSetPlan:
    """One sync of `ds` over every node, the pods of its namespace and its revisions."""
    plan = DaemonSetPlan()
    if is_deleting(ds):
        return plan
    spec = ds.get("spec") or {}
    selector = spec.get("selector")
    owned: list[Obj] = []
    for pod in pods:
        if namespace_of(pod) != namespace_of(ds):
            continue
        ref = controller_ref(pod)
        matches = selector_matches(selector, labels_of(pod))
        if ref is not None and ref.get("uid") == uid_of(ds):
            if matches or is_deleting(pod):
                owned.append(pod)
            else:
                plan.writes.append(release("pods", pod, ds))
        elif ref is None and matches and not is_deleting(pod):
            plan.writes.append(adopt("pods", pod, ds, "apps/v1", "DaemonSet"))
            owned.append(pod)
    status = dict(ds.get("status") or {})
    history = plan_history(
        ds, "DaemonSet", revisions, {labels_of(p).get(REVISION_HASH, "") for p in owned}
    )
    if history.current is None:  # a hash collision: count it and try the next hash
        status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
        plan.writes.append(_status_write(ds, status))
        return plan
    plan.writes[:0] = history.writes
    current_hash = revision_hash(history.current)

    by_node: dict[str, list[Obj]] = {}
    for pod in owned:
        if not is_deleting(pod):
            by_node.setdefault(target_node(pod), []).append(pod)
    deletes: list[Obj] = []
    creates: list[str] = []
    eligible: dict[str, list[Obj]] = {}  # nodes that should run a pod -> their live pods
    misscheduled = 0
    for node in sorted(nodes, key=name_of):
        node_name = name_of(node)
        runs, keeps = should_run(ds, node)
        live = sorted(by_node.pop(node_name, []), key=_created)
        if not runs:
            if live and not keeps:
                deletes.extend(live)
            elif live:
                misscheduled += 1
            continue
        failed = [p for p in live if _phase(p) == "Failed"]
        for pod in failed:
            plan.events.append(
                (
                    "Warning",
                    "FailedDaemonPod",
                    f"Found failed daemon pod {namespace_of(pod)}/{name_of(pod)} on node "
                    f"{node_name}, will try to kill it",
                )
            )
        deletes.extend(failed)
        live = [p for p in live if _phase(p) != "Failed"]
        if not live:
            creates.append(node_name)
        eligible[node_name] = live
    for stray in by_node.values():  # pods for nodes that do not exist (any more)
        deletes.extend(stray)

    min_ready = int(spec.get("minReadySeconds") or 0)
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        _roll(eligible, current_hash, strategy, min_ready, now, deletes, creates)
    else:
        for live in eligible.values():  # keep the oldest of several (OnDelete)
            deletes.extend(live[1:])

    plan.creates = [daemon_pod(ds, n, current_hash) for n in creates]
    plan.writes.extend(Write("delete", "pods", p) for p in deletes)
    deleted = {uid_of(p) for p in deletes}
    new_status = daemon_status(ds, eligible, deleted, current_hash, misscheduled, min_ready, now)
    if status.get("collisionCount") is not None:
        new_status["collisionCount"] = status["collisionCount"]
    if new_status != (ds.get("status") or {}):
        plan.writes.append(_status_write(ds, new_status))
    if min_ready:
        plan.requeue_after = _min_ready_wait(eligible, min_ready, now)
    return plan


def _roll(
    eligible: dict[str, list[Obj]],
    current_hash: str,
    strategy: Obj,
    min_ready: int,
    now: datetime,
    deletes: list[Obj],
    creates: list[str],
) -> None:
    """Upstream `rollingUpdate`: replace old pods within maxUnavailable / maxSurge."""
    desired = len(eligible)
    rolling = strategy.get("rollingUpdate") or {}
    surge = scaled_value(rolling.get("maxSurge", 0), desired, round_up=True)
    unavailable_budget = scaled_value(rolling.get("maxUnavailable", 1), desired, round_up=True)
    if surge == 0 and unavailable_budget == 0:
        unavailable_budget = 1
    unavailable = 0
    candidates: list[Obj] = []  # available old pods that may be replaced
    surging = 0
    for live in (eligible[n] for n in sorted(eligible)):
        new = [p for p in live if labels_of(p).get(REVISION_HASH) == current_hash]
        old = [p for p in live if p not in new]
        available = [p for p in live if pod_available(p, min_ready, now)]
        if not available:
            unavailable += 1
        if not old:
            deletes.extend(new[1:])  # several pods of the current revision: keep the oldest
            continue
        old_available = [p for p in old if pod_available(p, min_ready, now)]
        if not old_available:
            deletes.extend(old)  # nothing to protect here: replace at once
            continue
        if surge:
            if new and pod_available(new[0], min_ready, now):
                deletes.extend(old)
            elif new:
                surging += 1
            else:
                candidates.append(old_available[0])
        else:
            candidates.append(old_available[0])
    if surge:
        for pod in candidates[: max(surge - surging, 0)]:
            creates.append(target_node(pod))
        return
    for pod in candidates[: max(unavailable_budget - unavailable, 0)]:
        node_pods = eligible[target_node(pod)]
        deletes.extend(p for p in node_pods if labels_of(p).get(REVISION_HASH) != current_hash)


def daemon_status(
    ds: Obj,
    eligible: dict[str, list[Obj]],
    deleted: set[str],
    current_hash: str,
    misscheduled: int,
    min_ready: int,
    now: datetime,
) -> Obj:
    current = ready = available = updated = 0
    for live in eligible.values():
        kept = [p for p in live if uid_of(p) not in deleted]
        if live:
            current += 1
        if any(pod_is_ready(p) for p in kept):
            ready += 1
        if any(pod_available(p, min_ready, now) for p in kept):
            available += 1
        if any(labels_of(p).get(REVISION_HASH) == current_hash for p in kept):
            updated += 1
    desired = len(eligible)
    return {
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "desiredNumberScheduled": desired,
        "numberReady": ready,
        "observedGeneration": int((ds.get("metadata") or {}).get("generation") or 1),
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
        "numberUnavailable": desired - available,
    }


def _min_ready_wait(eligible: dict[str, list[Obj]], min_ready: int, now: datetime) -> float | None:
    waits = []
    for live in eligible.values():
        for pod in live:
            if pod_is_ready(pod) and not pod_available(pod, min_ready, now):
                since = parse_rfc3339((get_condition(pod, "Ready") or {}).get("lastTransitionTime"))
                if since is not None:
                    waits.append(min_ready - (now - since).total_seconds())
    return max(min(waits), 0.0) + 0.05 if waits else None


def _status_write(ds: Obj, status: Obj) -> Write:
    return Write("patch", "daemonsets", ds, subresource="status", patch={"status": status})


# --- the loop --------------------------------------------------------------------------------


class DaemonSetController(OwnerController):
    name = "daemonset"
    component = "daemonset-controller"
    workers = 2
    owner_resource = "daemonsets"
    owner_kind = "DaemonSet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes = self.informers.informer("nodes")
        self.revisions = self.informers.informer("controllerrevisions")
        self.nodes.add_handler(self._on_node)
        self.revisions.add_handler(self.on_owned)

    def _on_node(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if (
            old is not None
            and new is not None
            and (
                old.get("spec") == new.get("spec")
                and labels_of(old) == labels_of(new)
                and get_condition(old, "Ready") == get_condition(new, "Ready")
            )
        ):
            return  # a heartbeat: nothing a daemon depends on changed
        for key in self.all_keys():
            self.queue.add(key)

    async def reconcile(self, key: str) -> None:
        ds = self.owner_to_sync(key)
        if ds is None:
            return
        ns = namespace_of(ds)
        plan = plan_daemonset(
            ds,
            self.nodes.items(),
            self.dependents.controlled_by(uid_of(ds)) + self.dependents.uncontrolled(ns),
            self.revisions.in_namespace(ns),
            self.clock(),
        )
        for w in plan.writes:
            if w.resource == "pods" and w.verb == "delete":
                self.expectations.expect_absent(key, object_key(w.obj))
            try:
                await apply_write(self.api, w)
            except ApiError as e:
                if e.code == 404 or (e.code == 409 and w.verb == "create"):
                    continue
                raise
            if w.resource == "pods" and w.verb == "delete":
                self._event(ds, "Normal", "SuccessfulDelete", f"Deleted pod: {w.name}")
        created = await asyncio.gather(
            *(self.api.create("pods", p, ns) for p in plan.creates), return_exceptions=True
        )
        for pod in created:
            if isinstance(pod, BaseException):
                continue
            self.expectations.expect_present(
                key, object_key(pod), str(pod["metadata"].get("resourceVersion") or "")
            )
            self._event(ds, "Normal", "SuccessfulCreate", f"Created pod: {name_of(pod)}")
        for event_type, reason, message in plan.events:
            self._event(ds, event_type, reason, message)
        errors = [r for r in created if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    def _event(self, ds: Obj, event_type: str, reason: str, message: str) -> None:
        self.events.record(ds, "DaemonSet", "apps/v1", event_type, reason, message)
