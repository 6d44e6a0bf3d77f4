"""The kernel's own listing of podnet's tables walks like the text podnet rendered.

`podnet trace` reads live rules with `nft -a list ruleset`, which prints rules in nft's
spelling, not the renderer's. Here the upstream fixture's kube-proxy table and a NetworkPolicy
table are loaded into a throwaway namespace, listed back, parsed (`podnet.trace.listing`) and
walked; every flow of the proxy's packet-walk table must get the same verdict as the rendered
model gives, and every rule must carry the handle the kernel's trace events name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.agent.proxy.nftables import render_nftables
from podnet.agent.proxy.trace_nftables import NftModel, trace_nftables
from podnet.kernel.rules import NftRunner
from podnet.testing.proxy import FIXTURE_CONFIG, upstream_fixture
from podnet.trace.listing import parse_listing, table_model

NODE_IPS = ["192.168.0.2"]

pytestmark = pytest.mark.root


def test_listed_kube_proxy_table_walks_like_the_rendered_one(scratch_netns: str) -> None:
    state = upstream_fixture()
    text = render_nftables(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
    rendered = NftModel()
    rendered.apply(text)
    nft = NftRunner(scratch_netns)
    nft.apply(text)
    tables = {t.key: t for t in parse_listing(nft.list_ruleset())}
    listed = tables["ip kube-proxy"]
    model = table_model(listed)
    assert set(model.chains) == set(rendered.chains)
    assert model.hooks == rendered.hooks
    assert {k: set(v) for k, v in model.sets.items()} == {
        k: set(v) for k, v in rendered.sets.items()
    }
    for chain in listed.chains.values():
        assert all(handle > 0 for _, handle in chain.rules), chain
    # every service address, NodePort and service without endpoints, from a pod and from
    # outside the cluster
    keys = [*rendered.sets["service-ips"], *rendered.sets["no-endpoint-services"]]
    flows = [(ip, proto, int(port)) for ip, proto, port in (k.split(" . ") for k in keys)]
    flows += [
        (NODE_IPS[0], proto, int(port))
        for proto, port in (k.split(" . ") for k in rendered.sets["service-nodeports"])
    ]
    assert len(flows) > 5
    for dst, proto, port in flows:
        for src in ("10.0.0.2", "203.0.113.9"):
            want = trace_nftables(rendered, src, dst, port, proto, node_ips=NODE_IPS)
            got = trace_nftables(model, src, dst, port, proto, node_ips=NODE_IPS)
            assert (str(got), got.masquerade) == (str(want), want.masquerade), (src, dst, port)


def test_the_probe_table_loads_and_goes(scratch_netns: str) -> None:
    """The golden probe table (raw payload matches on the overlay's inner header included)
    is accepted by this kernel's nft, and deleting it leaves the namespace empty."""
    golden = (
        Path(__file__).parents[2] / "unit/trace/golden/verify-table--vxlan-iptables-clusterip.nft"
    )
    first = golden.read_text().split("# ")[1]  # one namespace's script
    script = first.split("\n", 1)[1]
    nft = NftRunner(scratch_netns)
    nft.apply(script)
    listed = {t.key for t in parse_listing(nft.list_ruleset())}
    assert listed == {"ip podnet-trace-test"}
    nft.delete_table("ip", "podnet-trace-test")
    assert parse_listing(nft.list_ruleset()) == []
