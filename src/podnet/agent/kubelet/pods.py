"""The kubelet's pod lifecycle: watch the pods bound to this node and make them run.

What belongs here: the pure container decisions (`plan_container`: start / kill / wait, from the
spec, the runtime's state, the restart policy and back-off), the container spec as the kubelet
reads it, and `PodManager`, the one sync loop (DESIGN.md contract 3) that applies them through
the sandbox manager and the runtime and reports status.

Shape (upstream kubelet: informer + pod workers): a list + watch of
`pods?fieldSelector=spec.nodeName=<node>` only records the latest object and marks the pod
dirty; a dispatcher wakes one worker per pod (so a slow pod never stalls the others). The
runtime does not notify, so every second the dispatcher polls container states (upstream's
PLEG) and marks pods whose containers changed; timers (back-off expiry, retries) and probe
results mark pods too; every 10 s every pod is synced anyway. Nothing is started before the
first full list, and that first sync also cleans up what belongs to pods that are gone (deleted
while the agent was down) and adopts what belongs to pods that remain.

Invariants:
- Containers of a pod start only after its sandbox exists, and the sandbox only once the node
  has `spec.podCIDR`.
- A running container is never restarted by an agent restart: decisions start from the
  runtime's on-disk state, and a running current attempt is left alone unless liveness fails.
- Back-off per container: the first restart is immediate, then base, 2*base, ... capped
  (upstream 10 s doubling to 5 min); an entry older than 2*cap is forgotten.
- The runtime keeps the current and the previous attempt of each container (lastState and
  `logs --previous`); older attempts are removed when a new one starts.
- Status is written (merge patch on `pods/status`) only when it differs from the API's.
- A failed sync (sandbox, status write, anything raised) is retried after a jittered back-off
  per pod (0.5 s doubling to 10 s), never at once; repeats are logged once per 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from podnet.agent.kubelet.dnsconfig import pod_dns_files
from podnet.agent.kubelet.probes import (
    LIVENESS,
    READINESS,
    STARTUP,
    Prober,
    ProbeSpec,
    ProbeTarget,
)
from podnet.agent.kubelet.sandbox import SandboxRecord
from podnet.agent.kubelet.status import (
    TERMINAL_PHASES,
    ContainerRun,
    ContainerView,
    compute_pod_status,
    is_creating,
    status_changed,
)
from podnet.agent.kubelet.volumes import container_mounts
from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.reflector import reflect
from podnet.config import ClusterConfig
from podnet.dns.resolvconf import DEFAULT_RESOLV_CONF, read_resolv_conf
from podnet.retry import Backoff, Retry, ThrottledLog

log = logging.getLogger("podnet.kubelet")

DEFAULT_BACKOFF_BASE = 10.0
DEFAULT_BACKOFF_CAP = 300.0
# two threads: sandboxes are CPU- and netlink-bound, and one hung kernel call must not stop
# every other pod of the node from getting its sandbox
SANDBOX_THREADS = 2
SANDBOX_TIMEOUT = 30.0
SYNC_RETRY = Backoff(0.5, 10.0)  # a failed pod sync; 10 s: upstream's pod worker back-off
T = TypeVar("T")


# --- the container spec as the kubelet reads it -----------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str | None
    tty: bool
    stdin: bool
    stdin_once: bool
    ports: tuple[Mapping[str, Any], ...]
    probes: Mapping[str, ProbeSpec | None]

    @classmethod
    def from_spec(
        cls, c: Mapping[str, Any], pod: Mapping[str, Any], env_extra: Mapping[str, str]
    ) -> ContainerSpec:
        return cls(
            name=str(c["name"]),
            image=str(c.get("image") or ""),
            command=tuple(str(a) for a in c.get("command") or ()),
            args=tuple(str(a) for a in c.get("args") or ()),
            env=container_env(c, pod, env_extra),
            working_dir=c.get("workingDir") or None,
            tty=bool(c.get("tty")),
            stdin=bool(c.get("stdin")),
            stdin_once=bool(c.get("stdinOnce")),
            ports=tuple(c.get("ports") or ()),
            probes={
                READINESS: ProbeSpec.from_spec(c.get("readinessProbe")),
                LIVENESS: ProbeSpec.from_spec(c.get("livenessProbe")),
                STARTUP: ProbeSpec.from_spec(c.get("startupProbe")),
            },
        )


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(source) or {}).get(path[len(prefix) + 2 : -2], ""))
    return ""


def container_env(
    c: Mapping[str, Any], pod: Mapping[str, Any], env_extra: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """Service variables first (like upstream), then the container's env in order.

    `valueFrom.fieldRef` is resolved from the pod; other sources (secrets, config maps,
    resources) are not served by podnet and resolve to an empty string.
    """
    out: dict[str, str] = dict(env_extra)
    for item in c.get("env") or ():
        name = str(item.get("name", ""))
        if "value" in item:
            out[name] = str(item.get("value") or "")
        else:
            ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            out[name] = _field_ref(pod, ref) if ref else ""
    return tuple(out.items())


# --- pure decisions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackOff:
    """Restart back-off of one container (or image pull back-off)."""

    delay: float  # seconds to wait after the last failure before the next try
    updated: datetime  # when the delay was last raised


def next_backoff(entry: BackOff | None, now: datetime, base: float, cap: float) -> BackOff:
    """Upstream flowcontrol.Backoff.Next: start at base, double up to cap, reset when stale."""
    if entry is None or (now - entry.updated).total_seconds() > 2 * cap:
        return BackOff(base, now)
    return BackOff(min(entry.delay * 2, cap), now)


@dataclass(frozen=True, slots=True)
class StartFailure:
    """The runtime could not start a container: a bad image (ErrImagePull) or anything else
    (CreateContainerError); retried with back-off, reported as a waiting reason."""

    reason: str
    message: str
    at: datetime
    backoff: BackOff


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # "start" | "kill" | "wait" | "keep"
    attempt: int = 0  # for start
    waiting_reason: str | None = None
    waiting_message: str | None = None
    backoff: BackOff | None = None  # the container's back-off entry after this decision
    kill_reason: str = ""


def should_restart(restart_policy: str, exit_code: int | None) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def plan_container(
    *,
    pod_label: str,
    name: str,
    image: str,
    restart_policy: str,
    current: ContainerRun | None,
    liveness_failure: str | None,
    backoff: BackOff | None,
    start_failure: StartFailure | None,
    now: datetime,
    base: float,
    cap: float,
) -> Decision:
    """What to do with one container of a live (non-terminal) pod, and what to report."""
    if start_failure is not None and (current is None or not current.running):
        ready_at = start_failure.at + timedelta(seconds=start_failure.backoff.delay)
        if now < ready_at:
            pull_error = start_failure.reason == "ErrImagePull"
            if not pull_error or now - start_failure.at < timedelta(seconds=1):
                return Decision(
                    "wait",
                    waiting_reason=start_failure.reason,
                    waiting_message=start_failure.message,
                    backoff=backoff,
                )
            return Decision(
                "wait",
                waiting_reason="ImagePullBackOff",
                waiting_message=f'Back-off pulling image "{image}": {start_failure.message}',
                backoff=backoff,
            )
        attempt = 0 if current is None else current.attempt + 1
        return Decision("start", attempt=attempt, backoff=backoff)
    if current is None:
        return Decision("start", attempt=0, backoff=backoff)
    if current.running:
        if liveness_failure is not None:
            return Decision("kill", kill_reason=liveness_failure, backoff=backoff)
        return Decision("keep", backoff=backoff)
    if is_creating(current):
        return Decision("keep", backoff=backoff)  # its shim is still starting it
    if not should_restart(restart_policy, current.exit_code):
        return Decision("keep", backoff=backoff)
    if backoff is not None and (now - backoff.updated).total_seconds() <= 2 * cap:
        finished = current.finished_at or now
        if now < finished + timedelta(seconds=backoff.delay):
            return Decision(
                "wait",
                waiting_reason="CrashLoopBackOff",
                waiting_message=(
                    f"back-off {backoff.delay:g}s restarting failed container={name} "
                    f"pod={pod_label}"
                ),
                backoff=backoff,
            )
    return Decision(
        "start", attempt=current.attempt + 1, backoff=next_backoff(backoff, now, base, cap)
    )


def latest_runs(
    runs: Sequence[ContainerRun], names: Sequence[str]
) -> dict[str, tuple[ContainerRun | None, ContainerRun | None, list[ContainerRun]]]:
    """Per container name: (current attempt, previous attempt, older attempts to remove)."""
    by_name: dict[str, list[ContainerRun]] = {n: [] for n in names}
    for run in runs:
        by_name.setdefault(_run_name(run), []).append(run)
    out: dict[str, tuple[ContainerRun | None, ContainerRun | None, list[ContainerRun]]] = {}
    for name, items in by_name.items():
        items.sort(key=lambda r: r.attempt, reverse=True)
        current = items[0] if items else None
        previous = items[1] if len(items) > 1 else None
        out[name] = (current, previous, items[2:])
    return out


def _run_name(run: ContainerRun) -> str:
    return str(getattr(run, "name", ""))


# --- what the pod manager drives ---------------------------------------------------------


class RuntimeLike(Protocol):
    """The subset of `podnet.agent.kubelet.runtime.Runtime` the pod manager uses."""

    async def start(self, sandbox: Any, cfg: Any, attempt: int) -> Any: ...
    def inspect(self, container_id: str) -> Any: ...
    def list(self, pod_uid: str | None = None) -> Sequence[Any]: ...
    async def stop(self, container_id: str, grace_seconds: float) -> Any: ...
    def remove(self, container_id: str) -> None: ...
    async def exec_sync(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - the runtime's documented signature
    ) -> tuple[int, bytes]: ...
    def cleanup_pod(self, pod_uid: str) -> None: ...


class SandboxesLike(Protocol):
    """`podnet.agent.kubelet.sandbox.SandboxManager` (blocking methods)."""

    def ensure(self, pod_uid: str, namespace: str, name: str, pod_cidr: str) -> SandboxRecord: ...
    def teardown(self, pod_uid: str) -> None: ...
    def records(self) -> dict[str, SandboxRecord]: ...
    def orphan_netns(self, known_uids: Mapping[str, object]) -> list[str]: ...
    def delete_netns(self, ns_name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RuntimeBindings:
    """How to build the runtime's value types (kept injectable so tests need no runtime)."""

    make_sandbox: Callable[..., Any]
    make_config: Callable[..., Any]
    image_error: type[Exception]


