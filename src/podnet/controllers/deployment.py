"""The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.

What belongs here: the pure pieces — `pod_template_hash`, `resolve_fenceposts`,
`plan_deployment` (one sync of upstream `deployment_controller.go` / `rolling.go` /
`recreate.go` / `sync.go` / `progress.go`) — and `DeploymentController`, its thin loop.

Semantics:
- The new ReplicaSet is the owned one whose template equals the Deployment's, ignoring the
  `pod-template-hash` label. None → one is created, named `<deployment>-<hash>`, with the hash
  added to its template labels and selector. `kubectl rollout undo` sets the template back to
  an old ReplicaSet's: that ReplicaSet becomes the new one again and its
  `deployment.kubernetes.io/revision` is bumped to max(old)+1 (the previous number goes to
  `deployment.kubernetes.io/revision-history`). The Deployment carries the new ReplicaSet's
  revision. A name taken by a ReplicaSet with another template bumps `status.collisionCount`.
- `pod_template_hash` is upstream's shape — FNV-32a, then `rand.SafeEncodeString` of the
  decimal value — over canonical JSON of the template (upstream hashes Go's spew dump of the
  struct, which no other language reproduces, so the values differ from a real cluster's).
- RollingUpdate: maxSurge rounds up, maxUnavailable down, both 0 → maxUnavailable 1
  (`ResolveFenceposts`). Scale the new RS up to at most replicas+maxSurge pods in total; scale
  old ones down (unhealthy replicas first, then oldest first) while keeping
  replicas-maxUnavailable available. Recreate: old RSes to 0, wait until their pods are gone,
  then the new RS to `replicas`. `spec.paused` stops rollouts (status is still kept).
- A completed rollout deletes old ReplicaSets with no replicas beyond
  `revisionHistoryLimit` (default 10), lowest revision first.
- status: replicas / updatedReplicas / readyReplicas / availableReplicas (sums over the
  ReplicaSets' status), unavailableReplicas, observedGeneration, collisionCount and the
  Available (MinimumReplicasAvailable) and Progressing (NewReplicaSetCreated,
  ReplicaSetUpdated, NewReplicaSetAvailable, ProgressDeadlineExceeded) conditions with
  upstream's messages — what `kubectl rollout status` reads.
- Scaling a Deployment mid-rollout is handled by the rolling rules (upstream scales
  proportionally across ReplicaSets; podnet lets the surge/unavailable limits converge it).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.controllers.controller import OwnerController
from podnet.controllers.objects import (
    annotations_of,
    controller_ref,
    is_deleting,
    labels_of,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
    owner_references,
    selector_matches,
    uid_of,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

POD_TEMPLATE_HASH = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
NOT_COPIED_ANNOTATIONS = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
}
SAFE_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


# --- hashing and arithmetic ------------------------------------------------------------------


def fnv32a(data: bytes, h: int = 0x811C9DC5) -> int:
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """Upstream `rand.SafeEncodeString`: no vowels, no confusable characters."""
    return "".join(SAFE_ALPHANUMS[ord(ch) % len(SAFE_ALPHANUMS)] for ch in text)


def pod_template_hash(template: Obj, collision_count: int | None = None) -> str:
    h = fnv32a(json.dumps(template, sort_keys=True, separators=(",", ":")).encode())
    if collision_count:
        h = fnv32a(collision_count.to_bytes(4, "little"), h)
    return safe_encode(str(h))


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """Upstream `intstr.GetScaledValueFromIntOrPercent`."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        pct = int(text[:-1])
        exact = pct * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def resolve_fenceposts(max_surge: Any, max_unavailable: Any, desired: int) -> tuple[int, int]:
    surge = scaled_value(max_surge, desired, round_up=True)
    unavailable = scaled_value(max_unavailable, desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _rolling_params(d: Obj) -> tuple[int, int]:
    spec = d.get("spec") or {}
    ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    return resolve_fenceposts(
        ru.get("maxSurge", "25%"), ru.get("maxUnavailable", "25%"), replicas_of(d)
    )


def is_recreate(d: Obj) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get("type") == "Recreate"


def max_unavailable(d: Obj) -> int:
    if is_recreate(d) or replicas_of(d) == 0:
        return 0
    return min(_rolling_params(d)[1], replicas_of(d))


def replicas_of(obj: Obj) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def status_int(obj: Obj, name: str) -> int:
    return int((obj.get("status") or {}).get(name) or 0)


def revision_of(rs: Obj) -> int:
    try:
        return int(annotations_of(rs).get(REVISION, "0"))
    except ValueError:
        return 0


def template_without_hash(template: Obj) -> Obj:
    t = copy.deepcopy(template)
    labels = (t.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(POD_TEMPLATE_HASH, None)
        if not labels:
            t["metadata"].pop("labels")
    return t


def templates_equal(a: Obj, b: Obj) -> bool:
    """Upstream `EqualIgnoreHash`."""
    return template_without_hash(a) == template_without_hash(b)


def _creation_order(rs: Obj) -> tuple[str, str]:
    return str((rs.get("metadata") or {}).get("creationTimestamp") or ""), name_of(rs)


# --- the planner -----------------------------------------------------------------------------


@dataclass(slots=True)
class DeploymentPlan:
    writes: list[Write] = field(default_factory=list)  # RS writes, then deployment writes
    requeue_after: float | None = None


def new_replicaset(d: Obj, hash_value: str, replicas: int, revision: int) -> Obj:
    spec = d.get("spec") or {}
    template = copy.deepcopy(spec.get("template") or {})
    template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = hash_value
    selector = copy.deepcopy(spec.get("selector") or {})
    selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = hash_value
    annotations = {k: v for k, v in annotations_of(d).items() if k not in NOT_COPIED_ANNOTATIONS}
    annotations[REVISION] = str(revision)
    labels = dict(template["metadata"]["labels"])
    rs_spec: Obj = {"replicas": replicas, "selector": selector, "template": template}
    if spec.get("minReadySeconds"):
        rs_spec["minReadySeconds"] = spec["minReadySeconds"]
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{name_of(d)}-{hash_value}",
            "namespace": namespace_of(d),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [make_owner_reference(d, "apps/v1", "Deployment")],
        },
        "spec": rs_spec,
    }


