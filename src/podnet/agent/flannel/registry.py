"""The one registry of flannel backends: name → constructor, in one explicit dict.

flannel registers backends by import side effect (`init()` + `backend.Register`); here the
dict is written out, so what exists is visible in one place and import order never matters.
An unknown name is an error listing the valid ones (DESIGN.md contract 4).
"""

from __future__ import annotations

from podnet.agent.flannel.backend import Backend, BackendFactory, ExternalInterface, FlannelError
from podnet.agent.flannel.hostgw import HostGwBackend
from podnet.agent.flannel.udp import UdpBackend
from podnet.agent.flannel.vxlan import VxlanBackend

BACKENDS: dict[str, BackendFactory] = {
    "vxlan": VxlanBackend,
    "udp": UdpBackend,
    "host-gw": HostGwBackend,
}


def backend_factory(name: str) -> BackendFactory:
    """The backend registered as `name` (case-insensitive); unknown names list the valid ones."""
    factory = BACKENDS.get(name.lower())
    if factory is None:
        raise FlannelError(
            f"unknown flannel backend type {name!r}; valid: {', '.join(sorted(BACKENDS))}"
        )
    return factory


def get_backend(name: str, ext: ExternalInterface, netns: str | None = None) -> Backend:
    """The backend registered as `name` (case-insensitive), bound to `ext` in `netns`."""
    return backend_factory(name)(ext, netns)
