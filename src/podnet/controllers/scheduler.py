"""The scheduler: binds each pending pod to a feasible node, spreading by pod count.

What belongs here: the pure planner `plan_schedule` (filter nodes, score, pick) and
`SchedulerController`, which binds through the `pods/binding` subresource or records
`PodScheduled=False` with upstream's reason and message through `pods/status`.

Filters (upstream plugin names in brackets; a node must pass all):
- Ready condition True [NodeReady via the not-ready taint upstream] — "node(s) were not ready";
- `spec.unschedulable` unset [NodeUnschedulable] — "node(s) were unschedulable";
- NoSchedule/NoExecute taints tolerated [TaintToleration] —
  "node(s) had untolerated taint {key: value}";
- `spec.nodeSelector` ⊆ node labels and the required node affinity (`controllers/nodefit.py`,
  shared with the DaemonSet controller) [NodeAffinity] — "node(s) didn't match Pod's node
  affinity/selector".
Score: fewest non-terminal pods bound to the node; ties broken by node name, so the result
is deterministic. Unschedulable message: "0/N nodes are available: <count> <reason>, ..." with
reasons sorted like upstream, then " preemption: 0/N nodes are available: N Preemption is not
helpful for scheduling.".

Pods with `spec.nodeName` are already bound (by the user or earlier). Pods whose
`schedulerName` is not `default-scheduler` (when set) are left to their scheduler. The
controller counts its own bindings before the informer shows them ("assumed" pods), so a burst
of pending pods is spread evenly; unschedulable pods are retried whenever any node changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.controllers.controller import Controller
from podnet.controllers.informer import EventType
from podnet.controllers.nodefit import (
    matches_node_affinity,
    matches_node_selector,
    tolerates,
    untolerated_taint,
)
from podnet.controllers.objects import (
    get_condition,
    is_deleting,
    labels_of,
    name_of,
    namespace_of,
    object_key,
    pod_is_terminal,
    pod_node,
    set_condition,
)

log = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "default-scheduler"
NOT_READY = "node(s) were not ready"
UNSCHEDULABLE = "node(s) were unschedulable"
SELECTOR_MISMATCH = "node(s) didn't match Pod's node affinity/selector"


@dataclass(frozen=True, slots=True)
class Bind:
    node: str


@dataclass(frozen=True, slots=True)
class Unschedulable:
    message: str


def wants_scheduling(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    if spec.get("nodeName") or pod_is_terminal(pod) or is_deleting(pod):
        return False
    return (spec.get("schedulerName") or DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER


def node_rejection(pod: Obj, node: Obj) -> str | None:
    """Why `pod` cannot go to `node` (upstream's per-node reason), or None if it fits."""
    spec = node.get("spec") or {}
    pod_spec = pod.get("spec") or {}
    tolerations = pod_spec.get("tolerations") or []
    if spec.get("unschedulable") and not tolerates(
        tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    ):
        return UNSCHEDULABLE
    taint = untolerated_taint(pod_spec, node)
    if taint is not None:
        return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    ready = get_condition(node, "Ready")
    if ready is None or ready.get("status") != "True":
        return NOT_READY
    if not matches_node_selector(pod_spec, node) or not matches_node_affinity(pod_spec, node):
        return SELECTOR_MISMATCH
    return None


def unschedulable_message(total: int, reasons: dict[str, int]) -> str:
    if total == 0:
        return "no nodes available to schedule pods"
    parts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    return (
        f"0/{total} nodes are available: {parts}. preemption: 0/{total} nodes are "
        f"available: {total} Preemption is not helpful for scheduling."
    )


def plan_schedule(
    pod: Obj, nodes: list[Obj], pods_per_node: dict[str, int]
) -> Bind | Unschedulable:
    """Choose a node for `pod`: feasible nodes, fewest pods first, then by name."""
    reasons: dict[str, int] = {}
    feasible: list[str] = []
    for node in nodes:
        why = node_rejection(pod, node)
        if why is None:
            feasible.append(name_of(node))
        else:
            reasons[why] = reasons.get(why, 0) + 1
    if not feasible:
        return Unschedulable(unschedulable_message(len(nodes), reasons))
    best = min(feasible, key=lambda n: (pods_per_node.get(n, 0), n))
    return Bind(best)


def count_pods_per_node(pods: list[Obj]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pods:
        node = pod_node(p)
        if node and not pod_is_terminal(p):
            counts[node] = counts.get(node, 0) + 1
    return counts


def unschedulable_conditions(pod: Obj, message: str, now: datetime) -> list[Obj] | None:
    """The pod's new conditions, or None when PodScheduled already says exactly this."""
    cur = get_condition(pod, "PodScheduled")
    if (
        cur is not None
        and cur.get("status") == "False"
        and cur.get("reason") == "Unschedulable"
        and cur.get("message") == message
    ):
        return None
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": None,
    }
    return set_condition(list((pod.get("status") or {}).get("conditions") or []), cond, now)


def binding_for(pod: Obj, node: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name_of(pod), "namespace": namespace_of(pod)},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


class SchedulerController(Controller):
    name = "scheduler"
    component = DEFAULT_SCHEDULER
    workers = 1  # one binder: counts stay exact without locking

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pods = self.informers.informer("pods")
        self.nodes = self.informers.informer("nodes")
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)
        self.assumed: dict[str, str] = {}  # pod key -> node we bound it to, until seen bound
        self.unschedulable: set[str] = set()

    def all_keys(self) -> list[str]:
        return [object_key(p) for p in self.pods.items() if wants_scheduling(p)]

    def _on_pod(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if new is None:
            assert old is not None
            self.assumed.pop(object_key(old), None)
            self.unschedulable.discard(object_key(old))
            return
        key = object_key(new)
        if pod_node(new):
            self.assumed.pop(key, None)
            self.unschedulable.discard(key)
        elif wants_scheduling(new):
            self.queue.add(key)

    def _on_node(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if (
            kind == "MODIFIED"
            and old is not None
            and new is not None
            and (
                old.get("spec") == new.get("spec")
                and labels_of(old) == labels_of(new)
                and get_condition(old, "Ready") == get_condition(new, "Ready")
            )
        ):
            return  # heartbeat-only change
        for key in list(self.unschedulable):
            self.queue.add(key)

    def _pods_per_node(self) -> dict[str, int]:
        counts = count_pods_per_node(self.pods.items())
        for key, node in self.assumed.items():
            pod = self.pods.get(key)
            if pod is not None and not pod_node(pod):
                counts[node] = counts.get(node, 0) + 1
        return counts

    async def reconcile(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None or not wants_scheduling(pod) or key in self.assumed:
            return
        decision = plan_schedule(pod, self.nodes.items(), self._pods_per_node())
        ns = namespace_of(pod)
        if isinstance(decision, Bind):
            try:
                await self.api.create(
                    "pods", binding_for(pod, decision.node), ns, subresource="binding"
                )
            except ApiError as e:
                if e.code in (404, 409):  # gone, or bound by someone else meanwhile
                    return
                raise
            self.assumed[key] = decision.node
            self.unschedulable.discard(key)
            self.events.record(
                pod,
                "Pod",
                "v1",
                "Normal",
                "Scheduled",
                f"Successfully assigned {key} to {decision.node}",
            )
            log.info("scheduler: bound %s to %s", key, decision.node)
            return
        self.unschedulable.add(key)
        conditions = unschedulable_conditions(pod, decision.message, datetime.now(UTC))
        if conditions is None:
            return
        self.events.record(pod, "Pod", "v1", "Warning", "FailedScheduling", decision.message)
        status: Obj = {"conditions": conditions}
        if not (pod.get("status") or {}).get("phase"):
            status["phase"] = "Pending"
        try:
            await self.api.patch("pods", name_of(pod), {"status": status}, ns, subresource="status")
        except ApiError as e:
            if e.code != 404:
                raise
        log.info("scheduler: %s unschedulable: %s", key, decision.message)