def _set_replica_annotations(d: Obj, rs: Obj) -> None:
    surge = 0 if is_recreate(d) else _rolling_params(d)[0]
    ann = rs["metadata"].setdefault("annotations", {})
    ann[DESIRED_REPLICAS] = str(replicas_of(d))
    ann[MAX_REPLICAS] = str(replicas_of(d) + surge)


def plan_deployment(
    d: Obj,
    replicasets: list[Obj],
    now: datetime,
    named: Callable[[str], Obj | None] | None = None,
) -> DeploymentPlan:
    """One sync of Deployment `d` over the ReplicaSets of its namespace that it controls or
    might adopt (others are never touched: passing every ReplicaSet of the namespace plans the
    same). `named`: any ReplicaSet of the namespace by name, for the new ReplicaSet's name
    clash (default: the one in `replicasets`)."""
    plan = DeploymentPlan()
    spec = d.get("spec") or {}
    uid = uid_of(d)
    selector = spec.get("selector")
    desired = replicas_of(d)

    # adopt orphans / release non-matching, like the ReplicaSet controller does for pods
    owned: list[Obj] = []
    for rs in replicasets:
        if namespace_of(rs) != namespace_of(d):
            continue
        ref = controller_ref(rs)
        matches = selector_matches(selector, labels_of(rs))
        if ref is not None and ref.get("uid") == uid:
            if matches:
                owned.append(rs)
            elif not is_deleting(d):
                refs = [r for r in owner_references(rs) if r.get("uid") != uid]
                plan.writes.append(
                    Write(
                        "patch",
                        "replicasets",
                        rs,
                        patch={
                            "metadata": {
                                "ownerReferences": refs or None,
                                "resourceVersion": rs["metadata"].get("resourceVersion"),
                            }
                        },
                    )
                )
        elif ref is None and matches and not is_deleting(rs) and not is_deleting(d):
            plan.writes.append(
                Write(
                    "patch",
                    "replicasets",
                    rs,
                    patch={
                        "metadata": {
                            "ownerReferences": [
                                *owner_references(rs),
                                make_owner_reference(d, "apps/v1", "Deployment"),
                            ],
                            "resourceVersion": rs["metadata"].get("resourceVersion"),
                        }
                    },
                )
            )
            owned.append(rs)
    if is_deleting(d):
        return plan

    state = {name_of(rs): copy.deepcopy(rs) for rs in sorted(owned, key=_creation_order)}
    changed: set[str] = set()
    created: str | None = None
    template = spec.get("template") or {}
    new_name = next(
        (
            n
            for n, rs in state.items()
            if templates_equal((rs.get("spec") or {}).get("template") or {}, template)
        ),
        None,
    )
    old_names = [n for n in state if n != new_name]
    max_old_revision = max((revision_of(state[n]) for n in old_names), default=0)
    status = dict(d.get("status") or {})
    collision_count = status.get("collisionCount")
    paused = bool(spec.get("paused"))
    progressing_msg: tuple[str, str] | None = None  # (reason, message) to force

    if new_name is not None:
        rs = state[new_name]
        if revision_of(rs) <= max_old_revision:  # rollback to this template: bump its revision
            ann = rs["metadata"].setdefault("annotations", {})
            old_rev = ann.get(REVISION)
            ann[REVISION] = str(max_old_revision + 1)
            if old_rev:
                history = [h for h in ann.get(REVISION_HISTORY, "").split(",") if h]
                ann[REVISION_HISTORY] = ",".join([*history, old_rev])
            changed.add(new_name)
    elif not paused and not (
        is_recreate(d)
        and any(
            replicas_of(state[n]) > 0 or status_int(state[n], "replicas") > 0 for n in old_names
        )
    ):
        hash_value = pod_template_hash(template, collision_count)
        name = f"{name_of(d)}-{hash_value}"
        clash = (
            named(name)
            if named is not None
            else next((rs for rs in replicasets if name_of(rs) == name), None)
        )
        if clash is not None:
            # same name, another template (or not ours): try the next hash
            status["collisionCount"] = int(collision_count or 0) + 1
            plan.writes.append(
                _status_write(
                    d, {**(d.get("status") or {}), "collisionCount": status["collisionCount"]}
                )
            )
            return plan
        surge = 0 if is_recreate(d) else _rolling_params(d)[0]
        current_total = sum(replicas_of(state[n]) for n in old_names)
        initial = (
            desired if is_recreate(d) else max(0, min(desired + surge - current_total, desired))
        )
        rs = new_replicaset(d, hash_value, initial, max_old_revision + 1)
        state[name] = rs
        new_name = created = name
        progressing_msg = ("NewReplicaSetCreated", f'Created new replica set "{name}"')

    new_rs = state.get(new_name) if new_name else None
    if not paused and is_recreate(d):
        _recreate(d, state, new_name, old_names, changed)
    elif not paused and new_rs is not None and new_name is not None:
        _rolling(d, state, new_name, old_names, changed)
    elif paused and new_rs is not None and not old_names and replicas_of(new_rs) != desired:
        new_rs["spec"]["replicas"] = desired
        changed.add(new_name or "")

    for name in sorted(changed | ({created} if created else set())):
        rs = state[name]
        _set_replica_annotations(d, rs)
        if name == created:
            plan.writes.append(Write("create", "replicasets", rs))
        else:
            plan.writes.append(Write("update", "replicasets", rs))
    for name in state:
        if name not in changed and name != created:
            before = annotations_of(state[name])
            probe = copy.deepcopy(state[name])
            _set_replica_annotations(d, probe)
            if name == new_name and annotations_of(probe) != before:
                plan.writes.append(Write("update", "replicasets", probe))

    rs_list = list(state.values())
    new_status = deployment_status(d, new_rs, rs_list, now, progressing_msg)
    if new_status.get("collisionCount") is None and collision_count is not None:
        new_status["collisionCount"] = collision_count
    complete = is_complete(d, new_status)
    if complete and not paused:
        plan.writes.extend(_cleanup(d, [state[n] for n in old_names]))
    rev = str(revision_of(new_rs)) if new_rs is not None else None
    if rev and annotations_of(d).get(REVISION) != rev:
        plan.writes.append(
            Write("patch", "deployments", d, patch={"metadata": {"annotations": {REVISION: rev}}})
        )
    if new_status != (d.get("status") or {}):
        plan.writes.append(_status_write(d, new_status))
    deadline = (d.get("spec") or {}).get("progressDeadlineSeconds")
    if not complete and deadline is not None:
        cond = next(
            (c for c in new_status.get("conditions", []) if c.get("type") == "Progressing"), None
        )
        since = parse_rfc3339((cond or {}).get("lastUpdateTime")) or now
        remaining = int(deadline) - (now - since).total_seconds()
        plan.requeue_after = max(remaining, 0.0) + 0.5
    return plan


