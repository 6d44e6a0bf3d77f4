"""Service / EndpointSlice dicts to kube-proxy values, and endpoint categorisation."""

from __future__ import annotations

from podnet.agent.proxy.model import (
    Endpoint,
    ServicePortName,
    categorize,
    merge_endpoints,
    service_ports,
    slice_endpoints,
)
from podnet.testing.proxy import endpoint_slice, service


def test_port_names_follow_upstream_string_form() -> None:
    assert str(ServicePortName("ns1", "svc1", "p80", "tcp")) == "ns1/svc1:p80"
    assert str(ServicePortName("ns1", "svc1", "", "tcp")) == "ns1/svc1"


def test_service_ports_read_affinity_nodeport_and_policies() -> None:
    (sp,) = service_ports(
        service(
            "ns",
            "a",
            "10.96.0.5",
            type="NodePort",
            nodePort=30001,
            externalIPs=["192.0.2.1"],
            sessionAffinity="ClientIP",
            externalTrafficPolicy="Local",
            healthCheckNodePort=31000,
            internalTrafficPolicy="Local",
        )
    )
    assert (sp.node_port, sp.external_ips, sp.affinity_seconds) == (30001, ("192.0.2.1",), 10800)
    assert sp.external_local and sp.internal_local and sp.health_check_node_port == 31000


def test_headless_and_external_name_services_are_ignored() -> None:
    assert service_ports(service("ns", "h", "None")) == ()
    assert service_ports(service("ns", "x", "", type="ExternalName")) == ()


def test_slice_conditions_default_like_the_api() -> None:
    s = endpoint_slice("ns", "a", ["10.1.0.2"], node="me")
    s["endpoints"][0]["conditions"] = {}
    (eps,) = slice_endpoints(s, "me").values()
    assert eps == (
        Endpoint("10.1.0.2", 80, ready=True, serving=True, terminating=False, local=True),
    )


def test_slices_merge_sorted_numerically_without_duplicates() -> None:
    a = slice_endpoints(endpoint_slice("ns", "a", ["10.1.0.10", "10.1.0.9"]), "n")
    b = slice_endpoints(endpoint_slice("ns", "a", ["10.1.0.9", "10.1.0.2"], suffix="x"), "n")
    (eps,) = merge_endpoints([a, b]).values()
    assert [e.ip for e in eps] == ["10.1.0.2", "10.1.0.9", "10.1.0.10"]


def test_categorize_falls_back_to_serving_terminating_endpoints() -> None:
    (sp,) = service_ports(service("ns", "a", "10.96.0.5"))
    terminating = Endpoint("10.1.0.3", 80, ready=False, serving=True, terminating=True)
    not_serving = Endpoint("10.1.0.4", 80, ready=False, serving=False, terminating=True)
    cats = categorize(sp, [terminating, not_serving])
    assert cats.cluster == (terminating,) and cats.has_any
    ready = Endpoint("10.1.0.5", 80)
    assert categorize(sp, [terminating, ready]).cluster == (ready,)
    assert not categorize(sp, [not_serving]).has_any


def test_local_policy_uses_only_this_nodes_endpoints() -> None:
    (sp,) = service_ports(service("ns", "a", "10.96.0.5", internalTrafficPolicy="Local"))
    here, there = Endpoint("10.1.0.2", 80, local=True), Endpoint("10.1.0.3", 80)
    cats = categorize(sp, [here, there])
    assert cats.local == (here,) and cats.cluster == () and cats.reachable == (here,)
    cats = categorize(sp, [there])
    assert cats.reachable == () and cats.has_any  # DROP, not REJECT
