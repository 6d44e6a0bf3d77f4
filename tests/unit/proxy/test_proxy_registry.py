"""The registry of proxy modes: every entry builds its own mode, names are what the CLI and
the lab accept, unknown names list the valid ones, switching cleans the others in order."""

from __future__ import annotations

import pytest

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.modes import ProxyKernel
from podnet.agent.proxy.registry import PROXIERS, ProxyMode, proxy_mode, remove_other_modes
from podnet.kernel.conntrack import FakeConntrack
from podnet.kernel.ipvs import FakeIpset, FakeIpvs, ServiceAddressHolder
from podnet.kernel.links import FakeNetlink
from podnet.kernel.rules import FakeIptables, FakeNft
from podnet.lab.spec import PROXY_MODES

CFG = ProxyConfig(node_ips=("192.168.0.2",))


def fake_kernel() -> ProxyKernel:
    return ProxyKernel(
        None,
        FakeIptables(),
        FakeNft(),
        FakeConntrack(),
        FakeIpvs(),
        FakeIpset(),
        ServiceAddressHolder(None, FakeNetlink),
    )


@pytest.mark.parametrize("name", list(PROXIERS))
def test_every_mode_builds_a_proxier_of_its_own_name(name: str) -> None:
    assert proxy_mode(name).proxier(CFG, fake_kernel()).mode == name


def test_the_lab_accepts_exactly_the_registered_modes() -> None:
    assert PROXY_MODES == tuple(PROXIERS) == ("userspace", "iptables", "nftables", "ipvs")


def test_an_unknown_mode_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="'ebpf'; valid modes: iptables, ipvs, nftables, userspace"
    ):
        proxy_mode("ebpf")


def test_switching_removes_the_other_modes_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def recorder(name: str) -> ProxyMode:
        def remove(kernel: ProxyKernel, cfg: ProxyConfig, running: str) -> None:
            calls.append((name, running))

        return ProxyMode(PROXIERS[name].proxier, remove)

    monkeypatch.setattr(
        "podnet.agent.proxy.registry.PROXIERS", {name: recorder(name) for name in PROXIERS}
    )
    remove_other_modes(fake_kernel(), CFG, "nftables")
    # ipvs's chains jump to iptables mode's: ipvs goes first
    assert calls == [("ipvs", "nftables"), ("iptables", "nftables"), ("userspace", "nftables")]


def test_userspace_mode_needs_the_node_address() -> None:
    with pytest.raises(ValueError, match="needs the node's address"):
        proxy_mode("userspace").proxier(ProxyConfig(), fake_kernel())
