"""Node IPAM: gives every Node its own pod subnet (`spec.podCIDR`, `spec.podCIDRs`).

What belongs here: the pure planner `plan_node_cidrs` and `NodeIpamController`.

Decisions (documented for the flannel and CNI code, which take `spec.podCIDR` as is):
- Subnets are carved from `config.cluster_cidr` in address order with `config.node_cidr_mask`;
  the first node gets the first subnet (10.244.0.0/24 by default), exactly like upstream's
  range allocator (kind's first node has 10.244.0.0/24). The bridge gateway is .1 of it.
- A node that already has a podCIDR keeps it (upstream: immutable once set); its subnet is
  never handed to another node. Nodes waiting for a subnet are served oldest first.
- A node deleted and registered again under the same name gets its previous subnet back if it
  is still free (remembered in memory; after a server restart it simply gets the first free).
- The assignment is a PUT carrying the resourceVersion the plan saw: a concurrent change to
  that node fails with 409 and the node is planned again from fresh state. Subnets this
  controller assigned are counted as used until its cache shows them, so two joins in a row
  never get the same subnet, also with several workers. (Several servers on one etcd run
  controllers under one leader lease, see `manager.py`, so there is one allocator at a time.)
- An exhausted cluster CIDR leaves the node without a subnet and logs what to change.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
from collections.abc import Iterator
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.controllers.controller import Controller
from podnet.controllers.informer import EventType
from podnet.controllers.objects import name_of

log = logging.getLogger(__name__)


def node_pod_cidr(node: Obj) -> str:
    spec = node.get("spec") or {}
    return str(spec.get("podCIDR") or (spec.get("podCIDRs") or [""])[0] or "")


def node_subnets(cluster_cidr: str, mask: int) -> Iterator[str]:
    network = ipaddress.ip_network(cluster_cidr)
    if mask < network.prefixlen:
        raise ValueError(f"node_cidr_mask /{mask} is larger than the cluster CIDR {cluster_cidr}")
    for subnet in network.subnets(new_prefix=mask):
        yield str(subnet)


def _is_node_subnet(cidr: str, cluster_cidr: str, mask: int) -> bool:
    try:
        net = ipaddress.ip_network(cidr)
        cluster = ipaddress.ip_network(cluster_cidr)
    except ValueError:
        return False
    return net.version == cluster.version and net.prefixlen == mask and net.subnet_of(cluster)  # type: ignore[arg-type]


def plan_node_cidrs(
    nodes: list[Obj],
    cluster_cidr: str,
    mask: int,
    remembered: dict[str, str] | None = None,
    in_flight: dict[str, str] | None = None,
) -> dict[str, str]:
    """node name -> subnet, for every node that has none yet (oldest first)."""
    remembered = remembered or {}
    in_flight = in_flight or {}
    used = {node_pod_cidr(n) for n in nodes if node_pod_cidr(n)}
    used |= set(in_flight.values())
    waiting = sorted(
        (n for n in nodes if not node_pod_cidr(n) and name_of(n) not in in_flight),
        key=lambda n: (str((n.get("metadata") or {}).get("creationTimestamp") or ""), name_of(n)),
    )
    plan: dict[str, str] = {}
    if not waiting:
        return plan
    subnets = node_subnets(cluster_cidr, mask)
    for node in waiting:
        name = name_of(node)
        previous = remembered.get(name)
        if previous and _is_node_subnet(previous, cluster_cidr, mask) and previous not in used:
            choice: str | None = previous
        else:
            choice = next((s for s in subnets if s not in used), None)
        if choice is None:
            break
        used.add(choice)
        plan[name] = choice
    return plan


class NodeIpamController(Controller):
    name = "nodeipam"
    # upstream's range allocator writes with 30 workers (cidrUpdateWorkers): one at a time, a
    # thousand nodes joining wait a write each (1,000 hollow nodes: 300 s for every podCIDR).
    # Planning and marking in flight happen without an await in between, so two workers
    # never plan the same subnet.
    workers = 30

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes = self.informers.informer("nodes")
        self.nodes.add_handler(self._on_node)
        self.remembered: dict[str, str] = {}
        self.in_flight: dict[str, str] = {}
        node_subnets(self.config.cluster_cidr, self.config.node_cidr_mask)  # validate early

    def all_keys(self) -> list[str]:
        return [name_of(n) for n in self.nodes.items() if not node_pod_cidr(n)]

    def _on_node(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if new is None:
            assert old is not None
            if node_pod_cidr(old):
                self.remembered[name_of(old)] = node_pod_cidr(old)
            self.in_flight.pop(name_of(old), None)
            return
        if node_pod_cidr(new):
            self.in_flight.pop(name_of(new), None)
        else:
            self.queue.add(name_of(new))

    async def reconcile(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None or node_pod_cidr(node) or key in self.in_flight:
            return
        plan = plan_node_cidrs(
            self.nodes.items(),
            self.config.cluster_cidr,
            self.config.node_cidr_mask,
            self.remembered,
            self.in_flight,
        )
        cidr = plan.get(key)
        if cidr is None:
            log.error(
                "nodeipam: no free /%d left in %s for node %s; widen --cluster-cidr or "
                "remove nodes",
                self.config.node_cidr_mask,
                self.config.cluster_cidr,
                key,
            )
            return
        updated = copy.deepcopy(node)
        spec = updated.setdefault("spec", {})
        spec["podCIDR"] = cidr
        spec["podCIDRs"] = [cidr]
        self.in_flight[key] = cidr
        try:
            await self.api.update("nodes", updated)
        except ApiError as e:
            self.in_flight.pop(key, None)
            if e.code == 404:
                return
            raise
        self.remembered.pop(key, None)
        log.info("nodeipam: node %s gets podCIDR %s", key, cidr)
