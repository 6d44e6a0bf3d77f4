"""A trace's input: the cluster's objects and the kernel state of every namespace on the way.

What belongs here: `Snapshot` — the API objects a trace reads (nodes, pods, services,
endpointslices, namespaces, trimmed to what matters), the lab's layout (node namespaces, the
underlay bridge) and, per network namespace, its `Inventory` (links, addresses, routes,
neighbours, fdb, sockets), its iptables-save text, its `nft -a list ruleset` text and its
`-m recent` lists, and where IPVS is loaded its table (`ipvsadm-save -n`) and ipsets (`ipset
save`) — plus `capture_snapshot`, which reads all of that from a live lab through
`podnet.kernel` and the API (a VM node's kernel state, its root namespace and its pods', from
inside the guest: `podnet.trace.guest`), and `to_json` / `from_json`, so a snapshot is saved,
attached to a bug report, replayed (`podnet trace --snapshot FILE`) and used as golden-test
input.

Invariants: `capture_snapshot` only reads (no kernel object, rule or API object changes);
everything else here is pure. A pod's namespace is derived as the kubelet derives it
(`sandbox_netns_name`); a namespace that vanished while it was read is left out, and the
planner then says which one is missing. A VM node's root namespace is keyed by the node's
netns name like any node's (the guest has no such namespace; the name stands for it).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podnet.agent.kubelet.sandbox import sandbox_netns_name
from podnet.config import ClusterConfig
from podnet.kernel import netns as netns_ops
from podnet.kernel.conntrack import Conntrack, ConntrackError
from podnet.kernel.inventory import (
    Inventory,
    InventoryError,
    inventory_from_dict,
    inventory_to_dict,
    read_inventory,
    read_recent,
    restrict,
)
from podnet.kernel.rules import IptablesRunner, NftRunner, RuleLoadError

Obj = dict[str, Any]
SCHEMA = 1
RESOURCES = ("nodes", "pods", "services", "endpointslices", "namespaces", "networkpolicies")
SERVICE_LABEL = "kubernetes.io/service-name"
# what reading a namespace's state raises when the kernel or a tool cannot answer
READ_ERRORS = (InventoryError, RuleLoadError, ConntrackError, netns_ops.NetnsError)
TUNNEL_PORTS = (8285,)  # flannel udp: fixed ports both ways, so its flows outlive one packet


class SnapshotError(Exception):
    """The lab's state could not be read (API down, namespace gone, bad snapshot file)."""


@dataclass(frozen=True, slots=True)
class NamespaceState:
    """One network namespace as the trace sees it."""

    inventory: Inventory
    iptables: str = ""  # iptables-save (node namespaces)
    nft: str = ""  # nft -a list ruleset
    # `-m recent` lists: source -> seconds since last seen
    recent: dict[str, dict[str, float]] = field(default_factory=dict)
    # conntrack's UDP flows between overlay ports ("src:sport dst:dport"): whether a tunnel
    # packet is the first of its flow (nat chains see it) or not
    tunnel_flows: tuple[str, ...] = ()
    # conntrack's ICMP flows ("src dst"): vxlan hashes an ICMP packet's addresses only (not
    # the echo id) into the outer source port, so ICMP between two pods shares one outer
    # flow per direction, alive as long as such an ICMP flow
    icmp_flows: tuple[str, ...] = ()
    ipvs: str = ""  # ipvsadm-save -n (a node whose kernel has IP_VS)
    ipsets: str = ""  # ipset save (with `ipvs`)


@dataclass(frozen=True, slots=True)
class NodeLayout:
    name: str
    netns: str  # a VM node's: the name its guest's root namespace goes by in `namespaces`
    ip: str  # underlay address
    tap: str = ""  # a VM node: its tap on the host's underlay bridge (the guest's eth0)

    @property
    def vm(self) -> bool:
        return bool(self.tap)


