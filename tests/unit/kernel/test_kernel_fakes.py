"""FakeNetlink refuses what the kernel refuses; netns and sysctl validate their inputs."""

from __future__ import annotations

import socket

import pytest

from podnet.kernel import netns, sysctl
from podnet.kernel.conntrack import FakeConntrack, Flow
from podnet.kernel.links import FakeNetlink, LinkError, normalize_cidr


def test_fake_netlink_bridge_veth_master_and_routes() -> None:
    nl = FakeNetlink()
    bridge = nl.ensure_bridge("cni0", mtu=1450)
    assert (bridge.kind, bridge.mtu, bridge.up) == ("bridge", 1450, True)
    nl.create_veth("vethabc", "eth0", peer_netns="/run/netns/pod")
    nl.set_master("vethabc", "cni0")
    nl.set_hairpin("vethabc")
    assert nl.require("vethabc").master == bridge.index
    assert nl.hairpin("vethabc")
    assert nl.ensure_address("cni0", "10.244.1.1/24") is True
    assert nl.ensure_address("cni0", "10.244.1.1/24") is False
    nl.replace_route("10.244.2.0/24", gateway="10.244.2.0", dev="cni0", onlink=True)
    nl.replace_route("10.244.2.0/24", gateway="172.31.1.12", dev="cni0")
    assert [(r.dst, r.gateway) for r in nl.routes()] == [("10.244.2.0/24", "172.31.1.12")]
    assert nl.delete_link("cni0")
    assert nl.routes() == []


def test_fake_netlink_refuses_duplicates_and_non_bridge_masters() -> None:
    nl = FakeNetlink()
    nl.create_veth("a", "b")
    with pytest.raises(LinkError, match="already exists"):
        nl.create_veth("a", "c")
    with pytest.raises(LinkError, match="not a bridge"):
        nl.set_master("a", "b")
    with pytest.raises(LinkError, match="not a bridge port"):
        nl.set_hairpin("a")
    assert nl.delete_link("a") and nl.link("b") is None  # a veth takes its peer along
    with pytest.raises(LinkError, match="too big gso_max_segs"):
        nl.create_veth("a", "b", peer_gso_max_segs=65536)
    nl.create_veth("a", "b", peer_gso_max_segs=44)
    assert (nl.require("b").gso_max_segs, nl.require("a").gso_max_segs) == (44, None)


def test_normalize_cidr() -> None:
    assert normalize_cidr("default") == "0.0.0.0/0"
    assert normalize_cidr("10.244.1.7/24") == "10.244.1.0/24"
    with pytest.raises(LinkError, match="not an IPv4 network"):
        normalize_cidr("10.244/99")


@pytest.mark.parametrize("bad", ["", "..", "-x", "x" * 256, "a b"])
def test_netns_names_are_validated(bad: str) -> None:
    with pytest.raises(netns.NetnsError, match="invalid network namespace name"):
        netns.path(bad)


def test_netns_path_accepts_paths_like_cni_netns() -> None:
    assert str(netns.path("/proc/1/ns/net")) == "/proc/1/ns/net"
    assert str(netns.path("podnet-lab-node1")) == "/run/netns/podnet-lab-node1"


def test_sysctl_keys_map_to_proc_sys() -> None:
    assert str(sysctl.key_path("net.ipv4.conf.cni0.route_localnet")) == (
        "/proc/sys/net/ipv4/conf/cni0/route_localnet"
    )
    with pytest.raises(sysctl.SysctlError):
        sysctl.key_path("net..ipv4")


def test_sysctl_interface_keys_keep_dots_in_interface_names() -> None:
    key = sysctl.interface_key("flannel.1", "accept_ra", family="ipv6")
    assert key == "net/ipv6/conf/flannel.1/accept_ra"
    assert str(sysctl.key_path(key)) == "/proc/sys/net/ipv6/conf/flannel.1/accept_ra"
    assert sysctl.interface_key("cni0", "arp_notify") == "net/ipv4/conf/cni0/arp_notify"


@pytest.mark.parametrize("key", ["net/ipv4/../../etc", "net/./ipv4", "/net/ipv4", "net.ipv4."])
def test_sysctl_keys_never_leave_proc_sys(key: str) -> None:
    with pytest.raises(sysctl.SysctlError, match="invalid sysctl key"):
        sysctl.key_path(key)


@pytest.mark.parametrize("ifname", ["", ".", "..", "a/b", "a b", "x" * 16, "eth\x000"])
def test_sysctl_interface_names_are_validated(ifname: str) -> None:
    with pytest.raises(sysctl.SysctlError, match="invalid interface name"):
        sysctl.interface_key(ifname, "forwarding")


def test_fake_conntrack_deletes_by_destination_and_nat_target() -> None:
    def flow(dst: str, reply_src: str) -> Flow:
        return Flow(
            socket.IPPROTO_UDP, "10.244.1.5", dst, 4000, 53, reply_src, "10.244.1.5", 53, 4000
        )

    fake = FakeConntrack([flow("10.96.0.10", "10.244.2.7"), flow("10.96.0.11", "10.244.2.8")])
    assert fake.delete_by_nat_destination("10.244.2.7") == 1
    assert fake.delete_by_destination("10.96.0.11", port=53) == 1
    assert fake.table == [] and len(fake.deleted) == 2
