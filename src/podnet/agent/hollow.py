"""Hollow nodes: many simulated nodes in one process, for scale tests (kubemark is the model).

    podnet hollow --kubeconfig K --count 1000 [--prefix hollow-]     (or podnet up --hollow-nodes)

What belongs here: `HollowNodes`, which plays the kubelets of N nodes through the API and
touches nothing else — no namespaces, no links, no processes. Each node is registered, keeps
its Lease and status fresh with the real kubelet's `NodeReporter`, and every pod bound to it
is reported Running and Ready with an IP from the node's podCIDR, its status computed by the
real kubelet's `compute_pod_status`; a pod being deleted is removed (grace 0), as a kubelet
does once its containers stopped. The control plane and the real nodes' kube-proxy therefore
see a cluster of that size: Nodes, Leases, pods with endpoints.

Shape (where it differs from kubemark, and why): kubemark runs one hollow kubelet per node,
each with its own pod watch. Here one process holds every hollow node and one pod watch for
all of them, filtered by node name locally, so 1,000 nodes cost one watch instead of 1,000;
what the server pays per watcher is measured separately (`benchmarks/scale.py`). Likewise one
Node watch hands every node its podCIDR, where each real kubelet polls its Node until node
IPAM assigned one (1,000 nodes polling every 0.2 s swamped the server); the reporters do not
poll.

Invariants:
- Lease renewals are spread evenly over the renew interval (node i starts i/N of it late),
  as independently started kubelets would be, not sent in one burst.
- A pod gets an IP only from its node's podCIDR (set by node IPAM); a pod bound before the
  CIDR is known waits for it. IPs are given out per node in order and never reused while the
  process runs.
- Status writes go through a bounded number of concurrent requests (`writers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from podnet.agent.kubelet.cri import ContainerState
from podnet.agent.kubelet.node import MachineFacts, NodeReporter, Readiness
from podnet.agent.kubelet.status import ContainerView, compute_pod_status, status_changed
from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.reflector import reflect

log = logging.getLogger(__name__)

HOST_IPS = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range: never routed
KUBELET_PORT = 10250
READY = Readiness(True, "KubeletReady", "kubelet is posting ready status (hollow node)")


def hollow_names(prefix: str, count: int, first: int = 1) -> list[str]:
    return [f"{prefix}{index}" for index in range(first, first + count)]


def host_ip(index: int) -> str:
    """The InternalIP of hollow node `index` (1-based) from the benchmarking range."""
    return str(HOST_IPS.network_address + index)


@dataclass
class _Node:
    name: str
    ip: str
    reporter: NodeReporter
    next_host: int = 2  # .1 is the bridge's on a real node
    pod_ips: dict[str, str] = field(default_factory=dict)  # pod uid -> IP

    def ip_for(self, uid: str) -> str | None:
        if uid in self.pod_ips:
            return self.pod_ips[uid]
        cidr = self.reporter.pod_cidr
        if cidr is None:
            return None
        network = ipaddress.ip_network(cidr)
        if self.next_host >= network.num_addresses - 1:
            raise RuntimeError(f"hollow node {self.name}: podCIDR {cidr} is exhausted")
        self.pod_ips[uid] = str(network.network_address + self.next_host)
        self.next_host += 1
        return self.pod_ips[uid]


def running_views(pod: Obj, started: datetime) -> list[ContainerView]:
    """Every container of `pod` running since `started`, ready (no probes are run)."""
    uid = str(pod["metadata"]["uid"])
    views = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        state = ContainerState(
            id=f"hollow-{uid}-{container['name']}",
            pod_uid=uid,
            name=str(container["name"]),
            attempt=0,
            pid=None,
            running=True,
            exit_code=None,
            started_at=started,
            finished_at=None,
            reason=None,
            message=None,
        )
        image = str(container.get("image") or "")
        views.append(ContainerView(state.name, image, image, state, None, ready=True, started=True))
    return views


class HollowNodes:
    """The kubelets of `names`, API only (see the module docstring)."""

    def __init__(
        self,
        api: Api,
        names: list[str],
        *,
        first_index: int = 1,
        lease_duration: int = 40,
        lease_renew_seconds: float = 10.0,
        status_seconds: float = 300.0,
        writers: int = 8,
    ) -> None:
        facts = MachineFacts.read()
        self.api = api
        self.lease_renew_seconds = lease_renew_seconds
        self.nodes: dict[str, _Node] = {}
        for offset, name in enumerate(names):
            ip = host_ip(first_index + offset)
            reporter = NodeReporter(
                api,
                name,
                ip,
                KUBELET_PORT,
                lambda: READY,
                lease_duration=lease_duration,
                lease_renew_seconds=lease_renew_seconds,
                status_seconds=status_seconds,
                facts=facts,
                # the Node watch below hands each node its podCIDR: 1,000 reporters reading
                # their Node every 0.2 s until node IPAM got to them were 5,000 GETs a second
                poll_pod_cidr=False,
            )
            self.nodes[name] = _Node(name, ip, reporter)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pods: dict[str, Obj] = {}  # namespace/name -> latest pod on one of our nodes
        self._queued: set[str] = set()
        self._writers = writers
        self.reported = 0  # status writes made (a progress figure for benchmarks)

    async def registered(self) -> None:
        """Until every node is registered."""
        for node in self.nodes.values():
            await node.reporter.registered.wait()

    def _node_seen(self, kind: str, obj: Obj) -> None:
        """A Node event: hand its podCIDR to its reporter (which does not poll for it); a Node
        whose Ready condition someone else changed (node lifecycle: Unknown, when a Lease came
        late) gets its status written again now, as a kubelet does at its next status sync
        (10 s upstream), not at the hollow nodes' 5-minute report."""
        node = self.nodes.get(str((obj.get("metadata") or {}).get("name") or ""))
        if node is None or kind == "DELETED":
            return
        cidr = (obj.get("spec") or {}).get("podCIDR")
        if cidr:
            node.reporter.pod_cidr = str(cidr)
        conditions = (obj.get("status") or {}).get("conditions") or ()
        ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)
        if ready is not None and ready != "True":
            node.reporter.overwritten()

    def _nodes_listed(self, nodes: list[Obj]) -> None:
        for obj in nodes:
            self._node_seen("ADDED", obj)

    def _ours(self, pod: Obj) -> bool:
        return (pod.get("spec") or {}).get("nodeName") in self.nodes

    def _key(self, pod: Obj) -> str:
        meta = pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    def _offer(self, pod: Obj) -> None:
        key = self._key(pod)
        self._pods[key] = pod
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def _replace(self, pods: list[Obj]) -> None:
        self._pods.clear()
        for pod in pods:
            if self._ours(pod):
                self._offer(pod)

    def _apply(self, kind: str, pod: Obj) -> None:
        if kind == "DELETED":
            self._pods.pop(self._key(pod), None)
        elif self._ours(pod):
            self._offer(pod)

    async def _sync(self, key: str) -> bool:
        """Bring one pod's reported state in line; False when it must wait (no podCIDR)."""
        pod = self._pods.get(key)
        if pod is None:
            return True
        meta, status = pod["metadata"], pod.get("status") or {}
        node = self.nodes[pod["spec"]["nodeName"]]
        if meta.get("deletionTimestamp"):
            with contextlib.suppress(ApiError):  # 404: gone already; 409: a newer pod
                await self.api.delete(
                    "pods", meta["name"], meta["namespace"], grace_period_seconds=0, uid=meta["uid"]
                )
            node.pod_ips.pop(meta["uid"], None)
            return True
        if status.get("phase") in ("Succeeded", "Failed"):
            return True
        ip = node.ip_for(meta["uid"])
        if ip is None:
            return False
        now = datetime.now(UTC)
        new = compute_pod_status(
            pod,
            running_views(pod, now),
            pod_ip=ip,
            host_ip=node.ip,
            start_time=now,
            now=now,
            sandbox_ready=True,
        )
        if status.get("phase") == "Running" and status.get("podIP") == ip:
            return True  # reported already (a later event of a pod we wrote)
        if not status_changed(status, new):
            return True
        with contextlib.suppress(ApiError):  # 404: deleted meanwhile
            await self.api.patch(
                "pods", meta["name"], {"status": new}, meta["namespace"], subresource="status"
            )
            self.reported += 1
        return True

    async def _write(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            key = await self._queue.get()
            self._queued.discard(key)
            try:
                done = await self._sync(key)
            except Exception as exc:  # the API is away: try again shortly
                log.warning("hollow: pod %s: %s: %s", key, type(exc).__name__, exc)
                done = False
            if not done:
                asyncio.get_running_loop().call_later(1.0, self._retry, key)

    def _retry(self, key: str) -> None:
        if key in self._pods and key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def _report(self, node: _Node, delay: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if not stop.is_set():
            await node.reporter.run(stop)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every node until `stop` is set."""
        spread = self.lease_renew_seconds / max(1, len(self.nodes))
        async with asyncio.TaskGroup() as group:
            for index, node in enumerate(self.nodes.values()):
                group.create_task(self._report(node, index * spread, stop))
            workers = [group.create_task(self._write(stop)) for _ in range(self._writers)]
            pods = reflect(
                self.api, "pods", replace=self._replace, apply=self._apply, stop=stop, who="hollow"
            )
            workers.append(group.create_task(pods))  # its watch notices `stop` only on events
            nodes = reflect(
                self.api, "nodes", replace=self._nodes_listed, apply=self._node_seen, stop=stop,
                who="hollow",
            )  # fmt: skip
            workers.append(group.create_task(nodes))
            await stop.wait()
            for worker in workers:
                worker.cancel()
