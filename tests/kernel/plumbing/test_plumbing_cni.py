"""The CNI library for real: a node namespace with cni0 and pods attached by cni_add.

Every namespace is `pnt1-*` and removed by the fixture; the bridge and veths die with them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from podnet.agent.cni import BridgeConfig, CniError, cni_add, cni_check, cni_del
from podnet.agent.cni.bridge import host_local
from podnet.kernel import netns, sysctl
from podnet.kernel.links import Netlink

pytestmark = pytest.mark.root


@dataclass
class Node:
    name: str
    conf: BridgeConfig
    new_pod: Callable[[], str]  # returns the pod netns path

    def add(self, container_id: str, pod: str) -> str:
        with netns.enter(self.name):
            return cni_add(self.conf, container_id, pod).pod_ip

    def delete(self, container_id: str, pod: str | None) -> None:
        with netns.enter(self.name):
            cni_del(self.conf, container_id, pod)


@pytest.fixture
def node(new_netns: Callable[[], str], tmp_path: Path) -> Iterator[Node]:
    name = new_netns()
    conf = BridgeConfig(
        subnet="10.244.7.0/24",
        bridge="pt1cni0",
        mtu=1450,
        routes=("10.244.0.0/16",),
        data_dir=tmp_path / "networks",
    )
    yield Node(name, conf, lambda: str(netns.path(new_netns())))


def test_add_builds_bridge_veth_addresses_and_routes(node: Node) -> None:
    pod = node.new_pod()
    with netns.enter(node.name):
        result = cni_add(node.conf, "c1", pod)
    assert result.ips[0].address == "10.244.7.2/24"  # .1 is the gateway, skipped
    assert result.ips[0].gateway == "10.244.7.1"
    bridge_if, host_if, pod_if = result.interfaces
    assert (bridge_if.name, pod_if.name, pod_if.sandbox) == ("pt1cni0", "eth0", pod)
    assert host_if.name.startswith("veth") and len(host_if.name) == 12
    with Netlink(node.name) as host:
        bridge = host.require("pt1cni0")
        assert (bridge.kind, bridge.mtu) == ("bridge", 1450)
        assert [a.cidr for a in host.addresses("pt1cni0")] == ["10.244.7.1/24"]
        veth = host.require(host_if.name)
        assert veth.master == bridge.index and veth.up and veth.mtu == 1450
        assert host.hairpin(host_if.name)
    with Netlink(pod) as inside:
        eth0 = inside.require("eth0")
        assert eth0.up and eth0.mtu == 1450 and eth0.mac == pod_if.mac
        assert eth0.gso_max_segs == 65535  # the kernel's default unless asked (below)
        assert inside.require("lo").up
        assert [a.cidr for a in inside.addresses("eth0")] == ["10.244.7.2/24"]
        routes = {r.dst: r.gateway for r in inside.routes()}
        assert routes["0.0.0.0/0"] == "10.244.7.1"
        assert routes["10.244.0.0/16"] == "10.244.7.1"
    assert sysctl.read("net.ipv4.ip_forward", node.name) == "1"
    data = node.conf.store_dir
    assert (data / "10.244.7.2").read_bytes() == b"c1\r\neth0"
    assert (data / "last_reserved_ip.0").read_text() == "10.244.7.2"
    with netns.enter(node.name):
        cni_check(node.conf, "c1", pod)


def test_add_sets_the_pods_gso_max_segs_when_asked(node: Node) -> None:
    """The flannel udp backend's knob (subnet.env PODNET_GSO_MAX_SEGS): set on the pod's
    eth0 at creation, the host end keeps the default."""
    pod = node.new_pod()
    with netns.enter(node.name):
        result = cni_add(replace(node.conf, gso_max_segs=44), "c1", pod)
    with Netlink(pod) as inside:
        assert inside.require("eth0").gso_max_segs == 44
    with Netlink(node.name) as host:
        assert host.require(result.interfaces[1].name).gso_max_segs == 65535


def _listen(ns: str, kind: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("0.0.0.0", 7007))
        if kind == socket.SOCK_STREAM:
            s.listen()
        s.settimeout(5)
        return s

    return netns.call_in(ns, make)


def _client(ns: str, kind: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.settimeout(5)
        return s

    return netns.call_in(ns, make)


def test_two_pods_on_one_bridge_talk_icmp_tcp_udp(node: Node) -> None:
    pod_a, pod_b = node.new_pod(), node.new_pod()
    ip_a = node.add("pod-a", pod_a)
    ip_b = node.add("pod-b", pod_b)
    assert (ip_a, ip_b) == ("10.244.7.2", "10.244.7.3")

    ping = netns.run(["busybox", "ping", "-c", "1", "-W", "2", ip_b], pod_a)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    ping_gw = netns.run(["busybox", "ping", "-c", "1", "-W", "2", "10.244.7.1"], pod_b)
    assert ping_gw.returncode == 0, ping_gw.stdout + ping_gw.stderr

    server = _listen(pod_b, socket.SOCK_STREAM)
    client = _client(pod_a, socket.SOCK_STREAM)
    with server, client:
        client.connect((ip_b, 7007))
        conn, (peer_ip, _) = server.accept()
        with conn:
            client.sendall(b"hello over cni0")
            assert conn.recv(100) == b"hello over cni0"
            assert peer_ip == ip_a  # no NAT between pods on one node

    udp_server = _listen(pod_b, socket.SOCK_DGRAM)
    udp_client = _client(pod_a, socket.SOCK_DGRAM)
    with udp_server, udp_client:
        udp_client.sendto(b"datagram", (ip_b, 7007))
        payload, (source, _) = udp_server.recvfrom(100)
        assert (payload, source) == (b"datagram", ip_a)
        udp_server.sendto(b"reply", (ip_a, udp_client.getsockname()[1]))
        assert udp_client.recvfrom(100)[0] == b"reply"


def test_ipam_round_robin_survives_restart_and_never_reuses_live_addresses(node: Node) -> None:
    pods = [node.new_pod() for _ in range(3)]
    assert node.add("c0", pods[0]) == "10.244.7.2"
    assert node.add("c1", pods[1]) == "10.244.7.3"
    node.delete("c0", pods[0])
    # a "restarted agent": a brand-new config object over the same data dir
    restarted = Node(node.name, BridgeConfig(**_fields(node.conf)), node.new_pod)
    assert restarted.add("c2", pods[2]) == "10.244.7.4"  # round robin: .2 is not reused yet
    allocated = host_local(restarted.conf).allocated()
    assert {str(ip): owner for ip, owner in allocated.items()} == {
        "10.244.7.3": ("c1", "eth0"),
        "10.244.7.4": ("c2", "eth0"),
    }


def _fields(conf: BridgeConfig) -> dict[str, object]:
    return {name: getattr(conf, name) for name in conf.__dataclass_fields__}


def test_del_is_idempotent_and_releases_the_address(node: Node) -> None:
    pod = node.new_pod()
    node.add("c1", pod)
    node.delete("c1", pod)
    node.delete("c1", pod)
    node.delete("c1", None)
    assert host_local(node.conf).allocated() == {}
    with Netlink(pod) as inside:
        assert inside.link("eth0") is None
    with Netlink(node.name) as host:  # the veth went with eth0; the bridge stays
        assert [lk.kind for lk in host.links() if lk.name != "lo"] == ["bridge"]
    # DEL after the pod namespace itself is gone still succeeds
    pod2 = node.new_pod()
    node.add("c2", pod2)
    netns.delete(Path(pod2).name)
    node.delete("c2", pod2)
    assert host_local(node.conf).allocated() == {}


def test_second_add_for_same_interface_fails_and_leaks_nothing(node: Node) -> None:
    pod = node.new_pod()
    node.add("c1", pod)
    with pytest.raises(CniError, match="already exists"):
        node.add("c1", pod)
    assert len(host_local(node.conf).allocated()) == 1


def test_check_reports_what_is_missing(node: Node) -> None:
    pod = node.new_pod()
    node.add("c1", pod)
    with Netlink(pod) as inside:
        inside.delete_route("0.0.0.0/0")
    with netns.enter(node.name), pytest.raises(CniError) as info:
        cni_check(node.conf, "c1", pod)
    assert "route 0.0.0.0/0 via 10.244.7.1 is missing" in info.value.details
    with netns.enter(node.name), pytest.raises(CniError, match="no IP address is allocated"):
        cni_check(node.conf, "nobody", pod)


def test_bridge_with_a_different_gateway_is_refused(node: Node) -> None:
    with Netlink(node.name) as host:
        host.ensure_bridge("pt1cni0")
        host.ensure_address("pt1cni0", "10.244.9.1/24")
    with pytest.raises(CniError, match="already has an IP address different"):
        node.add("c1", node.new_pod())
    assert host_local(node.conf).allocated() == {}


def test_exhausted_range_says_so(node: Node, tmp_path: Path) -> None:
    small = BridgeConfig(
        subnet="10.244.8.0/29", bridge="pt1cni1", data_dir=tmp_path / "small"
    )  # .1 gateway, .2-.6 usable
    tiny = Node(node.name, small, node.new_pod)
    for i in range(5):
        tiny.add(f"c{i}", tiny.new_pod())
    with pytest.raises(
        CniError, match=r"no IP addresses available in range set: 10.244.8.1-10.244.8.6"
    ):
        tiny.add("c9", tiny.new_pod())


def test_concurrent_adds_on_a_fresh_node_all_succeed_with_distinct_addresses(node: Node) -> None:
    pods = [node.new_pod() for _ in range(6)]

    def add(i: int) -> str:
        return netns.call_in(node.name, lambda: cni_add(node.conf, f"c{i}", pods[i]).pod_ip)

    with ThreadPoolExecutor(max_workers=6) as pool:
        addresses = list(pool.map(add, range(6)))
    assert len(set(addresses)) == 6
    with Netlink(node.name) as host:
        bridge = host.require("pt1cni0")
        ports = [lk for lk in host.links() if lk.master == bridge.index]
        assert len(ports) == 6