@dataclass(frozen=True, slots=True)
class Snapshot:
    lab: str
    backend: str
    proxy_mode: str
    cluster_cidr: str
    service_cidr: str
    cluster_domain: str
    bridge: str  # the underlay bridge in the host namespace
    host_ip: str
    nodes: tuple[NodeLayout, ...]
    api: dict[str, list[Obj]]  # resource -> trimmed objects
    namespaces: dict[str, NamespaceState]  # netns name ("" = the host) -> state
    state_dir: str = ""  # the lab's state dir (VM nodes are reached through its control ports)

    def node(self, name: str) -> NodeLayout | None:
        return next((n for n in self.nodes if n.name == name), None)

    def node_by_netns(self, netns: str) -> NodeLayout | None:
        """The node whose namespace `netns` is, or whose pod's (`pod_netns`: the node's name
        and a dash lead; the longest such lead wins, as node1's does not over node1-b's)."""
        found = [n for n in self.nodes if f"{netns}-".startswith(f"{n.netns}-")]
        return max(found, key=lambda n: len(n.netns), default=None)

    def objects(self, resource: str) -> list[Obj]:
        return self.api.get(resource, [])

    def ready_endpoints(self, namespace: str, service: str) -> list[tuple[str, str, int]]:
        """(address, port name, port) of the Service's ready endpoints, from its slices."""
        out: list[tuple[str, str, int]] = []
        for sl in self.objects("endpointslices"):
            meta = sl.get("metadata") or {}
            labels = meta.get("labels") or {}
            if meta.get("namespace") != namespace or labels.get(SERVICE_LABEL) != service:
                continue
            for port in sl.get("ports") or [{}]:
                for ep in sl.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    out += [
                        (str(a), str(port.get("name") or ""), int(port.get("port") or 0))
                        for a in ep.get("addresses") or []
                    ]
        return out

    def pod_netns(self, pod: Obj) -> str | None:
        """The sandbox namespace of a pod bound to a node of this lab."""
        node = self.node(str((pod.get("spec") or {}).get("nodeName") or ""))
        uid = (pod.get("metadata") or {}).get("uid")
        if node is None or not uid:
            return None
        return sandbox_netns_name(f"{node.netns}-", str(uid))


def _trim(resource: str, obj: Obj) -> Obj:
    """What a trace reads of an object (no managedFields, no pod templates)."""
    meta = obj.get("metadata") or {}
    kept: Obj = {
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "labels", "annotations", "deletionTimestamp")
            if k in meta
        }
    }
    if resource == "pods":
        spec = obj.get("spec") or {}
        kept["spec"] = {
            "nodeName": spec.get("nodeName"),
            "hostNetwork": spec.get("hostNetwork", False),
            "containers": [
                {"name": c.get("name"), "ports": c.get("ports") or []}
                for c in spec.get("containers") or []
            ],
        }
        status = obj.get("status") or {}
        kept["status"] = {k: status[k] for k in ("phase", "podIP", "podIPs") if k in status}
    elif resource == "endpointslices":
        kept.update({k: obj[k] for k in ("addressType", "endpoints", "ports") if k in obj})
    elif resource == "nodes":
        kept["spec"] = {"podCIDR": (obj.get("spec") or {}).get("podCIDR")}
        kept["status"] = {"addresses": (obj.get("status") or {}).get("addresses") or []}
    elif resource in ("services", "networkpolicies"):
        kept["spec"] = obj.get("spec") or {}
    return kept


async def read_api(kubeconfig: Path) -> dict[str, list[Obj]]:
    from podnet.api.client import HttpApi

    api = HttpApi.from_kubeconfig(kubeconfig, component="podnet-trace")
    try:
        listed = await asyncio.gather(*(api.list(r) for r in RESOURCES))
    except Exception as exc:
        raise SnapshotError(f"reading the cluster from the API failed: {exc}") from exc
    finally:
        await api.close()
    return {
        r: [_trim(r, o) for o in items.get("items") or []]
        for r, items in zip(RESOURCES, listed, strict=True)
    }


