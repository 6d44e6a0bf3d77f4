"""The upstream Netpol matrix without a cluster: for every case and step, the verdict
(`PolicyView.verdict`) and a walk of the first packet through the rendered tables of the
source's and the destination's nodes must both give the hand-written truth table. Then the
walk and the verdict must agree on packets the matrix does not probe (addresses outside
the cluster, the node itself, other ports and protocols), and element-diff transactions
must leave the same table as a full one."""

from __future__ import annotations

import itertools

import pytest

from podnet.agent.policy.model import PolicyView, build_view
from podnet.agent.policy.nftables import PolicyConfig, PolicyTable, render_policy_table
from podnet.agent.policy.trace import Packet, walk_policy_chain, walk_policy_table
from podnet.agent.proxy.trace_nftables import NftModel, consistency_errors
from podnet.testing.netpol import CASES, PODS, Case, World

NODE_ADDRESSES = {"node-1": ("172.31.9.11", "10.244.1.1"), "node-2": ("172.31.9.12", "10.244.2.1")}


def model_of(*transactions: str) -> NftModel:
    model = NftModel(table="inet podnet-policy")
    for tx in transactions:
        model.apply(tx)
    errors = consistency_errors(model)
    assert not errors, "\n".join(errors) + "\n" + "".join(transactions)
    return model


def view_of(world: World) -> PolicyView:
    return build_view(world.pods.values(), world.namespaces.values(), world.policies)


def tables_of(world: World, view: PolicyView) -> dict[str, PolicyTable]:
    return {node: render_policy_table(view, node, PolicyConfig()) for node in world.nodes}


def passes(
    models: dict[str, NftModel], packet: tuple[str, str, str, int], nodes: tuple[str | None, ...]
) -> bool:
    """The packet (src, dst, protocol, port) leaves through the source node's postrouting
    hook, then (another node) through the destination node's; both must accept it."""
    src, dst, protocol, port = packet
    for node in dict.fromkeys(n for n in nodes if n is not None):
        packet = Packet(src, dst, protocol, port, local=frozenset(NODE_ADDRESSES[node]))
        if walk_policy_table(models[node], packet).verdict != "accept":
            return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matrix_of_every_case(case: Case) -> None:
    world = World()
    for number, step in enumerate(case.steps, 1):
        world.step(step)
        view = view_of(world)
        tables = tables_of(world, view)
        models = {node: model_of(table.script()) for node, table in tables.items()}
        ips = world.ips
        for probe, expected_of in step.expected.items():
            expected = expected_of()
            protocol = probe.protocol.lower()
            verdicts = {
                s: {d: view.verdict(ips[s], ips[d], protocol, probe.port).allowed for d in PODS}
                for s in PODS
            }
            walked = {
                s: {
                    d: passes(
                        models,
                        (ips[s], ips[d], protocol, probe.port),
                        (world.node_of(s), world.node_of(d)),
                    )
                    for d in PODS
                }
                for s in PODS
            }
            where = f"{case.name} step {number} probe {probe}"
            assert not expected.mismatches(verdicts), (
                f"{where}: the verdict disagrees with the truth table\n"
                + expected.side_by_side(verdicts)
            )
            assert not expected.mismatches(walked), (
                f"{where}: the rendered rules disagree with the truth table\n"
                + expected.side_by_side(walked)
                + "\n"
                + "".join(t.script() for t in tables.values())
            )


OUTSIDE = ("192.0.2.7", "10.0.0.1", "172.31.9.11", "172.31.9.12", "10.244.1.1")


def test_walk_agrees_with_the_verdict_beyond_the_matrix() -> None:
    world = World()
    for case in CASES:
        for step in case.steps:
            world.step(step)
    view = view_of(world)
    models = {node: model_of(t.script()) for node, t in tables_of(world, view).items()}
    ips = world.ips
    addresses = [*ips.values(), *OUTSIDE]
    checked = 0
    for src, dst in itertools.product(addresses, addresses):
        src_pod, dst_pod = view.by_ip.get(src), view.by_ip.get(dst)
        if dst_pod is None and src_pod is None:
            continue  # neither side is judged by any node
        for protocol, port in (("tcp", 80), ("tcp", 81), ("tcp", 85), ("udp", 80), ("udp", 53),
                               ("icmp", 0), ("sctp", 80)):  # fmt: skip
            from_dst_node = dst_pod is not None and src in NODE_ADDRESSES[dst_pod.node]
            want = view.verdict(src, dst, protocol, port, from_dst_node=from_dst_node).allowed
            got = passes(
                models,
                (src, dst, protocol, port),
                (src_pod.node if src_pod else None, dst_pod.node if dst_pod else None),
            )
            assert got == want, f"{src} -> {dst} {protocol}/{port}: walk {got}, verdict {want}"
            checked += 1
    assert checked > 1000


def test_replies_and_established_connections_always_pass() -> None:
    world = World()
    world.step(CASES[2].steps[0])  # deny-all in x
    view = view_of(world)
    model = model_of(render_policy_table(view, "node-1", PolicyConfig()).script())
    xa = world.ips["x/a"]
    assert walk_policy_table(model, Packet("192.0.2.7", xa)).verdict == "drop"
    assert walk_policy_table(model, Packet("192.0.2.7", xa, established=True)).verdict == "accept"
    assert walk_policy_table(model, Packet(xa, "192.0.2.7", established=True)).verdict == "accept"


