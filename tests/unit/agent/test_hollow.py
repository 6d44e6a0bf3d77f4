"""Hollow nodes against a real server in-process (memory store, controllers on): they register,
hold Leases, and the pods the scheduler binds to them run with IPs from their podCIDRs."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from podnet.agent.hollow import HollowNodes, hollow_names, host_ip
from podnet.api.client import HttpApi
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.testing.waiting import eventually


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[HttpApi]:
    srv = ApiServer(
        ServerOptions(tmp_path / "state", store_url="memory", listen=parse_listen(["127.0.0.1:0"]))
    )
    await srv.start()
    try:
        async with HttpApi.from_kubeconfig(srv.credentials.kubeconfig_path) as client:
            yield client
    finally:
        await srv.stop()


def test_names_and_host_ips_are_distinct() -> None:
    assert hollow_names("h-", 3, first=5) == ["h-5", "h-6", "h-7"]
    assert host_ip(1) == "198.18.0.1" and host_ip(256) == "198.18.1.0"


@pytest.mark.asyncio
async def test_hollow_nodes_run_the_pods_bound_to_them(api: HttpApi) -> None:
    hollow = HollowNodes(api, hollow_names("hollow-", 3), lease_renew_seconds=1.0, writers=2)
    stop = asyncio.Event()
    running = asyncio.create_task(hollow.run(stop))
    try:
        await asyncio.wait_for(hollow.registered(), 10)

        async def leases_held() -> bool:
            leases = (await api.list("leases", "kube-node-lease"))["items"]
            return {lease["metadata"]["name"] for lease in leases} == set(hollow.nodes)

        await eventually(leases_held, 5, "a Lease per hollow node", 0.1)
        labels = {"app": "hollow-web"}
        await api.create(
            "deployments",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 6,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "web", "image": "agnhost"}]},
                    },
                },
            },
            "default",
        )

        async def pods() -> list[dict[str, object]]:
            return list(
                (await api.list("pods", "default", label_selector="app=hollow-web"))["items"]
            )

        async def all_running() -> bool:
            current = await pods()
            return len(current) == 6 and all(
                p["status"]["phase"] == "Running"  # type: ignore[index]
                for p in current
            )

        await eventually(all_running, 20, "6 pods Running on hollow nodes", 0.1)
        nodes = {n["metadata"]["name"]: n for n in (await api.list("nodes"))["items"]}
        for pod in await pods():
            spec, status = pod["spec"], pod["status"]
            node = nodes[spec["nodeName"]]  # type: ignore[index]
            cidr = ipaddress.ip_network(node["spec"]["podCIDR"])
            assert ipaddress.ip_address(status["podIP"]) in cidr  # type: ignore[index]
            assert status["hostIP"] == hollow.nodes[node["metadata"]["name"]].ip  # type: ignore[index]
            ready = {c["type"]: c["status"] for c in status["conditions"]}  # type: ignore[index]
            assert ready["Ready"] == "True"
        assert len({p["status"]["podIP"] for p in await pods()}) == 6  # type: ignore[index]

        await api.patch("deployments", "web", {"spec": {"replicas": 0}}, "default")

        async def none_left() -> bool:
            return not await pods()

        await eventually(none_left, 20, "the scaled-down pods to be removed", 0.1)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


@pytest.mark.asyncio
async def test_a_node_marked_unknown_reports_ready_again(api: HttpApi) -> None:
    """Node lifecycle sets Ready Unknown when a Lease came late; the hollow node writes its own
    status again at once (as a kubelet at its next status sync), not at its 5-minute report."""
    hollow = HollowNodes(api, hollow_names("hollow-", 2), lease_renew_seconds=1.0, writers=2)
    stop = asyncio.Event()
    running = asyncio.create_task(hollow.run(stop))

    async def ready(name: str) -> str | None:
        node = await api.get("nodes", name)
        conditions = (node.get("status") or {}).get("conditions") or ()
        return next((c["status"] for c in conditions if c["type"] == "Ready"), None)

    try:
        await asyncio.wait_for(hollow.registered(), 10)
        node = await api.get("nodes", "hollow-1")
        conditions = [
            {**c, "status": "Unknown", "reason": "NodeStatusUnknown"} if c["type"] == "Ready" else c
            for c in node["status"]["conditions"]
        ]
        await api.patch("nodes", "hollow-1", {"status": {"conditions": conditions}},
                        subresource="status")  # fmt: skip
        assert await ready("hollow-1") == "Unknown"

        async def ready_again() -> bool:
            return await ready("hollow-1") == "True"

        await eventually(ready_again, 10, "hollow-1 Ready again", 0.1)
    finally:
        stop.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
