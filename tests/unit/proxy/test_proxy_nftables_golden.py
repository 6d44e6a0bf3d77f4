"""Golden text for the nftables renderer, upstream's verbatim shapes for services that keep
per-service chains, and partial syncs (element diffs) checked against a full re-render."""

from __future__ import annotations

from pathlib import Path

from podnet.agent.proxy.nftables import NftablesPlanner, render_fragments, render_nftables
from podnet.agent.proxy.trace_nftables import NftModel, consistency_errors, trace_nftables
from podnet.agent.proxy.tracker import ProxyState
from podnet.testing.proxy import (
    FIXTURE_CONFIG,
    assert_nftables_golden,
    endpoint_slice,
    service,
    upstream_fixture,
)

GOLDEN = Path(__file__).parent / "golden"


def _full(state: ProxyState) -> str:
    return render_nftables(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)


def test_overall_transaction() -> None:
    assert_nftables_golden(GOLDEN / "nftables_overall.nft", [_full(upstream_fixture())])


def test_affinity_service_keeps_upstreams_exact_chains_and_sets() -> None:
    text = _full(upstream_fixture())
    upstream = """\
add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip daddr 172.30.0.45 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 goto service-HVFWP5L3-ns5/svc5/tcp/p80
add chain ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
"""  # noqa: E501
    lines = set(text.splitlines())
    missing = [line for line in upstream.splitlines() if line not in lines]
    assert not missing, "\n".join(missing) + "\nfull result:\n" + text


def _model(*transactions: str) -> NftModel:
    model = NftModel()
    for tx in transactions:
        model.apply(tx)
    assert not consistency_errors(model), consistency_errors(model)
    return model


def _without_pick_chains(model: NftModel) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    # lb-*-N chains of counts no longer used linger until the next full sync, by design
    chains = {c: r for c, r in model.chains.items() if not c.startswith("lb-")}
    return chains, model.sets


