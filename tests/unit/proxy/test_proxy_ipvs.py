"""ipvs mode: golden text of the rendered state, and the refusal / fallback at start."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from podnet.agent.proxy.component import select_mode
from podnet.agent.proxy.ipvs import IpvsUnavailable, ipvs_available, render_ipvs, render_ipvs_text
from podnet.agent.proxy.trace_iptables import consistency_errors
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
