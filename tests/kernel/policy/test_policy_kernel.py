"""NetworkPolicy on a real node namespace beside each kube-proxy mode: the table judges a
client pod's connections to endpoint pods directly and through a ClusterIP (after DNAT, or
before the userspace proxy and at its dial), a revocation cuts an open connection, denied
connections are counted and logged with pod names.

Topology: `podnet.testing.proxy_lab` — endpoint pods ep0..ep2 (namespace x, httpd on 8080,
bridged), a client pod routed through the node (namespace y); all on node `test-node`."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from podnet.kernel import netns
from podnet.testing.netpol import namespace_manifest, policy
from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.proxy_lab import (
    CLIENT_IP,
    ENDPOINT_IPS,
    HTTP_PORT,
    ProxyNode,
    Topology,
    http_get,
    topology,
)

pytestmark = pytest.mark.root

MODES = ["iptables", "nftables", "userspace"]
VIP = "10.96.0.20"
DEADLINE = 10.0  # seconds an answer (or a log line) may take: a loaded machine is slow, not wrong
DROP_WAIT = 0.5  # seconds without an answer that count as a drop (a drop never answers)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology("pnt6") as t:
        yield t


def pod(ns: str, name: str, ip: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {
            "nodeName": "test-node",
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "ports": [{"name": "http", "containerPort": HTTP_PORT}],
                }
            ],
        },
        "status": {"phase": "Running", "podIP": ip},
    }


def seed(node: ProxyNode) -> None:
    for ns in ("x", "y"):
        node.put("namespaces", namespace_manifest(ns))
    node.put("nodes", {"metadata": {"name": "test-node"}, "spec": {"podCIDR": "10.244.1.0/24"}})
    for i, ip in enumerate(ENDPOINT_IPS):
        node.put("pods", pod("x", f"ep{i}", ip, {"app": "ep", "i": str(i)}))
    node.put("pods", pod("y", "client", CLIENT_IP, {"app": "client"}))
    node.put("services", service("x", "ep0", VIP, port=80, port_name="http"))
    node.put(
        "endpointslices",
        endpoint_slice(
            "x", "ep0", [ENDPOINT_IPS[0]], port=HTTP_PORT, port_name="http", node="test-node"
        ),
    )
    node.wait_programmed()


DENY_EP0 = policy("x", "deny-ep0", podSelector={"matchLabels": {"i": "0"}}, policyTypes=["Ingress"])
ALLOW_Y_HTTP = policy(
    "x",
    "allow-y-http",
    podSelector={"matchLabels": {"app": "ep"}},
    ingress=[
        {
            "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
            "ports": [{"port": "http"}],
        }
    ],
)


@pytest.mark.parametrize("mode", MODES)
def test_policies_judge_direct_and_service_traffic(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode, policy=True) as node:
        seed(node)

        def fetch(ip: str, port: int, source: str = topo.client) -> str:
            return http_get(source, ip, port, timeout=DEADLINE)[0]

        def dropped(ip: str, port: int, source: str = topo.client) -> bool:
            return http_get(source, ip, port, timeout=DROP_WAIT)[0] == "timeout"

        assert fetch(ENDPOINT_IPS[0], HTTP_PORT) == "ep0"
        assert fetch(VIP, 80) == "ep0"
        node.put("networkpolicies", DENY_EP0)
        node.wait_programmed()
        assert dropped(ENDPOINT_IPS[0], HTTP_PORT)
        assert dropped(VIP, 80)  # judged against ep0, not the ClusterIP
        assert fetch(ENDPOINT_IPS[1], HTTP_PORT) == "ep1"  # not selected
        # ep1 -> ep0 over the bridge (br_netfilter) is judged too
        assert dropped(ENDPOINT_IPS[0], HTTP_PORT, source=topo.endpoints[1])
        node.put("networkpolicies", ALLOW_Y_HTTP)  # named port, union with deny-ep0
        node.wait_programmed()
        assert fetch(ENDPOINT_IPS[0], HTTP_PORT) == "ep0"
        assert fetch(VIP, 80) == "ep0"
        assert dropped(ENDPOINT_IPS[0], HTTP_PORT, source=topo.endpoints[1])
        # the node itself (kubelet probes) is always let in
        assert fetch(ENDPOINT_IPS[0], HTTP_PORT, source=topo.node) == "ep0"
        assert node.policy is not None
        assert node.policy.metrics.drops.values or node.policy.metrics.proxied_drops.value


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_a_revocation_cuts_an_open_connection(topo: Topology, mode: str) -> None:
    with ProxyNode(topo, mode, policy=True) as node:
        seed(node)

        def open_connection() -> socket.socket:
            return socket.create_connection((ENDPOINT_IPS[0], HTTP_PORT), timeout=1)

        sock = netns.call_in(topo.client, open_connection)
        try:
            node.put("networkpolicies", DENY_EP0)
            node.wait_programmed()
            sock.settimeout(1)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(100)  # the request never reached ep0
        finally:
            sock.close()
        assert node.policy is not None and node.policy.metrics.revoked.value >= 1


def test_denied_connections_are_logged_with_pod_names(
    topo: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="podnet.agent.policy.component")
    with ProxyNode(topo, "nftables", policy=True) as node:
        seed(node)
        annotated = {"podnet.io/network-policy-log": "true"}
        node.put(
            "nodes",
            {
                "metadata": {"name": "test-node", "annotations": annotated},
                "spec": {"podCIDR": "10.244.1.0/24"},
            },
        )
        node.put("networkpolicies", DENY_EP0)
        node.wait_programmed()
        assert http_get(topo.client, VIP, 80, timeout=0.3)[0] == "timeout"
        deadline = time.monotonic() + DEADLINE
        want = "policy: denied ingress y/client (10.244.2.10:"
        while not any(want in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        line = next(r.getMessage() for r in caplog.records if want in r.getMessage())
        assert line.endswith(
            f"-> x/ep0 ({ENDPOINT_IPS[0]}) tcp/{HTTP_PORT}; isolated for ingress by x/deny-ep0"
        )
