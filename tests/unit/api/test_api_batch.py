"""Jobs and CronJobs in the API: generated selectors, defaults, upstream's causes (and the
clear refusal of pod failure policies), cron schedules and zones, `kubectl get` columns."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from podnet.api import cron
from podnet.api.errors import ApiError
from podnet.api.resources import BY_KIND
from podnet.api.tables import to_table
from podnet.testing.api import InMemoryApi
from podnet.testing.manifests import user_manifests

Obj = dict[str, Any]
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
MANIFESTS = {m["kind"]: m for m in user_manifests("default")}


async def refused(api: InMemoryApi, plural: str, obj: Obj) -> list[tuple[str, str]]:
    with pytest.raises(ApiError) as err:
        await api.create(plural, obj, "default")
    assert err.value.code == 422, err.value
    return [(c["field"], c["message"]) for c in err.value.details["causes"]]


@pytest.mark.asyncio
async def test_job_selector_labels_and_defaults(memory_api: InMemoryApi) -> None:
    job = await memory_api.create("jobs", copy.deepcopy(MANIFESTS["Job"]), "default")
    uid = job["metadata"]["uid"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels == {
        "controller-uid": uid,
        "batch.kubernetes.io/controller-uid": uid,
        "job-name": "migrate",
        "batch.kubernetes.io/job-name": "migrate",
    }
    assert job["metadata"]["labels"] == labels  # a Job without labels carries the template's
    assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert (job["spec"]["completionMode"], job["spec"]["suspend"]) == ("NonIndexed", False)
    assert job["spec"]["podReplacementPolicy"] == "TerminatingOrFailed"
    assert job["status"] == {}
    changed = copy.deepcopy(job)
    changed["spec"]["completions"] = 5
    with pytest.raises(ApiError) as err:
        await memory_api.update("jobs", changed, "default")
    assert err.value.details["causes"][0]["field"] == "spec.completions"


@pytest.mark.asyncio
async def test_job_causes(memory_api: InMemoryApi) -> None:
    job = copy.deepcopy(MANIFESTS["Job"])
    job["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    job["spec"]["completionMode"] = "Indexed"
    del job["spec"]["completions"]
    job["spec"]["podFailurePolicy"] = {"rules": []}
    assert await refused(memory_api, "jobs", job) == [
        (
            "spec.template.spec.restartPolicy",
            'Unsupported value: "Always": supported values: "OnFailure", "Never"',
        ),
        (
            "spec.podFailurePolicy",
            "Forbidden: podFailurePolicy is not supported by podnet: every failed pod counts "
            "against backoffLimit",
        ),
        ("spec.completions", "Required value: when completion mode is Indexed"),
    ]


@pytest.mark.asyncio
async def test_cronjob_causes(memory_api: InMemoryApi) -> None:
    cj = copy.deepcopy(MANIFESTS["CronJob"])
    created = await memory_api.create("cronjobs", copy.deepcopy(cj), "default")
    assert created["spec"]["successfulJobsHistoryLimit"] == 3
    assert created["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 6
    cj["metadata"]["name"] = "x" * 53
    cj["spec"]["schedule"] = "CRON_TZ=UTC 0 * * * *"
    cj["spec"]["timeZone"] = "Mars/Olympus"
    assert await refused(memory_api, "cronjobs", cj) == [
        ("metadata.name", f'Invalid value: "{"x" * 53}": must be no more than 52 characters'),
        (
            "spec.schedule",
            'Invalid value: "CRON_TZ=UTC 0 * * * *": cannot use TZ or CRON_TZ in schedule, use '
            "timeZone field instead",
        ),
        ("spec.timeZone", 'Invalid value: "Mars/Olympus": unknown time zone Mars/Olympus'),
    ]


@pytest.mark.parametrize(
    ("schedule", "errors"),
    [
        ("*/5 * * * *", []),
        ("@hourly", []),
        ("0 0 * * 1-5", []),
        ("* * * *", ["expected exactly 5 fields, found 4: * * * *"]),
        ("0 * * * * *", ["expected exactly 5 fields, found 6: 0 * * * * *"]),
        ("@fortnightly", ["unrecognized descriptor: @fortnightly"]),
    ],
)
def test_schedules(schedule: str, errors: list[str]) -> None:
    assert cron.schedule_errors(schedule) == errors


def test_schedule_times_in_a_zone_across_daylight_saving() -> None:
    # Europe/Berlin moves to summer time on 2024-03-31 at 02:00: 09:00 local is 08:00 then 07:00 UTC
    start = datetime(2024, 3, 29, 12, 0, tzinfo=UTC)
    end = datetime(2024, 4, 2, 12, 0, tzinfo=UTC)
    times = cron.times_between("0 9 * * *", "Europe/Berlin", start, end, 100)
    assert [t.strftime("%m-%d %H:%M") for t in times] == [
        "03-30 08:00",
        "03-31 07:00",
        "04-01 07:00",
        "04-02 07:00",
    ]
    assert cron.next_time("*/15 * * * *", None, NOW) == datetime(2024, 5, 1, 12, 15, tzinfo=UTC)


def render(kind: str, obj: Obj) -> list[str]:
    table = to_table(BY_KIND[kind], [obj], NOW)
    return [str(c) for c in table["rows"][0]["cells"]]


def test_batch_tables() -> None:
    job = copy.deepcopy(MANIFESTS["Job"])
    job["metadata"]["creationTimestamp"] = "2024-05-01T11:58:00Z"
    job["status"] = {
        "succeeded": 3,
        "startTime": "2024-05-01T11:58:00Z",
        "completionTime": "2024-05-01T11:58:45Z",
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    assert render("Job", job)[:5] == ["migrate", "Complete", "3/3", "45s", "2m"]
    running = copy.deepcopy(job)
    running["spec"].pop("completions")
    running["status"] = {"succeeded": 1, "startTime": "2024-05-01T11:59:00Z"}
    assert render("Job", running)[1:4] == ["Running", "1/1 of 3", "60s"]
    cj = copy.deepcopy(MANIFESTS["CronJob"])
    cj["metadata"]["creationTimestamp"] = "2024-05-01T11:00:00Z"
    cj["spec"]["suspend"] = False
    cj["status"] = {"active": [{"name": "report-1"}], "lastScheduleTime": "2024-05-01T11:45:00Z"}
    assert render("CronJob", cj)[:7] == [
        "report",
        "*/15 * * * *",
        "Europe/Berlin",
        "False",
        "1",
        "15m",
        "60m",
    ]
