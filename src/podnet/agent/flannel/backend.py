"""The backend protocol (flannel's `Backend` / `Network`) and the one registry of backends.

What belongs here: `ExternalInterface` (the node's underlay device and address), `Backend`
(`register_network(config, subnet, stored) -> Network`: build the device, return the network),
`Network` (its lease attributes, its MTU, and the two ways to program remote leases: `reconcile`
for a full sync, `handle` for a partial one). The registry of backends by name is
`podnet.agent.flannel.registry`.

Invariants:
- Backends never talk to the API: the component publishes `backend_type`/`backend_data`
  and feeds leases in. They talk to the kernel only through `podnet.kernel`.
- `reconcile(leases)` makes the kernel match exactly `leases` without flushing entries that
  are already right (a restart must not interrupt traffic); `handle(events)` applies a diff.
- `close()` stops what lives in the process (the udp datapath) and leaves kernel state
  (devices, routes, neighbours) in place for the next agent to adopt.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from podnet.agent.flannel.config import NetConfig
from podnet.agent.flannel.leases import Lease, LeaseEvents


class FlannelError(Exception):
    """The overlay cannot be set up or programmed; the message says what to fix."""


class ProgrammingError(FlannelError):
    """Writing the entries of some remote lease failed; the backend's device itself is fine."""


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    """The node's underlay: flannel's `ExternalInterface` (device, its address, its MTU)."""

    name: str
    index: int
    address: str  # IfaceAddr = ExtAddr (podnet does not support NAT between nodes)
    mtu: int


class Network(Protocol):
    """One registered network of a backend (flannel's `backend.Network`)."""

    backend_type: str
    mtu: int  # what pods must use (FLANNEL_MTU)
    # the pods' eth0 gso_max_segs (PODNET_GSO_MAX_SEGS; udp: a TCP superpacket fits one UDP
    # GSO send), None: the kernel's default
    pod_gso_max_segs: int | None

    def backend_data(self) -> dict[str, Any] | None:
        """The node's `backend-data` annotation (vxlan: VNI + VtepMAC), None for none."""
        ...

    def reconcile(self, leases: Sequence[Lease]) -> None:
        """Full sync: make the kernel hold exactly what `leases` need (no flush)."""
        ...

    def handle(self, events: LeaseEvents) -> None:
        """Partial sync: remove what `events.removed` needed, then add `events.added`."""
        ...

    def close(self) -> None:
        """Stop in-process work; leave kernel state in place."""
        ...


class Backend(Protocol):
    def register_network(
        self, config: NetConfig, subnet: ipaddress.IPv4Network, stored: Mapping[str, Any]
    ) -> Network:
        """Create/adopt the backend's device for this node's `subnet` (blocking kernel I/O).

        `stored` is the backend-data this node published before (vxlan reuses its VtepMAC).
        """
        ...


# (the underlay interface, the node's namespace, the agent's run_dir: where a backend records
# the processes it starts, so that they are stopped by pid)
BackendFactory = Callable[[ExternalInterface, "str | None", "Path | None"], Backend]
