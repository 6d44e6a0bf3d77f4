"""Node lifecycle: notices nodes whose kubelet went silent, and moves their pods elsewhere.

What belongs here: the pure planners `plan_node_health` (one node: conditions, taints, its
pods' readiness and eviction) and `plan_orphan_pods` (pods bound to nodes that no longer
exist), and `NodeLifecycleController`, which measures lease silence and applies the plans.

Semantics (upstream `node_lifecycle_controller.go` + taint eviction + podgc, condensed):
- Health signal: the node's Lease `kube-node-lease/<node>`. Silence is measured on this
  controller's clock from the moment it last *saw* `renewTime` change (or from its own start),
  never by comparing the kubelet's timestamps with ours — clock skew cannot fake health.
- Silent for more than `node_monitor_grace_seconds`: every node condition becomes Unknown with
  reason NodeStatusUnknown, message "Kubelet stopped posting node status."; taints
  `node.kubernetes.io/unreachable` NoSchedule and NoExecute are added; every pod on the node
  gets Ready=False at once (so endpoints drop it).
- Taint-based eviction (upstream's taint manager): each pod is deleted once the NoExecute
  unreachable taint is older than the pod's `tolerationSeconds` for it (the minimum over its
  matching tolerations; none given: for ever; no toleration at all: the admission's default,
  `pod_eviction_timeout_seconds`), measured from the taint's timeAdded, which survives a
  server restart. Its controller replaces it elsewhere; the deletion is graceful, so the
  kubelet, when the node returns, stops the containers and removes the pod.
- Pods bound to a node that does not exist are deleted with grace 0 (upstream podgc), after a
  short quarantine and a live check that the node is really gone.
- The lease renewing again with Ready back to True (the kubelet's post) lifts the taints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.controllers.controller import Controller
from podnet.controllers.informer import EventType
from podnet.controllers.objects import (
    get_condition,
    is_deleting,
    name_of,
    namespace_of,
    object_key,
    pod_is_ready,
    pod_is_terminal,
    pod_node,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

UNREACHABLE = "node.kubernetes.io/unreachable"
LEASE_NAMESPACE = "kube-node-lease"
UNKNOWN_REASON = "NodeStatusUnknown"
UNKNOWN_MESSAGE = "Kubelet stopped posting node status."
ORPHAN_QUARANTINE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class NodeHealthInput:
    node: Obj
    pods: Callable[[], list[Obj]]  # the pods bound to the node; asked only of a silent node
    silent_for: float  # seconds since this controller last saw the lease renewed
    grace: float
    eviction_timeout: float
    now: datetime


def _unknown_conditions(node: Obj, now: datetime) -> list[Obj] | None:
    conditions = list((node.get("status") or {}).get("conditions") or [])
    if not conditions:
        conditions = [{"type": "Ready"}]
    changed = False
    out: list[Obj] = []
    stamp = rfc3339(now)
    for c in conditions:
        if c.get("status") == "Unknown" and c.get("reason") == UNKNOWN_REASON:
            out.append(c)
            continue
        changed = True
        nc = dict(c)
        nc.update(
            {
                "status": "Unknown",
                "reason": UNKNOWN_REASON,
                "message": UNKNOWN_MESSAGE,
                "lastTransitionTime": stamp,
            }
        )
        nc.setdefault("lastHeartbeatTime", c.get("lastHeartbeatTime") or stamp)
        out.append(nc)
    return out if changed else None


def _taints(node: Obj) -> list[Obj]:
    return list((node.get("spec") or {}).get("taints") or [])


def plan_node_health(inp: NodeHealthInput) -> list[Write]:
    node = inp.node
    writes: list[Write] = []
    taints = _taints(node)
    has_unreachable = any(t.get("key") == UNREACHABLE for t in taints)
    ready = get_condition(node, "Ready") or {}
    if inp.silent_for <= inp.grace:
        if has_unreachable and ready.get("status") == "True":
            kept = [t for t in taints if t.get("key") != UNREACHABLE]
            writes.append(
                Write(
                    "patch",
                    "nodes",
                    node,
                    patch={
                        "spec": {"taints": kept or None},
                        "metadata": {"resourceVersion": _rv(node)},
                    },
                )
            )
        return writes
    conditions = _unknown_conditions(node, inp.now)
    if conditions is not None:
        writes.append(
            Write(
                "patch",
                "nodes",
                node,
                subresource="status",
                patch={"status": {"conditions": conditions}},
            )
        )
    if not has_unreachable:
        stamp = rfc3339(inp.now)
        added = [
            {"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": stamp},
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp},
        ]
        writes.append(
            Write(
                "patch",
                "nodes",
                node,
                patch={
                    "spec": {"taints": taints + added},
                    "metadata": {"resourceVersion": _rv(node)},
                },
            )
        )
    tainted_since = inp.now
    if has_unreachable:
        stamps = [
            parse_rfc3339(t.get("timeAdded"))
            for t in taints
            if t.get("key") == UNREACHABLE and t.get("effect") == "NoExecute"
        ]
        tainted_since = next((a for a in stamps if a is not None), None) or (
            parse_rfc3339(ready.get("lastTransitionTime")) or inp.now
        )
    tainted_for = (inp.now - tainted_since).total_seconds()
    for pod in sorted(inp.pods(), key=object_key):
        if pod_is_terminal(pod) or is_deleting(pod):
            continue
        tolerated = toleration_seconds(pod, UNREACHABLE, inp.eviction_timeout)
        if tolerated is not None and tainted_for >= tolerated:
            writes.append(Write("delete", "pods", pod))
        elif pod_is_ready(pod):
            writes.append(
                Write(
                    "patch",
                    "pods",
                    pod,
                    subresource="status",
                    patch={"status": {"conditions": _pod_not_ready(pod, inp.now)}},
                )
            )
    return writes


def toleration_seconds(pod: Obj, key: str, default: float) -> float | None:
    """How long `pod` tolerates the NoExecute taint `key` (upstream's minimum over the matching
    tolerations; None: for ever). A pod with no matching toleration gets `default`, what the
    DefaultTolerationSeconds admission gives every pod created through the API."""
    found: list[float | None] = []
    for t in (pod.get("spec") or {}).get("tolerations") or []:
        if not isinstance(t, dict) or t.get("effect") not in (None, "", "NoExecute"):
            continue
        if t.get("key") == key or (not t.get("key") and t.get("operator") == "Exists"):
            seconds = t.get("tolerationSeconds")
            found.append(None if seconds is None else max(0.0, float(seconds)))
    if not found:
        return default
    bounded = [f for f in found if f is not None]
    return min(bounded) if bounded else None


def _pod_not_ready(pod: Obj, now: datetime) -> list[Obj]:
    out = []
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") != "False":
            c = {**c, "status": "False", "lastTransitionTime": rfc3339(now)}
        out.append(c)
    return out


def _rv(obj: Obj) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else None


def plan_orphan_pods(pods: list[Obj], node_names: set[str]) -> list[Write]:
    """Pods bound to nodes that do not exist: delete now, grace 0 (nothing can stop them)."""
    return [
        Write("delete", "pods", p, options={"grace_period_seconds": 0})
        for p in sorted(pods, key=object_key)
        if pod_node(p) and pod_node(p) not in node_names
    ]


class NodeLifecycleController(Controller):
    name = "nodelifecycle"
    component = "node-controller"
    workers = 1
    resync_seconds = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes = self.informers.informer("nodes")
        self.leases = self.informers.informer("leases")
        self.pods = self.informers.informer("pods")
        self.leases.add_handler(self._on_lease)
        self.nodes.add_handler(self._on_node)
        self.pods.add_handler(self._on_pod)
        self.started = time.monotonic()
        self.observed: dict[str, tuple[str, float]] = {}  # node -> (renewTime, seen at)
        self.pods_by_node: dict[str, set[str]] = {}
        self.orphan_seen: dict[str, float] = {}
        resync = min(1.0, self.config.node_monitor_grace_seconds / 4)
        self.resync_seconds = max(resync, 0.05)

    def all_keys(self) -> list[str]:
        return [f"node|{name_of(n)}" for n in self.nodes.items()] + [
            f"orphans|{node}"
            for node in self.pods_by_node
            if self.nodes.get(node) is None and self.pods_by_node[node]
        ]

    def _on_lease(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if namespace_of(obj) != LEASE_NAMESPACE or new is None:
            return
        renew = str((new.get("spec") or {}).get("renewTime") or "")
        node = name_of(new)
        if self.observed.get(node, ("", 0.0))[0] != renew:
            self.observed[node] = (renew, time.monotonic())
            self.queue.add(f"node|{node}")

    def _on_node(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if new is None:
            self.observed.pop(name_of(obj), None)
            self.queue.add(f"orphans|{name_of(obj)}")

    def _on_pod(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if old is not None and pod_node(old):
            self.pods_by_node.get(pod_node(old), set()).discard(object_key(old))
        if new is not None and pod_node(new):
            self.pods_by_node.setdefault(pod_node(new), set()).add(object_key(new))

    def silent_for(self, node_name: str) -> float:
        lease = self.leases.get(f"{LEASE_NAMESPACE}/{node_name}")
        renew = str(((lease or {}).get("spec") or {}).get("renewTime") or "")
        seen = self.observed.get(node_name)
        if seen is None:  # first look: the grace period runs from our own start (upstream)
            self.observed[node_name] = (renew, self.started)
        elif seen[0] != renew:
            self.observed[node_name] = (renew, time.monotonic())
        return time.monotonic() - self.observed[node_name][1]

    def _pods_on(self, node_name: str) -> list[Obj]:
        out = []
        for key in self.pods_by_node.get(node_name, set()):
            pod = self.pods.get(key)
            if pod is not None and pod_node(pod) == node_name:
                out.append(pod)
        return out

    async def reconcile(self, key: str) -> None:
        kind, _, node_name = key.partition("|")
        if kind == "orphans":
            await self._reconcile_orphans(node_name)
            return
        node = self.nodes.get(node_name)
        if node is None:
            return
        writes = plan_node_health(
            NodeHealthInput(
                node=node,
                # every node is looked at every second: its pods only when it fell silent
                pods=lambda: self._pods_on(node_name),
                silent_for=self.silent_for(node_name),
                grace=self.config.node_monitor_grace_seconds,
                eviction_timeout=self.config.pod_eviction_timeout_seconds,
                now=datetime.now(UTC),
            )
        )
        for w in writes:
            try:
                await apply_write(self.api, w)
            except ApiError as e:
                if e.code != 404:
                    raise
            log.info("nodelifecycle: %s", w.describe())
            if w.resource == "nodes" and w.subresource == "status":
                self.events.record(
                    node,
                    "Node",
                    "v1",
                    "Normal",
                    "NodeNotReady",
                    f"Node {node_name} status is now: NodeNotReady",
                )
            elif w.verb == "delete":
                self.events.record(
                    w.obj,
                    "Pod",
                    "v1",
                    "Normal",
                    "TaintManagerEviction",
                    f"Marking for deletion Pod {object_key(w.obj)}",
                )

    async def _reconcile_orphans(self, node_name: str) -> None:
        if self.nodes.get(node_name) is not None:
            self.orphan_seen.pop(node_name, None)
            return
        first = self.orphan_seen.setdefault(node_name, time.monotonic())
        if time.monotonic() - first < ORPHAN_QUARANTINE_SECONDS:
            return  # the periodic resync looks again
        try:
            await self.api.get("nodes", node_name)
            return  # it exists; our cache is behind
        except ApiError as e:
            if e.code != 404:
                raise
        existing = {name_of(n) for n in self.nodes.items()}
        for w in plan_orphan_pods(self._pods_on(node_name), existing):
            await apply_write(self.api, w)
            log.info("nodelifecycle: %s (node %s is gone)", w.describe(), node_name)
        self.orphan_seen.pop(node_name, None)
