"""Packet-walk tables over the rendered iptables and nftables rules (upstream TestTracePacket):
where a new connection's first packet goes, whether it is masqueraded, or REJECT/DROP."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from podnet.agent.proxy.iptables import render_iptables
from podnet.agent.proxy.nftables import render_nftables
from podnet.agent.proxy.trace_iptables import trace_iptables
from podnet.agent.proxy.trace_nftables import NftModel, trace_nftables
from podnet.testing.proxy import FIXTURE_CONFIG, upstream_fixture

NODE_IPS = ["192.168.0.2"]


@dataclass(frozen=True)
class Flow:
    name: str
    src: str
    dst: str
    dport: int
    output: str  # DNAT targets joined by ", " or REJECT / DROP / ACCEPT
    masq: bool = False


FLOWS = [
    Flow("pod to cluster IP, one endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
    Flow(
        "external source to cluster IP is masqueraded",
        "192.168.0.9",
        "172.30.0.41",
        80,
        "10.180.0.1:80",
        masq=True,
    ),
    Flow("two endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80"),
    Flow(
        "hairpin: the endpoint reaches itself",
        "10.180.0.1",
        "172.30.0.41",
        80,
        "10.180.0.1:80",
        masq=True,
    ),
    Flow(
        "external IP, ETP=Cluster masquerades",
        "10.0.0.2",
        "192.168.99.33",
        80,
        "10.180.0.4:80, 10.180.0.5:80",
        masq=True,
    ),
    Flow(
        "NodePort, ETP=Cluster masquerades",
        "10.0.0.2",
        "192.168.0.2",
        3003,
        "10.180.0.3:80",
        masq=True,
    ),
    Flow(
        "NodePort of the affinity service",
        "203.0.113.9",
        "192.168.0.2",
        3002,
        "10.180.0.3:80",
        masq=True,
    ),
    Flow("service without endpoints is rejected", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
    Flow(
        "ETP=Local external IP from outside, no local endpoint: dropped",
        "203.0.113.9",
        "192.168.99.22",
        80,
        "DROP",
    ),
    Flow(
        "ETP=Local NodePort from outside, no local endpoint: dropped",
        "203.0.113.9",
        "192.168.0.2",
        3001,
        "DROP",
    ),
    Flow(
        "ETP=Local external IP from a pod short-circuits to the cluster",
        "10.0.0.2",
        "192.168.99.22",
        80,
        "10.180.0.2:80",
    ),
    Flow("ETP=Local cluster IP is unaffected", "10.0.0.2", "172.30.0.42", 80, "10.180.0.2:80"),
    Flow("unrelated destination", "10.0.0.2", "10.180.0.9", 80, "ACCEPT"),
]


@pytest.fixture(scope="module")
def rendered() -> tuple[str, NftModel]:
    state = upstream_fixture()
    ipt = render_iptables(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
    model = NftModel()
    model.apply(render_nftables(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG))
    return ipt, model


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_iptables_packet_walk(rendered: tuple[str, NftModel], flow: Flow) -> None:
    verdict = trace_iptables(rendered[0], flow.src, flow.dst, flow.dport, node_ips=NODE_IPS)
    assert (str(verdict), verdict.masquerade) == (flow.output, flow.masq), rendered[0]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_nftables_packet_walk(rendered: tuple[str, NftModel], flow: Flow) -> None:
    verdict = trace_nftables(rendered[1], flow.src, flow.dst, flow.dport, node_ips=NODE_IPS)
    assert (str(verdict), verdict.masquerade) == (flow.output, flow.masq)


def test_nftables_rejects_bad_port_and_drops_unallocated_cluster_ips(
    rendered: tuple[str, NftModel],
) -> None:
    assert str(trace_nftables(rendered[1], "10.0.0.2", "172.30.0.41", 81)) == "REJECT"
    assert str(trace_nftables(rendered[1], "10.0.0.2", "172.30.0.99", 80)) == "DROP"
