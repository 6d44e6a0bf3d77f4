"""One pod brought to what its spec asks, on this node: sandbox, containers, probes, status.

What belongs here: `PodRecord` (what the kubelet remembers of a pod between syncs),
`ContainerIndex` (which containers are whose) and `PodSync`, which makes one pod match
(upstream's SyncPod / SyncTerminatingPod): it applies the pure container decisions
(`decisions.py`) through the sandboxes (`sandbox.Sandboxes`) and the container runtime
(`cri.ContainerRuntime`), runs the probes, and writes the pod's status (`status.py`). What the
containers are comes from `podspec.py`, the pod's hosts/resolv.conf from `dnsconfig.py`, the
files of the volumes the kubelet fills from `podvolumes.PodVolumes` (written before the first
container starts, refreshed on every sync).
When a pod is synced is `pods.PodManager`'s business.

Invariants:
- Containers of a pod start only after its sandbox exists, and the sandbox only once the node
  has `spec.podCIDR`.
- A running container is never restarted by an agent restart: decisions start from the
  runtime's on-disk state, and a running current attempt is left alone unless liveness fails.
- Restart and image-pull back-off per container (`decisions.py`); the record keeps the entries.
- The runtime keeps the current and the previous attempt of each container (lastState and
  `logs --previous`); older attempts are removed when a new one starts.
- Status is written (merge patch on `pods/status`) only when it differs from the API's.
- `sync` never raises: a failed sync (sandbox, status write, anything raised) is retried after
  a jittered back-off per pod (0.5 s doubling to 10 s), never at once; repeats are logged once
  per 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from podnet.agent.drain import drained
from podnet.agent.kubelet.cri import (
    ContainerNotFound,
    ContainerRuntime,
    ContainerState,
    ImageError,
    Sandbox,
)
from podnet.agent.kubelet.decisions import (
    START_FAILURE_RECHECK,
    BackOff,
    Decision,
    Runs,
    StartFailure,
    latest_runs,
    next_backoff,
    plan_container,
)
from podnet.agent.kubelet.dnsconfig import pod_dns_files
from podnet.agent.kubelet.events import NORMAL, WARNING, PodEvents
from podnet.agent.kubelet.node import MachineFacts, node_resources
from podnet.agent.kubelet.podspec import (
    EnvSourceError,
    EnvSources,
    container_config,
    container_probes,
    env_needs,
)
from podnet.agent.kubelet.podvolumes import PodVolumes
from podnet.agent.kubelet.probes import Prober, ProbeTarget
from podnet.agent.kubelet.sandbox import Sandboxes, SandboxRecord
from podnet.agent.kubelet.services import ServiceLister
from podnet.agent.kubelet.status import (
    TERMINAL_PHASES,
    ContainerView,
    compute_pod_status,
    status_changed,
)
from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.config import ClusterConfig
from podnet.dns.resolvconf import read_resolv_conf
from podnet.retry import Backoff, Retry, ThrottledLog

log = logging.getLogger("podnet.kubelet")

# two threads: sandboxes are CPU- and netlink-bound, and one hung kernel call must not stop
# every other pod of the node from getting its sandbox
SANDBOX_THREADS = 2
DRAIN_POLL_SECONDS = 0.2  # endpoint drain: how often the proxies' reports are read
SANDBOX_TIMEOUT = 30.0
SYNC_RETRY = Backoff(0.5, 10.0)  # a failed pod sync; 10 s: upstream's pod worker back-off
T = TypeVar("T")


@dataclass(slots=True)
class PodRecord:
    """What the kubelet remembers of one pod between syncs (kept until nothing of it is left:
    a pod deleted from the API still has a record until its containers and sandbox are gone)."""

    uid: str
    label: str = ""  # namespace/name, kept for log lines after the object is gone
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sandbox: SandboxRecord | None = None
    backoffs: dict[str, BackOff] = field(default_factory=dict)
    start_failures: dict[str, StartFailure] = field(default_factory=dict)
    terminal_phase: str | None = None
    last_status: dict[str, Any] | None = None  # the status we last wrote
    written_on: object = None  # resourceVersion of the pod object that write was based on
    start_time: datetime | None = None
    seed_ready: set[str] = field(default_factory=set)  # adopted container ids that were ready
    killed: set[str] = field(default_factory=set)  # container ids killed by liveness
    backoff_told: set[str] = field(default_factory=set)  # crashed runs a BackOff event named
    # failed syncs (sandbox, status write, anything raised) are retried after this back-off
    retry: Retry = field(default_factory=lambda: Retry(SYNC_RETRY))


def _now() -> datetime:
    return datetime.now(UTC)


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _containers(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The pod's containers by name, in spec order."""
    return {str(c["name"]): c for c in (pod.get("spec") or {}).get("containers") or ()}


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


