"""Switching proxy modes on a node removes the previous mode's kernel state."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.proxy_lab import (
    ENDPOINT_IPS,
    HTTP_PORT,
    ProxyNode,
    Topology,
    http_get,
    topology,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology() as t:
        yield t


def kernel_state(topo: Topology) -> str:
    """iptables-save + nft ruleset of the node (read only for assertions)."""

    def run(*argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", topo.node, *argv], capture_output=True, text=True, check=True
        ).stdout

    return run("iptables-save") + run("nft", "list", "ruleset")


def test_each_mode_removes_the_previous_ones_state(topo: Topology) -> None:
    svc = service("default", "sw", "10.96.0.20", port=80, port_name="http")
    eps = endpoint_slice("default", "sw", list(ENDPOINT_IPS), port=HTTP_PORT, port_name="http")
    for mode, own, foreign in (
        ("iptables", "KUBE-SVC-", ("table ip kube-proxy", "KUBE-PORTALS")),
        ("nftables", "table ip kube-proxy", ("KUBE-SVC-", "KUBE-SERVICES", "KUBE-PORTALS")),
        ("userspace", "KUBE-PORTALS-CONTAINER", ("table ip kube-proxy", "KUBE-SVC-")),
        ("iptables", "KUBE-SVC-", ("table ip kube-proxy", "KUBE-PORTALS")),
    ):
        with ProxyNode(topo, mode) as node:
            node.put("services", svc)
            node.put("endpointslices", eps)
            node.wait_programmed()
            assert http_get(topo.client, "10.96.0.20", 80)[0].startswith("ep"), mode
            state = kernel_state(topo)
            assert own in state, (mode, state)
            for marker in foreign:
                assert marker not in state, (mode, marker, state)
    # rules outlive the agent (restarts must not cut traffic); nftables start-up removes the
    # iptables leftovers, and the mode's own cleanup removes the rest
    with ProxyNode(topo, "nftables") as node:
        node.wait_programmed()
        node.cleanup_rules()
    assert "KUBE-" not in kernel_state(topo) and "kube-proxy" not in kernel_state(topo)
