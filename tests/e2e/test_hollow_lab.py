"""`podnet up --hollow-nodes N` past 256 nodes: a lab of one real node and 300 hollow ones comes
up on the larger pod network (10.244.0.0/15), node IPAM gives every node its own /24 of it, the
real node's agent runs on that network and its node stays Ready beside the hollow ones.

Marks: root + slow. The lab is always taken down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from pathlib import Path

import pytest

from podnet.api.client import HttpApi
from podnet.api.interface import Obj

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

HOLLOW = 300


def _ready(node: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or ()
    )


async def _nodes(kubeconfig: Path) -> list[Obj]:
    api = HttpApi.from_kubeconfig(kubeconfig)
    try:
        return list((await api.list("nodes"))["items"])
    finally:
        await api.close()


def test_a_lab_of_300_hollow_nodes_and_a_real_one(tmp_path: Path) -> None:
    from podnet.lab import Lab, LabSpec, down_lab

    name = f"hollow{secrets.token_hex(2)}"
    # Kubernetes' 40 s node grace (Leases renewed every 10 s), as benchmarks/scale.py: with the
    # lab's 8 s (renewals every 2 s) 300 hollow nodes write 150 Leases a second, and on a busy
    # 2-core machine some miss their grace, which is not what this test is about
    spec = LabSpec(
        name=name,
        nodes=1,
        hollow_nodes=HOLLOW,
        dns=False,
        state_root=tmp_path,
        node_grace_seconds=40.0,
    )
    assert spec.cluster_cidr == "10.244.0.0/15"
    lab = Lab.up(spec, merge_kubeconfig=False, timeout=180)
    try:
        network = ipaddress.ip_network("10.244.0.0/15")
        # the real node's agent was told the larger network: its flannel wrote it for CNI
        node1 = lab.plan.nodes[0]
        env = (Path(node1.run_dir) / "flannel" / "subnet.env").read_text()
        assert "FLANNEL_NETWORK=10.244.0.0/15" in env, env
        deadline = time.monotonic() + 60
        while True:  # node IPAM hands out the subnets as the nodes register
            nodes = asyncio.run(_nodes(lab.kubeconfig))
            if all((n.get("spec") or {}).get("podCIDR") for n in nodes):
                break
            assert time.monotonic() < deadline, "node IPAM: not every node has a podCIDR"
            time.sleep(0.5)
        assert len(nodes) == HOLLOW + 1
        cidrs = [ipaddress.ip_network(n["spec"]["podCIDR"]) for n in nodes]
        assert all(c.prefixlen == 24 and c.subnet_of(network) for c in cidrs), cidrs
        assert len(set(cidrs)) == len(cidrs)
        assert max(cidrs) >= ipaddress.ip_network("10.245.0.0/24")  # beyond the /16
        by_name = {n["metadata"]["name"]: n for n in nodes}
        own = ipaddress.ip_network(by_name["node1"]["spec"]["podCIDR"])
        assert f"FLANNEL_SUBNET={own[1]}/24" in env, env
        # the real node stays Ready among the hollow ones, over a Lease renewal of every node
        # (renewed every 10 s)
        for _ in range(3):
            time.sleep(4)
            nodes = asyncio.run(_nodes(lab.kubeconfig))
            ready = {n["metadata"]["name"] for n in nodes if _ready(n)}
            assert "node1" in ready
            assert len(ready) == HOLLOW + 1
    finally:
        down_lab(name, tmp_path)
