"""Node registration, node status and the Lease heartbeat of one kubelet.

What belongs here: the pure rendering of this node's labels and `status` (addresses, capacity,
nodeInfo, daemon endpoint, conditions with upstream reasons and messages), facts read from the
machine (/proc, /etc/os-release), and `NodeReporter`, which registers the Node, renews
`kube-node-lease/<node>` every ~10 s, refreshes the status every 10 s or when readiness
changes, and watches for `spec.podCIDR` (set by the server's node IPAM) for the pod loop.

Invariants:
- The kubelet never writes `spec` of its Node (podCIDR belongs to node IPAM); it writes labels
  on register and `status` through `nodes/status`.
- A condition's lastTransitionTime changes only when its status changes; lastHeartbeatTime is
  the time of each status write.
- Ready is True only while the kubelet's pod loop has synced and, when an overlay backend runs,
  the network is up (flannel wrote subnet.env).
- A failed write is retried after a jittered back-off (0.2 s doubling to 7 s), never at once;
  a failure that repeats is logged once per 30 s with a count (`podnet.retry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.meta import rfc3339
from podnet.retry import Backoff, Retry, ThrottledLog, first_of, sleep_or_stop

log = logging.getLogger("podnet.kubelet.node")

KUBELET_VERSION = "v1.32.0-podnet"
RUNTIME_VERSION = "podnet://0.1"
MAX_PODS = 110
LEASE_NAMESPACE = "kube-node-lease"
# a failed lease/status write is retried after 0.2 s doubling to 7 s, jittered (upstream's
# lease controller); the Lease lasts 40 s, so a short API outage never expires it
RETRY = Backoff(0.2, 7.0)


def go_arch(machine: str) -> str:
    """Kubernetes' architecture names (GOARCH) for platform.machine()."""
    return {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine.lower(), machine.lower())


@dataclass(frozen=True, slots=True)
class MachineFacts:
    cpus: int
    memory_kib: int
    kernel_version: str
    os_image: str
    architecture: str
    machine_id: str
    boot_id: str

    @classmethod
    def read(cls) -> MachineFacts:
        return cls(
            cpus=os.cpu_count() or 1,
            memory_kib=_mem_total_kib(),
            kernel_version=platform.release(),
            os_image=_os_image(),
            architecture=go_arch(platform.machine()),
            machine_id=_read_first_line(Path("/etc/machine-id")),
            boot_id=_read_first_line(Path("/proc/sys/kernel/random/boot_id")),
        )


def _read_first_line(path: Path) -> str:
    try:
        return path.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return ""


def _mem_total_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def node_labels(node_name: str, facts: MachineFacts) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": facts.architecture,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": facts.architecture,
    }


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str
    message: str


_PRESSURE = (
    ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
)


def node_resources(facts: MachineFacts) -> dict[str, str]:
    """The node's capacity, which is also its allocatable (no reservations): what its status
    reports and what a container's `resourceFieldRef` to an unset limit resolves to."""
    return {"cpu": str(facts.cpus), "memory": f"{facts.memory_kib}Ki", "pods": str(MAX_PODS)}


