"""The CronJob controller: creates a CronJob's Jobs on its schedule and keeps their history.

What belongs here: the pure planner `plan_cronjob` (one sync of upstream
`cronjob_controllerv2.go`) and `CronJobController`, its loop, whose clock is injectable
(`Controller.clock`) so tests move time instead of waiting for the next minute.

Semantics (upstream's):
- The schedule is standard cron in `spec.timeZone` (UTC when unset; `podnet.api.cron`).
  Each sync looks at the schedule times after `status.lastScheduleTime` (or the CronJob's
  creation) up to now and acts on the most recent one only; more than 100 missed times is a
  Warning event `TooManyMissedTimes`. A time older than `startingDeadlineSeconds` is missed
  (Warning `MissSchedule`), not run late.
- The Job for time T is named `<cronjob>-<T in minutes since the epoch>` (so a retry after a
  crash finds it instead of creating another), carries the jobTemplate's labels and
  annotations plus `batch.kubernetes.io/cronjob-scheduled-timestamp`, and a controller
  reference to the CronJob.
- concurrencyPolicy: Allow runs Jobs side by side; Forbid skips a time while a Job is active
  (event JobAlreadyActive); Replace deletes the active Jobs (background) and starts the new
  one. `suspend: true` starts nothing.
- status.active lists the unfinished Jobs it owns; lastScheduleTime the last time it started a
  Job; lastSuccessfulTime when the newest Job completed. Finished Jobs beyond
  `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are deleted oldest first
  (background).
- The sync is requeued for the next schedule time (and for the starting deadline), so a
  CronJob fires within a fraction of a second of its minute.
- Events: SuccessfulCreate "Created job <name>", SawCompletedJob, SuccessfulDelete.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from podnet.api import cron
from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.controllers.controller import Controller, owner_keys
from podnet.controllers.informer import EventType
from podnet.controllers.job import finish_time, has_condition, is_finished
from podnet.controllers.objects import (
    controller_ref,
    is_deleting,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
    uid_of,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"
MAX_MISSED = 100

Event = tuple[str, str, str]  # type, reason, message


@dataclass(slots=True)
class CronJobPlan:
    writes: list[Write] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def job_name(cronjob: Obj, scheduled: datetime) -> str:
    """Upstream `getJobName`: the scheduled time in minutes since the epoch."""
    return f"{name_of(cronjob)}-{int(scheduled.timestamp()) // 60}"


def job_for(cronjob: Obj, scheduled: datetime) -> Obj:
    template = copy.deepcopy((cronjob.get("spec") or {}).get("jobTemplate") or {})
    meta = template.get("metadata") or {}
    annotations = dict(meta.get("annotations") or {})
    annotations[SCHEDULED_TIMESTAMP] = rfc3339(scheduled)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(cronjob, scheduled),
            "namespace": namespace_of(cronjob),
            "labels": dict(meta.get("labels") or {}),
            "annotations": annotations,
            "ownerReferences": [make_owner_reference(cronjob, "batch/v1", "CronJob")],
        },
        "spec": template.get("spec") or {},
    }


def _reference(job: Obj) -> Obj:
    meta = job.get("metadata") or {}
    return {
        "kind": "Job",
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "apiVersion": "batch/v1",
        "resourceVersion": meta.get("resourceVersion"),
    }


def _scheduled_at(job: Obj) -> datetime | None:
    meta = job.get("metadata") or {}
    return parse_rfc3339((meta.get("annotations") or {}).get(SCHEDULED_TIMESTAMP)) or (
        parse_rfc3339(meta.get("creationTimestamp"))
    )


def _history(jobs: list[Obj], limit: Any) -> list[Write]:
    if not isinstance(limit, int):
        return []
    oldest_first = sorted(
        jobs, key=lambda j: (_scheduled_at(j) or datetime.min.replace(tzinfo=UTC), name_of(j))
    )
    excess = len(oldest_first) - max(limit, 0)
    return [
        Write("delete", "jobs", j, options={"propagation_policy": "Background"})
        for j in oldest_first[: max(excess, 0)]
    ]


def plan_cronjob(cronjob: Obj, jobs: list[Obj], now: datetime) -> CronJobPlan:
    """One sync of `cronjob` over the Jobs it owns (see the module docstring)."""
    plan = CronJobPlan()
    if is_deleting(cronjob):
        return plan
    spec = cronjob.get("spec") or {}
    status = copy.deepcopy(cronjob.get("status") or {})
    old_status = cronjob.get("status") or {}
    owned = [j for j in jobs if (controller_ref(j) or {}).get("uid") == uid_of(cronjob)]
    running = [j for j in owned if not is_finished(j) and not is_deleting(j)]
    succeeded = [j for j in owned if has_condition(j, "Complete") and not is_deleting(j)]
    failed = [j for j in owned if has_condition(j, "Failed") and not is_deleting(j)]
    known = {str(r.get("uid")) for r in old_status.get("active") or []}
    for j in succeeded + failed:
        if uid_of(j) in known:
            word = "Complete" if j in succeeded else "Failed"
            plan.events.append(
                ("Normal", "SawCompletedJob", f"Saw completed job: {name_of(j)}, status: {word}")
            )
    newest_done = max((t for j in succeeded if (t := finish_time(j)) is not None), default=None)
    if newest_done is not None:
        last = parse_rfc3339(status.get("lastSuccessfulTime"))
        if last is None or newest_done > last:
            status["lastSuccessfulTime"] = rfc3339(newest_done)

    schedule = str(spec.get("schedule") or "")
    zone_name = spec.get("timeZone")
    since = (
        parse_rfc3339(status.get("lastScheduleTime"))
        or parse_rfc3339((cronjob.get("metadata") or {}).get("creationTimestamp"))
        or now
    )
    try:
        due = cron.times_between(schedule, zone_name, since, now, MAX_MISSED)
        upcoming = cron.next_time(schedule, zone_name, now)
    except ValueError as exc:  # validation admits only good schedules; a zone may vanish
        plan.events.append(
            ("Warning", "UnparseableSchedule", f"unparseable schedule: {schedule}: {exc}")
        )
        return plan
    if len(due) > MAX_MISSED:
        plan.events.append(
            (
                "Warning",
                "TooManyMissedTimes",
                f"too many missed start times: > {MAX_MISSED}. Set or decrease "
                ".spec.startingDeadlineSeconds or check clock skew",
            )
        )
    deadline = spec.get("startingDeadlineSeconds")
    if due and not spec.get("suspend"):
        scheduled = due[-1]
        late = (now - scheduled).total_seconds()
        name = job_name(cronjob, scheduled)
        if isinstance(deadline, int) and late > deadline:
            plan.events.append(
                (
                    "Warning",
                    "MissSchedule",
                    f"Missed scheduled time to start a job: {rfc3339(scheduled)}",
                )
            )
        elif any(name_of(j) == name for j in owned):
            pass  # created already (a retry after a crash or a lost status write)
        elif running and spec.get("concurrencyPolicy") == "Forbid":
            plan.events.append(
                (
                    "Normal",
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency "
                    "policy is Forbid",
                )
            )
        else:
            if spec.get("concurrencyPolicy") == "Replace":
                plan.writes.extend(
                    Write("delete", "jobs", j, options={"propagation_policy": "Background"})
                    for j in running
                )
                running = []
            plan.writes.append(Write("create", "jobs", job_for(cronjob, scheduled)))
            status["lastScheduleTime"] = rfc3339(scheduled)
    status["active"] = [_reference(j) for j in sorted(running, key=name_of)]
    if not status["active"]:
        status.pop("active")
    plan.writes.extend(_history(succeeded, spec.get("successfulJobsHistoryLimit")))
    plan.writes.extend(_history(failed, spec.get("failedJobsHistoryLimit")))
    if status != old_status:
        plan.writes.append(
            Write("update", "cronjobs", {**cronjob, "status": status}, subresource="status")
        )
    plan.requeue_after = max((upcoming - now).total_seconds(), 0.0) + 0.1
    return plan


class CronJobController(Controller):
    name = "cronjob"
    component = "cronjob-controller"
    workers = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cronjobs = self.informers.informer("cronjobs")
        self.jobs = self.informers.informer("jobs")
        self.cronjobs.add_handler(self._on_cronjob)
        self.jobs.add_handler(self._on_job)

    def all_keys(self) -> list[str]:
        return list(self.cronjobs.keys())

    def _on_cronjob(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        self.queue.add(object_key(obj))

    def _on_job(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        for key in owner_keys(self.cronjobs, "CronJob", (old, new), selector_of=None):
            self.queue.add(key)

    async def reconcile(self, key: str) -> None:
        cronjob = self.cronjobs.get(key)
        if cronjob is None:
            return
        plan = plan_cronjob(cronjob, self.jobs.controlled_by(uid_of(cronjob)), self.clock())
        for w in plan.writes:
            try:
                await apply_write(self.api, w)
            except ApiError as e:
                if e.code == 404 or (e.code == 409 and w.verb == "create"):
                    continue  # gone, or created already: the informer will show it
                raise
            if w.resource == "jobs" and w.verb in ("create", "delete"):
                reason = "SuccessfulCreate" if w.verb == "create" else "SuccessfulDelete"
                verb = "Created" if w.verb == "create" else "Deleted"
                self.events.record(
                    cronjob, "CronJob", "batch/v1", "Normal", reason, f"{verb} job {w.name}"
                )
        for event_type, reason, message in plan.events:
            self.events.record(cronjob, "CronJob", "batch/v1", event_type, reason, message)
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)