class ContainerIndex:
    """The container ids of each pod: from `start()` and, after an agent restart, one
    `runtime.list()`; so a sync inspects only its own pod's containers, not the node's."""

    def __init__(self, runtime: ContainerRuntime) -> None:
        self.runtime = runtime
        self._by_pod: dict[str, set[str]] = {}

    def add(self, pod_uid: str, container_id: str) -> None:
        self._by_pod.setdefault(pod_uid, set()).add(container_id)

    def discard(self, pod_uid: str, container_id: str) -> None:
        self._by_pod.get(pod_uid, set()).discard(container_id)

    def drop(self, pod_uid: str) -> None:
        self._by_pod.pop(pod_uid, None)

    def pods(self) -> list[str]:
        return list(self._by_pod)

    def runs(self, pod_uid: str) -> list[ContainerState]:
        """The runtime's state of this pod's containers (cheap: one inspect per container)."""
        runs = []
        for cid in sorted(self._by_pod.get(pod_uid, ())):
            try:
                runs.append(self.runtime.inspect(cid))
            except ContainerNotFound:  # removed
                self._by_pod[pod_uid].discard(cid)
        return runs


class PodSync:
    """Makes pods of this node match their specs, one `sync(record, pod)` at a time each."""

    def __init__(
        self,
        api: Api,
        node_ip: str,
        runtime: ContainerRuntime,
        sandboxes: Sandboxes,
        *,
        pod_cidr: Callable[[], str | None],
        wake: Callable[[str], None],
        cluster: ClusterConfig,
        services: ServiceLister,
        volumes: PodVolumes,
        resolv_conf: Path | None,
        backoff_base: float,
        backoff_cap: float,
        events: PodEvents | None = None,
    ) -> None:
        self.api = api
        self.node_ip = node_ip
        self.events = events  # why containers do not run, for `kubectl describe pod`
        self.runtime = runtime
        self.sandboxes = sandboxes
        self.pod_cidr = pod_cidr
        self.wake = wake  # sync this pod again soon (the manager's worker does it)
        self.cluster = cluster
        self.services = services  # for the containers' Service variables
        self.volumes = volumes  # the volumes the kubelet fills (tokens, ConfigMaps, ...)
        self.resolv_conf = resolv_conf  # the node's, for dnsPolicy Default (None: no file)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.containers = ContainerIndex(runtime)
        self._node_allocatable: dict[str, str] | None = None
        self.prober = Prober(runtime.exec_sync, self._probe_changed)
        self._container_owner: dict[str, str] = {}  # container id -> pod uid (for probes)
        self._errors = ThrottledLog(log)
        # sandbox work (netns + CNI, blocking) gets its own threads so a burst of new pods
        # does not queue the runtime's calls of pods whose sandboxes are done behind it
        self._sandbox_pool = ThreadPoolExecutor(SANDBOX_THREADS, thread_name_prefix="sandbox")

    async def close(self) -> None:
        await self.prober.close()
        if self.events is not None:
            await self.events.close()
        self._sandbox_pool.shutdown(wait=False, cancel_futures=True)

    def _event(
        self, pod: Mapping[str, Any], container: str, event_type: str, reason: str, message: str
    ) -> None:
        if self.events is not None:
            self.events.record(pod, container, event_type, reason, message)

    def _probe_changed(self, container_id: str) -> None:
        uid = self._container_owner.get(container_id)
        if uid is not None:
            self.wake(uid)

    async def _in_sandbox_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._sandbox_pool, fn, *args)

    def _label(self, rec: PodRecord) -> str:
        if rec.label:
            return rec.label
        sandbox = rec.sandbox
        return f"{sandbox.namespace}/{sandbox.name}" if sandbox else f"uid {rec.uid}"

    async def sync(self, rec: PodRecord, pod: Obj | None) -> bool:
        """Make one pod match (`pod` None: it is gone from the API); True when nothing of it
        is left to manage. A failure is logged and the pod synced again after its back-off."""
        try:
            finished = await self._sync(rec, pod)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = self._retry_after_failure(rec)
            self._errors.failed(
                rec.uid, "sync of pod %s failed (%s: %s); retrying in %.1fs",
                self._label(rec), type(exc).__name__, exc, delay,
                level=logging.ERROR, exc_info=exc,
            )  # fmt: skip
            return False
        if finished:
            self._errors.forget(rec.uid)
        return finished

    async def adopt(self, records: dict[str, PodRecord], desired: Mapping[str, Obj]) -> None:
        """After an agent (re)start, before any sync: give `records` the sandboxes and
        containers found on disk, and remove netns left by a crash."""
        on_disk = await self._in_sandbox_pool(self.sandboxes.records)
        for uid, sandbox in on_disk.items():
            records.setdefault(uid, PodRecord(uid)).sandbox = sandbox
        known_runtime: set[str] = set()
        for run in await asyncio.to_thread(self.runtime.list):
            known_runtime.add(run.pod_uid)
            self.containers.add(run.pod_uid, run.id)
        for uid in known_runtime | set(on_disk):
            records.setdefault(uid, PodRecord(uid))
        for uid, pod in desired.items():
            found = records.get(uid)
            if found is None:
                continue
            # containers that were ready stay ready until a probe says otherwise, so an
            # agent restart does not drop the pod from its Services' endpoints
            for cs in (pod.get("status") or {}).get("containerStatuses") or ():
                cid = str(cs.get("containerID") or "").removeprefix("podnet://")
                if cs.get("ready") and cid:
                    found.seed_ready.add(cid)
        self.volumes.remove_orphans({*records, *desired})
        orphans = await self._in_sandbox_pool(self.sandboxes.orphan_netns, records)
        for ns_name in orphans:
            log.info("removing orphaned sandbox netns %s", ns_name)
            await self._in_sandbox_pool(self.sandboxes.delete_netns, ns_name)
        adopted = [u for u in records if u in desired]
        if adopted or len(records) > len(adopted):
            log.info(
                "adopted %d pod(s) from disk; cleaning up %d deleted while the agent was down",
                len(adopted),
                len(records) - len(adopted),
            )

    async def _sync(self, rec: PodRecord, pod: Obj | None) -> bool:
        if pod is None:
            await self._remove_pod(rec, grace=0.0)
            return True
        meta = _meta(pod)
        rec.label = f"{meta.get('namespace')}/{meta.get('name')}"
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            running = any(r.running for r in self.containers.runs(rec.uid))
            if self.cluster.endpoint_drain and running:
                grace = max(0.0, grace - await self._drain_endpoints(pod, grace))
            await self._remove_pod(rec, grace=grace)
            await self._confirm_deletion(pod)
            return True
        if rec.start_time is None:
            rec.start_time = _now()
        api_phase = (pod.get("status") or {}).get("phase")
        if rec.terminal_phase is None and api_phase in TERMINAL_PHASES:
            rec.terminal_phase = str(api_phase)  # terminal is final, whoever wrote it
        if rec.terminal_phase is not None:
            await self._finish_terminal(rec)
            await self._write_status(rec, pod, self._views(rec, pod, {}))
            return False
        if rec.sandbox is None:
            cidr = self.pod_cidr()
            if cidr is None:
                return False  # woken again when the node gets its podCIDR
            try:
                async with asyncio.timeout(SANDBOX_TIMEOUT):
                    sandbox = await self._in_sandbox_pool(
                        self.sandboxes.ensure,
                        rec.uid,
                        str(meta.get("namespace")),
                        str(meta.get("name")),
                        cidr,
                    )
            except TimeoutError:
                log.error(
                    "sandbox for pod %s: no answer from netns/CNI in %gs; retrying (a kernel "
                    "call is hanging: see the node's netlink state)",
                    self._label(rec),
                    SANDBOX_TIMEOUT,
                )
                self._retry_after_failure(rec)
                return False
            except Exception as exc:
                delay = self._retry_after_failure(rec)
                self._errors.failed(
                    rec.uid, "sandbox for pod %s failed: %s; retrying in %.1fs",
                    self._label(rec), exc, delay,
                )  # fmt: skip
                return False
            rec.sandbox = sandbox
            log.info("pod %s: sandbox %s, IP %s", self._label(rec), sandbox.netns, sandbox.pod_ip)
        # upstream's WaitForAttachAndMount: containers start only once the volumes the kubelet
        # fills were written; a failed refresh of written ones leaves them (and the
        # containers) as they are
        mount_error = await self._mount_volumes(pod)
        decisions: dict[str, Decision] = {}
        if mount_error is None or self.volumes.ready(pod):
            decisions = await self._apply_containers(rec, pod)
        views = self._views(rec, pod, decisions)
        status = await self._write_status(rec, pod, views)
        if mount_error is not None:  # after the status write, which counts as a success
            delay = self._retry_after_failure(rec)
            self._errors.failed(
                rec.uid, "pod %s: MountVolume.SetUp failed: %s; retrying in %.1fs",
                self._label(rec), mount_error, delay,
            )  # fmt: skip
        if status is not None and status.get("phase") in TERMINAL_PHASES:
            rec.terminal_phase = str(status["phase"])
            await self._finish_terminal(rec)
        return False

    async def _mount_volumes(self, pod: Obj) -> str | None:
        """Write or refresh the volumes the kubelet fills; what failed, or None."""
        try:
            await self.volumes.ensure(pod)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return (
                str(exc)
                if isinstance(exc, ApiError | ValueError)
                else f"{type(exc).__name__}: {exc}"
            )
        return None

    def _retry_later(self, rec: PodRecord, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, self.wake, rec.uid)

    def _sync_succeeded(self, rec: PodRecord) -> None:
        if rec.retry.failures:
            rec.retry.reset()
            self._errors.recovered(rec.uid, "pod %s synced again", self._label(rec))

    def _retry_after_failure(self, rec: PodRecord) -> float:
        """Sync the pod again after its jittered back-off; the delay chosen."""
        delay = rec.retry.next()
        self._retry_later(rec, delay)
        return delay

    def _as_seen(self, pod: Mapping[str, Any], rec: PodRecord) -> Mapping[str, Any]:
        """The pod with the addresses this node gave it (for env `fieldRef`s)."""
        if rec.sandbox is None:
            return pod
        status = {**(pod.get("status") or {}), "podIP": rec.sandbox.pod_ip, "hostIP": self.node_ip}
        return {**pod, "status": status}

    def _runtime_sandbox(self, pod: Mapping[str, Any], sandbox: SandboxRecord) -> Sandbox:
        meta = _meta(pod)
        files = pod_dns_files(
            pod,
            [sandbox.pod_ip],
            cluster_domain=self.cluster.cluster_domain,
            cluster_dns=[self.cluster.dns_service_ip],
            node_resolv_conf=read_resolv_conf(self.resolv_conf),
        )
        return Sandbox(
            pod_uid=sandbox.pod_uid,
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            netns=sandbox.netns_path,
            hostname=files.hostname,
            hosts=files.hosts,
            resolv_conf=files.resolv_conf,
        )

    async def _apply_containers(
        self, rec: PodRecord, pod: Mapping[str, Any]
    ) -> dict[str, Decision]:
        assert rec.sandbox is not None
        meta = _meta(pod)
        spec = pod.get("spec") or {}
        policy = str(spec.get("restartPolicy") or "Always")
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        label = f"{meta.get('name')}_{meta.get('namespace')}({rec.uid})"
        containers = _containers(pod)
        runs = latest_runs(self.containers.runs(rec.uid), list(containers))
        decisions: dict[str, Decision] = {}
        now = _now()
        for name, container in containers.items():
            current = runs[name].current
            liveness = None
            if current is not None and current.running:
                liveness = self.prober.liveness_failure(current.id)
            decision = plan_container(
                pod_label=label,
                name=name,
                image=str(container.get("image") or ""),
                restart_policy=policy,
                current=current,
                liveness_failure=liveness,
                backoff=rec.backoffs.get(name),
                start_failure=rec.start_failures.get(name),
                now=now,
                base=self.backoff_base,
                cap=self.backoff_cap,
            )
            if decision.backoff is not None:
                rec.backoffs[name] = decision.backoff
            if decision.action == "kill":
                assert current is not None
                log.info(
                    "pod %s container %s: %s; killing it",
                    self._label(rec),
                    name,
                    decision.kill_reason,
                )
                self.prober.forget(current.id)
                rec.killed.add(current.id)
                probe = "startup" if decision.kill_reason.startswith("Startup") else "liveness"
                self._event(
                    pod, name, NORMAL, "Killing",
                    f"Container {name} failed {probe} probe, will be restarted",
                )  # fmt: skip
                await self.runtime.stop(current.id, grace)
                self.wake(rec.uid)
            elif decision.action == "start":
                decision = await self._start(rec, pod, container, decision, runs[name], now)
            elif (
                decision.waiting_reason == "CrashLoopBackOff"
                and current is not None
                and current.id not in rec.backoff_told
            ):  # once per crashed run (upstream repeats it at every sync, folded into a count)
                rec.backoff_told.add(current.id)
                self._event(
                    pod, name, WARNING, "BackOff",
                    f"Back-off restarting failed container {name} in pod {label}",
                )  # fmt: skip
            if decision.retry_in is not None:
                self._retry_later(rec, decision.retry_in)
            decisions[name] = decision
        self._ensure_probes(rec, pod, containers)
        return decisions

    async def _start(
        self,
        rec: PodRecord,
        pod: Mapping[str, Any],
        container: Mapping[str, Any],
        decision: Decision,
        runs: Runs,
        now: datetime,
    ) -> Decision:
        assert rec.sandbox is not None
        name = str(container["name"])
        # the current run becomes "previous" (lastState, logs --previous); older ones go
        for run in (runs.previous, *runs.older):
            if run is None:
                continue
            self.prober.forget(run.id)
            with contextlib.suppress(Exception):
                self.runtime.remove(run.id)
            self.containers.discard(rec.uid, run.id)
        if runs.current is not None:
            self.prober.forget(runs.current.id)
        try:
            namespace = str(_meta(pod).get("namespace"))
            links = (pod.get("spec") or {}).get("enableServiceLinks") is not False
            configmaps, secrets = await self.volumes.env_objects(namespace, *env_needs(container))
            config = container_config(
                container,
                self._as_seen(pod, rec),
                self.services.env_for(namespace, links),
                str(self.volumes.directory(rec.uid)),
                EnvSources(configmaps, secrets, self._allocatable()),
            )
            state = await self.runtime.start(
                self._runtime_sandbox(pod, rec.sandbox), config, decision.attempt
            )
        except Exception as exc:
            if isinstance(exc, ImageError):
                reason, message = exc.reason, exc.message
            elif isinstance(exc, EnvSourceError | ApiError):  # retried until the source exists
                reason, message = "CreateContainerConfigError", str(exc)
            else:  # a runtime failure must not stop the pod loop: report it and retry
                reason, message = "CreateContainerError", f"{type(exc).__name__}: {exc}"
            old = rec.start_failures.get(name)
            if reason == "CreateContainerConfigError":  # upstream's pod worker: every 10 s
                backoff = BackOff(self.backoff_base, now)
            else:
                backoff = next_backoff(
                    old.backoff if old else None, now, self.backoff_base, self.backoff_cap
                )
            rec.start_failures[name] = StartFailure(reason, message, now, backoff)
            log.warning("pod %s container %s: %s: %s", self._label(rec), name, reason, message)
            if reason == "ErrImagePull":  # upstream: the pull's error, then the reason
                self._event(pod, name, WARNING, "Failed", message)
                self._event(pod, name, WARNING, "Failed", f"Error: {reason}")
            else:
                self._event(pod, name, WARNING, "Failed", f"Error: {message}")
            return Decision(
                "wait",
                waiting_reason=reason,
                waiting_message=message,
                backoff=decision.backoff,
                retry_in=START_FAILURE_RECHECK,
            )
        rec.start_failures.pop(name, None)
        self.containers.add(rec.uid, state.id)
        self._container_owner[state.id] = rec.uid
        log.info(
            "pod %s: started container %s (attempt %d, %s)",
            self._label(rec),
            name,
            decision.attempt,
            state.id[:12],
        )
        return decision

    def _allocatable(self) -> dict[str, str]:
        """This node's allocatable as its status reports it (an unset limit's env value)."""
        if self._node_allocatable is None:
            self._node_allocatable = node_resources(MachineFacts.read())
        return self._node_allocatable

    def _ensure_probes(
        self, rec: PodRecord, pod: Mapping[str, Any], containers: Mapping[str, Mapping[str, Any]]
    ) -> None:
        assert rec.sandbox is not None
        runs = latest_runs(self.containers.runs(rec.uid), list(containers))
        live: set[str] = set()
        for name, container in containers.items():
            current = runs[name].current
            if current is None or not current.running or current.id in rec.killed:
                continue
            live.add(current.id)
            self._container_owner[current.id] = rec.uid
            ports = tuple(container.get("ports") or ())
            self.prober.ensure(
                ProbeTarget(current.id, rec.sandbox.netns_path, rec.sandbox.pod_ip, ports),
                container_probes(container),
                seed_ready=current.id in rec.seed_ready,
                on_failure=self._unhealthy(pod, name),
            )
        for cid in [c for c, owner in self._container_owner.items() if owner == rec.uid]:
            if cid not in live:
                self.prober.forget(cid)
                self._container_owner.pop(cid, None)

    def _unhealthy(self, pod: Mapping[str, Any], container: str) -> Callable[[str, str], None]:
        """What a failed probe of `container` records (upstream's Unhealthy event)."""
        meta = dict(_meta(pod))  # the pod's identity, not a reference to a later version

        def failed(kind: str, message: str) -> None:
            self._event(
                {"metadata": meta}, container, WARNING, "Unhealthy",
                f"{kind.capitalize()} probe failed: {message}",
            )  # fmt: skip

        return failed

    def _views(
        self, rec: PodRecord, pod: Mapping[str, Any], decisions: Mapping[str, Decision]
    ) -> list[ContainerView]:
        containers = _containers(pod)
        runs = latest_runs(self.containers.runs(rec.uid), list(containers))
        views = []
        for name, container in containers.items():
            current, previous = runs[name].current, runs[name].previous
            decision = decisions.get(name)
            waiting_reason = waiting_message = None
            if decision is not None and decision.action == "wait":
                waiting_reason, waiting_message = decision.waiting_reason, decision.waiting_message
            running = current is not None and current.running
            image = str(container.get("image") or "")
            views.append(
                ContainerView(
                    name=name,
                    image=image,
                    image_id=(current.image_id or image) if current is not None else "",
                    current=current,
                    previous=previous,
                    waiting_reason=waiting_reason,
                    waiting_message=waiting_message,
                    ready=running and current is not None and self.prober.ready(current.id),
                    started=running and current is not None and self.prober.started(current.id),
                )
            )
        return views

    async def _write_status(
        self, rec: PodRecord, pod: Mapping[str, Any], views: Sequence[ContainerView]
    ) -> dict[str, Any] | None:
        meta = _meta(pod)
        status = compute_pod_status(
            pod,
            views,
            pod_ip=rec.sandbox.pod_ip if rec.sandbox else None,
            host_ip=self.node_ip,
            start_time=rec.start_time or _now(),
            now=_now(),
            sandbox_ready=rec.sandbox is not None,
            terminal_phase=rec.terminal_phase,
        )
        status = dict(_strip_nulls(status))
        version = meta.get("resourceVersion")
        if rec.last_status is not None and rec.written_on == version:
            known = rec.last_status  # the watch has not brought our last write back yet
        else:
            known = pod.get("status") or {}
        if not status_changed(_strip_nulls(known), status):
            self._sync_succeeded(rec)
            return status
        try:
            await self.api.patch(
                "pods",
                str(meta.get("name")),
                {"status": status},
                namespace=str(meta.get("namespace")),
                patch_type="merge",
                subresource="status",
            )
        except ApiError as exc:
            if exc.code != 404:
                delay = self._retry_after_failure(rec)
                self._errors.failed(
                    rec.uid, "status of pod %s not written: %s; retrying in %.1fs",
                    self._label(rec), exc, delay,
                )  # fmt: skip
            return None
        self._sync_succeeded(rec)
        rec.last_status = status
        rec.written_on = version
        return status

    async def _finish_terminal(self, rec: PodRecord) -> None:
        """A Succeeded/Failed pod: nothing runs any more, and its address goes back to IPAM."""
        for run in self.containers.runs(rec.uid):
            if run.running:
                await self.runtime.stop(str(run.id), 0.0)
        for cid in [c for c, owner in self._container_owner.items() if owner == rec.uid]:
            self.prober.forget(cid)
            self._container_owner.pop(cid, None)
        if rec.sandbox is not None:
            await self._in_sandbox_pool(self.sandboxes.teardown, rec.uid)
            rec.sandbox = None

    async def _remove_pod(self, rec: PodRecord, grace: float) -> None:
        """Stop every container (SIGTERM, grace, SIGKILL), release the network, forget it."""
        runs = [r for r in self.containers.runs(rec.uid) if r.running]
        for cid in [c for c, owner in self._container_owner.items() if owner == rec.uid]:
            self.prober.forget(cid)
            self._container_owner.pop(cid, None)
        if runs:
            log.info(
                "pod %s: stopping %d container(s) (grace %gs)",
                self._label(rec),
                len(runs),
                grace,
            )
            await asyncio.gather(*(self.runtime.stop(str(r.id), grace) for r in runs))
        await self._in_sandbox_pool(self.sandboxes.teardown, rec.uid)
        rec.sandbox = None
        self.runtime.cleanup_pod(rec.uid)
        self.volumes.forget(rec.uid)
        self.containers.drop(rec.uid)

    async def _drain_endpoints(self, pod: Mapping[str, Any], limit: float) -> float:
        """Wait (at most `limit` seconds) until every node's proxy dropped the pod's endpoint
        (`agent/drain.py`); the seconds waited, which the grace period loses."""
        pod_ip = str((pod.get("status") or {}).get("podIP") or "")
        namespace = str(_meta(pod).get("namespace"))
        started = time.monotonic()
        waiting_for: str | None = "a first look"
        while pod_ip and time.monotonic() - started < limit:
            try:
                slices = (await self.api.list("endpointslices", namespace)).get("items") or []
                nodes = (await self.api.list("nodes")).get("items") or []
            except ApiError as exc:
                waiting_for = f"the API ({exc})"
            else:
                waiting_for = drained(pod_ip, slices, nodes)
                if waiting_for is None:
                    break
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        waited = time.monotonic() - started
        log.info(
            "pod %s/%s: endpoint drain took %.2fs%s",
            namespace,
            _meta(pod).get("name"),
            waited,
            f" (gave up waiting for {waiting_for})" if waiting_for and pod_ip else "",
        )
        return waited

    async def _confirm_deletion(self, pod: Mapping[str, Any]) -> None:
        meta = _meta(pod)
        try:
            await self.api.delete(
                "pods",
                str(meta.get("name")),
                namespace=str(meta.get("namespace")),
                grace_period_seconds=0,
                uid=str(meta.get("uid")),
            )
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise
        log.info("pod %s/%s deleted", meta.get("namespace"), meta.get("name"))