def render_node_status(
    *,
    node_name: str,
    node_ip: str,
    kubelet_port: int,
    facts: MachineFacts,
    readiness: Readiness,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The Node `status` the kubelet writes (pure)."""
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    stamp = rfc3339(now)

    def condition(kind: str, value: bool, reason: str, message: str) -> dict[str, Any]:
        status = "True" if value else "False"
        prior = old.get(kind)
        transition = (
            prior["lastTransitionTime"]
            if prior and prior.get("status") == status and prior.get("lastTransitionTime")
            else stamp
        )
        return {
            "type": kind,
            "status": status,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": transition,
            "reason": reason,
            "message": message,
        }

    resources = node_resources(facts)
    conditions = [condition(kind, False, reason, msg) for kind, reason, msg in _PRESSURE]
    conditions.append(condition("Ready", readiness.ready, readiness.reason, readiness.message))
    return {
        "addresses": [
            {"type": "InternalIP", "address": node_ip},
            {"type": "Hostname", "address": node_name},
        ],
        "capacity": dict(resources),
        "allocatable": dict(resources),
        "conditions": conditions,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.machine_id,
            "bootID": facts.boot_id,
            "kernelVersion": facts.kernel_version,
            "osImage": facts.os_image,
            "containerRuntimeVersion": RUNTIME_VERSION,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": facts.architecture,
        },
    }


def render_lease(node_name: str, node_uid: str | None, duration: int, now: datetime) -> Obj:
    lease: Obj = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node_name, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": duration,
            "renewTime": rfc3339(now, 6),
        },
    }
    if node_uid:
        lease["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}
        ]
    return lease


def _significant(status: Mapping[str, Any]) -> Any:
    """A node status without heartbeat times, to tell a real change from a heartbeat."""
    conditions = [
        {k: v for k, v in c.items() if k != "lastHeartbeatTime"}
        for c in status.get("conditions") or ()
    ]
    return {**status, "conditions": conditions}


class NodeReporter:
    """Registers the Node, keeps its status and Lease fresh, and tracks its podCIDR."""

    def __init__(
        self,
        api: Api,
        node_name: str,
        node_ip: str,
        kubelet_port: int,
        readiness: Callable[[], Readiness],
        *,
        lease_duration: int = 40,
        lease_renew_seconds: float = 10.0,
        status_seconds: float = 10.0,
        on_pod_cidr: Callable[[str], None] | None = None,
        facts: MachineFacts | None = None,
        poll_pod_cidr: bool = True,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.node_ip = node_ip
        self.kubelet_port = kubelet_port
        self.readiness = readiness
        self.lease_duration = lease_duration
        self.lease_renew_seconds = lease_renew_seconds
        self.status_seconds = status_seconds
        self.on_pod_cidr = on_pod_cidr
        # False: the caller hands over the podCIDR from a Node watch of its own (hollow nodes)
        self.poll_pod_cidr = poll_pod_cidr
        self.facts = facts or MachineFacts.read()
        self.pod_cidr: str | None = None
        self.node_uid: str | None = None
        self.registered = asyncio.Event()
        self._changed = asyncio.Event()
        self._last_status: dict[str, Any] | None = None
        self._errors = ThrottledLog(log)

    def poke(self) -> None:
        """Something that affects readiness changed: refresh the status soon."""
        self._changed.set()

    def overwritten(self) -> None:
        """Someone else changed the Node's status (node lifecycle set Ready Unknown): write
        this node's own again soon, even though it did not change here."""
        self._last_status = None
        self._changed.set()

    async def register(self) -> Obj:
        """Create the Node, or update the labels of an existing one; then write its status."""
        labels = node_labels(self.node_name, self.facts)
        try:
            node = await self.api.get("nodes", self.node_name)
        except ApiError as exc:
            if exc.code != 404:
                raise
            body: Obj = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": self.node_name, "labels": labels},
                "spec": {},
            }
            try:
                node = await self.api.create("nodes", body)
                log.info("registered node %s (%s)", self.node_name, self.node_ip)
            except ApiError as create_exc:
                if create_exc.code != 409:
                    raise
                node = await self.api.get("nodes", self.node_name)
        else:
            current = (node.get("metadata") or {}).get("labels") or {}
            if any(current.get(k) != v for k, v in labels.items()):
                node = await self.api.patch(
                    "nodes", self.node_name, {"metadata": {"labels": labels}}
                )
            log.info("node %s already registered; updating it", self.node_name)
        self.node_uid = str((node.get("metadata") or {}).get("uid") or "") or None
        self._observe(node)
        await self.write_status(node.get("status"))
        self.registered.set()
        return node

    def _observe(self, node: Mapping[str, Any]) -> None:
        cidr = (node.get("spec") or {}).get("podCIDR")
        if cidr and cidr != self.pod_cidr:
            self.pod_cidr = str(cidr)
            log.info("node %s has pod CIDR %s", self.node_name, cidr)
            if self.on_pod_cidr is not None:
                self.on_pod_cidr(self.pod_cidr)

    async def write_status(
        self, previous: Mapping[str, Any] | None = None, force: bool = True
    ) -> None:
        status = render_node_status(
            node_name=self.node_name,
            node_ip=self.node_ip,
            kubelet_port=self.kubelet_port,
            facts=self.facts,
            readiness=self.readiness(),
            previous=previous if previous is not None else self._last_status,
            now=datetime.now(UTC),
        )
        if (
            not force
            and self._last_status is not None
            and _significant(status) == _significant(self._last_status)
        ):
            return
        node = await self.api.patch(
            "nodes", self.node_name, {"status": status}, subresource="status"
        )
        self._last_status = status
        self._observe(node)

    async def renew_lease(self) -> None:
        lease = render_lease(self.node_name, self.node_uid, self.lease_duration, datetime.now(UTC))
        try:
            await self.api.patch(
                "leases", self.node_name, {"spec": lease["spec"]}, namespace=LEASE_NAMESPACE
            )
        except ApiError as exc:
            if exc.code != 404:
                raise
            await self.api.create("leases", lease, namespace=LEASE_NAMESPACE)

    async def run(self, stop: asyncio.Event) -> None:
        retry = Retry(RETRY)
        while not stop.is_set():
            try:
                await self.register()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = retry.next()
                self._errors.failed(
                    "register",
                    "cannot register node %s (%s: %s); retrying in %.1fs",
                    self.node_name, type(exc).__name__, exc, delay,
                )  # fmt: skip
                await sleep_or_stop(stop, delay)
        retry.reset()
        loop = asyncio.get_running_loop()
        next_lease = next_status = loop.time()
        while not stop.is_set():
            now = loop.time()
            try:
                await self._tick(now >= next_lease, now >= next_status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # back off (jittered) from the failed call: the timers are still due, and
                # retrying at once spins while the API server is down
                delay = retry.next()
                self._errors.failed(
                    "status", "node status update failed (%s: %s); retrying in %.1fs",
                    type(exc).__name__, exc, delay,
                )  # fmt: skip
                await sleep_or_stop(stop, delay)
                continue
            if retry.failures:
                retry.reset()
                self._errors.recovered("status", "node %s status and lease written again",
                                       self.node_name)  # fmt: skip
            if now >= next_lease:
                next_lease = now + self.lease_renew_seconds
            if now >= next_status:
                next_status = now + self.status_seconds
            # poll quickly until node IPAM assigned the podCIDR, then only on the timers
            polling = self.pod_cidr is None and self.poll_pod_cidr
            wait = 0.2 if polling else min(next_lease, next_status) - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await first_of(stop, self._changed)

    async def _tick(self, lease_due: bool, status_due: bool) -> None:
        """One round: renew the Lease and write the status when due (or readiness changed);
        until the podCIDR is known, read the Node. A deleted Node is registered again."""
        try:
            if lease_due:
                await self.renew_lease()
            if status_due or self._changed.is_set():
                self._changed.clear()
                await self.write_status(force=status_due)
            elif self.pod_cidr is None and self.poll_pod_cidr:
                self._observe(await self.api.get("nodes", self.node_name))
        except ApiError as exc:
            if exc.code != 404:
                raise
            log.warning("node %s was deleted from the API; registering it again", self.node_name)
            await self.register()
