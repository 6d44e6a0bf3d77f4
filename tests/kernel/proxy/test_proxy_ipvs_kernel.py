"""ipvs mode on this kernel, everything but IPVS itself for real: ipsets, the remaining
iptables rules with their jumps, ClusterIPs bound on `lo` (no dummy driver here), the access
filter they enforce together, and the cleanup. IPVS is `FakeIpvs` (this kernel has no
IP_VS), sysctls are recorded (net.ipv4.vs.* exists only with IP_VS)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.ipvs import SET_TYPES, parse_ipvsadm_save
from podnet.agent.proxy.modes import IpvsProxier, ProxyKernel
from podnet.agent.proxy.tracker import ProxyState
from podnet.kernel import netns
from podnet.kernel.conntrack import FakeConntrack
from podnet.kernel.ipvs import LOOPBACK_LABEL, FakeIpvs, IpsetRunner, IpvsRunner
from podnet.kernel.ipvs import ServiceAddressHolder as Holder
from podnet.kernel.links import Netlink
from podnet.kernel.rules import IptablesRunner, NftRunner, RuleLoadError
from podnet.testing.proxy import endpoint_slice, service

pytestmark = pytest.mark.root

CFG = ProxyConfig(cluster_cidr="10.244.0.0/16", service_cidr="10.96.0.0/16",
                  node_ips=("10.244.1.1",))  # fmt: skip
OTHER_PORT = 8081  # a host port that is not a service port


@pytest.fixture
def node(scratch_netns: str) -> str:
    return scratch_netns  # its deletion takes its ipsets, rules and addresses with it


def in_node(name: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def cluster(*services: tuple[str, str, list[str]]) -> ProxyState:
    state = ProxyState(node_name="test-node")
    for name, ip, ips in services:
        state.on_service(service("default", name, ip))
        state.on_slice(endpoint_slice("default", name, ips))
    state.apply()
    return state


def kernel(name: str, sysctls: dict[str, str | int]) -> ProxyKernel:
    def record(key: str, value: str | int, ns: str | None = None) -> None:
        sysctls[key] = value

    return ProxyKernel(name, IptablesRunner(name), NftRunner(name), FakeConntrack(), FakeIpvs(),
                       IpsetRunner(name), Holder(name), record)  # fmt: skip


def connect(name: str, ip: str, port: int) -> str:
    """'connected', 'refused' (REJECT answers at once) or 'timeout'."""

    def attempt() -> str:
        with socket.socket() as s:
            s.settimeout(1.0)
            try:
                s.connect((ip, port))
            except ConnectionRefusedError:
                return "refused"
            except TimeoutError:
                return "timeout"
            return "connected"

    return netns.call_in(name, attempt)


@contextlib.contextmanager
def listening(name: str, *ports: int) -> Iterator[None]:
    def open_all() -> list[socket.socket]:
        out = []
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(16)
            out.append(s)
        return out

    sockets = netns.call_in(name, open_all)
    try:
        yield
    finally:
        for s in sockets:
            s.close()


def test_sync_loads_sets_rules_and_addresses_that_work_together(node: str) -> None:
    sysctls: dict[str, str | int] = {}
    k = kernel(node, sysctls)
    proxier = IpvsProxier(CFG, k, kernel_release="6.18.0")
    proxier.sync_now(cluster(("web", "10.96.0.10", ["10.244.1.10"]),
                             ("db", "10.96.0.11", ["10.244.1.11"])), None)  # fmt: skip
    assert sysctls["net.ipv4.vs.conntrack"] == 1
    assert set(in_node(node, "ipset", "list", "-n").split()) == set(SET_TYPES)
    assert "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80" in in_node(node, "ipset", "save")
    saved = in_node(node, "iptables-save")
    jump = '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER'
    assert jump in saved
    assert "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN" in saved
    with Netlink(node) as nl:
        assert {a.cidr for a in nl.labelled_addresses(LOOPBACK_LABEL)} == {
            "10.96.0.10/32", "10.96.0.11/32"}  # fmt: skip
        assert nl.link("kube-ipvs0") is None  # this kernel has no dummy driver
    # the bound ClusterIP is local; KUBE-IPVS-FILTER refuses any port that is not a service
    # port (upstream issue #72236) and lets the service port through (IPVS would take it)
    with listening(node, 80, OTHER_PORT):
        assert connect(node, "10.96.0.10", 80) == "connected"
        assert connect(node, "10.96.0.10", OTHER_PORT) == "refused"
        assert connect(node, "127.0.0.1", OTHER_PORT) == "connected"  # not a service address

    # second sync, partial as the agent's: db is gone, web has a new endpoint; the ipset
    # lines are the difference (del/add), which the real ipset takes
    changed = frozenset({"default/web", "default/db"})
    proxier.sync_now(cluster(("web", "10.96.0.10", ["10.244.1.12"])), changed)
    sets = in_node(node, "ipset", "save")
    assert "10.96.0.11" not in sets and "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80" in sets
    with Netlink(node) as nl:
        assert {a.cidr for a in nl.labelled_addresses(LOOPBACK_LABEL)} == {"10.96.0.10/32"}
    (web,) = parse_ipvsadm_save(k.ipvs.save())
    assert [(r.address, r.port) for r in web.real_servers] == [("10.244.1.12", 80)]
    assert in_node(node, "iptables-save").count("-j KUBE-IPVS-FILTER") == 1  # no duplicates

    proxier.cleanup_now()
    assert in_node(node, "ipset", "list", "-n").split() == []
    assert "KUBE-" not in in_node(node, "iptables-save")
    with Netlink(node) as nl:
        assert nl.labelled_addresses(LOOPBACK_LABEL) == []
        assert {a.address for a in nl.addresses("lo")} == {"127.0.0.1"}  # lo's own stays


def test_ipset_errors_name_the_line(node: str) -> None:
    with pytest.raises(RuleLoadError) as caught:
        IpsetRunner(node).restore(
            "create PNIPVS-T hash:ip -exist\nadd PNIPVS-T 10.0.0.1\nadd PNIPVS-T not-an-ip\n"
        )
    assert caught.value.line == 3
    assert ">3: add PNIPVS-T not-an-ip" in str(caught.value)


def test_saved_ipsets_read_back_as_podnet_trace_reads_them(node: str) -> None:
    from podnet.agent.proxy.trace_iptables import parse_ipset_save

    IpsetRunner(node).restore(
        "create PNIPVS-C hash:ip,port family inet -exist\nadd PNIPVS-C 10.96.0.10,tcp:80\n"
        "create PNIPVS-N bitmap:port range 0-65535 -exist\nadd PNIPVS-N 30345\n"
    )
    sets = parse_ipset_save(IpsetRunner(node).save())
    assert (sets["PNIPVS-C"].type, sets["PNIPVS-C"].members) == (
        "hash:ip,port",
        frozenset({"10.96.0.10,tcp:80"}),
    )
    assert (sets["PNIPVS-N"].type, sets["PNIPVS-N"].members) == (
        "bitmap:port",
        frozenset({"30345"}),
    )
    IpsetRunner(node).destroy(["PNIPVS-C", "PNIPVS-N"])


def test_without_ip_vs_the_runner_says_so(node: str) -> None:
    runner = IpvsRunner(node)
    assert runner.available() is False
    with pytest.raises(RuleLoadError, match=r"ipvsadm -R rejected.*(Protocol not available|ipvs)"):
        runner.restore("-A -t 10.96.0.10:80 -s rr\n")
    # and the settings ipvs mode writes do not exist without it
    assert not netns.call_in(node, Path("/proc/sys/net/ipv4/vs/conntrack").exists)


def test_switching_to_and_from_ipvs_leaves_no_state_behind() -> None:
    """iptables -> ipvs -> ipvs (restart) -> nftables on one node, through the component.

    ipvs runs with `FakeIpvs` and a probe saying IP_VS is there; everything else is real.
    """
    from podnet.testing.proxy_lab import ENDPOINT_IPS, HTTP_PORT, ProxyNode, topology

    svc = service("default", "sw", "10.96.0.20", port=80, port_name="http")
    eps = endpoint_slice("default", "sw", list(ENDPOINT_IPS), port=HTTP_PORT, port_name="http")

    def ipvs_kernel() -> ProxyKernel:  # the component thread is inside the node already
        return ProxyKernel(ipvs=FakeIpvs(), sysctl=lambda key, value, ns=None: None)

    with topology() as topo:

        def state() -> str:
            return in_node(topo.node, "iptables-save") + in_node(topo.node, "ipset", "list", "-n")

        def service_addresses() -> set[str]:
            with Netlink(topo.node) as nl:
                return {a.address for a in nl.labelled_addresses(LOOPBACK_LABEL)}

        with ProxyNode(topo, "iptables") as node:
            node.put("services", svc)
            node.put("endpointslices", eps)
            node.wait_programmed()
            assert "KUBE-SVC-" in state()
        for _ in range(2):  # the second start is an agent restart in the same mode
            with ProxyNode(topo, "ipvs", ipvs_probe=lambda: True, kernel=ipvs_kernel()) as node:
                node.put("services", svc)
                node.put("endpointslices", eps)
                node.wait_programmed()
                now = state()
                assert "KUBE-SVC-" not in now and "KUBE-NODEPORTS" not in now, now
                assert "KUBE-IPVS-FILTER" in now and "KUBE-CLUSTER-IP" in now, now
                assert service_addresses() == {"10.96.0.20"}
        with ProxyNode(topo, "nftables") as node:
            node.put("services", svc)
            node.put("endpointslices", eps)
            node.wait_programmed()
            assert "KUBE-" not in state(), state()
            assert service_addresses() == set()
            node.cleanup_rules()
