"""Subnet leases in the Kubernetes-subnet-manager style, and the pure diff that watches them.

What belongs here: the node annotations flannel publishes (`flannel.alpha.coreos.com/...`),
`Lease` (one node's subnet + public IP + backend data), `lease_from_node` (a Node object →
its lease, or None when it is not a flannel node yet), `own_lease_patch` (the merge patch an
agent sends to publish its own lease) and `LeaseWatcher`, flannel's `LeaseWatcher.Reset`: a
pure diff of lease snapshots into `added` / `removed` events. No I/O.

Invariants:
- A node is a lease only with `kube-subnet-manager: "true"`, a `public-ip`, a `backend-type`
  and a `spec.podCIDR` (the subnet is the podCIDR; the server's node IPAM makes those unique).
- The watcher never reports the own node's lease. A lease whose subnet, public IP or backend
  data changed is reported as `removed` (old) followed by `added` (new), so a backend deletes
  what pointed at the old values before writing the new ones.
- Events come out sorted by node name, so plans built from them are deterministic.
- A lease overlapping this node's subnet or another lease is never programmed
  (`drop_overlapping`): node IPAM should make that impossible; if it happens anyway the
  error names both nodes instead of silently stealing a subnet's traffic.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ANNOTATION_PREFIX = "flannel.alpha.coreos.com"
KUBE_SUBNET_MANAGER = f"{ANNOTATION_PREFIX}/kube-subnet-manager"
BACKEND_TYPE = f"{ANNOTATION_PREFIX}/backend-type"
BACKEND_DATA = f"{ANNOTATION_PREFIX}/backend-data"
PUBLIC_IP = f"{ANNOTATION_PREFIX}/public-ip"
PUBLIC_IP_OVERWRITE = f"{ANNOTATION_PREFIX}/public-ip-overwrite"


@dataclass(frozen=True, slots=True)
class Lease:
    node: str
    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend_type: str
    backend_data: tuple[tuple[str, Any], ...] = ()  # sorted items of the backend-data JSON

    def data(self, key: str, default: Any = None) -> Any:
        for name, value in self.backend_data:
            if name == key:
                return value
        return default

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The remote flannel device's address: the subnet's base (`<subnet>.0`)."""
        return self.subnet.network_address


def slim_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """What flannel keeps of a Node: what `lease_from_node`, `stored_backend_data` and the
    component's own-lease check read (its name, podCIDR and flannel annotations), the same
    answers as the whole object."""
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "annotations": {
                k: v for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX + "/")
            },
        },
        "spec": {"podCIDR": (node.get("spec") or {}).get("podCIDR")},
    }


def lease_from_node(node: Mapping[str, Any]) -> Lease | None:
    """The lease a Node object carries, or None if it is not (yet) a flannel node."""
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if annotations.get(KUBE_SUBNET_MANAGER) != "true":
        return None
    pod_cidr = (node.get("spec") or {}).get("podCIDR")
    public = annotations.get(PUBLIC_IP_OVERWRITE) or annotations.get(PUBLIC_IP)
    backend_type = annotations.get(BACKEND_TYPE)
    if not pod_cidr or not public or not backend_type:
        return None
    try:
        subnet = ipaddress.IPv4Network(pod_cidr)
        public_ip = ipaddress.IPv4Address(public)
    except ValueError:
        return None
    data: tuple[tuple[str, Any], ...] = ()
    raw = annotations.get(BACKEND_DATA)
    if raw and raw != "null":
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            data = tuple(sorted(decoded.items()))
    return Lease(str(meta.get("name")), subnet, public_ip, str(backend_type), data)


def own_lease_patch(
    backend_type: str, backend_data: Mapping[str, Any] | None, public_ip: str
) -> dict[str, Any]:
    """The merge patch publishing this node's lease (flannel's `AcquireLease` in kube mode)."""
    data = json.dumps(dict(backend_data), separators=(",", ":")) if backend_data else "null"
    return {
        "metadata": {
            "annotations": {
                BACKEND_TYPE: backend_type,
                BACKEND_DATA: data,
                PUBLIC_IP: public_ip,
                KUBE_SUBNET_MANAGER: "true",
            }
        }
    }


def stored_backend_data(node: Mapping[str, Any]) -> dict[str, Any]:
    """The backend-data this node published before (to reuse its VtepMAC across restarts)."""
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(BACKEND_DATA)
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def drop_overlapping(
    own_node: str, own_subnet: ipaddress.IPv4Network | None, leases: Iterable[Lease]
) -> tuple[list[Lease], list[str]]:
    """Leases safe to program, and why the others are not.

    Node IPAM never hands out one subnet twice; if a lease overlaps this node's subnet or an
    earlier lease (by node name) anyway, programming it would hijack those pods' traffic, so
    it is left out and the reason names both nodes and both subnets.
    """
    kept: list[Lease] = []
    problems: list[str] = []
    for lease in sorted(leases, key=lambda x: x.node):
        if lease.node == own_node:
            continue
        if own_subnet is not None and lease.subnet.overlaps(own_subnet):
            problems.append(
                f"node {lease.node} claims {lease.subnet}, which overlaps this node's "
                f"{own_subnet} ({own_node}); ignoring its lease"
            )
            continue
        clash = next((k for k in kept if k.subnet.overlaps(lease.subnet)), None)
        if clash is not None:
            problems.append(
                f"node {lease.node} claims {lease.subnet}, which overlaps {clash.subnet} of "
                f"node {clash.node}; ignoring its lease"
            )
            continue
        kept.append(lease)
    return kept, problems


@dataclass(frozen=True, slots=True)
class LeaseEvents:
    removed: tuple[Lease, ...] = ()
    added: tuple[Lease, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)


@dataclass
class LeaseWatcher:
    """The leases of every *other* node, and the events that turn one snapshot into the next."""

    own_node: str
    leases: dict[str, Lease] = field(default_factory=dict)

    def reset(self, snapshot: Iterable[Lease]) -> LeaseEvents:
        """Replace everything known with `snapshot` (a fresh list); return the difference."""
        new = {lease.node: lease for lease in snapshot if lease.node != self.own_node}
        removed = [old for name, old in self.leases.items() if new.get(name) != old]
        added = [lease for name, lease in new.items() if self.leases.get(name) != lease]
        self.leases = new
        return LeaseEvents(
            tuple(sorted(removed, key=lambda lease: lease.node)),
            tuple(sorted(added, key=lambda lease: lease.node)),
        )

    def update(self, node: str, lease: Lease | None) -> LeaseEvents:
        """One node changed (`lease` None: deleted or no longer a flannel node)."""
        if node == self.own_node:
            return LeaseEvents()
        old = self.leases.get(node)
        if old == lease:
            return LeaseEvents()
        if lease is None:
            del self.leases[node]
        else:
            self.leases[node] = lease
        return LeaseEvents((old,) if old is not None else (), (lease,) if lease is not None else ())

    def snapshot(self) -> list[Lease]:
        return [self.leases[name] for name in sorted(self.leases)]
