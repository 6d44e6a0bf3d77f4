"""Events: what the control loops did, recorded as `v1 Event`s for `kubectl describe`.

What belongs here: the pure `event_for` (an object + reason → the Event to create) and
`EventRecorder`, which writes them in the background.

Invariants:
- Recording never slows down or fails a reconcile: writes run as background tasks, errors are
  logged at debug level and dropped (events are best effort, as upstream's broadcaster).
- Names follow upstream (`<object>.<hex of the time in ns>`), events live in the object's
  namespace (`default` for cluster-scoped objects such as Nodes), `source.component` names the
  controller (`default-scheduler`, `replicaset-controller`, ...).
- At most `max_pending` writes are in flight; beyond that new events are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from podnet.api.interface import Api, Obj
from podnet.api.meta import rfc3339
from podnet.controllers.objects import name_of, namespace_of

log = logging.getLogger(__name__)


def event_for(
    obj: Obj,
    kind: str,
    api_version: str,
    event_type: str,
    reason: str,
    message: str,
    component: str,
    now: datetime,
    unique: int,
) -> Obj:
    meta = obj.get("metadata") or {}
    ns = namespace_of(obj)
    involved: Obj = {
        "kind": kind,
        "name": name_of(obj),
        "uid": meta.get("uid", ""),
        "apiVersion": api_version,
        "resourceVersion": str(meta.get("resourceVersion") or ""),
    }
    if ns:
        involved["namespace"] = ns
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name_of(obj)}.{unique:x}", "namespace": ns or "default"},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": None,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": component,
    }


class EventRecorder:
    def __init__(self, api: Api, component: str, max_pending: int = 200) -> None:
        self.api = api
        self.component = component
        self.max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()

    def record(
        self, obj: Obj, kind: str, api_version: str, event_type: str, reason: str, message: str
    ) -> None:
        if len(self._pending) >= self.max_pending:
            return
        event = event_for(
            obj,
            kind,
            api_version,
            event_type,
            reason,
            message,
            self.component,
            datetime.now(UTC),
            time.time_ns(),
        )
        task = asyncio.create_task(self._write(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Drop what is still in flight (shutdown)."""
        pending = list(self._pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _write(self, event: Obj) -> None:
        try:
            await self.api.create("events", event, event["metadata"]["namespace"])
        except Exception as e:  # best effort
            log.debug(
                "event %s/%s not recorded: %s", event["reason"], event["involvedObject"]["name"], e
            )
