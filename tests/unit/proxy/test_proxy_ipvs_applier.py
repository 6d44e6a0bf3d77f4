"""ipvs mode applied through fake kernel doors: order of one sync, the reconcile script of a
second sync, mode-switch cleanup, the ClusterIP holder and the sysctls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.ipvs import (
    GRACEFUL_RECHECK,
    IPVS_JUMP_RULES,
    SET_TYPES,
    VirtualServer,
    ipvs_sysctls,
    parse_ipvsadm_save,
)
from podnet.agent.proxy.modes import (
    IpvsProxier,
    ProxyKernel,
    cleanup_iptables_leftovers,
    cleanup_ipvs_leftovers,
)
from podnet.agent.proxy.tracker import ProxyState
from podnet.kernel.conntrack import FakeConntrack
from podnet.kernel.ipvs import FakeIpset, FakeIpvs, ServiceAddressHolder
from podnet.kernel.links import FakeNetlink
from podnet.kernel.rules import FakeIptables, FakeNft, RuleLoadError
from podnet.testing.proxy import endpoint_slice, service

CFG = ProxyConfig(
    cluster_cidr="10.244.0.0/16",
    service_cidr="10.96.0.0/16",
    node_ips=("192.168.0.2",),
    random_fully=False,
)
EPS = ["10.244.1.2", "10.244.1.3", "10.244.2.4"]


class SectionedIptables(FakeIptables):
    """`save(table)` returns only that table's section, as iptables-save -t does."""

    def save(self, table: str | None = None) -> str:
        text = super().save(table)
        if table is None:
            return text
        section = text.split(f"*{table}\n", 1)[-1].split("COMMIT\n", 1)[0]
        return f"*{table}\n{section}COMMIT\n" if f"*{table}\n" in text else ""


class Doors:
    """Fake kernel doors that also write one shared journal, to check the order of a sync."""

    def __init__(self, dummy: bool = False) -> None:
        self.journal: list[tuple[str, str]] = []
        self.iptables = SectionedIptables()
        self.ipvs = FakeIpvs()
        self.ipset = FakeIpset()
        self.netlink = FakeNetlink()
        self.netlink.dummy_supported = dummy
        self.sysctls: dict[str, str | int] = {}
        self._record(self.iptables, "restore", "iptables")
        self._record(self.ipvs, "restore", "ipvsadm")
        self._record(self.ipset, "restore", "ipset")
        self._record(self.netlink, "ensure_address", "bind")
        self._record(self.netlink, "delete_address", "unbind")
        self.kernel = ProxyKernel(
            None, self.iptables, FakeNft(), FakeConntrack(), self.ipvs, self.ipset,
            ServiceAddressHolder(None, lambda: self.netlink), self._sysctl,
        )  # fmt: skip

    def _record(self, target: Any, method: str, what: str) -> None:
        inner: Callable[..., Any] = getattr(target, method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            detail = args[0] if what in ("iptables", "ipvsadm", "ipset") else args[1]
            self.journal.append((what, str(detail)))
            return inner(*args, **kwargs)

        setattr(target, method, wrapper)

    def _sysctl(self, key: str, value: str | int, netns: str | None = None) -> None:
        self.journal.append(("sysctl", f"{key}={value}"))
        self.sysctls[key] = value

    def steps(self) -> list[str]:
        return [what for what, _ in self.journal]

    def payloads(self, what: str) -> list[str]:
        return [detail for kind, detail in self.journal if kind == what]

    def holder_addresses(self) -> set[str]:
        return {a.address for a in self.netlink.addresses()}


def cluster(*services: tuple[str, str, list[str]], **spec: Any) -> ProxyState:
    state = ProxyState(node_name="test-node")
    for name, ip, ips in services:
        state.on_service(service("default", name, ip, **spec))
        state.on_slice(endpoint_slice("default", name, ips))
    state.apply()
    return state


def sync(proxier: IpvsProxier, state: ProxyState) -> None:
    proxier.sync_now(state, None)


def test_one_sync_writes_settings_sets_addresses_servers_rules_in_that_order() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS), ("db", "10.96.0.11", EPS[:1])))
    settings = [f"{k}={v}" for k, v in ipvs_sysctls("6.18.0").items()]
    assert doors.steps() == ["sysctl"] * len(settings) + [
        "ipset", "bind", "bind", "ipvsadm", "iptables",
    ]  # fmt: skip
    assert doors.payloads("sysctl") == settings
    assert doors.payloads("bind") == ["10.96.0.10/32", "10.96.0.11/32"]
    assert doors.payloads("ipvsadm") == [  # in service name order: default/db, default/web
        "-A -t 10.96.0.11:80 -s rr\n"
        "-a -t 10.96.0.11:80 -r 10.244.1.2:80 -m -w 1\n"
        "-A -t 10.96.0.10:80 -s rr\n"
        "-a -t 10.96.0.10:80 -r 10.244.1.2:80 -m -w 1\n"
        "-a -t 10.96.0.10:80 -r 10.244.1.3:80 -m -w 1\n"
        "-a -t 10.96.0.10:80 -r 10.244.2.4:80 -m -w 1\n"
    ]
    assert doors.ipset.sets["KUBE-CLUSTER-IP"] == {"10.96.0.10,tcp:80", "10.96.0.11,tcp:80"}
    assert doors.ipset.sets["KUBE-IPVS-IPS"] == {"10.96.0.10", "10.96.0.11"}
    iptables = doors.payloads("iptables")[0]
    # the remaining rules and, in the same restore, every missing jump rule
    assert "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in iptables
    for jump in IPVS_JUMP_RULES:
        assert f"-I {jump.chain} " in iptables and jump.args[-1] in iptables
    # no dummy driver: the addresses are on lo, labelled, so they are told apart
    assert {(a.address, doors.netlink.labels[a]) for a in doors.netlink.addresses("lo")} == {
        ("10.96.0.10", "lo:kube-ipvs"),
        ("10.96.0.11", "lo:kube-ipvs"),
    }


