"""The Job controller: runs a Job's pods to completion, and deletes finished Jobs after their TTL.

What belongs here: the pure planner `plan_job` (one sync of upstream `job_controller.go`,
plus the TTL-after-finished controller's decision) and `JobController`, its thin loop.

Semantics (upstream's, batch/v1 in 1.32):
- Pods are created from the template with a controller reference, `generateName: <job>-`,
  and the `batch.kubernetes.io/job-tracking` finalizer: a finished pod stays until the Job has
  counted it. Counting is crash-safe as upstream's: the pod's uid is first written to
  `status.uncountedTerminatedPods`, then its finalizer removed, then it moves into
  `succeeded`/`failed` (and `completedIndexes`). A pod being deleted before it succeeded counts
  as failed (podReplacementPolicy TerminatingOrFailed replaces it at once; Failed waits until
  it is gone).
- NonIndexed: at most `parallelism` active pods, never more than completions still missing;
  without `completions` the Job is a work queue: done once any pod succeeded and none is
  active. Indexed: each index 0..completions-1 runs once to success; a pod gets the index in
  the `batch.kubernetes.io/job-completion-index` annotation and label, the env variable
  `JOB_COMPLETION_INDEX` (from that annotation), `generateName: <job>-<index>-` and hostname
  `<job>-<index>`; duplicates are deleted.
- Failures: failed pods (plus container restarts under restartPolicy OnFailure) beyond
  `backoffLimit` fail the Job (BackoffLimitExceeded); so does running longer than
  `activeDeadlineSeconds` from `startTime` (DeadlineExceeded). Replacements of failed pods wait
  an exponential back-off — 10 s doubling per failure since the last success, at most 10 min —
  counted from the last failure. `podFailurePolicy` and friends are refused by validation.
- Finishing: the FailureTarget / SuccessCriteriaMet condition first (active pods are deleted),
  Failed / Complete once no pod is active or terminating; `completionTime` on success.
  `suspend: true` deletes the active pods (condition Suspended, reason JobSuspended); resuming
  resets `startTime`.
- `ttlSecondsAfterFinished`: the finished Job is deleted (foreground, so its pods go first)
  that many seconds after it finished.
- Events: SuccessfulCreate / SuccessfulDelete per pod, Completed, BackoffLimitExceeded,
  DeadlineExceeded, Suspended, Resumed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.controllers.controller import OwnerController
from podnet.controllers.expectations import Expectations
from podnet.controllers.informer import EventType
from podnet.controllers.objects import (
    annotations_of,
    controller_ref,
    is_deleting,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
    pod_is_ready,
    uid_of,
)
from podnet.controllers.replicaset import rank_for_deletion
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
INDEX_ENV = "JOB_COMPLETION_INDEX"
BACKOFF_BASE = 10.0  # upstream DefaultJobPodFailureBackOff
BACKOFF_MAX = 600.0  # upstream MaxJobPodFailureBackOff
BURST = 500

Event = tuple[str, str, str]  # type, reason, message


@dataclass(slots=True)
class JobPlan:
    creates: list[Obj] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)  # applied in order, after the creates
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def wake(self, seconds: float) -> None:
        seconds = max(seconds, 0.0) + 0.05
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )


# --- reading a Job and its pods --------------------------------------------------------------


def _spec(job: Obj) -> Obj:
    return job.get("spec") or {}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def has_condition(job: Obj, ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def is_finished(job: Obj) -> bool:
    return has_condition(job, "Complete") or has_condition(job, "Failed")


def finish_time(job: Obj) -> datetime | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return parse_rfc3339(c.get("lastTransitionTime"))
    return None


def pod_index(pod: Obj) -> int | None:
    text = annotations_of(pod).get(COMPLETION_INDEX)
    return int(text) if text is not None and text.isdigit() else None


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _pod_failed(pod: Obj, job: Obj) -> bool:
    """Upstream `isPodFailed`: Failed, or deleted before it succeeded (unless the Job waits
    for pods to fail)."""
    if _phase(pod) == "Failed":
        return True
    if _spec(job).get("podReplacementPolicy") == "Failed":
        return False
    return is_deleting(pod) and _phase(pod) != "Succeeded"


def _finished_at(pod: Obj) -> datetime | None:
    latest: datetime | None = None
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        when = parse_rfc3339(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if when is not None and (latest is None or when > latest):
            latest = when
    return latest or parse_rfc3339((pod.get("metadata") or {}).get("deletionTimestamp"))


def parse_indexes(text: Any) -> set[int]:
    """`1,3-5,7` → {1, 3, 4, 5, 7} (status.completedIndexes)."""
    out: set[int] = set()
    for part in str(text or "").split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            out.update(range(int(low), int(high or low) + 1))
    return out


def format_indexes(indexes: set[int]) -> str:
    """The inverse of `parse_indexes`: sorted, runs of consecutive indexes as `a-b`."""
    runs: list[list[int]] = []
    for i in sorted(indexes):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# --- pods from the template ------------------------------------------------------------------


def pod_for(job: Obj, index: int | None) -> Obj:
    template = copy.deepcopy(_spec(job).get("template") or {})
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    generate = f"{name_of(job)}-"
    if index is not None:
        generate = f"{name_of(job)}-{index}-"
        labels[COMPLETION_INDEX] = str(index)
        annotations[COMPLETION_INDEX] = str(index)
        spec.setdefault("hostname", f"{name_of(job)}-{index}")
        ref = {
            "fieldRef": {
                "apiVersion": "v1",
                "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']",
            }
        }
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            env = [e for e in container.get("env") or [] if e.get("name") != INDEX_ENV]
            container["env"] = [*env, {"name": INDEX_ENV, "valueFrom": ref}]
    pod_meta: Obj = {
        "generateName": generate,
        "namespace": namespace_of(job),
        "labels": labels,
        "ownerReferences": [make_owner_reference(job, "batch/v1", "Job")],
        "finalizers": [*(meta.get("finalizers") or []), TRACKING_FINALIZER],
    }
    if annotations:
        pod_meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


def _without_finalizer(pod: Obj) -> Write:
    finalizers = [
        f for f in (pod.get("metadata") or {}).get("finalizers") or [] if f != TRACKING_FINALIZER
    ]
    return Write(
        "patch",
        "pods",
        pod,
        patch={
            "metadata": {
                "finalizers": finalizers or None,
                "resourceVersion": (pod.get("metadata") or {}).get("resourceVersion"),
            }
        },
    )


def _status_write(job: Obj, status: Obj) -> Write:
    return Write("patch", "jobs", job, subresource="status", patch={"status": status})


def _condition(ctype: str, reason: str, message: str, now: datetime, status: str = "True") -> Obj:
    stamp = rfc3339(now)
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }


def _set_condition(conditions: list[Obj], new: Obj) -> list[Obj]:
    """Replace the condition of new's type, keeping its transition time when the status holds."""
    out = []
    for c in conditions:
        if c.get("type") == new["type"]:
            if c.get("status") == new["status"] and c.get("reason") == new["reason"]:
                return conditions
            continue
        out.append(c)
    return [*out, new]


