"""The root CA publisher: the plan (pure) and the loop against `InMemoryApi` — a deleted
`kube-root-ca.crt` comes back, an edited one is put back, terminating namespaces are left."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from podnet.apiserver.rootca import (
    DESCRIPTION,
    NAME,
    RootCaPlan,
    plan_root_ca,
    root_ca_configmap,
    run_root_ca_publisher,
)
from podnet.testing.api import InMemoryApi
from podnet.testing.waiting import eventually

PEM = b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"


def ns(name: str, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_plan_creates_missing_and_rewrites_changed() -> None:
    good = root_ca_configmap(PEM)
    edited = {**good, "data": {"ca.crt": "not the CA"}}
    unannotated = {**good, "metadata": {"name": NAME}}
    plan = plan_root_ca(
        {n: ns(n) for n in ("a", "b", "c", "d")} | {"gone": ns("gone", terminating=True)},
        {"a": good, "b": edited, "c": unannotated},
        PEM,
    )
    assert plan == RootCaPlan(create=("d",), rewrite=("b", "c"))


def ca_of(api: InMemoryApi, namespace: str) -> str | None:
    found = api.peek("configmaps", NAME, namespace)
    return None if found is None else found["data"]["ca.crt"]


@pytest.mark.asyncio
async def test_deleted_or_edited_root_ca_comes_back(memory_api: InMemoryApi) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_root_ca_publisher(memory_api, PEM, stop))
    try:
        await eventually(lambda: ca_of(memory_api, "default") == PEM.decode())
        await memory_api.delete("configmaps", NAME, "default")
        await eventually(lambda: ca_of(memory_api, "default") == PEM.decode())
        await memory_api.patch("configmaps", NAME, {"data": {"ca.crt": "mine"}}, "kube-system")
        await eventually(lambda: ca_of(memory_api, "kube-system") == PEM.decode())
        annotations = memory_api.peek("configmaps", NAME, "kube-system")["metadata"]["annotations"]
        assert annotations["kubernetes.io/description"] == DESCRIPTION
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