def test_second_sync_after_an_endpoint_change_sends_only_the_difference() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS), ("db", "10.96.0.11", EPS[:1])))
    doors.journal.clear()
    # web loses one endpoint and gains another; db is deleted
    sync(proxier, cluster(("web", "10.96.0.10", [EPS[0], EPS[2], "10.244.3.9"])))
    assert doors.steps() == ["ipset", "ipvsadm", "iptables", "unbind"]  # settings once
    assert doors.payloads("ipvsadm") == [
        "-a -t 10.96.0.10:80 -r 10.244.3.9:80 -m -w 1\n"
        "-d -t 10.96.0.10:80 -r 10.244.1.3:80\n"
        "-D -t 10.96.0.11:80\n"
    ]
    assert doors.payloads("unbind") == ["10.96.0.11/32"]  # after its virtual server went
    assert doors.holder_addresses() == {"10.96.0.10"}
    assert doors.ipset.sets["KUBE-CLUSTER-IP"] == {"10.96.0.10,tcp:80"}
    (web,) = parse_ipvsadm_save(doors.ipvs.save())
    assert [r.address for r in web.real_servers] == [EPS[0], EPS[2], "10.244.3.9"]
    # nothing changed: empty IPVS script, nothing bound or unbound
    doors.journal.clear()
    sync(proxier, cluster(("web", "10.96.0.10", [EPS[0], EPS[2], "10.244.3.9"])))
    assert doors.steps() == ["ipset", "iptables"]


def count_listings(doors: Doors) -> list[str]:
    """The labels the holder lists addresses by, from now on."""
    listed: list[str] = []
    inner = doors.netlink.labelled_addresses

    def listing(label: str) -> list[Any]:
        listed.append(label)
        return inner(label)

    doors.netlink.labelled_addresses = listing  # type: ignore[method-assign]
    return listed


def test_partial_syncs_diff_the_sets_and_addresses_against_the_last_sync() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS), ("db", "10.96.0.11", EPS[:1])))
    assert doors.payloads("ipset")[0].count("flush ") == len(SET_TYPES)  # full: whole sets
    doors.journal.clear()
    listings = count_listings(doors)
    # the agent's partial sync after web's endpoints changed and db went
    changed = frozenset({"default/web", "default/db"})
    state = cluster(("web", "10.96.0.10", [EPS[0], EPS[2], "10.244.3.9"]))
    proxier.sync_now(state, changed)
    # no address listing, and only the set members that changed (no flush, no reload)
    assert doors.steps() == ["ipset", "ipvsadm", "iptables", "unbind"]
    assert listings == []
    assert doors.payloads("ipset") == [
        "del KUBE-CLUSTER-IP 10.96.0.11,tcp:80\ndel KUBE-IPVS-IPS 10.96.0.11\n"
    ]
    assert doors.ipset.sets["KUBE-CLUSTER-IP"] == {"10.96.0.10,tcp:80"}
    assert doors.holder_addresses() == {"10.96.0.10"}
    doors.journal.clear()
    proxier.sync_now(state, frozenset({"default/web"}))  # nothing changed: no ipset call
    assert doors.steps() == ["iptables"]


