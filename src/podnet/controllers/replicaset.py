"""The ReplicaSet controller: keeps `spec.replicas` active pods for every ReplicaSet — and the
replication manager, the same loop for core/v1 ReplicationControllers.

What belongs here: the pure planner `plan_replicaset` (adopt/release, create/delete, status),
`ReplicatedKind` (what differs between the two kinds: resource, apiVersion, and the
ReplicationController's map selector) and the thin loops `ReplicaSetController` and
`ReplicationManager`.

Semantics (upstream `replica_set.go`):
- A pod belongs to the ReplicaSet whose uid is its controller ownerReference. Orphans (no
  controller) in the namespace that match the selector and are not being deleted are adopted;
  owned pods that no longer match are released (their ownerReference is removed).
- Active pods (not Succeeded/Failed, not being deleted) are counted against `spec.replicas`.
  Too few → new pods from the template, named `<rs>-<5 random>` (`generateName`) with a
  controller ownerReference; too many → delete the least valuable first (unscheduled, then
  Pending, then not ready, then most restarts, then newest). Failed pods are deleted (and so
  replaced); a deleted pod is replaced as soon as its deletion is seen.
- A ReplicaSet being deleted creates and deletes nothing (the garbage collector acts).
- status: replicas, fullyLabeledReplicas (matching the template labels), readyReplicas,
  availableReplicas (Ready for minReadySeconds; the plan says when to look again),
  observedGeneration; written only when it changes.
- Expectations guard against acting twice before the informer shows our own writes.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from datetime import datetime

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339
from podnet.controllers.controller import OwnerController
from podnet.controllers.objects import (
    controller_ref,
    get_condition,
    is_deleting,
    labels_of,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
    owner_references,
    pod_available,
    pod_is_active,
    pod_is_ready,
    pod_node,
    selector_matches,
    uid_of,
)
from podnet.controllers.writes import Write

log = logging.getLogger(__name__)

BURST_REPLICAS = 500  # upstream's per-sync cap on creates/deletes


@dataclass(frozen=True, slots=True)
class ReplicatedKind:
    resource: str
    api_version: str
    kind: str
    map_selector: bool  # ReplicationControllers select with a plain label map

    def selector(self, obj: Obj) -> Obj | None:
        """The owner's selector as a `metav1.LabelSelector`."""
        sel = (obj.get("spec") or {}).get("selector")
        if not isinstance(sel, dict):
            return None
        return {"matchLabels": sel} if self.map_selector else sel


REPLICA_SET = ReplicatedKind("replicasets", "apps/v1", "ReplicaSet", map_selector=False)
REPLICATION_CONTROLLER = ReplicatedKind(
    "replicationcontrollers", "v1", "ReplicationController", map_selector=True
)


@dataclass(slots=True)
class ReplicaSetPlan:
    creates: list[Obj] = field(default_factory=list)  # pod objects (generateName)
    deletes: list[Obj] = field(default_factory=list)
    adopt: list[Obj] = field(default_factory=list)
    release: list[Obj] = field(default_factory=list)
    status: Obj | None = None  # the new status when it differs
    requeue_after: float | None = None  # minReadySeconds bookkeeping

    def writes(self, rs: Obj, kind: ReplicatedKind = REPLICA_SET) -> list[Write]:
        """Everything but the pod creations, as writes (adoption/release are patches)."""
        out: list[Write] = []
        for pod in self.adopt:
            refs = [*owner_references(pod), make_owner_reference(rs, kind.api_version, kind.kind)]
            out.append(
                Write(
                    "patch",
                    "pods",
                    pod,
                    patch={
                        "metadata": {
                            "ownerReferences": refs,
                            "resourceVersion": (pod.get("metadata") or {}).get("resourceVersion"),
                        }
                    },
                )
            )
        for pod in self.release:
            refs = [r for r in owner_references(pod) if r.get("uid") != uid_of(rs)]
            out.append(
                Write(
                    "patch",
                    "pods",
                    pod,
                    patch={
                        "metadata": {
                            "ownerReferences": refs or None,
                            "resourceVersion": (pod.get("metadata") or {}).get("resourceVersion"),
                        }
                    },
                )
            )
        out.extend(Write("delete", "pods", p) for p in self.deletes)
        return out


def rs_selector(rs: Obj) -> Obj | None:
    return REPLICA_SET.selector(rs)


def _deletion_rank(pod: Obj) -> tuple[int, int, int, int]:
    """Smaller = deleted first (upstream `controller.ActivePods` ordering, simplified)."""
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(
        (pod.get("status") or {}).get("phase") or "Pending", 0
    )
    restarts = sum(
        int(c.get("restartCount") or 0)
        for c in (pod.get("status") or {}).get("containerStatuses") or []
    )
    return (1 if pod_node(pod) else 0, phase_rank, 1 if pod_is_ready(pod) else 0, -restarts)


def rank_for_deletion(pods: list[Obj]) -> list[Obj]:
    """Pods in the order a scale-down removes them; among equals the newest goes first."""
    newest_first = sorted(
        pods,
        key=lambda p: (str((p.get("metadata") or {}).get("creationTimestamp") or ""), name_of(p)),
        reverse=True,
    )
    return sorted(newest_first, key=_deletion_rank)