def _status_write(d: Obj, status: Obj) -> Write:
    return Write("patch", "deployments", d, subresource="status", patch={"status": status})


def _rolling(
    d: Obj, state: dict[str, Obj], new_name: str, old_names: list[str], changed: set[str]
) -> None:
    desired = replicas_of(d)
    surge, unavailable = _rolling_params(d)
    new_rs = state[new_name]
    # reconcileNewReplicaSet
    new_replicas = replicas_of(new_rs)
    if new_replicas > desired:
        new_rs["spec"]["replicas"] = desired
        changed.add(new_name)
        return
    if new_replicas < desired:
        total = sum(replicas_of(rs) for rs in state.values())
        max_total = desired + surge
        if total < max_total:
            up = min(max_total - total, desired - new_replicas)
            if up > 0:
                new_rs["spec"]["replicas"] = new_replicas + up
                changed.add(new_name)
                return
    # reconcileOldReplicaSets
    olds = sorted((state[n] for n in old_names), key=_creation_order)
    if sum(replicas_of(rs) for rs in olds) == 0:
        return
    all_count = sum(replicas_of(rs) for rs in state.values())
    min_available = desired - unavailable
    new_unavailable = replicas_of(new_rs) - status_int(new_rs, "availableReplicas")
    max_scaled_down = all_count - min_available - new_unavailable
    if max_scaled_down <= 0:
        return
    scaled = 0
    for rs in olds:  # cleanupUnhealthyReplicas
        if scaled >= max_scaled_down:
            break
        reps = replicas_of(rs)
        unhealthy = reps - status_int(rs, "availableReplicas")
        if reps == 0 or unhealthy <= 0:
            continue
        down = min(max_scaled_down - scaled, unhealthy)
        rs["spec"]["replicas"] = reps - down
        scaled += down
        changed.add(name_of(rs))
    available = sum(status_int(rs, "availableReplicas") for rs in state.values())
    if available <= min_available:
        return
    to_scale = available - min_available
    done = 0
    for rs in olds:  # scaleDownOldReplicaSetsForRollingUpdate
        if done >= to_scale:
            break
        reps = replicas_of(rs)
        if reps == 0:
            continue
        down = min(reps, to_scale - done)
        rs["spec"]["replicas"] = reps - down
        done += down
        changed.add(name_of(rs))


