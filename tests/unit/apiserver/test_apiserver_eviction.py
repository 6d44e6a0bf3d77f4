"""`pods/eviction`: the delete that spends a PodDisruptionBudget, through the real registry."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.apiserver.eviction import evict as evict_pod
from podnet.testing.api import InMemoryApi

Obj = dict[str, Any]
NS = "shop"


def pod(name: str, ready: bool = True, phase: str = "Running") -> Obj:
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "shop"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "n1"},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def budget(name: str = "shop", allowed: int = 1, healthy: int = 2, **spec: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "shop"}}, **spec},
        "status": {
            "observedGeneration": 1,
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": healthy - allowed,
            "expectedPods": healthy,
        },
    }


def eviction(name: str, **options: Any) -> Obj:
    body: Obj = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": NS},
    }
    if options:
        body["deleteOptions"] = options
    return body


async def evict(api: InMemoryApi, name: str, **options: Any) -> Obj:
    return await api.create("pods", eviction(name, **options), NS, subresource="eviction")


def deleting(api: InMemoryApi, name: str) -> bool:
    found = api.peek("pods", name, NS)
    return found is None or bool(found["metadata"].get("deletionTimestamp"))


@pytest.mark.asyncio
async def test_no_budget_is_a_plain_delete(memory_api: InMemoryApi) -> None:
    await memory_api.put("pods", pod("a"))
    status = await evict(memory_api, "a")
    assert (status["kind"], status["status"], status["code"]) == ("Status", "Success", 201)
    assert deleting(memory_api, "a")


@pytest.mark.asyncio
async def test_budget_is_spent_once_then_429(memory_api: InMemoryApi) -> None:
    api = memory_api
    for name in ("a", "b"):
        await api.put("pods", pod(name))
    await api.put("poddisruptionbudgets", budget(allowed=1, healthy=2))
    await evict(api, "a")
    assert deleting(api, "a")
    status = api.peek("poddisruptionbudgets", "shop", NS)["status"]  # type: ignore[index]
    assert status["disruptionsAllowed"] == 0
    assert set(status["disruptedPods"]) == {"a"}
    cond = status["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "DisruptionAllowed",
        "False",
        "InsufficientPods",
    )
    with pytest.raises(ApiError) as refused:
        await evict(api, "b")
    assert refused.value.code == 429
    assert refused.value.reason == "TooManyRequests"
    assert refused.value.message == (
        "Cannot evict pod as it would violate the pod's disruption budget."
    )
    assert refused.value.details["causes"] == [
        {
            "reason": "DisruptionBudget",
            "message": "The disruption budget shop needs 1 healthy pods and has 2 currently",
        }
    ]
    assert not deleting(api, "b")


@pytest.mark.asyncio
async def test_a_budget_older_than_its_spec_asks_to_retry(memory_api: InMemoryApi) -> None:
    await memory_api.put("pods", pod("a"))
    stale = budget()
    stale["status"]["observedGeneration"] = 0
    await memory_api.put("poddisruptionbudgets", stale)
    with pytest.raises(ApiError) as refused:
        await evict(memory_api, "a")
    assert (refused.value.code, refused.value.details) == (429, {"retryAfterSeconds": 10})
    assert "is still being processed by the server" in refused.value.message


@pytest.mark.asyncio
async def test_two_budgets_are_refused(memory_api: InMemoryApi) -> None:
    await memory_api.put("pods", pod("a"))
    await memory_api.put("poddisruptionbudgets", budget("one"))
    await memory_api.put("poddisruptionbudgets", budget("two"))
    with pytest.raises(ApiError) as refused:
        await evict(memory_api, "a")
    assert refused.value.code == 500
    assert "more than one PodDisruptionBudget" in refused.value.message


@pytest.mark.parametrize(
    ("policy", "healthy", "allowed", "spends"),
    [
        (None, 2, 1, False),  # IfHealthyBudget and the budget is healthy: free
        ("AlwaysAllow", 0, 0, False),  # always free for unready pods
        ("IfHealthyBudget", 0, 0, True),  # unhealthy budget: the rules apply (and refuse)
    ],
)
@pytest.mark.asyncio
async def test_unready_pods(
    memory_api: InMemoryApi, policy: str | None, healthy: int, allowed: int, spends: bool
) -> None:
    await memory_api.put("pods", pod("sick", ready=False))
    spec = {"unhealthyPodEvictionPolicy": policy} if policy else {}
    pdb = budget(allowed=allowed, healthy=healthy, **spec)
    pdb["status"]["desiredHealthy"] = 1
    await memory_api.put("poddisruptionbudgets", pdb)
    if spends:
        with pytest.raises(ApiError) as refused:
            await evict(memory_api, "sick")
        assert refused.value.code == 429
        return
    await evict(memory_api, "sick")
    assert deleting(memory_api, "sick")
    after = memory_api.peek("poddisruptionbudgets", "shop", NS)
    assert after is not None and "disruptedPods" not in after["status"]


@pytest.mark.asyncio
async def test_pending_pods_and_dry_runs(memory_api: InMemoryApi) -> None:
    api = memory_api
    await api.put("pods", pod("new", phase="Pending"))
    await api.put("pods", pod("a"))
    await api.put("poddisruptionbudgets", budget(allowed=0, healthy=1))
    await evict(api, "new")  # a pending pod takes no availability away
    assert deleting(api, "new")
    await api.put("poddisruptionbudgets", budget(allowed=1, healthy=2))
    await evict(api, "a", dryRun=["All"])
    assert not deleting(api, "a")
    after = api.peek("poddisruptionbudgets", "shop", NS)
    assert after is not None and after["status"]["disruptionsAllowed"] == 1


@pytest.mark.asyncio
async def test_bad_evictions(memory_api: InMemoryApi) -> None:
    await memory_api.put("pods", pod("a"))
    with pytest.raises(ApiError) as wrong:  # POST .../pods/a/eviction naming pod b
        await evict_pod(memory_api.registry, NS, "a", eviction("b"))
    assert (wrong.value.code, wrong.value.message) == (
        400,
        "name in URL does not match name in Eviction object",
    )
    with pytest.raises(ApiError) as kind:
        await evict_pod(memory_api.registry, NS, "a", {**eviction("a"), "kind": "Pod"})
    assert kind.value.code == 400
    with pytest.raises(ApiError) as missing:
        await evict(memory_api, "nope")
    assert missing.value.code == 404