# --- the planner -----------------------------------------------------------------------------


def plan_job(job: Obj, pods: list[Obj], now: datetime) -> JobPlan:
    """One sync of `job` over its pods (those whose controller reference is the Job)."""
    plan = JobPlan()
    uid = uid_of(job)
    owned = [p for p in pods if (controller_ref(p) or {}).get("uid") == uid]
    tracked = [
        p
        for p in owned
        if TRACKING_FINALIZER in ((p.get("metadata") or {}).get("finalizers") or [])
    ]
    if is_deleting(job):
        plan.writes.extend(_without_finalizer(p) for p in tracked)
        return plan
    if is_finished(job):
        plan.writes.extend(_without_finalizer(p) for p in tracked)
        _plan_ttl(job, now, plan)
        return plan

    spec = _spec(job)
    old_status = job.get("status") or {}
    status: Obj = copy.deepcopy(old_status)
    conditions: list[Obj] = list(status.get("conditions") or [])
    indexed = spec.get("completionMode") == "Indexed"

    # 1. count finished pods: uncounted first, then finalizers off, then the counters
    uncounted = {k: list(v) for k, v in (status.get("uncountedTerminatedPods") or {}).items()}
    known = set(uncounted.get("succeeded", [])) | set(uncounted.get("failed", []))
    newly = False
    for pod in tracked:
        if uid_of(pod) in known:
            continue
        if _phase(pod) == "Succeeded":
            uncounted.setdefault("succeeded", []).append(uid_of(pod))
        elif _pod_failed(pod, job):
            uncounted.setdefault("failed", []).append(uid_of(pod))
        else:
            continue
        newly = True
    counting = set(uncounted.get("succeeded", [])) | set(uncounted.get("failed", []))
    if newly:
        plan.writes.append(_status_write(job, {"uncountedTerminatedPods": uncounted}))
    plan.writes.extend(_without_finalizer(p) for p in tracked if uid_of(p) in counting)
    succeeded = _int(status.get("succeeded")) + len(uncounted.get("succeeded", []))
    failed = _int(status.get("failed")) + len(uncounted.get("failed", []))
    completed = parse_indexes(status.get("completedIndexes"))
    if indexed:
        completions = _int(spec.get("completions"))
        completed |= {
            i
            for p in owned
            if _phase(p) == "Succeeded" and (i := pod_index(p)) is not None and i < completions
        }

    # 2. what runs now
    active = [p for p in owned if _phase(p) not in ("Succeeded", "Failed") and not is_deleting(p)]
    terminating = [p for p in owned if is_deleting(p) and _phase(p) not in ("Succeeded", "Failed")]
    restarts = 0
    if (spec.get("template") or {}).get("spec", {}).get("restartPolicy") == "OnFailure":
        restarts = sum(
            _int(cs.get("restartCount"))
            for p in active
            for cs in (p.get("status") or {}).get("containerStatuses") or []
        )
    start = parse_rfc3339(status.get("startTime"))
    suspended = spec.get("suspend") is True
    deletes: list[Obj] = []

    # 3. the verdict
    failure: tuple[str, str] | None = None
    if has_condition(job, "FailureTarget"):
        target = next(c for c in conditions if c.get("type") == "FailureTarget")
        failure = (str(target.get("reason")), str(target.get("message")))
    elif failed + restarts > _int(spec.get("backoffLimit"), 6):
        failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    elif (
        not suspended
        and start is not None
        and spec.get("activeDeadlineSeconds") is not None
        and (now - start).total_seconds() >= _int(spec.get("activeDeadlineSeconds"))
    ):
        failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
    completions_value = spec.get("completions")
    if indexed:
        success = len(completed) >= _int(completions_value)
    elif completions_value is not None:
        success = succeeded >= _int(completions_value)
    else:
        success = succeeded > 0 and not active
    if failure is None and has_condition(job, "SuccessCriteriaMet"):
        success = True

    if failure is not None:
        if not has_condition(job, "FailureTarget"):
            conditions = _set_condition(conditions, _condition("FailureTarget", *failure, now))
        deletes = active
        if not active and not terminating:
            conditions = _set_condition(conditions, _condition("Failed", *failure, now))
            plan.events.append(("Warning", failure[0], failure[1]))
    elif success:
        reason = ("CompletionsReached", "Reached expected number of succeeded pods")
        if not has_condition(job, "SuccessCriteriaMet"):
            conditions = _set_condition(conditions, _condition("SuccessCriteriaMet", *reason, now))
        deletes = active
        if not active and not terminating:
            conditions = _set_condition(conditions, _condition("Complete", *reason, now))
            status["completionTime"] = rfc3339(now)
            plan.events.append(("Normal", "Completed", "Job completed"))
    elif suspended:
        deletes = active
        if not has_condition(job, "Suspended"):
            conditions = _set_condition(
                conditions, _condition("Suspended", "JobSuspended", "Job suspended", now)
            )
            plan.events.append(("Normal", "Suspended", "Job suspended"))
    else:
        if has_condition(job, "Suspended"):
            conditions = _set_condition(
                conditions, _condition("Suspended", "JobResumed", "Job resumed", now, "False")
            )
            plan.events.append(("Normal", "Resumed", "Job resumed"))
            start = now
        if start is None:
            start = now
        deletes = _plan_pods(job, owned, active, terminating, succeeded, completed, now, plan)
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None:
            plan.wake(_int(deadline) - (now - start).total_seconds())
    if start is not None and not suspended:
        status["startTime"] = rfc3339(start)
    plan.writes[:0] = [Write("delete", "pods", p) for p in deletes]

    deleted = {uid_of(p) for p in deletes}
    still_active = [p for p in active if uid_of(p) not in deleted]
    status.update(
        {
            "active": len(still_active) + len(plan.creates),
            "ready": sum(1 for p in still_active if pod_is_ready(p)),
            "terminating": len(terminating) + len(deleted),
            "succeeded": succeeded,
            "failed": failed,
            "uncountedTerminatedPods": {},
        }
    )
    if indexed:
        status["completedIndexes"] = format_indexes(completed)
    if conditions:
        status["conditions"] = conditions
    if status != old_status:
        patch = dict(status)
        # a merge patch cannot empty a map by sending {}: the counted uids go out as nulls
        patch["uncountedTerminatedPods"] = {k: None for k in uncounted} or {}
        plan.writes.append(_status_write(job, patch))
    return plan


