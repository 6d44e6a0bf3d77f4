"""ipvs mode: golden text of the rendered state, and the refusal / fallback at start."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from podnet.agent.proxy.component import select_mode
from podnet.agent.proxy.ipvs import (
    IpsetSet,
    IpvsUnavailable,
    RealServer,
    VirtualServer,
    ipvs_available,
    parse_ipvsadm_save,
    parse_proc_ip_vs,
    plan_graceful_termination,
    plan_ipsets,
    plan_ipvsadm,
    render_ipvs,
    render_ipvs_text,
)
from podnet.agent.proxy.trace_iptables import consistency_errors
from podnet.kernel.ipvs import FakeIpvs
from podnet.testing.proxy import FIXTURE_CONFIG, upstream_fixture

GOLDEN = Path(__file__).parent / "golden"


def test_rendered_ipvs_state_matches_golden() -> None:
    state = upstream_fixture()
    ipvs = render_ipvs(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
    result = render_ipvs_text(ipvs)
    assert not consistency_errors(ipvs.iptables), result
    want = (GOLDEN / "ipvs_overall.txt").read_text()
    diff = "\n".join(difflib.unified_diff(want.splitlines(), result.splitlines(), lineterm=""))
    assert want == result, f"{diff}\nfull result:\n{result}"


def test_ipset_plan_reloads_unknown_sets_and_sends_only_the_difference_of_known_ones() -> None:
    sets = (
        IpsetSet("KUBE-CLUSTER-IP", "hash:ip,port", ("10.96.0.1,tcp:443", "10.96.0.10,tcp:80")),
        IpsetSet("KUBE-NODE-PORT-TCP", "bitmap:port", ("30080",)),
        IpsetSet("KUBE-IPVS-IPS", "hash:ip", ("10.96.0.1", "10.96.0.10")),
    )
    whole = (
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist\n"
        "flush KUBE-CLUSTER-IP\n"
        "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n"
        "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n"
        "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist\n"
        "flush KUBE-NODE-PORT-TCP\n"
        "add KUBE-NODE-PORT-TCP 30080\n"
        "create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536 -exist\n"
        "flush KUBE-IPVS-IPS\n"
        "add KUBE-IPVS-IPS 10.96.0.1\n"
        "add KUBE-IPVS-IPS 10.96.0.10\n"
    )
    assert plan_ipsets(None, sets) == whole  # the kernel's sets unknown: all of them, whole
    loaded = {
        "KUBE-CLUSTER-IP": frozenset({"10.96.0.1,tcp:443", "10.96.0.9,tcp:80"}),
        "KUBE-IPVS-IPS": frozenset({"10.96.0.1", "10.96.0.10"}),
    }
    # one ClusterIP replaced, a set not there yet created (not flushed), one set already right
    assert plan_ipsets(loaded, sets) == (
        "del KUBE-CLUSTER-IP 10.96.0.9,tcp:80\n"
        "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n"
        "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist\n"
        "add KUBE-NODE-PORT-TCP 30080\n"
    )
    assert plan_ipsets({s.name: frozenset(s.members) for s in sets}, sets) == ""


def test_affinity_is_persistence_and_every_real_server_has_weight_one() -> None:
    state = upstream_fixture()
    ipvs = render_ipvs(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG, "lc")
    by_addr = {(vs.address, vs.port): vs for vs in ipvs.virtual_servers}
    assert by_addr[("172.30.0.45", 80)].persistence == 10800
    assert by_addr[("172.30.0.44", 80)].persistence == 0
    assert {vs.scheduler for vs in ipvs.virtual_servers} == {"lc"}
    assert {rs.weight for vs in ipvs.virtual_servers for rs in vs.real_servers} == {1}
    with pytest.raises(ValueError, match="valid: rr"):
        render_ipvs({}, {}, FIXTURE_CONFIG, "fastest")


def test_missing_ip_vs_is_refused_with_the_kernel_feature_named() -> None:
    with pytest.raises(IpvsUnavailable, match=r"CONFIG_IP_VS.*--proxy-fallback"):
        select_mode("ipvs", fallback=False, ipvs_probe=lambda: False)


def test_missing_ip_vs_falls_back_to_iptables_when_asked() -> None:
    assert select_mode("ipvs", fallback=True, ipvs_probe=lambda: False) == "iptables"


def test_unknown_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid modes: iptables, ipvs, nftables, userspace"):
        select_mode("ebpf", fallback=False)


def test_probe_reads_proc(tmp_path: Path) -> None:
    assert not ipvs_available(tmp_path / "ip_vs")
    (tmp_path / "ip_vs").write_text("IP Virtual Server version 1.2.1\n")
    assert ipvs_available(tmp_path / "ip_vs")


def _vs(address: str, port: int, proto: str, *reals: tuple[str, int]) -> VirtualServer:
    return VirtualServer(
        address, port, proto, "rr", 0, tuple(sorted(RealServer(a, 8080, w) for a, w in reals))
    )


def test_graceful_termination_plan_matches_golden() -> None:
    """Removed TCP real servers with connections stay at weight 0 until they drain or time
    out; UDP ones, idle ones and deleted Services' virtual servers go at once; a draining
    real server wanted again gets its weight back."""
    fake = FakeIpvs()
    current = (
        _vs("10.96.0.10", 80, "tcp", ("10.244.1.2", 1), ("10.244.1.3", 1), ("10.244.2.4", 0),
            ("10.244.3.5", 0)),
        _vs("10.96.0.11", 53, "udp", ("10.244.1.2", 1), ("10.244.1.3", 1)),
        _vs("10.96.0.12", 443, "tcp", ("10.244.1.2", 1)),
    )  # fmt: skip
    fake.restore(plan_ipvsadm((), current, lambda vs: True))
    fake.connections = {  # ActiveConn, InActConn
        "-t 10.96.0.10:80 10.244.1.2:8080": (2, 1),  # removed, busy: drains from now
        "-t 10.96.0.10:80 10.244.2.4:8080": (1, 0),  # draining since 0: timed out at 1000
        "-u 10.96.0.11:53 10.244.1.2:8080": (0, 3),  # UDP: no graceful termination
        "-t 10.96.0.12:443 10.244.1.2:8080": (1, 0),  # its Service is gone
    }
    desired = (
        _vs("10.96.0.10", 80, "tcp", ("10.244.3.5", 1), ("10.244.4.6", 1)),
        _vs("10.96.0.11", 53, "udp", ("10.244.1.3", 1)),
    )
    since = {("tcp", "10.96.0.10", 80, "10.244.2.4", 8080): 0.0,
             ("tcp", "10.96.0.10", 80, "10.244.3.5", 8080): 500.0}  # fmt: skip
    counted = parse_proc_ip_vs(fake.stats())
    assert counted[("tcp", "10.96.0.10", 80, "10.244.1.2", 8080)] == 3
    plan = plan_graceful_termination(
        parse_ipvsadm_save(fake.save()), desired, lambda: counted, since, 1000.0, 900.0
    )
    script = plan_ipvsadm(parse_ipvsadm_save(fake.save()), plan.virtual_servers, lambda vs: True)
    draining = "".join(f"{' '.join(map(str, k))} since {v}\n" for k, v in plan.draining.items())
    result = f"# ipvsadm -R\n{script}# draining\n{draining}"
    want = (GOLDEN / "ipvs_graceful.txt").read_text()
    assert want == result, result
    # once the busy one has no connections left, it goes too
    fake.restore(script)
    fake.connections = {}
    calls: list[int] = []

    def idle() -> dict[tuple[str, str, int, str, int], int]:
        calls.append(1)
        return parse_proc_ip_vs(fake.stats())

    later = plan_graceful_termination(
        parse_ipvsadm_save(fake.save()), desired, idle, plan.draining, 1060.0, 900.0
    )
    assert later.draining == {} and later.virtual_servers == desired
    assert plan_ipvsadm(
        parse_ipvsadm_save(fake.save()), later.virtual_servers, lambda vs: True
    ) == ("-d -t 10.96.0.10:80 -r 10.244.1.2:8080\n")
    # nothing is going away: the counters are not read
    calls.clear()
    plan_graceful_termination(desired, desired, idle, {}, 1100.0)
    assert calls == []


def test_proc_ip_vs_is_read_for_connection_counts() -> None:
    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "TCP  0A60000A:0050 rr persistent 600\n"
        "  -> 0AF40102:1F90      Masq    0      4          2         \n"
        "FWM  00000001 rr\n"
        "  -> 0AF40103:1F90      Masq    1      7          0         \n"
        "UDP  0A60000B:0035 rr\n"
        "  -> 0AF40103:0035      Masq    1      0          5         \n"
    )
    assert parse_proc_ip_vs(text) == {
        ("tcp", "10.96.0.10", 80, "10.244.1.2", 8080): 6,
        ("udp", "10.96.0.11", 53, "10.244.1.3", 53): 5,
    }
