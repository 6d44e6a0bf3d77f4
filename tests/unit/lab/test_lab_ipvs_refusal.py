"""`podnet proxy-mode ipvs` and `podnet up --proxy-mode ipvs` on a kernel without IP_VS are
refused before anything is stopped or built: the namespace nodes share this machine's kernel,
and their agents would stop at start (`IpvsUnavailable`), every node NotReady. VM nodes boot a
kernel of their own; --proxy-fallback runs iptables instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.lab import lab as labmod
from podnet.lab.lab import Lab, refuse_ipvs_here
from podnet.lab.spec import LabError, LabSpec, plan_lab


def test_ipvs_is_refused_where_namespace_nodes_lack_it(tmp_path: Path) -> None:
    nodes = plan_lab(LabSpec(name="tiv", nodes=3, vm_nodes=1, state_root=tmp_path), 3, 4).nodes
    with pytest.raises(LabError) as refused:
        refuse_ipvs_here(nodes, "ipvs", False, available=lambda: False)
    message = str(refused.value)
    assert "this machine's kernel, which node1, node2 run on, has none" in message
    assert "--proxy-fallback" in message and "--vm-nodes" in message
    refuse_ipvs_here(nodes, "ipvs", True, available=lambda: False)  # falls back to iptables
    refuse_ipvs_here(nodes, "ipvs", False, available=lambda: True)
    refuse_ipvs_here(nodes, "nftables", False, available=lambda: False)
    vm_only = plan_lab(LabSpec(name="tiw", nodes=2, vm_nodes=2, state_root=tmp_path), 3, 4)
    refuse_ipvs_here(vm_only.nodes, "ipvs", False, available=lambda: False)


def test_proxy_mode_ipvs_stops_no_agent_where_it_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal comes before the lab is touched: here a lab without a running server,
    which would otherwise be the error."""
    monkeypatch.setattr(labmod, "IPVS_PROC_FILE", tmp_path / "no-ip_vs")
    lab = Lab(plan_lab(LabSpec(name="tix", nodes=2, state_root=tmp_path), 3, 40000))
    with pytest.raises(LabError, match="proxy mode 'ipvs' needs the kernel's IP Virtual"):
        lab.restart_agents(proxy_mode="ipvs")
    with pytest.raises(LabError, match="API server of lab 'tix' is not running"):
        lab.restart_agents(proxy_mode="ipvs", proxy_fallback=True)