def _plan_pods(
    job: Obj,
    owned: list[Obj],
    active: list[Obj],
    terminating: list[Obj],
    succeeded: int,
    completed: set[int],
    now: datetime,
    plan: JobPlan,
) -> list[Obj]:
    """Creations (into `plan.creates`) and the active pods to delete, for a running Job."""
    spec = _spec(job)
    parallelism = _int(spec.get("parallelism"), 1)
    busy = len(active) + (len(terminating) if spec.get("podReplacementPolicy") == "Failed" else 0)
    deletes: list[Obj] = []
    if spec.get("completionMode") == "Indexed":
        completions = _int(spec.get("completions"))
        running: dict[int, Obj] = {}
        for pod in sorted(active, key=lambda p: name_of(p)):
            i = pod_index(pod)
            if i is None or i >= completions or i in completed or i in running:
                deletes.append(pod)
            else:
                running[i] = pod
        busy -= len(deletes)
        pending = [i for i in range(completions) if i not in completed and i not in running]
        wanted: list[int | None] = list(pending[: max(parallelism - busy, 0)])
        if busy > parallelism:
            deletes.extend(rank_for_deletion(list(running.values()))[: busy - parallelism])
    else:
        wanted_total = spec.get("completions")
        if wanted_total is not None:
            want = min(parallelism, _int(wanted_total) - succeeded)
        else:
            want = parallelism if succeeded == 0 else len(active)
        wanted = [None] * max(want - busy, 0)
        if busy > want and want < len(active):
            deletes = rank_for_deletion(active)[: len(active) - max(want, 0)]
    if wanted:
        wait = _backoff_remaining(job, owned, now)
        if wait > 0:
            plan.wake(wait)
        else:
            plan.creates = [pod_for(job, i) for i in wanted[:BURST]]
    return deletes