def read_namespace(name: str | None, rules: bool, listing: bool = True) -> NamespaceState:
    """One namespace's state (None: the caller's); with `rules`, also its iptables rules,
    `-m recent` lists, tunnel flows and, where the kernel has IP_VS, its IPVS table and
    ipsets; with `listing`, its nft ruleset (a pod's: for `--verify`)."""
    from podnet.kernel.ipvs import IpsetRunner, IpvsRunner

    inventory = read_inventory(name)
    nft = NftRunner(name).list_ruleset() if listing else ""
    if not rules:
        return NamespaceState(inventory, nft=nft)
    tracked = Conntrack(name).flows()
    flows = tuple(
        sorted(
            f"{f.src}:{f.sport} {f.dst}:{f.dport}"
            for f in tracked
            if f.protocol == socket.IPPROTO_UDP
            and (f.sport in TUNNEL_PORTS or f.dport in TUNNEL_PORTS)
        )
    )
    icmp = tuple(sorted({f"{f.src} {f.dst}" for f in tracked if f.protocol == socket.IPPROTO_ICMP}))
    iptables = IptablesRunner(name).save()
    ipvs = IpvsRunner(name)
    table, sets = (ipvs.save(), IpsetRunner(name).save()) if ipvs.available() else ("", "")
    return NamespaceState(inventory, iptables, nft, read_recent(name), flows, icmp, table, sets)


def read_pod(name: str, listing: bool) -> NamespaceState | None:
    """A pod's namespace (links, addresses; its nft ruleset with `listing`), or None when
    the pod went away while it was read (or before)."""
    try:
        return read_namespace(name, rules=False, listing=listing)
    except InventoryError:
        if netns_ops.exists(name):
            raise
        return None


def read_host(bridge: str) -> NamespaceState:
    """The host's underlay bridge and its ports (nothing else of the host)."""
    host = read_inventory(None)
    found = host.link_named(bridge)
    if found is None:
        raise SnapshotError(f"the underlay bridge {bridge} does not exist (is the lab up?)")
    ports = {lk.index for lk in host.links if lk.master == found.index} | {found.index}
    return NamespaceState(restrict(host, ports))


def cluster_snapshot(
    plan: Any, api: dict[str, list[Obj]] | None = None, cluster: ClusterConfig | None = None
) -> Snapshot:
    """The lab's layout and API objects, no namespace read yet (enough to resolve FROM/TO)."""
    # the lab's pod network (larger than the default with > 256 nodes; older plans have none)
    cluster = cluster or ClusterConfig(
        cluster_cidr=getattr(plan, "cluster_cidr", None) or ClusterConfig().cluster_cidr
    )
    if api is None:
        api = asyncio.run(read_api(Path(plan.server_kubeconfig)))
    return Snapshot(
        lab=plan.name,
        backend=plan.backend,
        proxy_mode=plan.proxy_mode,
        cluster_cidr=cluster.cluster_cidr,
        service_cidr=cluster.service_cidr,
        cluster_domain=cluster.cluster_domain,
        bridge=plan.bridge,
        host_ip=plan.host_ip,
        nodes=tuple(
            NodeLayout(n.name, n.netns, n.ip, n.host_veth if n.vm else "") for n in plan.nodes
        ),
        api=api,
        namespaces={},
        state_dir=plan.state_dir,
    )


