"""The one registry of flannel backends: name → constructor, in one explicit dict.

flannel registers backends by import side effect (`init()` + `backend.Register`); here the
dict is written out, so what exists is visible in one place and import order never matters.
An unknown name is an error listing the valid ones (DESIGN.md contract 4).

Each constructor imports its backend's module when a backend is built, not when this registry
is imported: the names are what the CLI and the lab's plan need (`podnet up` validates
`--backend` with them), and the backends pull in netlink and the overlay datapaths.
`MODULES` lists those modules for a process that wants them loaded ahead (the lab's
supervisor imports them before it forks the agents, `lab/warm.py`).
"""

from __future__ import annotations

from pathlib import Path

from podnet.agent.flannel.backend import Backend, BackendFactory, ExternalInterface, FlannelError


def _vxlan(
    ext: ExternalInterface, netns: str | None = None, run_dir: Path | None = None
) -> Backend:
    from podnet.agent.flannel.vxlan import VxlanBackend

    return VxlanBackend(ext, netns)


def _udp(ext: ExternalInterface, netns: str | None = None, run_dir: Path | None = None) -> Backend:
    from podnet.agent.flannel.udp import UdpBackend

    if run_dir is None:
        raise FlannelError("udp: the backend needs the agent's run_dir to record its datapath")
    return UdpBackend(ext, netns, run_dir)


def _host_gw(
    ext: ExternalInterface, netns: str | None = None, run_dir: Path | None = None
) -> Backend:
    from podnet.agent.flannel.hostgw import HostGwBackend

    return HostGwBackend(ext, netns)


BACKENDS: dict[str, BackendFactory] = {
    "vxlan": _vxlan,
    "udp": _udp,
    "host-gw": _host_gw,
}
MODULES = ("podnet.agent.flannel.vxlan", "podnet.agent.flannel.udp", "podnet.agent.flannel.hostgw")


def backend_factory(name: str) -> BackendFactory:
    """The backend registered as `name` (case-insensitive); unknown names list the valid ones."""
    factory = BACKENDS.get(name.lower())
    if factory is None:
        raise FlannelError(
            f"unknown flannel backend type {name!r}; valid: {', '.join(sorted(BACKENDS))}"
        )
    return factory


def get_backend(
    name: str, ext: ExternalInterface, netns: str | None = None, run_dir: Path | None = None
) -> Backend:
    """The backend registered as `name` (case-insensitive), bound to `ext` in `netns`;
    `run_dir` (the agent's) holds the pid records of the processes it starts (udp)."""
    return backend_factory(name)(ext, netns, run_dir)