def default_bindings() -> RuntimeBindings:
    from podnet.agent.kubelet import runtime

    return RuntimeBindings(runtime.Sandbox, runtime.ContainerConfig, runtime.ImageError)


@dataclass(slots=True)
class PodRecord:
    uid: str
    label: str = ""  # namespace/name, kept for log lines after the object is gone
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sandbox: SandboxRecord | None = None
    backoffs: dict[str, BackOff] = field(default_factory=dict)
    start_failures: dict[str, StartFailure] = field(default_factory=dict)
    terminal_phase: str | None = None
    last_status: dict[str, Any] | None = None  # the status we last wrote
    written_on: Any = None  # resourceVersion of the pod object that write was based on
    start_time: datetime | None = None
    seed_ready: set[str] = field(default_factory=set)  # adopted container ids that were ready
    killed: set[str] = field(default_factory=set)  # container ids killed by liveness
    # failed syncs (sandbox, status write, anything raised) are retried after this back-off
    retry: Retry = field(default_factory=lambda: Retry(SYNC_RETRY))


def _now() -> datetime:
    return datetime.now(UTC)


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


class PodManager:
    """The kubelet pod sync loop for one node."""

    def __init__(
        self,
        api: Api,
        node_name: str,
        node_ip: str,
        runtime: RuntimeLike,
        sandboxes: SandboxesLike,
        *,
        pod_cidr: Callable[[], str | None],
        cluster: ClusterConfig | None = None,
        bindings: RuntimeBindings | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        resync_seconds: float = 1.0,
        full_resync_seconds: float = 10.0,
        resolv_conf: Path | None = DEFAULT_RESOLV_CONF,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.node_ip = node_ip
        self.runtime = runtime
        self.sandboxes = sandboxes
        self.pod_cidr = pod_cidr
        self.cluster = cluster or ClusterConfig()
        self.resolv_conf = resolv_conf  # the node's, for dnsPolicy Default (None: no file)
        self.bindings = bindings or default_bindings()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.resync_seconds = resync_seconds  # how often container states are polled
        self.full_resync_seconds = full_resync_seconds  # how often every pod is synced anyway
        self.synced = asyncio.Event()  # the first full list arrived and was acted on
        self.desired: dict[str, Obj] = {}
        self.records: dict[str, PodRecord] = {}
        self.prober = Prober(self.runtime.exec_sync, self._probe_changed)
        self._dirty: set[str] = set()
        self._errors = ThrottledLog(log)
        self._wake = asyncio.Event()
        self._listed = asyncio.Event()  # the informer has a full list
        self._container_owner: dict[str, str] = {}  # container id -> pod uid (for probes)
        # container ids per pod: from start() and, after a restart, one runtime.list(); so a
        # sync inspects only its own pod's containers instead of scanning the node's
        self._pod_containers: dict[str, set[str]] = {}
        self._signatures: dict[str, tuple[Any, ...]] = {}  # last polled container states
        # sandbox work (netns + CNI, blocking) gets its own threads so a burst of new pods
        # does not queue the runtime's calls of pods whose sandboxes are done behind it
        self._sandbox_pool = ThreadPoolExecutor(SANDBOX_THREADS, thread_name_prefix="sandbox")

    # --- lookups for the exec/log server --------------------------------------------------

    def _find(self, namespace: str, pod: str) -> Obj | None:
        for obj in self.desired.values():
            meta = _meta(obj)
            if meta.get("namespace") == namespace and meta.get("name") == pod:
                return obj
        return None

    def _runs_of(self, namespace: str, pod: str, container: str) -> list[Any]:
        obj = self._find(namespace, pod)
        if obj is None:
            return []
        uid = str(_meta(obj).get("uid"))
        runs = [r for r in self._runs(uid) if _run_name(r) == container]
        return sorted(runs, key=lambda r: r.attempt, reverse=True)

    def resolve(self, namespace: str, pod: str, container: str) -> str | None:
        """The current container id of `container` in pod `namespace/pod`, or None."""
        runs = self._runs_of(namespace, pod, container)
        return str(runs[0].id) if runs else None

    def netns_of(self, namespace: str, pod: str) -> str | None:
        """The network namespace (path) of pod `namespace/pod`'s sandbox, or None."""
        obj = self._find(namespace, pod)
        rec = self.records.get(str(_meta(obj).get("uid"))) if obj is not None else None
        return rec.sandbox.netns_path if rec is not None and rec.sandbox is not None else None

    def _runs(self, uid: str) -> list[Any]:
        """The runtime's state of this pod's containers (cheap: one inspect per container)."""
        runs = []
        for cid in sorted(self._pod_containers.get(uid, ())):
            try:
                runs.append(self.runtime.inspect(cid))
            except KeyError:  # removed (runtime.ContainerNotFound is a KeyError)
                self._pod_containers[uid].discard(cid)
        return runs

    # --- waking ----------------------------------------------------------------------------

    def wake(self, uid: str | None = None) -> None:
        """Mark one pod (or all, with None) dirty and wake the dispatcher."""
        if uid is None:
            self._dirty.update(self.desired)
            self._dirty.update(self.records)
        else:
            self._dirty.add(uid)
        self._wake.set()

    def _probe_changed(self, container_id: str) -> None:
        uid = self._container_owner.get(container_id)
        if uid is not None:
            self.wake(uid)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self._watch(stop), name="kubelet-watch")
        try:
            await self._dispatch(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            workers = [r.task for r in self.records.values() if r.task is not None]
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.prober.close()
            self._sandbox_pool.shutdown(wait=False, cancel_futures=True)

    async def _dispatch(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        loop = asyncio.get_running_loop()
        last_poll = last_full = loop.time()
        try:
            first = True
            while not stop.is_set():
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {waker, stopping},
                    timeout=self.resync_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waker.cancel()
                if stop.is_set():
                    return
                if not self._listed.is_set():
                    continue
                if first:
                    await self._adopt()
                    first = False
                    self.synced.set()
                self._wake.clear()
                dirty, self._dirty = self._dirty, set()
                now = loop.time()
                if now - last_poll >= self.resync_seconds:
                    dirty |= self._changed_containers()
                    last_poll = now
                if now - last_full >= self.full_resync_seconds:
                    dirty |= set(self.desired) | set(self.records)
                    last_full = now
                for uid in dirty:
                    self._kick(uid)
        finally:
            stopping.cancel()

    async def _in_sandbox_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._sandbox_pool, fn, *args)

    def _changed_containers(self) -> set[str]:
        """Pods whose containers changed state since the last poll (the runtime does not
        notify: like upstream's PLEG, poll cheaply and sync only what changed)."""
        changed = set()
        for uid in list(self._pod_containers):
            signature = tuple((r.id, r.running, r.exit_code) for r in self._runs(uid))
            if self._signatures.get(uid) != signature:
                self._signatures[uid] = signature
                changed.add(uid)
        for uid in set(self._signatures) - set(self._pod_containers):
            del self._signatures[uid]
        return changed

    def _kick(self, uid: str) -> None:
        rec = self.records.get(uid)
        if rec is None:
            rec = self.records[uid] = PodRecord(uid)
        if rec.task is None or rec.task.done():
            rec.task = asyncio.create_task(self._worker(rec), name=f"pod-{uid[:8]}")
        rec.wake.set()

    async def _worker(self, rec: PodRecord) -> None:
        while True:
            await rec.wake.wait()
            rec.wake.clear()
            try:
                finished = await self._sync_pod(rec)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._retry_after_failure(rec)
                self._errors.failed(
                    rec.uid, "sync of pod %s failed (%s: %s); retrying in %.1fs",
                    self._label(rec.uid), type(exc).__name__, exc, delay,
                    level=logging.ERROR, exc_info=exc,
                )  # fmt: skip
                finished = False
            if finished and not rec.wake.is_set():
                if self.records.get(rec.uid) is rec:
                    del self.records[rec.uid]
                self._errors.forget(rec.uid)
                return

    # --- the informer -------------------------------------------------------------------------

    async def _watch(self, stop: asyncio.Event) -> None:
        await reflect(
            self.api,
            "pods",
            replace=self._replace_pods,
            apply=self._apply_pod,
            stop=stop,
            field_selector=f"spec.nodeName={self.node_name}",
            who="kubelet",
        )

    def _replace_pods(self, pods: list[Obj]) -> None:
        items = {str(_meta(p).get("uid")): p for p in pods}
        gone = set(self.desired) - set(items)
        self.desired = items
        self._listed.set()
        for uid in gone | set(items):
            self.wake(uid)

    def _apply_pod(self, kind: str, pod: Obj) -> None:
        uid = str(_meta(pod).get("uid"))
        if kind == "DELETED":
            self.desired.pop(uid, None)
        else:
            self.desired[uid] = pod
        self.wake(uid)

    # --- adoption after a restart -------------------------------------------------------------

    async def _adopt(self) -> None:
        """First full sync: adopt sandboxes of known pods, remove what belongs to gone pods."""
        records = await self._in_sandbox_pool(self.sandboxes.records)
        for uid, sandbox in records.items():
            rec = self.records.setdefault(uid, PodRecord(uid))
            rec.sandbox = sandbox
        known_runtime: set[str] = set()
        for run in await asyncio.to_thread(self.runtime.list):
            known_runtime.add(str(run.pod_uid))
            self._pod_containers.setdefault(str(run.pod_uid), set()).add(str(run.id))
        for uid in known_runtime | set(records):
            self.records.setdefault(uid, PodRecord(uid))
        for uid, pod in self.desired.items():
            found = self.records.get(uid)
            if found is None:
                continue
            # containers that were ready stay ready until a probe says otherwise, so an
            # agent restart does not drop the pod from its Services' endpoints
            for cs in (pod.get("status") or {}).get("containerStatuses") or ():
                cid = str(cs.get("containerID") or "").removeprefix("podnet://")
                if cs.get("ready") and cid:
                    found.seed_ready.add(cid)
        orphans = await self._in_sandbox_pool(self.sandboxes.orphan_netns, self.records)
        for ns_name in orphans:
            log.info("removing orphaned sandbox netns %s", ns_name)
            await self._in_sandbox_pool(self.sandboxes.delete_netns, ns_name)
        adopted = [u for u in self.records if u in self.desired]
        if adopted or len(self.records) > len(adopted):
            log.info(
                "adopted %d pod(s) from disk; cleaning up %d deleted while the agent was down",
                len(adopted),
                len(self.records) - len(adopted),
            )

    # --- one pod -----------------------------------------------------------------------------

    def _label(self, uid: str) -> str:
        pod = self.desired.get(uid)
        if pod is not None:
            return f"{_meta(pod).get('namespace')}/{_meta(pod).get('name')}"
        rec = self.records.get(uid)
        if rec is not None and rec.label:
            return rec.label
        sandbox = rec.sandbox if rec is not None else None
        return f"{sandbox.namespace}/{sandbox.name}" if sandbox else f"uid {uid}"

    async def _sync_pod(self, rec: PodRecord) -> bool:
        """Make one pod match; True when nothing of it is left to manage."""
        pod = self.desired.get(rec.uid)
        if pod is None:
            await self._remove_pod(rec, grace=0.0)
            return True
        meta = _meta(pod)
        rec.label = f"{meta.get('namespace')}/{meta.get('name')}"
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
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
                    rec.sandbox = await self._in_sandbox_pool(
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
                    self._label(rec.uid),
                    SANDBOX_TIMEOUT,
                )
                self._retry_after_failure(rec)
                return False
            except Exception as exc:
                delay = self._retry_after_failure(rec)
                self._errors.failed(
                    rec.uid, "sandbox for pod %s failed: %s; retrying in %.1fs",
                    self._label(rec.uid), exc, delay,
                )  # fmt: skip
                return False
            log.info(
                "pod %s: sandbox %s, IP %s",
                self._label(rec.uid),
                rec.sandbox.netns,
                rec.sandbox.pod_ip,
            )
        decisions = await self._apply_containers(rec, pod)
        views = self._views(rec, pod, decisions)
        status = await self._write_status(rec, pod, views)
        if status is not None and status.get("phase") in TERMINAL_PHASES:
            rec.terminal_phase = str(status["phase"])
            await self._finish_terminal(rec)
        return False

    def _retry_later(self, rec: PodRecord, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, self.wake, rec.uid)

    def _sync_succeeded(self, rec: PodRecord) -> None:
        if rec.retry.failures:
            rec.retry.reset()
            self._errors.recovered(rec.uid, "pod %s synced again", self._label(rec.uid))

    def _retry_after_failure(self, rec: PodRecord) -> float:
        """Sync the pod again after its jittered back-off; the delay chosen."""
        delay = rec.retry.next()
        self._retry_later(rec, delay)
        return delay

    def _container_specs(self, pod: Mapping[str, Any], rec: PodRecord) -> list[ContainerSpec]:
        extra = {
            "KUBERNETES_SERVICE_HOST": self.cluster.kubernetes_service_ip,
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_SERVICE_PORT_HTTPS": "443",
            "KUBERNETES_PORT": f"tcp://{self.cluster.kubernetes_service_ip}:443",
        }
        if rec.sandbox is not None:
            pod = {
                **pod,
                "status": {
                    **(pod.get("status") or {}),
                    "podIP": rec.sandbox.pod_ip,
                    "hostIP": self.node_ip,
                },
            }
        specs = []
        for c in (pod.get("spec") or {}).get("containers") or ():
            specs.append(ContainerSpec.from_spec(c, pod, extra))
        return specs

    def _runtime_sandbox(self, pod: Mapping[str, Any], sandbox: SandboxRecord) -> Any:
        meta = _meta(pod)
        files = pod_dns_files(
            pod,
            [sandbox.pod_ip],
            cluster_domain=self.cluster.cluster_domain,
            cluster_dns=[self.cluster.dns_service_ip],
            node_resolv_conf=read_resolv_conf(self.resolv_conf),
        )
        return self.bindings.make_sandbox(
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
        specs = self._container_specs(pod, rec)
        runs = latest_runs(self._runs(rec.uid), [s.name for s in specs])
        decisions: dict[str, Decision] = {}
        now = _now()
        for cspec in specs:
            current, previous, older = runs.get(cspec.name, (None, None, []))
            liveness = None
            if current is not None and current.running:
                liveness = self.prober.liveness_failure(str(current.id))
            decision = plan_container(
                pod_label=label,
                name=cspec.name,
                image=cspec.image,
                restart_policy=policy,
                current=current,
                liveness_failure=liveness,
                backoff=rec.backoffs.get(cspec.name),
                start_failure=rec.start_failures.get(cspec.name),
                now=now,
                base=self.backoff_base,
                cap=self.backoff_cap,
            )
            if decision.backoff is not None:
                rec.backoffs[cspec.name] = decision.backoff
            if decision.action == "wait" and decision.waiting_reason == "CrashLoopBackOff":
                assert current is not None and current.finished_at is not None
                remaining = (
                    current.finished_at
                    + timedelta(seconds=decision.backoff.delay if decision.backoff else 0)
                    - now
                ).total_seconds()
                self._retry_later(rec, max(remaining, 0.05))
            elif decision.action == "wait":
                self._retry_later(rec, 1.0)
            elif decision.action == "kill":
                assert current is not None
                log.info(
                    "pod %s container %s: %s; killing it",
                    self._label(rec.uid),
                    cspec.name,
                    decision.kill_reason,
                )
                self.prober.forget(str(current.id))
                rec.killed.add(str(current.id))
                await self.runtime.stop(str(current.id), grace)
                self.wake(rec.uid)
            elif decision.action == "start":
                stale = [r for r in (previous, *older) if r is not None]
                decision = await self._start(rec, pod, cspec, decision, current, stale, now)
            decisions[cspec.name] = decision
        self._ensure_probes(rec, specs)
        return decisions

    async def _start(
        self,
        rec: PodRecord,
        pod: Mapping[str, Any],
        cspec: ContainerSpec,
        decision: Decision,
        current: ContainerRun | None,
        older: Sequence[ContainerRun],
        now: datetime,
    ) -> Decision:
        assert rec.sandbox is not None
        # the current run becomes "previous" (lastState, logs --previous); older ones go
        for run in older:
            self.prober.forget(str(run.id))
            with contextlib.suppress(Exception):
                self.runtime.remove(str(run.id))
            self._pod_containers.get(rec.uid, set()).discard(str(run.id))
        if current is not None:
            self.prober.forget(str(current.id))
        try:
            cfg = self.bindings.make_config(
                name=cspec.name,
                image=cspec.image,
                command=cspec.command,
                args=cspec.args,
                env=cspec.env,
                working_dir=cspec.working_dir,
                tty=cspec.tty,
                stdin=cspec.stdin,
                stdin_once=cspec.stdin_once,
                mounts=container_mounts(pod, cspec.name),
            )
            state = await self.runtime.start(
                self._runtime_sandbox(pod, rec.sandbox), cfg, decision.attempt
            )
        except Exception as exc:
            if isinstance(exc, self.bindings.image_error):
                reason = str(getattr(exc, "reason", "ErrImagePull"))
                message = str(getattr(exc, "message", str(exc)))
            else:  # a runtime failure must not stop the pod loop: report it and retry
                reason, message = "CreateContainerError", f"{type(exc).__name__}: {exc}"
            old = rec.start_failures.get(cspec.name)
            backoff = next_backoff(
                old.backoff if old else None, now, self.backoff_base, self.backoff_cap
            )
            rec.start_failures[cspec.name] = StartFailure(reason, message, now, backoff)
            log.warning(
                "pod %s container %s: %s: %s", self._label(rec.uid), cspec.name, reason, message
            )
            self._retry_later(rec, 1.0)
            return Decision(
                "wait", waiting_reason=reason, waiting_message=message, backoff=decision.backoff
            )
        rec.start_failures.pop(cspec.name, None)
        self._pod_containers.setdefault(rec.uid, set()).add(str(state.id))
        self._container_owner[str(state.id)] = rec.uid
        log.info(
            "pod %s: started container %s (attempt %d, %s)",
            self._label(rec.uid),
            cspec.name,
            decision.attempt,
            str(state.id)[:12],
        )
        return decision

    def _ensure_probes(self, rec: PodRecord, specs: Sequence[ContainerSpec]) -> None:
        assert rec.sandbox is not None
        runs = latest_runs(self._runs(rec.uid), [s.name for s in specs])
        live: set[str] = set()
        for cspec in specs:
            current = runs.get(cspec.name, (None, None, []))[0]
            if current is None or not current.running or str(current.id) in rec.killed:
                continue
            cid = str(current.id)
            live.add(cid)
            self._container_owner[cid] = rec.uid
            self.prober.ensure(
                ProbeTarget(cid, rec.sandbox.netns_path, rec.sandbox.pod_ip, cspec.ports),
                cspec.probes,
                seed_ready=cid in rec.seed_ready,
            )
        for cid in [c for c, owner in self._container_owner.items() if owner == rec.uid]:
            if cid not in live:
                self.prober.forget(cid)
                self._container_owner.pop(cid, None)

    def _views(
        self, rec: PodRecord, pod: Mapping[str, Any], decisions: Mapping[str, Decision]
    ) -> list[ContainerView]:
        specs = [c for c in (pod.get("spec") or {}).get("containers") or ()]
        runs = latest_runs(self._runs(rec.uid), [str(c["name"]) for c in specs])
        views = []
        for c in specs:
            name = str(c["name"])
            current, previous, _ = runs.get(name, (None, None, []))
            decision = decisions.get(name)
            waiting_reason = waiting_message = None
            if decision is not None and decision.action == "wait":
                waiting_reason, waiting_message = decision.waiting_reason, decision.waiting_message
            running = current is not None and current.running
            cid = str(current.id) if current is not None else ""
            image = str(c.get("image") or "")
            views.append(
                ContainerView(
                    name=name,
                    image=image,
                    image_id=str(getattr(current, "image_id", "") or image) if current else "",
                    current=current,
                    previous=previous,
                    waiting_reason=waiting_reason,
                    waiting_message=waiting_message,
                    ready=running and self.prober.ready(cid),
                    started=running and self.prober.started(cid),
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
                    self._label(rec.uid), exc, delay,
                )  # fmt: skip
            return None
        self._sync_succeeded(rec)
        rec.last_status = status
        rec.written_on = version
        return status

    async def _finish_terminal(self, rec: PodRecord) -> None:
        """A Succeeded/Failed pod: nothing runs any more, and its address goes back to IPAM."""
        for run in self._runs(rec.uid):
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
        runs = [r for r in self._runs(rec.uid) if r.running]
        for cid in [c for c, owner in self._container_owner.items() if owner == rec.uid]:
            self.prober.forget(cid)
            self._container_owner.pop(cid, None)
        if runs:
            log.info(
                "pod %s: stopping %d container(s) (grace %gs)",
                self._label(rec.uid),
                len(runs),
                grace,
            )
            await asyncio.gather(*(self.runtime.stop(str(r.id), grace) for r in runs))
        await self._in_sandbox_pool(self.sandboxes.teardown, rec.uid)
        rec.sandbox = None
        self.runtime.cleanup_pod(rec.uid)
        self._pod_containers.pop(rec.uid, None)

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