def _sync(planner: NftablesPlanner, state: ProxyState, changed: frozenset[str] | None) -> str:
    frags = render_fragments(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
    if changed is None:
        tx = planner.full(frags)
        planner.committed(frags)
    else:
        tx = planner.partial(frags, changed)
        planner.committed_partial(frags, changed)
    return tx


def test_partial_sync_of_endpoint_change_is_only_element_diffs() -> None:
    state = upstream_fixture()
    planner = NftablesPlanner(FIXTURE_CONFIG)
    first = _sync(planner, state, None)
    state.on_slice(endpoint_slice("ns4", "svc4", ["10.180.0.4", "10.180.0.6"]))
    tx = _sync(planner, state, state.apply().updated_services)
    assert (
        tx
        == """\
delete element ip kube-proxy hairpin-endpoints {
\t10.180.0.5 . 10.180.0.5
}
delete element ip kube-proxy service-endpoints-tcp {
\t172.30.0.44 . 80 . 1,
\t192.168.99.33 . 80 . 1
}
add element ip kube-proxy hairpin-endpoints {
\t10.180.0.6 . 10.180.0.6
}
add element ip kube-proxy service-endpoints-tcp {
\t172.30.0.44 . 80 . 1 : 10.180.0.6 . 80,
\t192.168.99.33 . 80 . 1 : 10.180.0.6 . 80
}
"""
    ), tx
    assert _without_pick_chains(_model(first, tx)) == _without_pick_chains(_model(_full(state)))


def test_partial_sync_creating_a_new_pick_chain_renders_it_like_a_full_sync() -> None:
    # Regression: nft 1.0.6 refused `lb-cluster-N` rules added to an existing table when they
    # read a map keyed by the generic `meta l4proto . th dport` ("conflicting protocols
    # specified: tcp vs. th"). The rules now pin the protocol per map, in both sync kinds.
    state = upstream_fixture()
    planner = NftablesPlanner(FIXTURE_CONFIG)
    first = _sync(planner, state, None)
    assert "lb-cluster-3" not in first
    state.on_service(service("ns8", "svc8", "172.30.0.48"))
    state.on_slice(endpoint_slice("ns8", "svc8", ["10.180.0.7", "10.180.0.8", "10.180.0.9"]))
    tx = _sync(planner, state, state.apply().updated_services)
    golden = GOLDEN / "nftables_partial_new_pick_chain.nft"
    assert tx == golden.read_text(), f"partial sync differs from {golden}:\n{tx}"
    full_lines = set(_full(state).splitlines())
    pick_rules = [line for line in tx.splitlines() if line.startswith("add rule")]
    assert len(pick_rules) == 3 * 4  # lb-cluster/external/nodeport-3: masquerade + 3 dnat
    assert all(line in full_lines for line in pick_rules), tx
    assert " th dport " not in "\n".join(r for r in pick_rules if " dnat " in r)
    assert _without_pick_chains(_model(first, tx)) == _without_pick_chains(_model(_full(state)))


def test_partial_syncs_match_a_full_render_of_the_final_state() -> None:
    state = upstream_fixture()
    planner = NftablesPlanner(FIXTURE_CONFIG)
    applied = [_sync(planner, state, None)]
    steps = [
        lambda: state.on_service(service("ns5", "svc5", "172.30.0.45"), deleted=True),
        lambda: state.on_slice(
            endpoint_slice("ns6", "svc6", ["10.180.0.7", "10.180.0.8", "10.180.0.9"])
        ),
        lambda: state.on_slice(endpoint_slice("ns1", "svc1", []), deleted=True),
        lambda: state.on_service(service("ns7", "svc7", "172.30.0.47", sessionAffinity="ClientIP")),
        lambda: state.on_slice(endpoint_slice("ns7", "svc7", ["10.180.0.1", "10.180.0.2"])),
        lambda: state.on_slice(endpoint_slice("ns4", "svc4", ["10.180.0.4"])),
    ]
    for step in steps:
        step()
        applied.append(_sync(planner, state, state.apply().updated_services))
        assert _without_pick_chains(_model(*applied)) == _without_pick_chains(_model(_full(state)))
    assert "delete chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80" in applied[1]
    assert (
        "delete set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80" in applied[1]
    )


def test_later_full_sync_flushes_instead_of_deleting_the_table() -> None:
    state = upstream_fixture()
    planner = NftablesPlanner(FIXTURE_CONFIG)
    first = _sync(planner, state, None)
    assert "delete table ip kube-proxy" in first
    state.on_service(service("ns5", "svc5", "172.30.0.45"), deleted=True)
    state.apply()
    second = _sync(planner, state, None)
    assert "delete table" not in second
    assert "flush map ip kube-proxy service-ips" in second
    assert "delete chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80" in second
    assert _without_pick_chains(_model(first, second)) == _without_pick_chains(_model(_full(state)))


def test_pick_chains_read_the_map_of_the_packets_protocol() -> None:
    # same address and port for a TCP and a UDP service port: each protocol finds its own map
    state = ProxyState(node_name="test-node")
    state.on_service(
        service(
            "ns9",
            "dns",
            "172.30.0.53",
            port=53,
            port_name="dns-udp",
            protocol="UDP",
            type="NodePort",
            nodePort=3053,
        )
    )
    state.on_slice(
        endpoint_slice(
            "ns9",
            "dns",
            ["10.180.0.8", "10.180.0.9"],
            port=5353,
            port_name="dns-udp",
            protocol="UDP",
        )
    )
    state.apply()
    model = _model(_full(state))
    assert model.sets["service-endpoints-udp"] == {
        "172.30.0.53 . 53 . 0": "10.180.0.8 . 5353",
        "172.30.0.53 . 53 . 1": "10.180.0.9 . 5353",
    }
    assert not model.sets["service-endpoints-tcp"]
    udp = trace_nftables(model, "10.0.0.2", "172.30.0.53", 53, proto="udp")
    assert udp.dnat == ["10.180.0.8:5353", "10.180.0.9:5353"]
    nodeport = trace_nftables(
        model, "10.0.0.2", "192.168.0.2", 3053, proto="udp", node_ips=["192.168.0.2"]
    )
    assert nodeport.dnat == ["10.180.0.8:5353", "10.180.0.9:5353"]
    assert trace_nftables(model, "10.0.0.2", "172.30.0.53", 53, proto="tcp").dnat == []
