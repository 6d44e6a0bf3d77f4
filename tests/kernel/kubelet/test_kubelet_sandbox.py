"""Pod sandboxes for real: netns + CNI inside a throwaway node namespace (root)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.agent.kubelet.sandbox import SandboxManager
from podnet.kernel import netns
from podnet.kernel.links import Netlink

pytestmark = pytest.mark.root

CIDR = "10.244.7.0/24"


@pytest.fixture
def node_ns() -> Iterator[str]:
    marker = f"pnt5-{secrets.token_hex(3)}-"
    name = f"{marker}node"
    netns.create(name)
    try:
        yield name
    finally:
        for leftover in netns.list_names(marker):
            netns.delete(leftover)


def manager(node: str, tmp_path: Path) -> SandboxManager:
    return SandboxManager(
        tmp_path / "state", tmp_path / "run", node.removesuffix("node"), "10.244.0.0/16"
    )


def test_sandboxes_get_addresses_survive_restart_and_are_released(
    node_ns: str, tmp_path: Path
) -> None:
    mgr = manager(node_ns, tmp_path)
    a = netns.call_in(node_ns, lambda: mgr.ensure("uid-a", "default", "a", CIDR))
    b = netns.call_in(node_ns, lambda: mgr.ensure("uid-b", "default", "b", CIDR))
    assert (a.pod_ip, b.pod_ip) == ("10.244.7.2", "10.244.7.3")
    assert a.mtu == 1500  # no subnet.env, no underlay eth0 in this bare node: Ethernet default
    assert netns.exists(a.netns) and a.netns.startswith(node_ns.removesuffix("node") + "pod-")
    with Netlink(a.netns_path) as pod_nl:
        eth0 = pod_nl.link("eth0")
        assert eth0 is not None and eth0.up
        assert any(r.is_default for r in pod_nl.routes())
    # the pods reach each other over the node's bridge
    ping = netns.run(["busybox", "ping", "-c1", "-W2", b.pod_ip], netns=a.netns)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    # an agent restart: a new manager on the same state adopts instead of re-running CNI
    again = manager(node_ns, tmp_path)
    assert netns.call_in(node_ns, lambda: again.ensure("uid-a", "default", "a", CIDR)) == a
    assert set(again.records()) == {"uid-a", "uid-b"}

    netns.call_in(node_ns, lambda: again.teardown("uid-a"))
    netns.call_in(node_ns, lambda: again.teardown("uid-a"))  # idempotent
    assert not netns.exists(a.netns) and set(again.records()) == {"uid-b"}
    # the released address is not reused at once (round robin), the next one is handed out
    c = netns.call_in(node_ns, lambda: again.ensure("uid-c", "default", "c", CIDR))
    assert c.pod_ip == "10.244.7.4"


def test_subnet_env_mtu_and_orphans(node_ns: str, tmp_path: Path) -> None:
    mgr = manager(node_ns, tmp_path)
    (tmp_path / "run" / "flannel").mkdir(parents=True)
    (tmp_path / "run" / "flannel" / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    rec = netns.call_in(node_ns, lambda: mgr.ensure("uid-m", "default", "m", CIDR))
    assert rec.mtu == 1450
    with Netlink(rec.netns_path) as pod_nl:
        eth0 = pod_nl.link("eth0")
        assert eth0 is not None and eth0.mtu == 1450 and eth0.gso_max_segs == 65535
    # the udp backend's subnet.env also sets the pods' gso_max_segs
    (tmp_path / "run" / "flannel" / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
        "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\nPODNET_GSO_MAX_SEGS=44\n"
    )
    udp = netns.call_in(node_ns, lambda: mgr.ensure("uid-u", "default", "u", CIDR))
    with Netlink(udp.netns_path) as pod_nl:
        eth0 = pod_nl.link("eth0")
        assert eth0 is not None and (eth0.mtu, eth0.gso_max_segs) == (1472, 44)
    # a crash after the netns was made but before the sandbox was recorded
    crashed = netns.call_in(node_ns, lambda: mgr.ensure("uid-crashed", "default", "c", CIDR))
    (tmp_path / "state" / "kubelet" / "sandboxes" / "uid-crashed.json").unlink()
    # another node's sandbox in the shared /run/netns, with the same lab marker: not ours
    foreign = mgr.netns_name("uid-on-another-node")
    netns.create(foreign)
    assert mgr.orphan_netns({"uid-m": None}) == [crashed.netns]
    mgr.delete_netns(crashed.netns)
    assert not netns.exists(crashed.netns) and netns.exists(foreign)
    assert mgr.orphan_netns({"uid-m": None}) == []
