"""The trace's model of ipvs mode: the IPVS table's choice, and the ipset matches of the
iptables rules around it, on state rendered by the ipvs proxier itself."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from podnet.agent.proxy.ipvs import RealServer, VirtualServer, render_ipvs
from podnet.agent.proxy.trace_iptables import Walk, parse_ipset_save, parse_restore
from podnet.testing.proxy import FIXTURE_CONFIG, upstream_fixture
from podnet.trace.ipvs import IpvsTable, describe, how_chosen, ipvsadm_lines, schedule


def _vs(scheduler: str = "rr", persistence: int = 0, *weights: int) -> VirtualServer:
    reals = tuple(RealServer(f"10.244.1.{i + 2}", 8080, w) for i, w in enumerate(weights))
    return VirtualServer("10.96.0.10", 80, "tcp", scheduler, persistence, reals)


def test_round_robin_shares_evenly_and_skips_draining_real_servers() -> None:
    vs = _vs("rr", 0, 1, 0, 1)
    assert [(c.target, c.probability, c.index) for c in schedule(vs)] == [
        ("10.244.1.2:8080", 0.5, 0),
        ("10.244.1.4:8080", 0.5, 2),
    ]
    assert {c.chain for c in schedule(vs)} == {"TCP 10.96.0.10:80 rr"}


def test_weighted_round_robin_shares_by_weight() -> None:
    shares = [c.probability for c in schedule(_vs("wrr", 0, 3, 1))]
    assert shares == [0.75, 0.25]


def test_no_usable_real_server_leaves_no_candidate() -> None:
    assert schedule(_vs("rr", 0, 0)) == ()
    assert schedule(_vs("rr", 0)) == ()


def test_texts_name_the_scheduler_and_affinity() -> None:
    sticky = _vs("sh", 10800, 1, 1)
    assert describe(sticky) == "TCP 10.96.0.10:80 sh persistent 10800"
    assert how_chosen(sticky, "10.244.2.3") == (
        "source hashing: a hash of 10.244.2.3 picks one, the same for each of its connections; "
        "persistent 10800 s (ClientIP affinity): a template keeps 10.244.2.3 on the real "
        "server its first connection got"
    )
    assert ipvsadm_lines(_vs("rr", 0, 1)) == (
        "TCP 10.96.0.10:80 rr",
        "-> 10.244.1.2:8080 Masq weight 1",
    )


def test_table_from_the_proxiers_own_ipvsadm_text_finds_each_virtual_server() -> None:
    state = upstream_fixture()
    ipvs = render_ipvs(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
    table = IpvsTable.parse(ipvs.ipvsadm_restore())
    for vs in ipvs.virtual_servers:
        assert table.lookup(vs.protocol, vs.address, vs.port) == vs
    first = ipvs.virtual_servers[0]
    assert table.lookup("udp" if first.protocol == "tcp" else "tcp", first.address, first.port) is (
        None
    )
    assert table.lookup(first.protocol, first.address, first.port + 1) is None


@dataclass(frozen=True)
class Rendered:
    """ipvs mode's rules for the upstream fixture, its ipsets, and one ClusterIP port."""

    iptables: str
    ipsets: str
    address: str
    proto: str
    port: int

    def walk(self, src: str, dst: str) -> Walk:
        nat = parse_restore(self.iptables)["nat"]
        walk = Walk(nat, src, dst, self.port, self.proto, sets=parse_ipset_save(self.ipsets))
        walk.walk("KUBE-SERVICES")
        return walk


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    state = upstream_fixture()
    ipvs = render_ipvs(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
    member = next(s for s in ipvs.ipsets if s.name == "KUBE-CLUSTER-IP").members[0]
    address, _, rest = member.partition(",")
    proto, _, port = rest.partition(":")
    return Rendered(ipvs.iptables, ipvs.ipset_restore(), address, proto, int(port))


def test_a_pods_packet_to_a_cluster_ip_is_accepted_by_the_ipset_rule_unmarked(
    rendered: Rendered,
) -> None:
    walk = rendered.walk("10.0.1.5", rendered.address)  # a pod of the fixture's cluster CIDR
    assert [s.verdict for s in walk.steps] == ["accept"]
    assert "--match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in walk.steps[0].rule
    assert walk.mark == 0


def test_a_packet_from_outside_the_cluster_cidr_is_marked_for_masquerade(
    rendered: Rendered,
) -> None:
    walk = rendered.walk("192.168.7.1", rendered.address)
    assert [s.verdict for s in walk.steps] == ["jump KUBE-MARK-MASQ", "continue", "accept"]
    assert walk.mark == int(FIXTURE_CONFIG.mark, 16)


def test_an_address_not_in_the_set_matches_no_set_rule(
    rendered: Rendered,
) -> None:
    walk = rendered.walk("10.0.1.5", "10.254.254.254")
    assert not any("--match-set" in s.rule for s in walk.steps)


def test_ipset_members_are_looked_up_by_the_match_flags() -> None:
    sets = parse_ipset_save(
        "create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536\n"
        "add KUBE-LOOP-BACK 10.244.1.2,tcp:8080,10.244.1.2\n"
        "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n"
        "add KUBE-NODE-PORT-TCP 30345\n"
    )
    loop = sets["KUBE-LOOP-BACK"]
    assert loop.member("dst,dst,src", "10.244.1.2", "10.244.1.2", "tcp", 8080) in loop.members
    assert loop.member("dst,dst,src", "10.244.1.3", "10.244.1.2", "tcp", 8080) not in loop.members
    ports = sets["KUBE-NODE-PORT-TCP"]
    assert ports.member("dst", "1.2.3.4", "172.31.0.12", "tcp", 30345) in ports.members
    assert ports.member("dst", "1.2.3.4", "172.31.0.12", "icmp", None) is None
