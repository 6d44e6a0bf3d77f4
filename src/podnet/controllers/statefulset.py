"""The StatefulSet controller: pods with stable names, created and replaced in order.

What belongs here: the pure planner `plan_statefulset` (one sync of upstream
`stateful_set_control.go`), `stateful_pod` (the pod for one ordinal) and
`StatefulSetController`, its thin loop.

Semantics (upstream's):
- Pod `<set>-<ordinal>` for ordinals 0..replicas-1 (shifted by `spec.ordinals.start`), with
  `hostname` = its name and `subdomain` = `spec.serviceName`, so with cluster DNS and a
  headless Service of that name it resolves as `web-0.web.<ns>.svc.cluster.local`; labels
  `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
  `controller-revision-hash` (the revision's name); a controller reference.
- OrderedReady (default): ordinal n is created only once 0..n-1 are Running and Ready and have
  been Ready for `minReadySeconds` (the plan says when to look again); scaling down removes the
  highest ordinal first, one at a time, only while the others are Running and Ready.
  Parallel: all at once, both ways. A Failed pod is deleted and created again.
- RollingUpdate: once every pod is Running and Ready, the highest ordinal at or above
  `partition` that does not run the update revision is deleted (and so recreated from it), one
  at a time; pods below the partition keep — and are recreated from — the current revision.
  When every pod runs the update revision, it becomes the current one. OnDelete: a deleted pod
  comes back from the update revision. History is `controllers/history.py`'s.
- `volumeClaimTemplates`: podnet provisions no volumes (see `controllers/volumes.py`), so each
  template becomes an `emptyDir` volume of the same name in every pod — the data lives as long
  as the pod, not the ordinal — and the StatefulSet gets a Warning event
  `VolumeClaimTemplatesAsEmptyDir` saying so. No claims are created.
- status: replicas, readyReplicas, availableReplicas (minReadySeconds), currentReplicas,
  updatedReplicas, currentRevision, updateRevision, observedGeneration, collisionCount — what
  `kubectl rollout status statefulset` reads.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.controllers.controller import OwnerController
from podnet.controllers.history import REVISION_HASH, plan_history
from podnet.controllers.objects import (
    controller_ref,
    is_deleting,
    labels_of,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
    pod_available,
    pod_is_ready,
    seconds_until_available,
    selector_matches,
    uid_of,
)
from podnet.controllers.writes import Write, adopt, apply_write, release

log = logging.getLogger(__name__)

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
EMPTY_DIR_WARNING = (
    "volumeClaimTemplates {names} are served as emptyDir volumes: podnet provisions no "
    "persistent volumes, so their data lives as long as each pod, not its ordinal"
)

Event = tuple[str, str, str]


@dataclass(slots=True)
class StatefulSetPlan:
    creates: list[Obj] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def _spec(ss: Obj) -> Obj:
    return ss.get("spec") or {}


def replicas_of(ss: Obj) -> int:
    value = _spec(ss).get("replicas")
    return 1 if value is None else int(value)


def start_ordinal(ss: Obj) -> int:
    return int((_spec(ss).get("ordinals") or {}).get("start") or 0)


def ordinal_of(ss: Obj, pod: Obj) -> int | None:
    prefix = f"{name_of(ss)}-"
    name = name_of(pod)
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        return None
    return int(name[len(prefix) :])


def _template_of_revision(revision: Obj) -> Obj:
    template = copy.deepcopy(((revision.get("data") or {}).get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    return template


def stateful_pod(ss: Obj, ordinal: int, revision: Obj) -> Obj:
    """The pod for `ordinal`, from the template `revision` holds."""
    template = _template_of_revision(revision)
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    name = f"{name_of(ss)}-{ordinal}"
    spec["hostname"] = name
    if _spec(ss).get("serviceName"):
        spec["subdomain"] = _spec(ss)["serviceName"]
    claims = [
        str((t.get("metadata") or {}).get("name"))
        for t in _spec(ss).get("volumeClaimTemplates") or []
        if isinstance(t, dict)
    ]
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in claims]
    spec["volumes"] = [*volumes, *({"name": c, "emptyDir": {}} for c in claims)] or None
    if spec["volumes"] is None:
        del spec["volumes"]
    labels = {
        **(meta.get("labels") or {}),
        REVISION_HASH: name_of(revision),
        POD_NAME_LABEL: name,
        POD_INDEX_LABEL: str(ordinal),
    }
    pod_meta: Obj = {
        "name": name,
        "namespace": namespace_of(ss),
        "labels": labels,
        "ownerReferences": [make_owner_reference(ss, "apps/v1", "StatefulSet")],
    }
    if meta.get("annotations"):
        pod_meta["annotations"] = dict(meta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def running_and_ready(pod: Obj) -> bool:
    return _phase(pod) == "Running" and pod_is_ready(pod) and not is_deleting(pod)


def plan_statefulset(
    ss: Obj, pods: list[Obj], revisions: list[Obj], now: datetime
) -> StatefulSetPlan:
    """One sync of `ss` over the pods of its namespace and its revisions."""
    plan = StatefulSetPlan()
    if is_deleting(ss):
        return plan
    spec = _spec(ss)
    owned: list[Obj] = []
    for pod in pods:
        if namespace_of(pod) != namespace_of(ss):
            continue
        ref = controller_ref(pod)
        matches = selector_matches(spec.get("selector"), labels_of(pod))
        ours = ordinal_of(ss, pod) is not None
        if ref is not None and ref.get("uid") == uid_of(ss):
            if (matches and ours) or is_deleting(pod):
                owned.append(pod)
            else:
                plan.writes.append(release("pods", pod, ss))
        elif ref is None and matches and ours and not is_deleting(pod):
            plan.writes.append(adopt("pods", pod, ss, "apps/v1", "StatefulSet"))
            owned.append(pod)
    status = dict(ss.get("status") or {})
    history = plan_history(
        ss, "StatefulSet", revisions, {labels_of(p).get(REVISION_HASH, "") for p in owned}
    )
    if history.current is None:
        status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
        plan.writes.append(_status_write(ss, status))
        return plan
    plan.writes[:0] = history.writes
    update = history.current
    current = next(
        (
            r
            for r in revisions
            if name_of(r) == status.get("currentRevision") and not is_deleting(r)
        ),
        update,
    )

    start, replicas = start_ordinal(ss), replicas_of(ss)
    by_ordinal = {o: p for p in owned if (o := ordinal_of(ss, p)) is not None}
    ordered = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
    strategy = spec.get("updateStrategy") or {}
    rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
    partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0) if rolling else 0
    min_ready = int(spec.get("minReadySeconds") or 0)
    deletes: list[Obj] = []
    blocked = False
    for ordinal in range(start, start + replicas):
        existing = by_ordinal.get(ordinal)
        if existing is None:
            keep_current = rolling and ordinal < start + partition
            plan.creates.append(stateful_pod(ss, ordinal, current if keep_current else update))
            if ordered:
                blocked = True
                break
            continue
        if _phase(existing) == "Failed" and not is_deleting(existing):
            deletes.append(existing)
            if ordered:
                blocked = True
                break
            continue
        if ordered and not (
            running_and_ready(existing) and pod_available(existing, min_ready, now)
        ):
            blocked = True  # upstream waits for Running and Ready, then for Available
            break
    condemned = sorted(
        (p for o, p in by_ordinal.items() if not start <= o < start + replicas),
        key=lambda p: -(ordinal_of(ss, p) or 0),
    )
    live = [p for p in owned if not is_deleting(p)]
    settled = not blocked and all(running_and_ready(p) for p in live) and len(live) == len(owned)
    if ordered:
        if condemned and settled and not is_deleting(condemned[0]):
            deletes.append(condemned[0])
    else:
        deletes.extend(p for p in condemned if not is_deleting(p))
    if rolling and settled and not condemned and not plan.creates:
        for ordinal in range(start + replicas - 1, start + partition - 1, -1):
            stale = by_ordinal.get(ordinal)
            if stale is not None and labels_of(stale).get(REVISION_HASH) != name_of(update):
                deletes.append(stale)
                break

    plan.writes.extend(Write("delete", "pods", p) for p in deletes)
    claims = [
        str((t.get("metadata") or {}).get("name"))
        for t in spec.get("volumeClaimTemplates") or []
        if isinstance(t, dict)
    ]
    if claims:
        plan.events.append(
            (
                "Warning",
                "VolumeClaimTemplatesAsEmptyDir",
                EMPTY_DIR_WARNING.format(names=", ".join(claims)),
            )
        )
    new_status = _status(ss, owned, current, update, now)
    if status.get("collisionCount") is not None:
        new_status["collisionCount"] = status["collisionCount"]
    if new_status != (ss.get("status") or {}):
        plan.writes.append(_status_write(ss, new_status))
    wait = seconds_until_available([p for p in owned if not is_deleting(p)], min_ready, now)
    if wait is not None:
        plan.requeue_after = wait + 0.05
    return plan


def _status(ss: Obj, owned: list[Obj], current: Obj, update: Obj, now: datetime) -> Obj:
    min_ready = int(_spec(ss).get("minReadySeconds") or 0)
    live = [p for p in owned if not is_deleting(p)]
    revision_of = {name_of(p): labels_of(p).get(REVISION_HASH) for p in live}
    current_count = sum(1 for r in revision_of.values() if r == name_of(current))
    updated = sum(1 for r in revision_of.values() if r == name_of(update))
    current_name = name_of(current)
    if updated == len(live) == replicas_of(ss):
        current_name, current_count = name_of(update), updated  # the update is complete
    return {
        "observedGeneration": int((ss.get("metadata") or {}).get("generation") or 1),
        "replicas": len(owned),
        "readyReplicas": sum(1 for p in live if running_and_ready(p)),
        "availableReplicas": sum(
            1 for p in live if running_and_ready(p) and pod_available(p, min_ready, now)
        ),
        "currentReplicas": current_count,
        "updatedReplicas": updated,
        "currentRevision": current_name,
        "updateRevision": name_of(update),
    }


def _status_write(ss: Obj, status: Obj) -> Write:
    return Write("patch", "statefulsets", ss, subresource="status", patch={"status": status})


# --- the loop --------------------------------------------------------------------------------


class StatefulSetController(OwnerController):
    name = "statefulset"
    component = "statefulset-controller"
    workers = 2
    owner_resource = "statefulsets"
    owner_kind = "StatefulSet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.revisions = self.informers.informer("controllerrevisions")
        self.revisions.add_handler(self.on_owned)
        self._warned: set[str] = set()  # uids warned about volumeClaimTemplates

    def owner_gone(self, owner: Obj) -> None:
        super().owner_gone(owner)
        self._warned.discard(uid_of(owner))

    async def reconcile(self, key: str) -> None:
        ss = self.owner_to_sync(key)
        if ss is None:
            return
        ns = namespace_of(ss)
        plan = plan_statefulset(
            ss,
            self.dependents.controlled_by(uid_of(ss)) + self.dependents.uncontrolled(ns),
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
                self._event(
                    ss,
                    "Normal",
                    "SuccessfulDelete",
                    f"delete Pod {w.name} in StatefulSet {name_of(ss)} successful",
                )
        for pod in plan.creates:
            try:
                created = await self.api.create("pods", pod, ns)
            except ApiError as e:
                if e.code == 409:  # a pod of that name already exists: adopted or refused later
                    continue
                raise
            self.expectations.expect_present(
                key, object_key(created), str(created["metadata"].get("resourceVersion") or "")
            )
            self._event(
                ss,
                "Normal",
                "SuccessfulCreate",
                f"create Pod {name_of(created)} in StatefulSet {name_of(ss)} successful",
            )
        for event_type, reason, message in plan.events:
            if reason == "VolumeClaimTemplatesAsEmptyDir":
                if uid_of(ss) in self._warned:
                    continue
                self._warned.add(uid_of(ss))
            self._event(ss, event_type, reason, message)
        if plan.requeue_after is not None:  # a pod becomes available (minReadySeconds)
            self.queue.add_after(key, plan.requeue_after)

    def _event(self, ss: Obj, event_type: str, reason: str, message: str) -> None:
        self.events.record(ss, "StatefulSet", "apps/v1", event_type, reason, message)
