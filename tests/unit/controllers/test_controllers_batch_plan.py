"""`plan_job` and `plan_cronjob`: pods, counting, failure, completion, back-off, TTL; schedule
times, concurrency policies, history."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podnet.api.meta import rfc3339
from podnet.controllers.cronjob import SCHEDULED_TIMESTAMP, job_name, plan_cronjob
from podnet.controllers.job import (
    TRACKING_FINALIZER,
    format_indexes,
    parse_indexes,
    plan_job,
)

Obj = dict[str, Any]
NOW = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
REF = {"apiVersion": "batch/v1", "kind": "Job", "name": "pi", "uid": "job-uid", "controller": True}


def job(status: Obj | None = None, **spec: Any) -> Obj:
    body: Obj = {
        "parallelism": 1,
        "completions": 1,
        "backoffLimit": 6,
        "completionMode": "NonIndexed",
        "podReplacementPolicy": "TerminatingOrFailed",
        "template": {
            "metadata": {"labels": {"job-name": "pi"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]},
        },
    }
    body.update(spec)
    return {
        "metadata": {
            "name": "pi",
            "namespace": "d",
            "uid": "job-uid",
            "creationTimestamp": rfc3339(NOW),
        },
        "spec": body,
        "status": status or {},
    }


def pod(
    name: str,
    phase: str = "Running",
    finished: datetime | None = None,
    index: int | None = None,
    tracked: bool = True,
    deleting: bool = False,
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": "d",
        "uid": f"uid-{name}",
        "ownerReferences": [REF],
        "creationTimestamp": rfc3339(NOW - timedelta(minutes=1)),
    }
    if tracked:
        meta["finalizers"] = [TRACKING_FINALIZER]
    if index is not None:
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": str(index)}
    if deleting:
        meta["deletionTimestamp"] = rfc3339(NOW)
    status: Obj = {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}]}
    if finished is not None:
        status["containerStatuses"] = [
            {"name": "pi", "state": {"terminated": {"finishedAt": rfc3339(finished)}}}
        ]
    return {"metadata": meta, "spec": {"nodeName": "n1"}, "status": status}


def final_status(plan: Any) -> Obj:
    statuses = [w.patch["status"] for w in plan.writes if w.subresource == "status"]
    return statuses[-1] if statuses else {}


def test_parallel_job_runs_parallelism_pods_within_completions() -> None:
    plan = plan_job(job(parallelism=3, completions=5), [], NOW)
    assert len(plan.creates) == 3
    created = plan.creates[0]
    assert created["metadata"]["generateName"] == "pi-"
    assert created["metadata"]["finalizers"] == [TRACKING_FINALIZER]
    assert created["metadata"]["ownerReferences"][0]["kind"] == "Job"
    status = final_status(plan)
    assert (status["active"], status["succeeded"], status["startTime"]) == (3, 0, rfc3339(NOW))
    # 4 done, 1 still missing: only one pod may run
    done = [pod(f"p{i}", "Succeeded", tracked=False) for i in range(4)]
    counted = job({"succeeded": 4, "startTime": rfc3339(NOW)}, parallelism=3, completions=5)
    assert len(plan_job(counted, done, NOW).creates) == 1


def test_finished_pods_are_counted_crash_safely() -> None:
    plan = plan_job(job({"startTime": rfc3339(NOW)}), [pod("a", "Succeeded")], NOW)
    verbs = [(w.verb, w.resource, w.subresource) for w in plan.writes]
    assert verbs == [
        ("patch", "jobs", "status"),  # 1. the uid goes to uncountedTerminatedPods
        ("patch", "pods", None),  # 2. then the finalizer comes off
        ("patch", "jobs", "status"),  # 3. then it is counted
    ]
    assert plan.writes[0].patch == {"status": {"uncountedTerminatedPods": {"succeeded": ["uid-a"]}}}
    assert plan.writes[1].patch["metadata"]["finalizers"] is None
    status = final_status(plan)
    # the counted uid leaves uncountedTerminatedPods (a merge patch needs the null for that)
    assert (status["succeeded"], status["uncountedTerminatedPods"]) == (1, {"succeeded": None})
    assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert status["completionTime"] == rfc3339(NOW)
    assert ("Normal", "Completed", "Job completed") in plan.events
    # after a crash between 1 and 2: the uid is known, the finalizer still on; count once
    resumed = job({"startTime": rfc3339(NOW), "uncountedTerminatedPods": {"succeeded": ["uid-a"]}})
    again = plan_job(resumed, [pod("a", "Succeeded")], NOW)
    assert [w.subresource for w in again.writes] == [None, "status"]
    assert final_status(again)["succeeded"] == 1


def test_backoff_limit_fails_the_job_after_its_pods_are_gone() -> None:
    failures = [
        pod(f"f{i}", "Failed", NOW - timedelta(seconds=100), tracked=False) for i in range(3)
    ]
    spent = job({"failed": 3, "startTime": rfc3339(NOW)}, backoffLimit=2, parallelism=2)
    plan = plan_job(spent, [*failures, pod("running")], NOW)
    assert [w.verb for w in plan.writes][:1] == ["delete"]
    status = final_status(plan)
    assert [c["type"] for c in status["conditions"]] == ["FailureTarget"]
    assert status["conditions"][0]["reason"] == "BackoffLimitExceeded"
    settled = plan_job(job(status, backoffLimit=2), failures, NOW)
    conditions = final_status(settled)["conditions"]
    assert [(c["type"], c["reason"]) for c in conditions] == [
        ("FailureTarget", "BackoffLimitExceeded"),
        ("Failed", "BackoffLimitExceeded"),
    ]
    assert ("Warning", "BackoffLimitExceeded", "Job has reached the specified backoff limit") in (
        settled.events
    )


@pytest.mark.parametrize(
    ("failed_ago", "count", "wait"),
    [(5, 1, 5.0), (15, 1, 0.0), (15, 2, 5.0), (100, 4, 0.0), (10, 9, 590.0)],
)
def test_replacements_back_off_exponentially(failed_ago: int, count: int, wait: float) -> None:
    failures = [
        pod(f"f{i}", "Failed", NOW - timedelta(seconds=failed_ago), tracked=False)
        for i in range(count)
    ]
    plan = plan_job(
        job({"failed": count, "startTime": rfc3339(NOW)}, backoffLimit=10), failures, NOW
    )
    if wait:
        assert plan.creates == []
        assert plan.requeue_after == pytest.approx(wait + 0.05)
    else:
        assert len(plan.creates) == 1


def test_active_deadline() -> None:
    started = rfc3339(NOW - timedelta(seconds=50))
    running = plan_job(job({"startTime": started}, activeDeadlineSeconds=60), [pod("a")], NOW)
    assert running.requeue_after == pytest.approx(10.05)
    late = plan_job(job({"startTime": started}, activeDeadlineSeconds=30), [pod("a")], NOW)
    conditions = final_status(late)["conditions"]
    assert (conditions[0]["type"], conditions[0]["reason"], conditions[0]["message"]) == (
        "FailureTarget",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )


def test_indexed_job_pods_and_completed_indexes() -> None:
    indexed = job(completionMode="Indexed", completions=5, parallelism=2)
    plan = plan_job(indexed, [pod("x-0", "Succeeded", index=0), pod("x-2", index=2)], NOW)
    assert len(plan.creates) == 1
    created = plan.creates[0]
    assert created["metadata"]["generateName"] == "pi-1-"
    assert created["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
    assert created["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"
    assert created["spec"]["hostname"] == "pi-1"
    env = created["spec"]["containers"][0]["env"]
    assert env == [
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {
                "fieldRef": {
                    "apiVersion": "v1",
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']",
                }
            },
        }
    ]
    assert final_status(plan)["completedIndexes"] == "0"
    duplicate = plan_job(indexed, [pod("a", index=3), pod("b", index=3)], NOW)
    assert [w.name for w in duplicate.writes if w.verb == "delete"] == ["b"]


@pytest.mark.parametrize(
    ("text", "indexes"), [("", set()), ("1", {1}), ("0-2,5,7-8", {0, 1, 2, 5, 7, 8})]
)
def test_completed_indexes_round_trip(text: str, indexes: set[int]) -> None:
    assert parse_indexes(text) == indexes
    assert format_indexes(indexes) == text


def test_suspend_and_resume() -> None:
    suspended = plan_job(job({"startTime": rfc3339(NOW)}, suspend=True), [pod("a")], NOW)
    assert [w.verb for w in suspended.writes][:1] == ["delete"]
    status = final_status(suspended)
    assert [(c["type"], c["reason"]) for c in status["conditions"]] == [
        ("Suspended", "JobSuspended")
    ]
    later = NOW + timedelta(minutes=5)
    resumed = plan_job(job(status), [], later)
    status = final_status(resumed)
    assert status["conditions"][0]["status"] == "False"
    assert status["startTime"] == rfc3339(later)
    assert len(resumed.creates) == 1


def test_ttl_after_finished() -> None:
    done = {
        "conditions": [
            {
                "type": "Complete",
                "status": "True",
                "lastTransitionTime": rfc3339(NOW - timedelta(seconds=40)),
            }
        ]
    }
    waiting = plan_job(job(done, ttlSecondsAfterFinished=100), [], NOW)
    assert waiting.writes == [] and waiting.requeue_after == pytest.approx(60.05)
    expired = plan_job(job(done, ttlSecondsAfterFinished=30), [], NOW)
    assert [(w.verb, w.resource, w.options) for w in expired.writes] == [
        ("delete", "jobs", {"propagation_policy": "Foreground"})
    ]


def test_deleting_job_releases_its_pods() -> None:
    deleting = job()
    deleting["metadata"]["deletionTimestamp"] = rfc3339(NOW)
    plan = plan_job(deleting, [pod("a"), pod("b", tracked=False)], NOW)
    assert [(w.verb, w.name) for w in plan.writes] == [("patch", "a")]


# --- CronJob ---------------------------------------------------------------------------------

CJ_REF = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "name": "tick",
    "uid": "cj-uid",
    "controller": True,
}


def cronjob(status: Obj | None = None, **spec: Any) -> Obj:
    body: Obj = {
        "schedule": "*/5 * * * *",
        "concurrencyPolicy": "Allow",
        "suspend": False,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 1,
        "jobTemplate": {
            "metadata": {"labels": {"app": "tick"}},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox"}],
                    }
                }
            },
        },
    }
    body.update(spec)
    return {
        "metadata": {
            "name": "tick",
            "namespace": "d",
            "uid": "cj-uid",
            "creationTimestamp": "2024-05-01T11:58:00Z",
        },
        "spec": body,
        "status": status or {},
    }


def cj_job(minute: int, condition: str | None = None, at: datetime | None = None) -> Obj:
    scheduled = datetime(2024, 5, 1, 11, minute, tzinfo=UTC)
    status: Obj = {}
    if condition:
        status["conditions"] = [
            {"type": condition, "status": "True", "lastTransitionTime": rfc3339(at or scheduled)}
        ]
    return {
        "metadata": {
            "name": f"tick-{int(scheduled.timestamp()) // 60}",
            "namespace": "d",
            "uid": f"job-{minute}",
            "ownerReferences": [CJ_REF],
            "annotations": {SCHEDULED_TIMESTAMP: rfc3339(scheduled)},
        },
        "status": status,
    }


def creates(plan: Any) -> list[Obj]:
    return [w.obj for w in plan.writes if w.verb == "create"]


def test_fires_at_the_schedule_time_with_a_stable_name() -> None:
    before = plan_cronjob(cronjob(), [], datetime(2024, 5, 1, 11, 59, 59, tzinfo=UTC))
    assert creates(before) == []
    assert before.requeue_after == pytest.approx(1.1)
    at = datetime(2024, 5, 1, 12, 0, 0, 400000, tzinfo=UTC)
    plan = plan_cronjob(cronjob(), [], at)
    [created] = creates(plan)
    scheduled = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert created["metadata"]["name"] == job_name(cronjob(), scheduled) == "tick-28576080"
    assert created["metadata"]["labels"] == {"app": "tick"}
    assert created["metadata"]["annotations"][SCHEDULED_TIMESTAMP] == "2024-05-01T12:00:00Z"
    assert created["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    status = plan.writes[-1].obj["status"]
    assert status["lastScheduleTime"] == "2024-05-01T12:00:00Z"
    assert plan.requeue_after == pytest.approx(299.7)


def test_time_zones() -> None:
    daily = cronjob(schedule="0 9 * * *", timeZone="Asia/Tokyo")  # 09:00 JST = 00:00 UTC
    at = datetime(2024, 5, 2, 0, 0, 5, tzinfo=UTC)
    [created] = creates(plan_cronjob(daily, [], at))
    assert created["metadata"]["annotations"][SCHEDULED_TIMESTAMP] == "2024-05-02T00:00:00Z"


def test_concurrency_policies_and_suspend() -> None:
    at = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)
    running = cj_job(55)
    forbid = plan_cronjob(cronjob(concurrencyPolicy="Forbid"), [running], at)
    assert creates(forbid) == []
    assert forbid.events[0][1] == "JobAlreadyActive"
    replace = plan_cronjob(cronjob(concurrencyPolicy="Replace"), [running], at)
    assert [(w.verb, w.name) for w in replace.writes[:2]] == [
        ("delete", running["metadata"]["name"]),
        ("create", "tick-28576080"),
    ]
    allow = plan_cronjob(cronjob(), [running], at)
    assert len(creates(allow)) == 1
    assert [r["name"] for r in allow.writes[-1].obj["status"]["active"]] == ["tick-28576075"]
    assert creates(plan_cronjob(cronjob(suspend=True), [], at)) == []


def test_starting_deadline_and_existing_jobs() -> None:
    late = datetime(2024, 5, 1, 12, 2, tzinfo=UTC)
    missed = plan_cronjob(cronjob(startingDeadlineSeconds=60), [], late)
    assert creates(missed) == [] and missed.events[0][1] == "MissSchedule"
    assert len(creates(plan_cronjob(cronjob(startingDeadlineSeconds=300), [], late))) == 1
    existing = copy.deepcopy(cj_job(55))
    existing["metadata"]["name"] = "tick-28576080"
    assert creates(plan_cronjob(cronjob(), [existing], late)) == []


def test_history_limits_and_completion() -> None:
    finished = [cj_job(m, "Complete") for m in (40, 45, 50, 55)] + [
        cj_job(m, "Failed") for m in (41, 46)
    ]
    status = {"active": [{"uid": "job-55"}], "lastScheduleTime": "2024-05-01T11:55:00Z"}
    plan = plan_cronjob(cronjob(status), finished, datetime(2024, 5, 1, 11, 56, tzinfo=UTC))
    deleted = [w.name for w in plan.writes if w.verb == "delete"]
    assert deleted == [cj_job(40)["metadata"]["name"], cj_job(41)["metadata"]["name"]]
    assert (
        "Normal",
        "SawCompletedJob",
        f"Saw completed job: {cj_job(55)['metadata']['name']}, status: Complete",
    ) in plan.events
    new_status = plan.writes[-1].obj["status"]
    assert new_status["lastSuccessfulTime"] == "2024-05-01T11:55:00Z"
    assert "active" not in new_status