def _backoff_remaining(job: Obj, pods: list[Obj], now: datetime) -> float:
    """Seconds until a replacement may be created: 10 s doubling per failure since the last
    success, counted from the last failure."""
    last_success = max(
        (t for p in pods if _phase(p) == "Succeeded" and (t := _finished_at(p)) is not None),
        default=None,
    )
    failures = sorted(
        t
        for p in pods
        if _pod_failed(p, job)
        and (t := _finished_at(p)) is not None
        and (last_success is None or t > last_success)
    )
    if not failures:
        return 0.0
    delay = min(BACKOFF_BASE * 2 ** (len(failures) - 1), BACKOFF_MAX)
    return (failures[-1] + timedelta(seconds=delay) - now).total_seconds()


def _plan_ttl(job: Obj, now: datetime, plan: JobPlan) -> None:
    """The TTL-after-finished controller: delete a finished Job once its TTL has passed."""
    ttl = _spec(job).get("ttlSecondsAfterFinished")
    finished = finish_time(job)
    if ttl is None or finished is None:
        return
    remaining = (finished + timedelta(seconds=_int(ttl)) - now).total_seconds()
    if remaining > 0:
        plan.wake(remaining)
        return
    plan.writes.append(Write("delete", "jobs", job, options={"propagation_policy": "Foreground"}))


