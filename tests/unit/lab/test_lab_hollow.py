"""`podnet up --hollow-nodes N`: the plan records N, the lab gets the unit `hollow` running
`podnet hollow` against the lab's server, and N is bounded by the lab's pod subnets: a lab of
more than 256 nodes gets a larger pod network, passed to its server and agents."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.lab.spec import LabError, LabSpec, agent_argv, plan_lab, server_argv
from podnet.lab.supervisor import HOLLOW, unit_argv, unit_labels, unit_log


def test_hollow_unit(tmp_path: Path) -> None:
    plan = plan_lab(LabSpec(name="h1", nodes=2, hollow_nodes=100, state_root=tmp_path), 7, 6443)
    assert plan.hollow_nodes == 100
    assert unit_labels(plan) == ["server", "agent-node1", "agent-node2", HOLLOW]
    argv = unit_argv(plan, HOLLOW, "/usr/bin/python3")
    assert argv == [
        "/usr/bin/python3", "-m", "podnet.cli.main", "hollow",
        "--kubeconfig", str(tmp_path / "h1" / "kubeconfig"), "--count", "100",
        "--node-lease-duration", "8",
    ]  # fmt: skip
    assert unit_log(plan, HOLLOW) == tmp_path / "h1" / "hollow.log"
    plain = plan_lab(LabSpec(name="h2", nodes=2, state_root=tmp_path), 8, 6444)
    assert HOLLOW not in unit_labels(plain)
    with pytest.raises(LabError, match="has no unit"):
        unit_argv(plain, HOLLOW, "python3")


def test_hollow_nodes_fit_the_pod_subnets() -> None:
    LabSpec(nodes=6, hollow_nodes=1018)
    with pytest.raises(LabError, match="--hollow-nodes must be 0-1022 with 2 nodes"):
        LabSpec(nodes=2, hollow_nodes=1023)


@pytest.mark.parametrize(
    ("nodes", "hollow", "cidr"),
    [
        (2, 0, "10.244.0.0/16"),
        (1, 255, "10.244.0.0/16"),
        (1, 256, "10.244.0.0/15"),
        (2, 510, "10.244.0.0/15"),
        (1, 1000, "10.244.0.0/14"),
        (24, 1000, "10.244.0.0/14"),
    ],
)
def test_the_pod_network_grows_only_past_256_nodes(nodes: int, hollow: int, cidr: str) -> None:
    assert LabSpec(nodes=nodes, hollow_nodes=hollow).cluster_cidr == cidr


def test_a_larger_pod_network_reaches_the_server_and_agents(tmp_path: Path) -> None:
    big = plan_lab(LabSpec(name="h3", nodes=1, hollow_nodes=1000, state_root=tmp_path), 9, 6445)
    assert big.cluster_cidr == "10.244.0.0/14"
    assert server_argv(big, "py")[-2:] == ["--cluster-cidr", "10.244.0.0/14"]
    assert agent_argv(big, big.nodes[0], "py")[-2:] == ["--cluster-cidr", "10.244.0.0/14"]
    # a lab of at most 256 nodes passes nothing: server and agents keep their default
    small = plan_lab(LabSpec(name="h4", nodes=2, hollow_nodes=254, state_root=tmp_path), 10, 6446)
    assert small.cluster_cidr == "10.244.0.0/16"
    assert "--cluster-cidr" not in server_argv(small, "py")
    assert "--cluster-cidr" not in agent_argv(small, small.nodes[0], "py")
    # a plan written before the field existed reads as the default
    raw = small.to_json().replace('  "cluster_cidr": "10.244.0.0/16",\n', "")
    assert "cluster_cidr" not in raw
    assert type(small).from_json(raw).cluster_cidr == "10.244.0.0/16"
