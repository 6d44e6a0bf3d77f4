"""ClusterIP / NodePort allocation through Service create, update and delete."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.allocators import IP_PREFIX, PORT_PREFIX, Reservations
from podnet.apiserver.registry import DeleteOptions, Registry
from podnet.apiserver.strategies.services import allocator, repair_allocations

SERVICES = BY_PLURAL["services"]
NAMESPACES = BY_PLURAL["namespaces"]


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec},
    }


async def allocations(registry: Registry, prefix: str) -> set[str]:
    return {kv.key.removeprefix(prefix) for kv in (await registry.store.list(prefix)).items}


@pytest.mark.asyncio
async def test_cluster_ip_allocated_in_range_and_released(registry: Registry) -> None:
    created = await registry.create(SERVICES, "default", service("a"))
    ip = created["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/12")
    assert ip != "10.96.0.1"
    assert created["spec"]["clusterIPs"] == [ip]
    assert ip in await allocations(registry, IP_PREFIX)
    await registry.delete(SERVICES, "default", "a", DeleteOptions())
    assert ip not in await allocations(registry, IP_PREFIX)


@pytest.mark.asyncio
async def test_requested_ip_honoured_taken_and_out_of_range_refused(registry: Registry) -> None:
    created = await registry.create(SERVICES, "default", service("a", clusterIP="10.96.0.50"))
    assert created["spec"]["clusterIP"] == "10.96.0.50"
    with pytest.raises(ApiError) as taken:
        await registry.create(SERVICES, "default", service("b", clusterIP="10.96.0.50"))
    assert taken.value.code == 422
    assert taken.value.details["causes"][0]["field"] == "spec.clusterIPs"
    assert "already allocated" in taken.value.message
    with pytest.raises(ApiError) as outside:
        await registry.create(SERVICES, "default", service("c", clusterIP="192.168.0.1"))
    assert outside.value.code == 422 and "not in the valid range" in outside.value.message
    # the kubernetes service owns the first address
    with pytest.raises(ApiError):
        await registry.create(SERVICES, "default", service("d", clusterIP="10.96.0.1"))


@pytest.mark.asyncio
async def test_headless_and_external_name_take_no_ip(registry: Registry) -> None:
    before = await allocations(registry, IP_PREFIX)
    headless = await registry.create(SERVICES, "default", service("h", clusterIP="None"))
    assert headless["spec"]["clusterIP"] == "None"
    ext = await registry.create(
        SERVICES,
        "default",
        {
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"},
        },
    )
    assert "clusterIP" not in ext["spec"]
    assert await allocations(registry, IP_PREFIX) == before


@pytest.mark.asyncio
async def test_node_ports_allocated_kept_on_update_and_released_on_type_change(
    registry: Registry,
) -> None:
    created = await registry.create(SERVICES, "default", service("np", type="NodePort"))
    port = created["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    assert str(port) in await allocations(registry, PORT_PREFIX)
    # an update that omits the allocated values keeps them (upstream patchAllocatedValues)
    body = service("np", type="NodePort")
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    updated = await registry.update(SERVICES, "default", "np", body)
    assert updated["spec"]["ports"][0]["nodePort"] == port
    assert updated["spec"]["clusterIP"] == created["spec"]["clusterIP"]
    back = await registry.patch(SERVICES, "default", "np", "merge", {"spec": {"type": "ClusterIP"}})
    assert "nodePort" not in back["spec"]["ports"][0]
    assert str(port) not in await allocations(registry, PORT_PREFIX)


@pytest.mark.asyncio
async def test_requested_node_port_conflict(registry: Registry) -> None:
    await registry.create(
        SERVICES, "default", service("n1", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])
    )
    with pytest.raises(ApiError) as info:
        await registry.create(
            SERVICES,
            "default",
            service("n2", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]),
        )
    assert info.value.code == 422
    assert info.value.details["causes"][0]["field"] == "spec.ports[0].nodePort"
    # the failed create released the cluster IP it had reserved
    ips = await allocations(registry, IP_PREFIX)
    assert len(ips) == 2  # kubernetes + n1


@pytest.mark.asyncio
async def test_thousands_of_node_ports_are_distinct_and_a_full_range_is_refused(
    registry: Registry,
) -> None:
    # regression: a random pick that hit one of the Service's own earlier reservations was
    # accepted again (two ports, one nodePort), and 3,000 ports took one store write each
    ports = [{"name": f"p{i}", "port": i + 1} for i in range(2000)]
    big = await registry.create(SERVICES, "default", service("big", type="NodePort", ports=ports))
    node_ports = [p["nodePort"] for p in big["spec"]["ports"]]
    assert len(set(node_ports)) == 2000
    assert {str(p) for p in node_ports} <= await allocations(registry, PORT_PREFIX)
    # 800 more do not fit in the 2,768-port range: refused, and nothing is left reserved
    more = [{"name": f"q{i}", "port": i + 1} for i in range(800)]
    with pytest.raises(ApiError) as info:
        await registry.create(SERVICES, "default", service("more", type="NodePort", ports=more))
    assert info.value.code == 422 and "range is full" in info.value.message
    assert len(await allocations(registry, PORT_PREFIX)) == 2000
    await registry.delete(SERVICES, "default", "big", DeleteOptions())
    assert await allocations(registry, PORT_PREFIX) == set()


@pytest.mark.asyncio
async def test_concurrent_creates_never_share_an_ip(registry: Registry) -> None:
    results = await asyncio.gather(
        *(
            registry.create(SERVICES, "default", service(f"s{i}", type="NodePort"))
            for i in range(30)
        )
    )
    ips = [r["spec"]["clusterIP"] for r in results]
    ports = [r["spec"]["ports"][0]["nodePort"] for r in results]
    assert len(set(ips)) == 30 and len(set(ports)) == 30


@pytest.mark.asyncio
async def test_concurrent_requests_for_one_ip_have_one_winner(registry: Registry) -> None:
    outcomes = await asyncio.gather(
        *(
            registry.create(SERVICES, "default", service(f"r{i}", clusterIP="10.96.1.1"))
            for i in range(8)
        ),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, dict)]
    assert len(winners) == 1
    assert all(isinstance(o, ApiError) and o.code == 422 for o in outcomes if o not in winners)


@pytest.mark.etcd
@pytest.mark.asyncio
async def test_two_servers_on_one_etcd_never_share_an_address(
    etcd_url: str, tmp_path: Path
) -> None:
    """Two registries (as two `podnet server`s would) on one etcd key prefix."""
    import uuid

    from podnet.config import ClusterConfig
    from podnet.store import open_store

    url = f"{etcd_url}/alloc-{uuid.uuid4().hex[:8]}"
    stores = [open_store(url, tmp_path), open_store(url, tmp_path)]
    try:
        registries = [Registry(s, ClusterConfig()) for s in stores]
        await registries[0].create(NAMESPACES, None, {"metadata": {"name": "default"}})
        outcomes = await asyncio.gather(
            *(
                registries[i % 2].create(
                    SERVICES,
                    "default",
                    service(f"s{i}", type="NodePort", ports=[{"port": 80, "nodePort": 30100}]),
                )
                for i in range(6)
            ),
            return_exceptions=True,
        )
        assert len([o for o in outcomes if isinstance(o, dict)]) == 1
        spread = await asyncio.gather(
            *(registries[i % 2].create(SERVICES, "default", service(f"t{i}")) for i in range(20))
        )
        ips = [s["spec"]["clusterIP"] for s in spread]
        assert len(set(ips)) == 20
    finally:
        for s in stores:
            await s.close()


@pytest.mark.asyncio
async def test_repair_frees_only_old_orphans(registry: Registry) -> None:
    kept = await registry.create(SERVICES, "default", service("kept", type="NodePort"))
    # a server that died between reserving and writing its Service left these behind
    await allocator(registry).allocate_ip(
        "10.96.7.7", "dead-uid", "default/ghost", ("Service", "g"), Reservations()
    )
    await allocator(registry).allocate_node_ports(
        [("spec.ports[0].nodePort", 31000)],
        set(),
        "dead-uid",
        "default/ghost",
        ("Service", "g"),
        Reservations(),
    )
    assert await repair_allocations(registry, min_age_seconds=60) == 0  # too young: in flight?
    assert await repair_allocations(registry, min_age_seconds=0) == 2
    ips = await allocations(registry, IP_PREFIX)
    assert "10.96.7.7" not in ips and kept["spec"]["clusterIP"] in ips and "10.96.0.1" in ips
    ports = await allocations(registry, PORT_PREFIX)
    assert ports == {str(kept["spec"]["ports"][0]["nodePort"])}