def test_drops_are_counted_per_pod_and_direction_and_logged_when_enabled() -> None:
    world = World()
    world.step(CASES[2].steps[0])
    view = view_of(world)
    table = render_policy_table(view, "node-1", PolicyConfig(log=True))
    model = model_of(table.script())
    xa = world.ips["x/a"]
    walk = walk_policy_table(model, Packet("192.0.2.7", xa))
    assert [table.counters[c] for c in walk.counters] == [("x/a", "ingress")]
    assert walk.logged == ["podnet-policy ingress "]
    walk = walk_policy_table(model, Packet(xa, "192.0.2.7", "udp", 53))
    assert [table.counters[c] for c in walk.counters] == [("x/a", "egress")]
    quiet = model_of(render_policy_table(view, "node-1", PolicyConfig()).script())
    assert walk_policy_table(quiet, Packet("192.0.2.7", xa)).logged == []


def test_element_diffs_give_the_table_a_full_render_gives() -> None:
    world = World()
    tables = [tables_of(world, view_of(world))]
    for case in CASES:
        for step in case.steps:
            world.step(step)
            tables.append(tables_of(world, view_of(world)))
    from podnet.agent.policy.nftables import PolicyPlanner

    for node in world.nodes:
        planner = PolicyPlanner()
        model = NftModel(table="inet podnet-policy")
        for i, by_node in enumerate(tables):
            table = by_node[node]
            text, full = planner.transaction(table)
            assert full == (i == 0), text
            model.apply(text)
            planner.committed(table)
            assert not consistency_errors(model)
            fresh = model_of(table.script())
            assert (model.chains, model.sets, model.counters) == (
                fresh.chains,
                fresh.sets,
                fresh.counters,
            ), text


GATEWAY = {node: addresses[1] for node, addresses in NODE_ADDRESSES.items()}
POD_NETWORK = "10.244.0.0/16"


def through_userspace_proxy(
    world: World, view: PolicyView, models: dict[str, NftModel], probe: tuple[str, str, str, int]
) -> bool:
    """src → dst's ClusterIP with the userspace proxy: the client's packet in prerouting and
    input of its node, the proxy's own check (the verdict), then the proxy's dial — from the
    client node's pod gateway — on the destination's node."""
    src, dst, protocol, port = probe
    ips = world.ips
    here, there = world.node_of(src), world.node_of(dst)
    to_vip = Packet(ips[src], world.cluster_ips[dst], protocol, port)
    to_proxy = Packet(
        ips[src], GATEWAY[here], protocol, 40000, dnat=True, local=frozenset(NODE_ADDRESSES[here])
    )
    dial = Packet(GATEWAY[here], ips[dst], protocol, port, local=frozenset(NODE_ADDRESSES[there]))
    legs = [(here, "prerouting", to_vip), (here, "input", to_proxy), (there, "postrouting", dial)]
    return (
        all(
            walk_policy_table(models[node], packet, hook).verdict == "accept"
            for node, hook, packet in legs
        )
        and view.verdict(ips[src], ips[dst], protocol, port).allowed
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matrix_with_the_userspace_proxy(case: Case) -> None:
    """The client's first packet to the ClusterIP meets `proxied-denied` in prerouting on its
    own node; the proxy then dials from the node (SNAT to the node's pod gateway), which the
    destination's node lets in as already judged."""
    world = World()
    for step in case.steps:
        world.step(step)
        view = view_of(world)
        models = {
            node: model_of(
                render_policy_table(
                    view,
                    node,
                    PolicyConfig(
                        userspace_proxy=True, gateway=GATEWAY[node], pod_network=POD_NETWORK
                    ),
                    proxy_sources=[ip for n, ip in GATEWAY.items() if n != node],
                    services=world.service_backends(),
                ).script()
            )
            for node in world.nodes
        }
        for probe, expected_of in step.expected.items():
            protocol = probe.protocol.lower()
            got = {
                s: {
                    d: through_userspace_proxy(world, view, models, (s, d, protocol, probe.port))
                    for d in PODS
                }
                for s in PODS
            }
            expected = expected_of()
            assert not expected.mismatches(got), (
                f"{case.name} {probe} (userspace)\n" + expected.side_by_side(got)
            )


def test_proxied_dials_leave_from_the_pod_gateway_only_towards_pods() -> None:
    """The userspace proxy's dials (its mark) take the node's pod gateway as source only into
    the pod network: an endpoint outside it (the `kubernetes` Service's API server on the
    host address) has no route back to a pod gateway, so its dial keeps the node's address."""
    world = World()
    view = view_of(world)
    cfg = PolicyConfig(userspace_proxy=True, gateway=GATEWAY["node-1"], pod_network=POD_NETWORK)
    model = model_of(render_policy_table(view, "node-1", cfg).script())
    node_ip, gateway = NODE_ADDRESSES["node-1"]
    to_pod = Packet(node_ip, world.ips[PODS[0]], mark=cfg.mark)
    to_host = Packet(node_ip, "172.31.9.1", port=443, mark=cfg.mark)
    unmarked = Packet(node_ip, world.ips[PODS[0]])
    assert walk_policy_chain(model, to_pod, "proxy-source").snat == gateway
    assert walk_policy_chain(model, to_host, "proxy-source").snat is None
    assert walk_policy_chain(model, unmarked, "proxy-source").snat is None
