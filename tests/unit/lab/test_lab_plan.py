"""The lab planner: names, addresses and argv decided without touching the machine."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from podnet.kernel import names
from podnet.lab.spec import (
    LabError,
    LabPlan,
    LabSpec,
    agent_argv,
    pick_index,
    plan_lab,
    plan_node,
    prefixes_overlap,
    server_argv,
    with_new_node,
    without_node,
)
from podnet.lab.topology import forward_accept_rule, forward_policy_drops


def test_plan_names_every_object(tmp_path: Path) -> None:
    plan = plan_lab(LabSpec(name="t1demo", nodes=3, state_root=tmp_path), index=7, port=40123)
    assert (plan.subnet, plan.host_ip, plan.server_url) == (
        "172.31.7.0/24",
        "172.31.7.1",
        "https://172.31.7.1:40123",
    )
    assert plan.bridge == names.ifname("pnb", "t1demo") and len(plan.bridge) == 15
    assert [(n.name, n.netns, n.ip) for n in plan.nodes] == [
        ("node1", "podnet-t1demo-node1", "172.31.7.11"),
        ("node2", "podnet-t1demo-node2", "172.31.7.12"),
        ("node3", "podnet-t1demo-node3", "172.31.7.13"),
    ]
    node2 = plan.node("node2")
    assert node2.state_dir == str(tmp_path / "t1demo" / "nodes" / "node2")
    assert node2.run_dir == str(tmp_path / "t1demo" / "nodes" / "node2" / "run")
    assert len({n.host_veth for n in plan.nodes} | {plan.bridge}) == 4
    assert plan.host_links[-1] == plan.bridge  # veths first, the bridge last
    assert plan.netns_prefix == "podnet-t1demo-"
    assert plan.context == "podnet-t1demo"
    with pytest.raises(LabError, match="no node 'node9'"):
        plan.node("node9")


def test_plan_round_trips_through_its_record(tmp_path: Path) -> None:
    plan = plan_lab(LabSpec(name="t1rt", state_root=tmp_path), 3, 5000).with_user_kubeconfig(
        tmp_path / "kube"
    )
    assert LabPlan.from_json(plan.to_json()) == plan


def test_argv_of_server_and_agent(tmp_path: Path) -> None:
    plan = plan_lab(
        LabSpec(
            name="t1argv", nodes=1, backend="host-gw", proxy_mode="nftables", state_root=tmp_path
        ),
        2,
        6443,
    )
    state = str(tmp_path / "t1argv")
    assert server_argv(plan, "py") == [
        "py",
        "-m",
        "podnet.cli.main",
        "server",
        "--state-dir",
        state,
        "--listen",
        "127.0.0.1:6443,172.31.2.1:6443",
        "--advertise-address",
        "172.31.2.1",
        "--node-monitor-grace-period",
        "8.0",
        "--default-unreachable-toleration-seconds",
        "15.0",
    ]
    assert agent_argv(plan, plan.nodes[0], "py") == [
        "py",
        "-m",
        "podnet.cli.agent",
        "--netns",
        "podnet-t1argv-node1",
        "--kubeconfig",
        f"{state}/nodes/node1/kubeconfig",
        "--tls-cert-file",
        f"{state}/nodes/node1/kubelet.crt",
        "--tls-private-key-file",
        f"{state}/nodes/node1/kubelet.key",
        "--node-name",
        "node1",
        "--node-ip",
        "172.31.2.11",
        "--state-dir",
        f"{state}/nodes/node1",
        "--run-dir",
        f"{state}/nodes/node1/run",
        "--netns-prefix",
        "podnet-t1argv-node1-",
        "--backend",
        "host-gw",
        "--proxy-mode",
        "nftables",
        "--resolv-conf",
        f"{state}/resolv.conf",
        "--node-lease-duration",
        "8",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad_Name"}, "lab name 'Bad_Name' is not valid"),
        ({"name": "x" * 25}, "at most 24 characters"),
        ({"nodes": 0}, "--nodes must be between 1 and 200"),
        ({"backend": "ipip"}, "unknown backend 'ipip'; valid: vxlan, udp, host-gw"),
        ({"proxy_mode": "ebpf"}, "unknown proxy mode 'ebpf'; valid: userspace, iptables"),
    ],
)
def test_spec_rejects_bad_input_with_the_valid_choices(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(LabError, match=message):
        LabSpec(**kwargs)  # type: ignore[arg-type]


def test_index_choice_and_prefix_overlap() -> None:
    assert pick_index(set()) == 1
    assert pick_index({1, 2, 4}) == 3
    with pytest.raises(LabError, match="all 254 underlay subnets"):
        pick_index(set(range(1, 255)))
    assert prefixes_overlap("t1", "t1-a")
    assert prefixes_overlap("t1-a", "t1")
    assert not prefixes_overlap("t1a", "t1b")
    assert not prefixes_overlap("t1", "t10")  # podnet-t10- does not start with podnet-t1-


def test_forward_accept_rule_text_and_policy_detection(tmp_path: Path) -> None:
    plan = plan_lab(LabSpec(name="t1fw", nodes=1, state_root=tmp_path), 4, 4000)
    assert forward_accept_rule(plan) == (
        f"FORWARD -i {plan.bridge} -o {plan.bridge} "
        '-m comment --comment "podnet lab t1fw underlay" -j ACCEPT'
    )
    assert forward_policy_drops("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:120]\nCOMMIT\n")
    assert not forward_policy_drops("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
    assert not forward_policy_drops("")


def test_a_joining_node_takes_the_next_name_and_address() -> None:
    plan = plan_lab(LabSpec(name="grow", nodes=2, state_root=Path("/tmp/podnet-test")), 7, 40000)
    grown, node = with_new_node(plan)
    assert [n.name for n in grown.nodes] == ["node1", "node2", "node3"]
    assert (node.name, node.ip, node.netns) == ("node3", "172.31.7.13", "podnet-grow-node3")
    assert node.host_veth not in plan.host_links
    assert node == plan_node("grow", Path("/tmp/podnet-test/grow"), IPv4Network(plan.subnet), 3)
    assert with_new_node(grown)[1].name == "node4"


def test_a_removed_node_leaves_the_plan_and_its_name_is_taken_again() -> None:
    """`podnet remove-node` had no planner: a lab could grow but not shrink (`kubectl delete
    node` alone comes back, the agent registers the Node again)."""
    plan = plan_lab(LabSpec(name="grow", nodes=3, state_root=Path("/tmp/podnet-test")), 7, 40000)
    shrunk, node = without_node(plan, "node2")
    assert [n.name for n in shrunk.nodes] == ["node1", "node3"]
    assert node == plan.nodes[1] and node.host_veth not in shrunk.host_links
    assert with_new_node(shrunk)[1] == node  # add-node takes the free name and address again
    with pytest.raises(LabError, match="lab grow has no node 'node9'; nodes: node1, node2, node3"):
        without_node(plan, "node9")
    alone = plan_lab(LabSpec(name="one", nodes=1, state_root=Path("/tmp/podnet-test")), 7, 1)
    with pytest.raises(
        LabError, match="node1 is the only node of lab one; `podnet down --name one`"
    ):
        without_node(alone, "node1")
    vm = plan_lab(
        LabSpec(name="vm", nodes=2, vm_nodes=1, state_root=Path("/tmp/podnet-test")), 7, 1
    )
    assert [n.name for n in without_node(vm, "node2")[0].nodes] == ["node1"]