def test_after_a_failed_sync_the_sets_and_addresses_are_read_and_loaded_whole() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS)))
    doors.ipvs.fail_with = RuleLoadError("ipvsadm -R", 2, "Memory allocation problem", None, "")
    state = cluster(("web", "10.96.0.10", EPS), ("db", "10.96.0.11", EPS[:1]))
    with pytest.raises(RuleLoadError):
        proxier.sync_now(state, frozenset({"default/db"}))
    doors.journal.clear()
    listings = count_listings(doors)
    proxier.sync_now(state, frozenset({"default/db"}))  # what the failure left is unknown
    assert listings == ["lo:kube-ipvs"]
    assert doors.payloads("ipset")[0].count("flush ") == len(SET_TYPES)
    assert {vs.address for vs in parse_ipvsadm_save(doors.ipvs.save())} == {
        "10.96.0.10",
        "10.96.0.11",
    }


def test_affinity_change_edits_the_virtual_server_in_place() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS)))
    doors.journal.clear()
    affinity = {"sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}  # fmt: skip
    sync(proxier, cluster(("web", "10.96.0.10", EPS), **affinity))
    assert doors.payloads("ipvsadm") == ["-E -t 10.96.0.10:80 -s rr -p 600\n"]


def test_virtual_servers_that_are_not_ours_are_left_alone() -> None:
    doors = Doors()
    # someone else's virtual server outside the service CIDR, node IPs and our addresses
    doors.ipvs.restore(
        "-A -t 203.0.113.5:443 -s wlc\n-a -t 203.0.113.5:443 -r 10.1.1.1:443 -m -w 1\n"
    )
    doors.ipvs.restore("-A -t 10.96.0.99:53 -s rr\n")  # a stale service of ours
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS)))
    assert doors.payloads("ipvsadm")[-1].endswith("-D -t 10.96.0.99:53\n")
    assert "203.0.113.5" not in doors.payloads("ipvsadm")[-1]
    assert {vs.address for vs in parse_ipvsadm_save(doors.ipvs.save())} == {
        "203.0.113.5",
        "10.96.0.10",
    }


def test_node_port_servers_are_on_node_ips_and_not_bound() -> None:
    doors = Doors(dummy=True)
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS), type="NodePort", nodePort=30080))
    servers = {(vs.address, vs.port) for vs in parse_ipvsadm_save(doors.ipvs.save())}
    assert servers == {("10.96.0.10", 80), ("192.168.0.2", 30080)}
    assert doors.holder_addresses() == {"10.96.0.10"}
    assert doors.netlink.require("kube-ipvs0").kind == "dummy"  # the driver exists here
    assert doors.ipset.sets["KUBE-NODE-PORT-TCP"] == {"30080"}


def test_a_failed_step_raises_and_the_next_sync_repairs_everything() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    doors.ipvs.fail_with = RuleLoadError("ipvsadm -R", 2, "Memory allocation problem", None, "")
    with pytest.raises(RuleLoadError, match="ipvsadm -R rejected"):
        sync(proxier, cluster(("web", "10.96.0.10", EPS)))
    assert doors.iptables.payloads == []  # stopped before the iptables rules
    sync(proxier, cluster(("web", "10.96.0.10", EPS)))
    assert [vs.address for vs in parse_ipvsadm_save(doors.ipvs.save())] == ["10.96.0.10"]
    assert doors.iptables.payloads


def test_cleanup_removes_sets_servers_addresses_and_ipvs_chains() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS)))
    doors.journal.clear()
    proxier.cleanup_now()
    assert doors.ipvs.save() == ""
    assert doors.ipset.sets == {}
    assert doors.holder_addresses() == set()
    # its own chains are deleted, the shared nat chains (which jump to them and match the
    # sets) emptied in the same restore; jump rule removal is checked in tests/kernel/proxy
    restores = doors.payloads("iptables")
    assert "*filter\n:KUBE-NODE-PORT - [0:0]\n:KUBE-IPVS-FILTER - [0:0]\n" in restores[0]
    nat = next(r for r in restores if r.startswith("*nat"))
    assert nat.splitlines() == [
        "*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]", ":KUBE-NODE-PORT - [0:0]", "-X KUBE-NODE-PORT", "COMMIT",
    ]  # fmt: skip
    # the order matters: sets are destroyed after the rules using them are gone
    steps = doors.steps()
    assert steps[:4] == ["iptables", "iptables", "ipvsadm", "ipset"]
    # last, the chains it shares by name with iptables mode go too
    assert restores[-1].splitlines()[-3:] == ["-X KUBE-POSTROUTING", "-X KUBE-MARK-MASQ", "COMMIT"]