def capture_snapshot(
    snap: Snapshot, pods: Iterable[str] | None = None, rules: bool = True
) -> Snapshot:
    """`snap` with its namespaces read: every node's (with its rules, unless `rules` is
    False: a picture needs only links and addresses), the host's underlay bridge, and the
    namespaces of `pods` ("ns/name"; None: every pod of the lab). A VM node's, and its pods',
    are read inside its guest, all in one request (`podnet.trace.guest`)."""
    from podnet.trace.guest import GuestError, read_guest

    wanted = None if pods is None else set(pods)
    pod_names = []
    in_guest: dict[str, list[str]] = {n.name: [] for n in snap.nodes if n.vm}
    for pod in snap.objects("pods"):
        meta = pod["metadata"]
        name = snap.pod_netns(pod)
        if name is not None and (
            wanted is None or f"{meta.get('namespace')}/{meta.get('name')}" in wanted
        ):
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            if node in in_guest:
                in_guest[node].append(name)
            else:
                pod_names.append(name)

    # each namespace is read by its own tools (iptables-save, nft, netlink): in parallel
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            host = pool.submit(read_host, snap.bridge)
            nodes = {
                n.netns: pool.submit(read_namespace, n.netns, rules, rules)
                for n in snap.nodes
                if not n.vm
            }
            guests = [
                pool.submit(read_guest, snap.state_dir, n, in_guest[n.name], rules)
                for n in snap.nodes
                if n.vm
            ]
            found = {name: pool.submit(read_pod, name, rules) for name in pod_names}
            states: dict[str, NamespaceState] = {"": host.result()}
            states.update({name: future.result() for name, future in nodes.items()})
            for guest in guests:
                states.update(guest.result())
            for name, future in found.items():
                state = future.result()
                if state is not None:
                    states[name] = state
    except (*READ_ERRORS, GuestError) as exc:
        raise SnapshotError(str(exc)) from exc
    return Snapshot(**{**_fields(snap), "namespaces": states})


def _fields(snap: Snapshot) -> dict[str, Any]:
    return {name: getattr(snap, name) for name in Snapshot.__slots__}


def state_to_dict(state: NamespaceState) -> dict[str, Any]:
    return {
        "inventory": inventory_to_dict(state.inventory),
        "iptables": state.iptables,
        "nft": state.nft,
        "recent": {k: dict(v) for k, v in state.recent.items()},
        "tunnel_flows": list(state.tunnel_flows),
        "icmp_flows": list(state.icmp_flows),
        "ipvs": state.ipvs,
        "ipsets": state.ipsets,
    }


def _recent_list(raw: list[str] | dict[str, float]) -> dict[str, float]:
    """A recent list as saved: sources with their ages (older snapshots: sources only)."""
    if isinstance(raw, list):
        return dict.fromkeys(raw, 0.0)
    return {str(k): float(v) for k, v in raw.items()}


def state_from_dict(raw: dict[str, Any]) -> NamespaceState:
    """The inverse of `state_to_dict` (fields added since schema 1 may be missing)."""
    return NamespaceState(
        inventory_from_dict(raw["inventory"]),
        raw["iptables"],
        raw["nft"],
        {k: _recent_list(v) for k, v in raw["recent"].items()},
        tuple(raw["tunnel_flows"]),
        tuple(raw.get("icmp_flows", ())),
        str(raw.get("ipvs", "")),
        str(raw.get("ipsets", "")),
    )


def to_json(snap: Snapshot) -> str:
    raw = _fields(snap)
    raw["schema"] = SCHEMA
    raw["nodes"] = [
        {"name": n.name, "netns": n.netns, "ip": n.ip, **({"tap": n.tap} if n.tap else {})}
        for n in snap.nodes
    ]
    raw["namespaces"] = {
        name: state_to_dict(state) for name, state in sorted(snap.namespaces.items())
    }
    return json.dumps(raw, sort_keys=True, separators=(",", ":")) + "\n"


def from_json(text: str) -> Snapshot:
    try:
        raw = json.loads(text)
        if raw.pop("schema", None) != SCHEMA:
            raise SnapshotError(f"not a podnet trace snapshot of schema {SCHEMA}")
        raw["nodes"] = tuple(NodeLayout(**n) for n in raw["nodes"])
        raw["namespaces"] = {
            name: state_from_dict(state) for name, state in raw["namespaces"].items()
        }
        return Snapshot(**raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"not a podnet trace snapshot: {exc}") from exc
