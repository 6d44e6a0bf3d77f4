"""The one registry of kube-proxy modes: name → how to build its proxier and how to remove
what it leaves in the kernel, in one explicit dict (DESIGN.md contract 4).

Adding a mode: write its `Proxier` (the protocol in `modes.py`; a blocking one subclasses
`_BlockingProxier` there) and a function removing everything it creates, then add one
`ProxyMode` entry below. Everything else reads this dict: the agent's `--proxy-mode` choices,
the lab's validation, the component's mode switch. An unknown name is an error listing the
valid ones.

Order matters once: when a node switches modes, the other modes' leftovers are removed in
*reverse* order of this dict, so a later mode whose chains jump to an earlier mode's chains
(ipvs's rules jump to iptables mode's KUBE-MARK-MASQ) is removed first. Add new modes at the
end.

The modes' modules are imported when a mode is built or cleaned up, not with this registry:
the names are what the CLI and the lab's plan need, and the modes pull in netlink, ipvs and
the relay. `MODULES` lists them for a process that wants them loaded ahead (the lab's
supervisor imports them before it forks the agents, `lab/warm.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from podnet.agent.proxy.config import ProxyConfig

if TYPE_CHECKING:
    from podnet.agent.proxy.modes import Proxier, ProxyKernel

ProxierFactory = Callable[[ProxyConfig, "ProxyKernel"], "Proxier"]
# (kernel, config, the mode the node runs now) -> None
LeftoverCleanup = Callable[["ProxyKernel", ProxyConfig, str], None]


@dataclass(frozen=True, slots=True)
class ProxyMode:
    proxier: ProxierFactory
    remove_leftovers: LeftoverCleanup  # what this mode left, while another mode runs


def _userspace(cfg: ProxyConfig, kernel: ProxyKernel) -> Proxier:
    from podnet.agent.proxy.userspace import UserspaceProxier

    return UserspaceProxier(cfg, kernel)


def _iptables(cfg: ProxyConfig, kernel: ProxyKernel) -> Proxier:
    from podnet.agent.proxy.modes import IptablesProxier

    return IptablesProxier(cfg, kernel)


def _nftables(cfg: ProxyConfig, kernel: ProxyKernel) -> Proxier:
    from podnet.agent.proxy.modes import NftablesProxier

    return NftablesProxier(cfg, kernel)


def _ipvs(cfg: ProxyConfig, kernel: ProxyKernel) -> Proxier:
    from podnet.agent.proxy.modes import IpvsProxier

    return IpvsProxier(cfg, kernel)


def _userspace_leftovers(kernel: ProxyKernel, cfg: ProxyConfig, running: str) -> None:
    from podnet.agent.proxy.relay import stop_relay
    from podnet.agent.proxy.userspace import cleanup_userspace_leftovers

    if cfg.relay_dir:  # the relay process of an earlier userspace run, by its record
        stop_relay(Path(cfg.relay_dir))
    cleanup_userspace_leftovers(kernel.iptables)


def _iptables_leftovers(kernel: ProxyKernel, cfg: ProxyConfig, running: str) -> None:
    from podnet.agent.proxy.modes import cleanup_iptables_leftovers

    # ipvs mode uses some of iptables mode's chain names and jump rules: keep those
    cleanup_iptables_leftovers(kernel.iptables, keep_ipvs_shared=running == "ipvs")


def _nftables_leftovers(kernel: ProxyKernel, cfg: ProxyConfig, running: str) -> None:
    from podnet.agent.proxy.modes import cleanup_nftables_leftovers

    cleanup_nftables_leftovers(kernel.nft)


def _ipvs_leftovers(kernel: ProxyKernel, cfg: ProxyConfig, running: str) -> None:
    from podnet.agent.proxy.modes import cleanup_ipvs_leftovers

    cleanup_ipvs_leftovers(kernel, cfg)


PROXIERS: dict[str, ProxyMode] = {
    "userspace": ProxyMode(_userspace, _userspace_leftovers),
    "iptables": ProxyMode(_iptables, _iptables_leftovers),
    "nftables": ProxyMode(_nftables, _nftables_leftovers),
    "ipvs": ProxyMode(_ipvs, _ipvs_leftovers),
}
MODULES = ("podnet.agent.proxy.modes", "podnet.agent.proxy.userspace")


def proxy_mode(name: str) -> ProxyMode:
    """The mode registered as `name`; an unknown name is a ValueError listing the valid ones."""
    mode = PROXIERS.get(name)
    if mode is None:
        raise ValueError(f"unknown proxy mode {name!r}; valid modes: {', '.join(sorted(PROXIERS))}")
    return mode


def remove_other_modes(kernel: ProxyKernel, cfg: ProxyConfig, running: str) -> None:
    """Switching modes: remove what every mode but `running` left on this node."""
    for name in reversed(PROXIERS):
        if name != running:
            PROXIERS[name].remove_leftovers(kernel, cfg, running)
