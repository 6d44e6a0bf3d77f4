"""nftables mode against this machine's nft 1.0.6: transactions that add shared `lb-*-N`
chains to a table that already exists (a partial sync introducing a new endpoint count N, and
every full sync after the first) must load, and the Service behind them must answer.

Regression: the endpoint maps were keyed by `meta l4proto . th dport`; nft 1.0.6 rebuilds an
existing map's `typeof` data from the kernel and refused such rules with "conflicting protocols
specified: tcp vs. th", so a second Service with a new endpoint count stayed unreachable.
Everything here lives in throwaway namespaces (`pnt7-`, `scratch_netns`) removed even when a
test fails."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from podnet.agent.proxy.nftables import NftablesPlanner, render_fragments
from podnet.kernel.rules import NftRunner
from podnet.testing.proxy import FIXTURE_CONFIG, endpoint_slice, service, upstream_fixture
from podnet.testing.proxy_lab import (
    ENDPOINT_IPS,
    HTTP_PORT,
    ProxyNode,
    Topology,
    http_get,
    topology,
)

pytestmark = pytest.mark.root

FIRST_VIP = "10.96.0.20"
SECOND_VIP = "10.96.0.30"


def test_planner_transactions_load_on_an_existing_table(scratch_netns: str) -> None:
    """full (fresh table) → partial adding lb-*-3 → full again (flush mode), all for real."""
    nft = NftRunner(scratch_netns)
    state = upstream_fixture()
    planner = NftablesPlanner(FIXTURE_CONFIG)

    def sync(changed: frozenset[str] | None) -> str:
        frags = render_fragments(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
        text = planner.full(frags) if changed is None else planner.partial(frags, changed)
        nft.apply(text)  # raises RuleLoadError with nft's message if the kernel refuses it
        if changed is None:
            planner.committed(frags)
        else:
            planner.committed_partial(frags, changed)
        return text

    first = sync(None)
    assert "lb-cluster-3" not in first
    state.on_service(service("ns8", "svc8", "172.30.0.48"))
    state.on_slice(endpoint_slice("ns8", "svc8", ["10.180.0.7", "10.180.0.8", "10.180.0.9"]))
    partial = sync(state.apply().updated_services)
    assert "add chain ip kube-proxy lb-cluster-3" in partial
    sync(None)  # the table exists now: this is the flush-and-refill path
    listing = nft.list_table("ip", "kube-proxy")
    assert listing is not None
    assert "chain lb-cluster-3" in listing
    assert "172.30.0.48 . 80 . 2 : 10.180.0.9 . 80" in listing


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology("pnt7") as t:
        yield t


def _web(name: str, vip: str, ips: list[str]) -> tuple[dict, dict]:
    svc = service("default", name, vip, port=80, port_name="http")
    eps = endpoint_slice("default", name, ips, port=HTTP_PORT, port_name="http", node="test-node")
    return svc, eps


def test_second_service_with_a_new_endpoint_count_answers_after_a_partial_sync(
    topo: Topology,
) -> None:
    # no periodic full sync during the test: the second Service must arrive by a partial one
    with ProxyNode(topo, "nftables", full_sync_period=3600.0) as node:
        try:
            svc, eps = _web("two", FIRST_VIP, list(ENDPOINT_IPS[:2]))
            node.put("services", svc)
            node.put("endpointslices", eps)
            node.wait_programmed()
            assert node.component is not None
            metrics = node.component.metrics
            partial_before = metrics.sync_partial_duration.count
            assert sorted(set(http_get(topo.client, FIRST_VIP, 80, n=40))) == ["ep0", "ep1"]

            svc, eps = _web("three", SECOND_VIP, list(ENDPOINT_IPS))
            node.put("services", svc)
            node.put("endpointslices", eps)
            node.wait_programmed()
            assert metrics.sync_failures_total.value == 0, "a sync was refused by nft"
            assert metrics.sync_partial_duration.count > partial_before, "no partial sync ran"
            answers = collections.Counter(http_get(topo.client, SECOND_VIP, 80, n=150))
            assert set(answers) == {"ep0", "ep1", "ep2"}, answers
            # the first Service is untouched by the partial sync
            assert set(http_get(topo.client, FIRST_VIP, 80, n=20)) <= {"ep0", "ep1"}
        finally:
            node.cleanup_rules()
