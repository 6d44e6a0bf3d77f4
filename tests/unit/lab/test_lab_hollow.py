"""`podnet up --hollow-nodes N`: the plan records N, the lab gets the unit `hollow` running
`podnet hollow` against the lab's server, and N is bounded by the lab's pod subnets."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.lab.spec import LabError, LabSpec, plan_lab
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
    LabSpec(nodes=6, hollow_nodes=250)
    with pytest.raises(LabError, match="--hollow-nodes must be 0-254 with 2 nodes"):
        LabSpec(nodes=2, hollow_nodes=255)
