"""The kubelet's Events: why a container does not run, for `kubectl describe pod` and
`kubectl get events`.

What belongs here: the pure `render_event` (a pod, container, reason and message → the v1
Event upstream's kubelet writes) and `PodEvents`, which writes them in the background and
folds repeats into one Event, as upstream's event correlator does.

Which events: the abnormal ones, where upstream's kubelet writes them, so a failure says why
without reading the agent's log: `Failed` (an image that cannot be had, a missing ConfigMap or
Secret, any other start failure), `Unhealthy` (every failed probe), `Killing` (a container
that failed its liveness or startup probe), `BackOff` (a crashed container waiting for its
restart). The happy path (Pulled, Created, Started) writes nothing, so a pod's start costs no
extra API writes.

Invariants:
- Recording never blocks or fails a sync: events go through one bounded queue to one writer
  task; a failed write is logged at debug level and dropped (best effort, as upstream).
- A repeat of an event (same pod uid, container, type, reason and message) within
  `SIMILAR_WINDOW` patches the first one's `count` and `lastTimestamp` instead of creating
  another; the remembered keys are bounded (`MAX_KEYS`, oldest forgotten first).
- Events name the container as upstream does (`involvedObject.fieldPath`
  `spec.containers{NAME}`), `source` is `kubelet` on this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.meta import rfc3339

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
SIMILAR_WINDOW = 600.0  # seconds a repeat is folded into the first event (upstream: 10 min)
MAX_KEYS = 4096  # upstream's LRU of the correlator
MAX_QUEUED = 200


def render_event(
    pod: Mapping[str, Any],
    container: str | None,
    event_type: str,
    reason: str,
    message: str,
    node_name: str,
    now: datetime,
    unique: int,
) -> Obj:
    """The Event upstream's kubelet writes about `container` of `pod` (None: the pod)."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "default")
    involved: Obj = {
        "kind": "Pod",
        "namespace": namespace,
        "name": name,
        "uid": str(meta.get("uid") or ""),
        "apiVersion": "v1",
        "resourceVersion": str(meta.get("resourceVersion") or ""),
    }
    if container is not None:
        involved["fieldPath"] = f"spec.containers{{{container}}}"
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{unique:x}", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": {"component": "kubelet", "host": node_name},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": None,
        "count": 1,
        "reportingComponent": "kubelet",
        "reportingInstance": node_name,
    }


class PodEvents:
    def __init__(
        self,
        api: Api,
        node_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.clock = clock
        self.now = now
        # key -> (namespace, event name, count, when first written)
        self._seen: OrderedDict[tuple[str, ...], tuple[str, str, int, float]] = OrderedDict()
        self._queue: asyncio.Queue[tuple[tuple[str, ...], Obj]] = asyncio.Queue(MAX_QUEUED)
        self._writer: asyncio.Task[None] | None = None

    def record(
        self,
        pod: Mapping[str, Any],
        container: str | None,
        event_type: str,
        reason: str,
        message: str,
    ) -> None:
        meta = pod.get("metadata") or {}
        key = (str(meta.get("uid") or ""), container or "", event_type, reason, message)
        event = render_event(
            pod, container, event_type, reason, message, self.node_name, self.now(), time.time_ns()
        )
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="kubelet-events")
        with contextlib.suppress(asyncio.QueueFull):  # best effort: drop beyond the bound
            self._queue.put_nowait((key, event))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write_all(self) -> None:
        while True:
            key, event = await self._queue.get()
            try:
                await self._write(key, event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # best effort
                log.debug("event %s of %s not recorded: %s", event["reason"], key[0], exc)

    async def _write(self, key: tuple[str, ...], event: Obj) -> None:
        seen = self._seen.get(key)
        if seen is not None and self.clock() - seen[3] < SIMILAR_WINDOW:
            namespace, name, count, first = seen
            self._seen[key] = (namespace, name, count + 1, first)
            self._seen.move_to_end(key)
            patch = {"count": count + 1, "lastTimestamp": event["lastTimestamp"]}
            try:
                await self.api.patch("events", name, patch, namespace, patch_type="merge")
                return
            except ApiError as exc:
                if exc.code != 404:
                    raise  # gone (deleted, expired): write it afresh below
        meta = event["metadata"]
        self._seen[key] = (meta["namespace"], meta["name"], 1, self.clock())
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_KEYS:
            self._seen.popitem(last=False)
        await self.api.create("events", event, meta["namespace"])