def _recreate(
    d: Obj, state: dict[str, Obj], new_name: str | None, old_names: list[str], changed: set[str]
) -> None:
    scaled_down = False
    for n in old_names:
        if replicas_of(state[n]) > 0:
            state[n]["spec"]["replicas"] = 0
            changed.add(n)
            scaled_down = True
    if scaled_down or any(status_int(state[n], "replicas") > 0 for n in old_names):
        return  # wait until every old pod is gone
    if new_name is not None and replicas_of(state[new_name]) != replicas_of(d):
        state[new_name]["spec"]["replicas"] = replicas_of(d)
        changed.add(new_name)


def _cleanup(d: Obj, olds: list[Obj]) -> list[Write]:
    limit = (d.get("spec") or {}).get("revisionHistoryLimit")
    limit = 10 if limit is None else int(limit)
    cleanable = [
        rs
        for rs in olds
        if replicas_of(rs) == 0 and status_int(rs, "replicas") == 0 and not is_deleting(rs)
    ]
    excess = len(cleanable) - limit
    if excess <= 0:
        return []
    cleanable.sort(key=lambda rs: (revision_of(rs), _creation_order(rs)))
    return [Write("delete", "replicasets", rs) for rs in cleanable[:excess]]


def is_complete(d: Obj, status: Obj) -> bool:
    """Upstream `DeploymentComplete`."""
    desired = replicas_of(d)
    return (
        int(status.get("updatedReplicas") or 0) == desired
        and int(status.get("replicas") or 0) == desired
        and int(status.get("availableReplicas") or 0) == desired
        and int(status.get("observedGeneration") or 0)
        >= int((d.get("metadata") or {}).get("generation") or 1)
    )