# --- the loop --------------------------------------------------------------------------------


class JobController(OwnerController):
    """`expectations` holds the loop's pod creates, deletes and patches; `own_writes` its
    status writes to the Job, until the cache shows them."""

    name = "job"
    component = "job-controller"
    workers = 4
    owner_resource = "jobs"
    owner_kind = "Job"
    adopts = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own_writes = Expectations(self.owners.get)

    def _on_owner(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        self.own_writes.observe(object_key(new or old or {}))
        super()._on_owner(kind, old, new)

    def owner_gone(self, owner: Obj) -> None:
        super().owner_gone(owner)
        self.own_writes.forget(object_key(owner))

    async def reconcile(self, key: str) -> None:
        job = self.owners.get(key)
        if job is None:
            self.expectations.forget(key)
            await self._release_orphans(key)
            return
        for pending in (self.expectations, self.own_writes):
            if not pending.satisfied(key):  # counting from a stale cache would count twice
                self.queue.add_after(key, pending.remaining_seconds(key) + 0.01)
                return
        ns = namespace_of(job)
        plan = plan_job(job, self.dependents.controlled_by(uid_of(job)), self.clock())
        created = await asyncio.gather(
            *(self.api.create("pods", p, ns) for p in plan.creates), return_exceptions=True
        )
        errors = [r for r in created if isinstance(r, BaseException)]
        for pod in created:
            if isinstance(pod, BaseException):
                continue
            self.expectations.expect_present(
                key, object_key(pod), str(pod["metadata"].get("resourceVersion") or "")
            )
            self.events.record(
                job, "Job", "batch/v1", "Normal", "SuccessfulCreate", f"Created pod: {name_of(pod)}"
            )
        for w in plan.writes:
            if w.resource == "pods" and w.verb == "delete":
                self.expectations.expect_absent(key, object_key(w.obj))
            try:
                result = await apply_write(self.api, w)
            except ApiError as e:
                if e.code == 404:
                    continue
                raise
            if result is not None and w.verb == "patch":
                seen = self.expectations if w.resource == "pods" else self.own_writes
                rv = str((result.get("metadata") or {}).get("resourceVersion") or "")
                seen.expect_present(key, object_key(result), rv)
            if w.resource == "pods" and w.verb == "delete":
                self.events.record(
                    job, "Job", "batch/v1", "Normal", "SuccessfulDelete", f"Deleted pod: {w.name}"
                )
        for event_type, reason, message in plan.events:
            self.events.record(job, "Job", "batch/v1", event_type, reason, message)
        if errors:
            raise errors[0]
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    async def _release_orphans(self, key: str) -> None:
        """Pods of a Job that is gone keep their tracking finalizer until someone removes it:
        this controller, as upstream's does, so the garbage collector can delete them."""
        namespace, _, job_name = key.partition("/")
        for pod in self.dependents.in_namespace(namespace):
            ref = controller_ref(pod) or {}
            finalizers = (pod.get("metadata") or {}).get("finalizers") or []
            if (
                ref.get("kind") == "Job"
                and ref.get("name") == job_name
                and TRACKING_FINALIZER in finalizers
            ):
                try:
                    await apply_write(self.api, _without_finalizer(pod))
                except ApiError as e:
                    if e.code != 404:
                        raise