def test_other_modes_cleanup_is_quiet_without_ipvs_leftovers() -> None:
    doors = Doors()
    cleanup_ipvs_leftovers(doors.kernel, CFG)
    assert doors.steps() == []  # no rules, no sets, no addresses: nothing to do


def test_ipvs_start_keeps_the_shared_chains_and_jumps() -> None:
    doors = Doors()
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0")
    sync(proxier, cluster(("web", "10.96.0.10", EPS)))
    doors.journal.clear()
    # an ipvs agent restarting runs the iptables cleanup in keep mode: no iptables-mode
    # service chains here, so nothing of ipvs mode is touched
    cleanup_iptables_leftovers(doors.iptables, keep_ipvs_shared=True)
    assert doors.payloads("iptables") == []


def test_iptables_leftovers_under_ipvs_empty_kube_services_and_go() -> None:
    doors = Doors()
    doors.iptables.restore(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"
        "-A KUBE-SERVICES -d 10.96.0.10/32 -j KUBE-SVC-ABC\nCOMMIT\n"
    )
    doors.journal.clear()
    cleanup_iptables_leftovers(doors.iptables, keep_ipvs_shared=True)
    assert doors.payloads("iptables") == [
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"
        ":KUBE-SVC-ABC - [0:0]\n-X KUBE-SVC-ABC\nCOMMIT\n"
    ]


def test_holder_plan_binds_new_and_unbinds_only_labelled_addresses() -> None:
    netlink = FakeNetlink()
    netlink.dummy_supported = False
    netlink.ensure_address("lo", "127.0.0.1/8")  # not ours: no label
    holder = ServiceAddressHolder(None, lambda: netlink)
    holder.apply(holder_plan(holder, ["10.96.0.1", "10.96.0.2"]))
    plan = holder_plan(holder, ["10.96.0.2", "10.96.0.3"])
    assert (plan.bind, plan.unbind) == (("10.96.0.3",), ("10.96.0.1",))
    holder.apply(plan)
    assert {a.address for a in netlink.addresses("lo")} == {"127.0.0.1", "10.96.0.2", "10.96.0.3"}
    assert holder.release() == 2
    assert {a.address for a in netlink.addresses("lo")} == {"127.0.0.1"}


def holder_plan(holder: ServiceAddressHolder, want: list[str]) -> Any:
    from podnet.kernel.ipvs import plan_bindings

    return plan_bindings(want, holder.bound())


def test_conn_reuse_mode_only_on_kernels_that_need_it() -> None:
    assert ipvs_sysctls("5.4.0-150-generic") == {
        "net.ipv4.vs.conntrack": 1,
        "net.ipv4.vs.conn_reuse_mode": 0,
        "net.ipv4.vs.expire_nodest_conn": 1,
        "net.ipv4.vs.expire_quiescent_template": 1,
        "net.ipv4.ip_forward": 1,
    }
    assert "net.ipv4.vs.conn_reuse_mode" not in ipvs_sysctls("6.18.0")
    assert "net.ipv4.vs.conn_reuse_mode" not in ipvs_sysctls("3.10.0-1160.el7")


def test_ipvsadm_save_is_read_back() -> None:
    text = (
        "-A -t 10.96.0.10:80 -s rr -p 10800\n"
        "-a -t 10.96.0.10:80 -r 10.244.1.3:80 -m -w 1\n"
        "-a -t 10.96.0.10:80 -r 10.244.1.2:80 -m -w 0\n"
        "-A -u 10.96.0.53:53 -s lc\n"
        "-A -f 7 -s rr\n"  # a firewall-mark service: not ours, skipped
    )
    web, dns = parse_ipvsadm_save(text)
    assert web == VirtualServer("10.96.0.10", 80, "tcp", "rr", 10800, (
        _real("10.244.1.2", 0), _real("10.244.1.3", 1)))  # fmt: skip
    assert (dns.protocol, dns.scheduler, dns.real_servers) == ("udp", "lc", ())


def _real(ip: str, weight: int) -> Any:
    from podnet.agent.proxy.ipvs import RealServer

    return RealServer(ip, 80, weight)


def test_set_names_fit_ipset_limits() -> None:
    assert all(len(name) <= 31 for name in SET_TYPES)


