"""The DNS server's copy of the cluster: conversions, watch events and the reverse indexes."""

from __future__ import annotations

import pytest

from podnet.dns.cluster import ClusterView, pod_ips, service_of, slice_of
from podnet.testing.dns_cluster import (
    NAMESPACES,
    SERVICES,
    SLICES,
    endpoint_slice,
    namespace,
    pod,
    service,
)


def test_conversions_follow_coredns() -> None:
    headless = service_of(service("default", "db", "None", [("mysql", 3306, "TCP")]))
    assert headless.headless and headless.cluster_ips == ()
    assert service_of(service("default", "web", "10.96.0.20")).cluster_ips == ("10.96.0.20",)
    found = slice_of(
        endpoint_slice("default", "db", [("10.244.1.5", "db-0", True), ("10.244.1.7", None, False)])
    )
    assert found is not None
    assert [(a.ip, a.dns_label) for a in found.addresses] == [("10.244.1.5", "db-0")]
    assert [p.port for p in found.ports] == [-1]  # the no-port sentinel
    orphan = endpoint_slice("default", "db", [("10.244.1.5", None, True)])
    del orphan["metadata"]["labels"]
    assert slice_of(orphan) is None
    assert pod_ips(pod("default", "a", "10.244.1.9")) == ("10.244.1.9",)
    assert pod_ips(pod("default", "a", "10.244.1.9", phase="Failed")) == ()
    leaving = pod("default", "a", "10.244.1.9")
    leaving["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert pod_ips(leaving) == ()


def test_watch_events_keep_every_index_in_step() -> None:
    view = ClusterView.of(SERVICES, SLICES, NAMESPACES)
    generation = view.generation
    assert view.synced
    assert [s.name for s in view.services_with_ip("10.96.0.20")] == ["web"]
    moved = service("default", "web", "10.96.0.21", [("http", 80, "TCP")])
    view.apply("services", "MODIFIED", moved)
    assert view.services_with_ip("10.96.0.20") == []
    assert [s.name for s in view.services_with_ip("10.96.0.21")] == ["web"]
    view.apply("services", "DELETED", moved)
    assert view.services_with_ip("10.96.0.21") == [] and ("default", "web") not in view.services

    db = endpoint_slice("default", "db", [("10.244.1.5", "db-0", True)], name="db-abcde")
    view.apply("endpointslices", "MODIFIED", db)
    assert view.slices_with_ip("10.244.2.6") == []
    assert [s.name for s in view.slices_of("default", "db")] == ["db-abcde"]
    second = endpoint_slice("default", "db", [("10.244.2.6", None, True)], name="db-fghij")
    view.apply("endpointslices", "ADDED", second)
    assert [s.name for s in view.slices_of("default", "db")] == ["db-abcde", "db-fghij"]
    view.apply("endpointslices", "DELETED", db)
    view.apply("endpointslices", "DELETED", second)
    assert view.slices_of("default", "db") == []
    assert view.slices_with_ip("10.244.1.5") == []
    assert ("default", "db") not in view.slices_by_service

    view.apply("namespaces", "DELETED", namespace("team-a"))
    assert "team-a" not in view.namespaces
    assert view.generation == generation + 7


def test_a_relist_replaces_everything() -> None:
    view = ClusterView.of(SERVICES, SLICES, NAMESPACES)
    view.replace("services", [service("default", "only", "10.96.0.99")])
    assert list(view.services) == [("default", "only")]
    assert view.services_with_ip("10.96.0.20") == []
    view.replace("endpointslices", [])
    assert view.slices_by_ip == {} and view.slices_by_service == {}


def test_pods_are_indexed_by_ip() -> None:
    view = ClusterView.of(pods=[pod("default", "a", "10.244.1.9")])
    assert view.pod_namespaces_with_ip("10.244.1.9") == {"default"}
    view.apply("pods", "MODIFIED", pod("default", "a", "10.244.1.9", phase="Succeeded"))
    assert view.pod_namespaces_with_ip("10.244.1.9") == set()


def test_unknown_resources_are_refused() -> None:
    with pytest.raises(ValueError, match="nodes"):
        ClusterView().replace("nodes", [])
