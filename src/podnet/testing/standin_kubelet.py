"""A stand-in kubelet for tests and benchmarks of the control loops: the API calls a kubelet
makes, without processes or namespaces.

What belongs here: `FakeKubelet`, which plays the kubelet of every node (or of the nodes in
`alive`) through any `podnet.api.interface.Api`, and `add_node`, which registers a Ready Node
the way an agent does. Tests of controllers that run inside a real `podnet server` (HTTP, SQLite
or etcd) and `benchmarks/controllers.py` use them; whole-lab tests use the real agent instead.

What the stand-in does, in the API only (pods/status writes and deletes, like a kubelet):
- a pod bound to a live node becomes Running with an IP and `Ready=True` (False while its name
  is in `not_ready`);
- a pod whose `restartPolicy` is not Always (a Job's) finishes `run_seconds` after it started:
  Succeeded with exit code 0, or Failed with exit code 1 when `fails(pod)` says so;
- a pod being deleted is removed (grace period 0), as a kubelet does once its containers
  stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.meta import rfc3339


def _stamp() -> str:
    return rfc3339(datetime.now(UTC))


def _never(pod: Obj) -> bool:
    return False


class FakeKubelet:
    def __init__(
        self,
        api: Api,
        *,
        alive: set[str] | None = None,
        namespace: str | None = None,
        run_seconds: float = 0.0,
        fails: Callable[[Obj], bool] = _never,
        interval: float = 0.02,
    ) -> None:
        self.api = api
        self.alive = alive  # the nodes whose kubelet runs (None: every node)
        self.namespace = namespace  # None: every namespace
        self.run_seconds = run_seconds
        self.fails = fails
        self.interval = interval
        self.not_ready: set[str] = set()
        self.ips: dict[str, str] = {}  # pod uid -> IP
        self.started: dict[str, float] = {}  # pod uid -> monotonic start, for finishing pods
        self._next = 2

    def ip_for(self, uid: str) -> str:
        if uid not in self.ips:
            self.ips[uid] = f"10.244.{self._next // 250}.{self._next % 250 + 2}"
            self._next += 1
        return self.ips[uid]

    async def run(self) -> None:
        while True:
            with contextlib.suppress(ApiError):
                await self.sync()
            await asyncio.sleep(self.interval)

    async def sync(self) -> None:
        pods = (await self.api.list("pods", self.namespace))["items"]
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or (self.alive is not None and node not in self.alive):
                continue
            with contextlib.suppress(ApiError):
                await self._sync_pod(pod)

    async def _sync_pod(self, pod: Obj) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        name, ns, uid = meta["name"], meta["namespace"], meta["uid"]
        if meta.get("deletionTimestamp"):
            await self.api.delete("pods", name, ns, grace_period_seconds=0, uid=uid)
            self.started.pop(uid, None)
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        finishes = spec.get("restartPolicy", "Always") != "Always"
        started = self.started.setdefault(uid, time.monotonic())
        if finishes and time.monotonic() - started >= self.run_seconds:
            await self._finish(pod, failed=self.fails(pod))
            return
        want = "False" if name in self.not_ready else "True"
        ready = next(
            (c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"),
            None,
        )
        if status.get("podIP") and ready == want:
            return
        ip = self.ip_for(uid)
        body = {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": "172.31.0.2",
                "startTime": _stamp(),
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": want, "lastTransitionTime": _stamp()},
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "ready": want == "True",
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _stamp()}},
                    }
                    for c in spec.get("containers") or []
                ],
            }
        }
        await self.api.patch("pods", name, body, ns, subresource="status")

    async def _finish(self, pod: Obj, failed: bool) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        code = 1 if failed else 0
        reason = "Error" if failed else "Completed"
        body = {
            "status": {
                "phase": "Failed" if failed else "Succeeded",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": _stamp(),
                    },
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": reason,
                                "finishedAt": _stamp(),
                            }
                        },
                    }
                    for c in spec.get("containers") or []
                ],
            }
        }
        await self.api.patch("pods", meta["name"], body, meta["namespace"], subresource="status")
        self.started.pop(meta["uid"], None)


async def add_node(
    api: Api,
    name: str,
    labels: dict[str, str] | None = None,
    taints: list[Obj] | None = None,
) -> Obj:
    """Register a Ready node, as an agent does (create, then status)."""
    spec: Obj = {"taints": taints} if taints else {}
    await api.create(
        "nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            },
            "spec": spec,
        },
    )
    return await api.patch(
        "nodes",
        name,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "lastHeartbeatTime": _stamp(),
                        "lastTransitionTime": _stamp(),
                    }
                ]
            }
        },
        subresource="status",
    )
