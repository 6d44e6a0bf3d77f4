"""Every proxy mode this kernel supports, for real: a client pod reaches a 3-endpoint service
by ClusterIP and NodePort with balanced answers, ClientIP affinity sticks, a service without
endpoints is refused at once, hairpin works, and a removed endpoint gets no new connections."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.proxy_lab import (
    ENDPOINT_IPS,
    HTTP_PORT,
    NODE_IP,
    ProxyNode,
    Topology,
    http_get,
    topology,
)

pytestmark = pytest.mark.root

MODES = ["iptables", "nftables", "userspace"]
VIP = "10.96.0.10"
NODE_PORT = 30080


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology() as t:
        yield t


def web_service(
    name: str = "web", vip: str = VIP, node_port: int = NODE_PORT, **spec: object
) -> dict:
    return service(
        "default", name, vip, port=80, port_name="http", type="NodePort", nodePort=node_port, **spec
    )


def web_slice(ips: list[str], name: str = "web") -> dict:
    return endpoint_slice("default", name, ips, port=HTTP_PORT, port_name="http", node="test-node")


def spread(answers: list[str]) -> dict[str, float]:
    counts = collections.Counter(answers)
    return {k: v / len(answers) for k, v in counts.items()}


@pytest.mark.parametrize("mode", MODES)
def test_service_by_cluster_ip_and_node_port(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode) as node:
        try:
            node.put("services", web_service())
            node.put("endpointslices", web_slice(list(ENDPOINT_IPS)))
            node.wait_programmed()
            for target in ((VIP, 80), (NODE_IP, NODE_PORT)):
                answers = http_get(topo.client, *target, n=300)
                shares = spread(answers)
                assert set(shares) == {"ep0", "ep1", "ep2"}, (target, collections.Counter(answers))
                for ep, share in shares.items():
                    assert 0.20 <= share <= 0.47, (mode, target, ep, shares)
        finally:
            node.cleanup_rules()


@pytest.mark.parametrize("mode", MODES)
def test_client_ip_affinity(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode) as node:
        try:
            node.put(
                "services",
                web_service(
                    "sticky",
                    "10.96.0.11",
                    30081,
                    sessionAffinity="ClientIP",
                    sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
                ),
            )
            node.put("endpointslices", web_slice(list(ENDPOINT_IPS), "sticky"))
            node.wait_programmed()
            answers = http_get(topo.client, "10.96.0.11", 80, n=15)
            assert len(set(answers)) == 1 and answers[0].startswith("ep"), answers
        finally:
            node.cleanup_rules()


@pytest.mark.parametrize("mode", MODES)
def test_no_endpoints_is_refused_at_once(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode) as node:
        try:
            node.put("services", web_service("empty", "10.96.0.12", 30082))
            node.wait_programmed()
            # refused or reset by the rules (a dropped SYN would read "timeout" after 3 s)
            answers = http_get(topo.client, "10.96.0.12", 80, n=3, timeout=3.0)
            assert all(a in ("refused", "reset", "empty") for a in answers), answers
        finally:
            node.cleanup_rules()


@pytest.mark.parametrize("mode", MODES)
def test_hairpin_pod_reaches_itself(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode) as node:
        try:
            node.put("services", web_service("self", "10.96.0.13", 30083))
            node.put("endpointslices", web_slice([ENDPOINT_IPS[0]], "self"))
            node.wait_programmed()
            assert http_get(topo.endpoints[0], "10.96.0.13", 80, n=5) == ["ep0"] * 5
        finally:
            node.cleanup_rules()


@pytest.mark.parametrize("mode", MODES)
def test_removed_endpoint_gets_no_new_connections(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode) as node:
        try:
            node.put("services", web_service("shrink", "10.96.0.14", 30084))
            node.put("endpointslices", web_slice(list(ENDPOINT_IPS), "shrink"))
            node.wait_programmed()
            assert set(http_get(topo.client, "10.96.0.14", 80, n=60)) == {"ep0", "ep1", "ep2"}
            node.put("endpointslices", web_slice(list(ENDPOINT_IPS[:2]), "shrink"))
            node.wait_programmed()
            after = http_get(topo.client, "10.96.0.14", 80, n=100)
            assert set(after) == {"ep0", "ep1"}, collections.Counter(after)
        finally:
            node.cleanup_rules()


@pytest.mark.parametrize("mode", MODES)
def test_the_node_itself_reaches_the_service(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode) as node:
        try:
            node.put("services", web_service("fromnode", "10.96.0.15", 30085))
            node.put("endpointslices", web_slice(list(ENDPOINT_IPS), "fromnode"))
            node.wait_programmed()
            answers = http_get(topo.node, "10.96.0.15", 80, n=30)
            assert set(answers) <= {"ep0", "ep1", "ep2"} and len(set(answers)) >= 2, answers
        finally:
            node.cleanup_rules()
