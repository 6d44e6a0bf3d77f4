"""The Job and CronJob loops with the scheduler and the garbage collector, against `InMemoryApi`
and the stand-in kubelet, on a clock the test moves (a per-minute CronJob fires at once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from podnet.config import ClusterConfig
from podnet.controllers.manager import ControllerManager
from podnet.testing.api import InMemoryApi
from podnet.testing.standin_kubelet import FakeKubelet, add_node
from podnet.testing.waiting import eventually

Obj = dict[str, Any]
NS = "default"
pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Cluster:
    api: InMemoryApi
    clock: Clock
    manager: ControllerManager


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    clock = Clock(datetime(2024, 5, 1, 11, 59, 50, tzinfo=UTC))
    api = InMemoryApi(clock=clock)
    await add_node(api, "n1")
    manager = ControllerManager(
        api, ClusterConfig(), only=["scheduler", "job", "cronjob", "garbagecollector"], clock=clock
    )
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(manager.run(stop)),
        asyncio.create_task(FakeKubelet(api, interval=0.01).run()),
    ]
    try:
        yield Cluster(api, clock, manager)
    finally:
        stop.set()
        tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)


def template() -> Obj:
    return {
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "work", "image": "busybox", "command": ["true"]}],
        }
    }


def condition(obj: Obj | None, ctype: str) -> bool:
    return obj is not None and any(
        c["type"] == ctype and c["status"] == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


@pytest.mark.asyncio
async def test_parallel_job_completes_and_releases_its_pods(cluster: Cluster) -> None:
    api = cluster.api
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "crunch"},
        "spec": {"parallelism": 3, "completions": 6, "template": template()},
    }
    created = await api.create("jobs", job, NS)
    uid = created["metadata"]["uid"]
    assert created["spec"]["selector"] == {
        "matchLabels": {"batch.kubernetes.io/controller-uid": uid}
    }
    assert created["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "crunch"
    await eventually(
        lambda: condition(api.peek("jobs", "crunch", NS), "Complete"), what="the Job completes"
    )
    status = api.peek("jobs", "crunch", NS)["status"]  # type: ignore[index]
    assert (status["succeeded"], status["active"], status["failed"]) == (6, 0, 0)
    pods = api.peek_list("pods", NS)
    assert len(pods) == 6
    assert all(not p["metadata"].get("finalizers") for p in pods)
    creates = [c for c in api.writes("pods") if c.verb == "create" and c.subresource is None]
    assert len(creates) == 6
    # foreground deletion takes the pods first
    await api.delete("jobs", "crunch", NS, propagation_policy="Foreground")
    await eventually(
        lambda: api.peek("jobs", "crunch", NS) is None and not api.peek_list("pods", NS),
        what="the Job and its pods deleted",
    )


@pytest.mark.asyncio
async def test_cronjob_fires_when_the_minute_comes(cluster: Cluster) -> None:
    api, clock = cluster.api, cluster.clock
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template()}}},
    }
    await api.create("cronjobs", cronjob, NS)
    await asyncio.sleep(0.1)
    assert api.peek_list("jobs", NS) == []  # 11:59:50: nothing is due yet
    clock.now += timedelta(seconds=11)  # 12:00:01
    cluster.manager.controllers["cronjob"].queue.add(f"{NS}/tick")
    name = f"tick-{int(datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()) // 60}"
    await eventually(
        lambda: condition(api.peek("jobs", name, NS), "Complete"), what="the scheduled Job runs"
    )

    def saw_success() -> bool:
        status = (api.peek("cronjobs", "tick", NS) or {}).get("status") or {}
        return status.get("lastSuccessfulTime") is not None and not status.get("active")

    await eventually(saw_success, what="the CronJob records the success")
    status = api.peek("cronjobs", "tick", NS)["status"]  # type: ignore[index]
    assert status["lastScheduleTime"] == "2024-05-01T12:00:00Z"
    job = api.peek("jobs", name, NS)
    assert job is not None and job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    await api.delete("cronjobs", "tick", NS)
    await eventually(
        lambda: not api.peek_list("jobs", NS) and not api.peek_list("pods", NS),
        what="the garbage collector removes the Jobs and pods",
    )