def _condition(
    ctype: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    previous: Obj | None,
    keep_update_time: bool = False,
) -> Obj:
    stamp = rfc3339(now)
    transition = stamp
    if previous is not None and previous.get("status") == status:
        transition = previous.get("lastTransitionTime") or stamp
    update = stamp
    if keep_update_time and previous is not None:
        update = previous.get("lastUpdateTime") or stamp
    return {
        "type": ctype,
        "status": status,
        "lastUpdateTime": update,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }


def deployment_status(
    d: Obj,
    new_rs: Obj | None,
    rs_list: list[Obj],
    now: datetime,
    progressing: tuple[str, str] | None = None,
) -> Obj:
    old_status = d.get("status") or {}
    desired = replicas_of(d)
    available = sum(status_int(rs, "availableReplicas") for rs in rs_list)
    total_spec = sum(replicas_of(rs) for rs in rs_list)
    status: Obj = {
        "observedGeneration": int((d.get("metadata") or {}).get("generation") or 1),
        "replicas": sum(status_int(rs, "replicas") for rs in rs_list),
        "updatedReplicas": status_int(new_rs, "replicas") if new_rs is not None else 0,
        "readyReplicas": sum(status_int(rs, "readyReplicas") for rs in rs_list),
        "availableReplicas": available,
        "unavailableReplicas": max(total_spec - available, 0),
    }
    if old_status.get("collisionCount") is not None:
        status["collisionCount"] = old_status["collisionCount"]
    conditions = {
        c["type"]: dict(c)
        for c in old_status.get("conditions") or []
        if isinstance(c, dict) and "type" in c
    }
    prev_avail = conditions.get("Available")
    if available >= desired - max_unavailable(d):
        avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    else:
        avail = (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    if prev_avail is None or (prev_avail.get("status"), prev_avail.get("reason")) != avail[:2]:
        conditions["Available"] = _condition("Available", *avail, now=now, previous=prev_avail)
    prev_prog = conditions.get("Progressing")
    rs_name = name_of(new_rs) if new_rs is not None else ""
    if progressing is not None:
        conditions["Progressing"] = _condition(
            "Progressing", "True", *progressing, now=now, previous=prev_prog
        )
    elif (d.get("spec") or {}).get("progressDeadlineSeconds") is not None and new_rs is not None:
        already_complete = (
            status["replicas"] == status["updatedReplicas"]
            and prev_prog is not None
            and prev_prog.get("reason") == "NewReplicaSetAvailable"
        )
        if not already_complete:
            if is_complete(d, status):
                conditions["Progressing"] = _condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    f'ReplicaSet "{rs_name}" has successfully progressed.',
                    now,
                    prev_prog,
                )
            elif _made_progress(old_status, status):
                conditions["Progressing"] = _condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    f'ReplicaSet "{rs_name}" is progressing.',
                    now,
                    prev_prog,
                )
            elif _timed_out(d, prev_prog, now):
                if (prev_prog or {}).get("reason") != "ProgressDeadlineExceeded":
                    conditions["Progressing"] = _condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        f'ReplicaSet "{rs_name}" has timed out progressing.',
                        now,
                        prev_prog,
                    )
            elif prev_prog is None:
                conditions["Progressing"] = _condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    f'ReplicaSet "{rs_name}" is progressing.',
                    now,
                    None,
                )
    order = {"Available": 0, "Progressing": 1}
    status["conditions"] = sorted(
        conditions.values(), key=lambda c: (order.get(c["type"], 2), c["type"])
    )
    return status