def test_ipvs_mode_is_selected_and_applied_when_the_kernel_has_ip_vs() -> None:
    from pathlib import Path

    from podnet.agent.context import AgentContext
    from podnet.agent.proxy.component import ProxyComponent, select_mode
    from podnet.testing.api import InMemoryApi

    assert select_mode("ipvs", fallback=False, ipvs_probe=lambda: True) == "ipvs"
    doors = Doors()
    ctx = AgentContext(api=InMemoryApi(), node_name="n", node_ip="192.168.0.2",
                       state_dir=Path("/nonexistent"), run_dir=Path("/nonexistent"),
                       proxy_mode="ipvs", metrics_port=0)  # fmt: skip
    component = ProxyComponent(ctx, kernel=doors.kernel, ipvs_probe=lambda: True)
    assert isinstance(component.proxier, IpvsProxier)
    component.cleanup_other_modes()  # iptables / nftables / userspace leftovers, not ipvs's
    assert "ipvsadm" not in doors.steps() and "ipset" not in doors.steps()


def test_a_removed_endpoint_with_connections_drains_then_goes() -> None:
    doors = Doors()
    clock = [100.0]
    proxier = IpvsProxier(CFG, doors.kernel, kernel_release="6.18.0", clock=lambda: clock[0])
    assert proxier.sync_now(cluster(("web", "10.96.0.10", EPS)), None).recheck_after is None
    doors.ipvs.connections = {"-t 10.96.0.10:80 10.244.1.3:80": (1, 0)}
    doors.journal.clear()
    result = proxier.sync_now(cluster(("web", "10.96.0.10", [EPS[0], EPS[2]])), None)
    assert doors.payloads("ipvsadm") == ["-e -t 10.96.0.10:80 -r 10.244.1.3:80 -m -w 0\n"]
    assert result.recheck_after == GRACEFUL_RECHECK
    # the re-check: still busy, nothing to do; then its last connection is gone
    doors.journal.clear()
    clock[0] = 160.0
    assert proxier.sync_now(cluster(("web", "10.96.0.10", [EPS[0], EPS[2]])), None).recheck_after
    assert doors.payloads("ipvsadm") == []
    doors.ipvs.connections = {}
    clock[0] = 220.0
    result = proxier.sync_now(cluster(("web", "10.96.0.10", [EPS[0], EPS[2]])), None)
    assert doors.payloads("ipvsadm") == ["-d -t 10.96.0.10:80 -r 10.244.1.3:80\n"]
    assert result.recheck_after is None and proxier.draining == {}


def test_the_ipset_and_ipvsadm_timeouts_cover_a_10k_service_load_in_an_emulated_vm() -> None:
    """The agent's runners (`ProxyKernel.in_namespace`, as in a VM node's guest) give the full
    sync's loads at 10,000 Services x 3 endpoints at least 3x what they took under TCG
    (docs/kube-proxy.md: ipset restore 36-42 s, ipvsadm -R 14.8-17.0 s), scaled by the
    payload; iptables-restore's 10 s per MB gave the ipset load 54 s."""
    from podnet.agent.proxy.ipvs import render_ipvs
    from podnet.kernel.ipvs import IpsetRunner, IpvsRunner

    state = ProxyState(node_name="n1")
    for i in range(10_000):
        ip = f"10.97.{i // 256}.{i % 256}"
        state.on_service(service("bench", f"svc{i}", ip, port=80, port_name="http"))
        eps = [f"10.245.{(3 * i + k) // 256 % 256}.{(3 * i + k) % 256}" for k in range(3)]
        slice_ = endpoint_slice("bench", f"svc{i}", eps, port=8080, port_name="http", node="n1")
        state.on_slice(slice_)  # local endpoints, as the benchmark's: 50k ipset lines
    state.apply()
    rendered = render_ipvs(state.service_port_map(), state.endpoints_map(), CFG)
    sets = rendered.ipset_restore()
    script = rendered.ipvsadm_restore()
    assert len(sets) > 2_000_000 and sets.count("\nadd ") > 49_000  # as measured: 2.4 MB, 50k
    kernel = ProxyKernel.in_namespace("podnet-x-node1")
    assert isinstance(kernel.ipset, IpsetRunner) and isinstance(kernel.ipvs, IpvsRunner)
    assert kernel.ipset.timeouts.restore(sets) >= 3 * 42.0
    assert kernel.ipvs.timeouts.restore(script) >= 3 * 17.0
    assert kernel.ipset.timeouts.save() >= 3 * 42.0  # a save: by the largest table loaded
    assert IpsetRunner(timeout=5.0).timeouts.restore(sets) == 5.0