def pod_from_template(rs: Obj, kind: ReplicatedKind = REPLICA_SET) -> Obj:
    template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
    meta = template.get("metadata") or {}
    pod_meta: Obj = {
        "generateName": f"{name_of(rs)}-",
        "namespace": namespace_of(rs),
        "labels": dict(meta.get("labels") or {}),
        "ownerReferences": [make_owner_reference(rs, kind.api_version, kind.kind)],
    }
    if meta.get("annotations"):
        pod_meta["annotations"] = dict(meta["annotations"])
    if meta.get("finalizers"):
        pod_meta["finalizers"] = list(meta["finalizers"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pod_meta,
        "spec": template.get("spec") or {},
    }


def plan_replicaset(
    rs: Obj, pods: list[Obj], now: datetime, kind: ReplicatedKind = REPLICA_SET
) -> ReplicaSetPlan:
    plan = ReplicaSetPlan()
    spec = rs.get("spec") or {}
    selector = kind.selector(rs)
    uid = uid_of(rs)
    ns = namespace_of(rs)
    deleting = is_deleting(rs)
    owned: list[Obj] = []
    for pod in pods:
        if namespace_of(pod) != ns:
            continue
        ref = controller_ref(pod)
        matches = selector_matches(selector, labels_of(pod))
        if ref is not None and ref.get("uid") == uid:
            if matches or is_deleting(pod):
                owned.append(pod)
            elif not deleting:
                plan.release.append(pod)
        elif ref is None and matches and not is_deleting(pod) and not deleting:
            plan.adopt.append(pod)
            owned.append(pod)
    active = [p for p in owned if pod_is_active(p)]
    if not deleting:
        plan.deletes.extend(
            p
            for p in owned
            if (p.get("status") or {}).get("phase") == "Failed" and not is_deleting(p)
        )
        replicas = int(spec.get("replicas", 1))
        diff = len(active) - replicas
        if diff < 0:
            plan.creates = [pod_from_template(rs, kind) for _ in range(min(-diff, BURST_REPLICAS))]
        elif diff > 0:
            ranked = rank_for_deletion(active)
            plan.deletes.extend(ranked[: min(diff, BURST_REPLICAS)])
    plan.status, plan.requeue_after = replicaset_status(rs, active, now)
    return plan


def replicaset_status(rs: Obj, active: list[Obj], now: datetime) -> tuple[Obj | None, float | None]:
    spec = rs.get("spec") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    template_labels = labels_of(spec.get("template") or {})
    ready = [p for p in active if pod_is_ready(p)]
    available = [p for p in ready if pod_available(p, min_ready, now)]
    requeue: float | None = None
    if min_ready > 0:
        for p in ready:
            if p in available:
                continue
            since = parse_rfc3339((get_condition(p, "Ready") or {}).get("lastTransitionTime"))
            if since is not None:
                wait = min_ready - (now - since).total_seconds()
                requeue = wait if requeue is None else min(requeue, wait)
    current = dict(rs.get("status") or {})
    new = dict(current)
    new.update(
        {
            "replicas": len(active),
            "fullyLabeledReplicas": sum(
                1
                for p in active
                if all(labels_of(p).get(k) == v for k, v in template_labels.items())
            ),
            "readyReplicas": len(ready),
            "availableReplicas": len(available),
            "observedGeneration": int((rs.get("metadata") or {}).get("generation") or 1),
        }
    )
    if requeue is not None:
        requeue = max(requeue, 0.0) + 0.05
    return (None if new == current else new), requeue


class ReplicaSetController(OwnerController):
    name = "replicaset"
    component = "replicaset-controller"
    workers = 4
    owner = REPLICA_SET
    owner_resource = REPLICA_SET.resource
    owner_kind = REPLICA_SET.kind

    def owner_selector(self, owner: Obj) -> Obj | None:
        return self.owner.selector(owner)

    async def reconcile(self, key: str) -> None:
        rs = self.owner_to_sync(key)
        if rs is None:
            return
        ns = namespace_of(rs)
        candidates = self.dependents.controlled_by(uid_of(rs)) + self.dependents.uncontrolled(ns)
        plan = plan_replicaset(rs, candidates, self.clock(), self.owner)
        errors: list[BaseException] = []
        for w in plan.writes(rs, self.owner):
            try:
                if w.verb == "delete":
                    self.expectations.expect_absent(key, object_key(w.obj))
                    await self.api.delete("pods", w.name, ns, uid=uid_of(w.obj))
                    self.events.record(
                        rs,
                        self.owner.kind,
                        self.owner.api_version,
                        "Normal",
                        "SuccessfulDelete",
                        f"Deleted pod: {w.name}",
                    )
                else:
                    await self.api.patch("pods", w.name, w.patch, ns)
            except ApiError as e:
                if e.code != 404:
                    errors.append(e)
        if plan.creates:
            results = await asyncio.gather(
                *(self.api.create("pods", p, ns) for p in plan.creates), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    errors.append(r)
                else:
                    self.expectations.expect_present(
                        key, object_key(r), str(r["metadata"].get("resourceVersion") or "")
                    )
                    self.events.record(
                        rs,
                        self.owner.kind,
                        self.owner.api_version,
                        "Normal",
                        "SuccessfulCreate",
                        f"Created pod: {name_of(r)}",
                    )
            log.info(
                "%s %s: created %d pod(s)",
                self.name,
                key,
                len(plan.creates) - len([r for r in results if isinstance(r, BaseException)]),
            )
        if plan.status is not None and not errors:
            try:
                await self.api.patch(
                    self.owner.resource,
                    name_of(rs),
                    {"status": plan.status},
                    ns,
                    subresource="status",
                )
            except ApiError as e:
                if e.code != 404:
                    raise
        if errors:
            raise errors[0]
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)


class ReplicationManager(ReplicaSetController):
    """core/v1 ReplicationControllers: the ReplicaSet loop with a map selector."""

    name = "replicationcontroller"
    component = "replication-controller"
    owner = REPLICATION_CONTROLLER
    owner_resource = REPLICATION_CONTROLLER.resource
    owner_kind = REPLICATION_CONTROLLER.kind
