"""The kubelet's pod loop: watch the pods bound to this node and keep each one synced.

What belongs here: `PodManager`, the one sync loop of the kubelet (DESIGN.md contract 3) — the
pod informer, one worker per pod, when a pod is synced, adoption after an agent restart, and
the lookups the kubelet endpoint needs. What a sync does is `podsync.PodSync`'s.

Shape (upstream kubelet: informer + pod workers): a list + watch of
`pods?fieldSelector=spec.nodeName=<node>` only records the latest object and marks the pod
dirty; a dispatcher wakes one worker per pod (so a slow pod never stalls the others). The
runtime does not notify, so every second the dispatcher polls container states (upstream's
PLEG) and marks pods whose containers changed; timers (back-off expiry, retries) and probe
results mark pods too; every 10 s every pod is synced anyway.

Invariants:
- Nothing is started before the first full list of pods and of Services (the containers'
  Service variables need them), and that first sync also cleans up what
  belongs to pods that are gone (deleted while the agent was down) and adopts what belongs to
  pods that remain.
- At most one sync of a pod runs at a time; a pod marked while its sync runs is synced again.
- A pod's record is dropped only once nothing of it is left (containers, sandbox, address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from podnet.agent.kubelet.cri import ContainerRuntime
from podnet.agent.kubelet.decisions import latest_runs
from podnet.agent.kubelet.events import PodEvents
from podnet.agent.kubelet.podsync import PodRecord, PodSync
from podnet.agent.kubelet.podvolumes import PodVolumes
from podnet.agent.kubelet.sandbox import Sandboxes
from podnet.agent.kubelet.services import ServiceLister
from podnet.api.interface import Api, Obj
from podnet.api.reflector import reflect
from podnet.config import ClusterConfig
from podnet.dns.resolvconf import DEFAULT_RESOLV_CONF

log = logging.getLogger("podnet.kubelet")

DEFAULT_BACKOFF_BASE = 10.0
DEFAULT_BACKOFF_CAP = 300.0


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


class PodManager:
    """The kubelet pod sync loop for one node."""

    def __init__(
        self,
        api: Api,
        node_name: str,
        node_ip: str,
        runtime: ContainerRuntime,
        sandboxes: Sandboxes,
        *,
        pod_cidr: Callable[[], str | None],
        cluster: ClusterConfig | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        resync_seconds: float = 1.0,
        full_resync_seconds: float = 10.0,
        resolv_conf: Path | None = DEFAULT_RESOLV_CONF,
        volumes_dir: Path,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.services = ServiceLister(on_synced=lambda: self._wake.set())
        self.pod_sync = PodSync(
            api,
            node_ip,
            runtime,
            sandboxes,
            pod_cidr=pod_cidr,
            wake=self.wake,
            cluster=cluster or ClusterConfig(),
            services=self.services,
            volumes=PodVolumes(api, volumes_dir),
            resolv_conf=resolv_conf,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            events=PodEvents(api, node_name),
        )
        self.resync_seconds = resync_seconds  # how often container states are polled
        self.full_resync_seconds = full_resync_seconds  # how often every pod is synced anyway
        self.synced = asyncio.Event()  # the first full list arrived and was acted on
        self.desired: dict[str, Obj] = {}
        self.records: dict[str, PodRecord] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._listed = asyncio.Event()  # the informer has a full list
        # last polled container states: (id, running, exit code) per container
        self._signatures: dict[str, tuple[tuple[str, bool, int | None], ...]] = {}

    # --- lookups for the exec/log server --------------------------------------------------

    def _find(self, namespace: str, pod: str) -> Obj | None:
        for obj in self.desired.values():
            meta = _meta(obj)
            if meta.get("namespace") == namespace and meta.get("name") == pod:
                return obj
        return None

    def resolve(self, namespace: str, pod: str, container: str) -> str | None:
        """The current container id of `container` in pod `namespace/pod`, or None."""
        obj = self._find(namespace, pod)
        if obj is None:
            return None
        runs = self.pod_sync.containers.runs(str(_meta(obj).get("uid")))
        current = latest_runs(runs, [container])[container].current
        return current.id if current is not None else None

    def netns_of(self, namespace: str, pod: str) -> str | None:
        """The network namespace (path) of pod `namespace/pod`'s sandbox, or None."""
        obj = self._find(namespace, pod)
        rec = self.records.get(str(_meta(obj).get("uid"))) if obj is not None else None
        return rec.sandbox.netns_path if rec is not None and rec.sandbox is not None else None

    # --- waking ----------------------------------------------------------------------------

    def wake(self, uid: str | None = None) -> None:
        """Mark one pod (or all, with None) dirty and wake the dispatcher."""
        if uid is None:
            self._dirty.update(self.desired)
            self._dirty.update(self.records)
        else:
            self._dirty.add(uid)
        self._wake.set()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        watchers = [
            asyncio.create_task(self._watch(stop), name="kubelet-watch"),
            asyncio.create_task(self.services.run(self.api, stop), name="kubelet-services"),
        ]
        try:
            await self._dispatch(stop)
        finally:
            for watcher in watchers:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            workers = [r.task for r in self.records.values() if r.task is not None]
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.pod_sync.close()

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
                if not (self._listed.is_set() and self.services.synced.is_set()):
                    continue
                if first:
                    await self.pod_sync.adopt(self.records, self.desired)
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

    def _changed_containers(self) -> set[str]:
        """Pods whose containers changed state since the last poll (the runtime does not
        notify: like upstream's PLEG, poll cheaply and sync only what changed)."""
        changed = set()
        pods = self.pod_sync.containers.pods()
        for uid in pods:
            runs = self.pod_sync.containers.runs(uid)
            signature = tuple((r.id, r.running, r.exit_code) for r in runs)
            if self._signatures.get(uid) != signature:
                self._signatures[uid] = signature
                changed.add(uid)
        for uid in set(self._signatures) - set(pods):
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
            finished = await self.pod_sync.sync(rec, self.desired.get(rec.uid))
            if finished and not rec.wake.is_set():
                if self.records.get(rec.uid) is rec:
                    del self.records[rec.uid]
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
