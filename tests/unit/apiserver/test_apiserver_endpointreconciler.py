"""The lease endpoint reconciler: the `kubernetes` Endpoints and EndpointSlice list exactly the
servers whose Lease is live; a clean stop takes a server out at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from podnet.apiserver.endpointreconciler import (
    EndpointReconciler,
    endpoint_addresses,
    live_addresses,
    slice_addresses,
)
from podnet.apiserver.local import LocalApi
from podnet.apiserver.registry import Registry

START = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


async def _published(api: LocalApi) -> tuple[list[str], list[str], list[int]]:
    endpoints = await api.get("endpoints", "kubernetes", "default")
    endpoint_slice = await api.get("endpointslices", "kubernetes", "default")
    ports = [p["port"] for s in endpoints["subsets"] for p in s["ports"]]
    return endpoint_addresses(endpoints), slice_addresses(endpoint_slice), ports


@pytest.mark.asyncio
async def test_endpoints_follow_the_live_leases(registry: Registry) -> None:
    api = LocalApi(registry, asyncio.Event())
    clock = Clock()
    first = EndpointReconciler(api, "10.0.0.1", 6443, lease_seconds=15, clock=clock)
    second = EndpointReconciler(api, "10.0.0.2", 6443, lease_seconds=15, clock=clock)
    for server in (first, second):
        await server.renew()
        await server.reconcile()
    # bootstrap's 127.0.0.1 held no lease: gone; both servers listed
    assert await _published(api) == (["10.0.0.1", "10.0.0.2"], ["10.0.0.1", "10.0.0.2"], [6443])

    clock.now += timedelta(seconds=10)  # the second server stops renewing (crashed)
    await first.renew()
    assert await first.reconcile() == ["10.0.0.1", "10.0.0.2"]  # its lease is still live
    clock.now += timedelta(seconds=6)
    await first.renew()
    assert await first.reconcile() == ["10.0.0.1"]
    assert await _published(api) == (["10.0.0.1"], ["10.0.0.1"], [6443])

    await second.renew()  # back: listed again on its own first pass
    await second.reconcile()
    assert (await _published(api))[0] == ["10.0.0.1", "10.0.0.2"]
    await second.leave()  # a clean stop: out at once, its lease deleted
    assert (await _published(api))[:2] == (["10.0.0.1"], ["10.0.0.1"])
    leases = await api.list("leases", "kube-system")
    assert [lease["metadata"]["name"] for lease in leases["items"]] == ["apiserver-10-0-0-1-6443"]


@pytest.mark.asyncio
async def test_run_renews_until_stopped_and_then_leaves(registry: Registry) -> None:
    api = LocalApi(registry, asyncio.Event())
    stop = asyncio.Event()
    server = EndpointReconciler(api, "10.0.0.7", 7443, renew_seconds=0.01)
    task = asyncio.create_task(server.run(stop))
    renewals = set()
    while len(renewals) < 3:  # renewed again and again
        lease = await _lease_or_none(api)
        if lease is not None:
            renewals.add(lease["spec"]["renewTime"])
        await asyncio.sleep(0.005)
    assert (await _published(api)) == (["10.0.0.7"], ["10.0.0.7"], [7443])
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await _lease_or_none(api) is None
    assert (await _published(api))[:2] == ([], [])


async def _lease_or_none(api: LocalApi) -> dict[str, object] | None:
    listed = await api.list("leases", "kube-system")
    items = listed["items"]
    return items[0] if items else None


def test_live_addresses_by_renew_time_and_duration() -> None:
    def lease(
        address: str | None, renewed: datetime | None, duration: int = 15
    ) -> dict[str, object]:
        annotations = {"podnet.io/advertise-address": address} if address else {}
        spec: dict[str, object] = {"leaseDurationSeconds": duration}
        if renewed is not None:
            spec["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"metadata": {"annotations": annotations}, "spec": spec}

    now = START
    leases = [
        lease("10.0.0.3", now - timedelta(seconds=1)),
        lease("10.0.0.1", now - timedelta(seconds=15)),  # exactly the duration: still live
        lease("10.0.0.2", now - timedelta(seconds=16)),  # lapsed
        lease("10.0.0.4", now - timedelta(seconds=16), duration=60),
        lease(None, now),  # not a server's
        lease("10.0.0.5", None),  # never renewed
    ]
    assert live_addresses(leases, now) == ["10.0.0.1", "10.0.0.3", "10.0.0.4"]