def _made_progress(old: Obj, new: Obj) -> bool:
    """Upstream `DeploymentProgressing`."""

    def g(s: Obj, k: str) -> int:
        return int(s.get(k) or 0)

    old_olds = g(old, "replicas") - g(old, "updatedReplicas")
    new_olds = g(new, "replicas") - g(new, "updatedReplicas")
    return (
        g(new, "updatedReplicas") > g(old, "updatedReplicas")
        or new_olds < old_olds
        or g(new, "readyReplicas") > g(old, "readyReplicas")
        or g(new, "availableReplicas") > g(old, "availableReplicas")
    )


def _timed_out(d: Obj, cond: Obj | None, now: datetime) -> bool:
    if cond is None or cond.get("reason") == "NewReplicaSetAvailable":
        return False
    if cond.get("reason") == "ProgressDeadlineExceeded":
        return True
    since = parse_rfc3339(cond.get("lastUpdateTime"))
    deadline = (d.get("spec") or {}).get("progressDeadlineSeconds")
    if since is None or deadline is None:
        return False
    return (now - since).total_seconds() > int(deadline)


# --- the loop --------------------------------------------------------------------------------


class DeploymentController(OwnerController):
    name = "deployment"
    component = "deployment-controller"
    workers = 2
    owner_resource = "deployments"
    owner_kind = "Deployment"
    dependent_resource = "replicasets"

    async def reconcile(self, key: str) -> None:
        d = self.owner_to_sync(key)
        if d is None:
            return
        ns = namespace_of(d)
        # its own ReplicaSets and the orphans it may adopt, from the informer's index: not
        # every ReplicaSet of the namespace (1,000 Deployments in one namespace made each
        # sync a scan of 1,000 ReplicaSets)
        candidates = self.dependents.controlled_by(uid_of(d)) + self.dependents.uncontrolled(ns)
        plan = plan_deployment(
            d, candidates, datetime.now(UTC), lambda name: self.dependents.get(f"{ns}/{name}")
        )
        # the replicas each write starts from, as planned: the informer may show this loop's
        # own write by the time it returns, and "from 2 to 3" would then read "from 3 to 3"
        planned_from = {object_key(rs): replicas_of(rs) for rs in candidates}
        for w in plan.writes:
            try:
                result = await apply_write(self.api, w)
            except ApiError as e:
                if e.code == 409 and w.verb == "create":
                    continue  # created meanwhile; the informer will show it
                raise
            self._record_scaling(d, w, planned_from.get(object_key(w.obj), 0))
            if w.resource == "replicasets" and result is not None:
                self.expectations.expect_present(
                    key, object_key(result), str(result["metadata"].get("resourceVersion") or "")
                )
            log.debug("deployment %s: %s", key, w.describe())
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    def _record_scaling(self, d: Obj, w: Write, planned_from: int) -> None:
        """Upstream's ScalingReplicaSet events: "Scaled up replica set web-x from 1 to 3"."""
        if w.resource != "replicasets" or w.verb not in ("create", "update"):
            return
        new = replicas_of(w.obj)
        old = planned_from if w.verb == "update" else 0
        if new == old:
            return
        direction = "up" if new > old else "down"
        self.events.record(
            d,
            "Deployment",
            "apps/v1",
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {name_of(w.obj)} from {old} to {new}",
        )
