"""The disruption controller: keeps every PodDisruptionBudget's status, which evictions spend.

What belongs here: the pure planner `plan_budget` (one budget, the pods it selects, the scale
of their controllers → its new status) and `DisruptionController`, its thin loop. The other
half — spending a disruption when a pod is evicted — is the API server's
(`apiserver/eviction.py`).

Semantics (upstream `pkg/controller/disruption/disruption.go`):
- Pods: those of the budget's namespace matched by `spec.selector` (missing: none; `{}`: all).
- minAvailable as an integer: expectedPods = the number of pods, desiredHealthy = the value.
  maxUnavailable, or minAvailable as a percentage: expectedPods = the sum of the scale of the
  pods' controllers, each counted once (a ReplicaSet owned by a Deployment counts as the
  Deployment: `spec.replicas`); percentages round up. desiredHealthy = expected -
  maxUnavailable (not below 0), or the scaled minAvailable.
- A pod without a controller cannot be counted: it is left out, with a Warning event
  `UnmanagedPods`. A controller that cannot be found fails the sync safely: disruptionsAllowed
  0 and condition DisruptionAllowed=False, reason SyncFailed, "found no controllers for pod ...".
- disruptedPods (written by evictions) keeps a pod for 2 minutes or until it is being deleted;
  such pods do not count as healthy. currentHealthy = ready pods not being deleted and not
  recently disrupted. disruptionsAllowed = currentHealthy - desiredHealthy (0 when negative or
  when nothing is expected).
- Condition DisruptionAllowed: True/SufficientPods when a disruption is allowed, else
  False/InsufficientPods; `observedGeneration` = the budget's generation, so evictions know the
  status matches the spec. The status is written only when it changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.controllers.controller import Controller
from podnet.controllers.deployment import scaled_value
from podnet.controllers.informer import EventType
from podnet.controllers.objects import (
    controller_ref,
    is_deleting,
    labels_of,
    name_of,
    namespace_of,
    object_key,
    pod_is_ready,
    selector_matches,
    uid_of,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

DELETION_TIMEOUT = timedelta(minutes=2)  # upstream DeletionTimeout
CONDITION = "DisruptionAllowed"

ScaleOf = Callable[[Obj], tuple[str, int] | None]
"""A pod → (its controller's uid, that controller's scale); None when the controller named by
the pod's controller reference cannot be found."""


@dataclass(slots=True)
class BudgetPlan:
    writes: list[Write] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)  # pod names without a controller
    requeue_after: float | None = None


class _SyncFailed(Exception):
    pass


def budget_pods(budget: Obj, pods: list[Obj]) -> list[Obj]:
    selector = (budget.get("spec") or {}).get("selector")
    ns = namespace_of(budget)
    return [p for p in pods if namespace_of(p) == ns and selector_matches(selector, labels_of(p))]


def _expected_scale(pods: list[Obj], scale_of: ScaleOf, unmanaged: list[str]) -> int:
    scales: dict[str, int] = {}
    for pod in pods:
        if controller_ref(pod) is None:
            unmanaged.append(name_of(pod))
            continue
        found = scale_of(pod)
        if found is None:
            raise _SyncFailed(f'found no controllers for pod "{name_of(pod)}"')
        scales[found[0]] = found[1]
    return sum(scales.values())


def expected_and_desired(
    budget: Obj, pods: list[Obj], scale_of: ScaleOf, unmanaged: list[str]
) -> tuple[int, int]:
    """(expectedPods, desiredHealthy) as upstream `getExpectedPodCount` computes them."""
    spec = budget.get("spec") or {}
    max_unavailable = spec.get("maxUnavailable")
    min_available = spec.get("minAvailable")
    if max_unavailable is not None:
        expected = _expected_scale(pods, scale_of, unmanaged)
        down = scaled_value(max_unavailable, expected, round_up=True)
        return expected, max(expected - down, 0)
    if isinstance(min_available, int):
        return len(pods), min_available
    if isinstance(min_available, str):
        expected = _expected_scale(pods, scale_of, unmanaged)
        return expected, scaled_value(min_available, expected, round_up=True)
    return 0, 0


def _disrupted(
    budget: Obj, pods: list[Obj], now: datetime
) -> tuple[dict[str, str], datetime | None]:
    recorded = (budget.get("status") or {}).get("disruptedPods") or {}
    kept: dict[str, str] = {}
    recheck: datetime | None = None
    for pod in pods:
        name = name_of(pod)
        when = parse_rfc3339(recorded.get(name))
        if is_deleting(pod) or when is None:
            continue
        expires = when + DELETION_TIMEOUT
        if expires < now:
            continue  # the eviction did not delete it in time: count it again
        kept[name] = recorded[name]
        recheck = expires if recheck is None else min(recheck, expires)
    return kept, recheck


def _condition(status: Obj, allowed: bool, reason: str, message: str, now: datetime) -> Obj:
    previous = next((c for c in status.get("conditions") or [] if c.get("type") == CONDITION), None)
    value = "True" if allowed else "False"
    since = rfc3339(now)
    if previous is not None and previous.get("status") == value:
        since = previous.get("lastTransitionTime") or since
    return {
        "type": CONDITION,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": status.get("observedGeneration"),
        "lastTransitionTime": since,
    }


def _with_condition(status: Obj, condition: Obj) -> list[Obj]:
    others = [c for c in status.get("conditions") or [] if c.get("type") != CONDITION]
    return [*others, condition]


def plan_budget(budget: Obj, pods: list[Obj], scale_of: ScaleOf, now: datetime) -> BudgetPlan:
    """One sync of `budget` over the pods of its namespace (see the module docstring)."""
    plan = BudgetPlan()
    if is_deleting(budget):
        return plan
    current = dict(budget.get("status") or {})
    selected = budget_pods(budget, pods)
    try:
        expected, desired = expected_and_desired(budget, selected, scale_of, plan.unmanaged)
    except _SyncFailed as failure:
        failed: Obj = {**current, "disruptionsAllowed": 0}
        failed["conditions"] = _with_condition(
            failed, _condition(failed, False, "SyncFailed", str(failure), now)
        )
        if _differs(failed, current):
            plan.writes.append(_status_write(budget, failed))
        return plan
    disrupted, recheck = _disrupted(budget, selected, now)
    healthy = sum(
        1
        for p in selected
        if not is_deleting(p) and name_of(p) not in disrupted and pod_is_ready(p)
    )
    allowed = healthy - desired if expected > 0 else 0
    status: Obj = {
        "observedGeneration": int((budget.get("metadata") or {}).get("generation") or 1),
        "disruptionsAllowed": max(allowed, 0),
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
    }
    if disrupted:
        status["disruptedPods"] = disrupted
    status["conditions"] = _with_condition(
        current,
        _condition(
            {**current, "observedGeneration": status["observedGeneration"]},
            allowed > 0,
            "SufficientPods" if allowed > 0 else "InsufficientPods",
            "",
            now,
        ),
    )
    if _differs(status, current):
        plan.writes.append(_status_write(budget, status))
    if recheck is not None:
        plan.requeue_after = max((recheck - now).total_seconds(), 0.0) + 0.05
    return plan


def _differs(new: Obj, old: Obj) -> bool:
    """Whether writing `new` changes anything but condition timestamps."""

    def strip(status: Obj) -> Obj:
        out = dict(status)
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions") or []
        ]
        return out

    return strip(new) != strip(old)


def _status_write(budget: Obj, status: Obj) -> Write:
    # a full replacement, so a disruptedPods entry that expired disappears from the map
    updated = {**budget, "status": status}
    return Write("update", "poddisruptionbudgets", updated, subresource="status")


# --- the loop --------------------------------------------------------------------------------

SCALED_KINDS = {
    "ReplicaSet": "replicasets",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "ReplicationController": "replicationcontrollers",
}
"""Controller kinds whose `spec.replicas` count as a budget's expected pods (upstream's
finders)."""


class DisruptionController(Controller):
    name = "disruption"
    component = "controllermanager"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budgets = self.informers.informer("poddisruptionbudgets")
        self.pods = self.informers.informer("pods")
        self.scaled = {kind: self.informers.informer(p) for kind, p in SCALED_KINDS.items()}
        self.budgets.add_handler(self._on_budget)
        self.pods.add_handler(self._on_pod)
        for informer in self.scaled.values():
            informer.add_handler(self._on_scaled)
        self._warned: dict[str, tuple[str, ...]] = {}

    def all_keys(self) -> list[str]:
        return list(self.budgets.keys())

    def _on_budget(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        self.queue.add(object_key(obj))

    def _on_pod(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        for pod in (old, new):
            if pod is None:
                continue
            for budget in self.budgets.in_namespace(namespace_of(pod)):
                if budget_pods(budget, [pod]):
                    self.queue.add(object_key(budget))

    def _on_scaled(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        for budget in self.budgets.in_namespace(namespace_of(obj)):
            self.queue.add(object_key(budget))

    def scale_of(self, pod: Obj) -> tuple[str, int] | None:
        """The pod's controller and its scale (a Deployment for a ReplicaSet it owns)."""
        namespace = namespace_of(pod)
        ref = controller_ref(pod)
        owner = self._find(namespace, ref)
        parent_ref = controller_ref(owner) if owner is not None else None
        if parent_ref is not None and parent_ref.get("kind") in SCALED_KINDS:
            owner = self._find(namespace, parent_ref)
        if owner is None:
            return None
        replicas = (owner.get("spec") or {}).get("replicas")
        return uid_of(owner), 1 if replicas is None else int(replicas)

    def _find(self, namespace: str | None, ref: Obj | None) -> Obj | None:
        informer = self.scaled.get(str((ref or {}).get("kind")))
        if ref is None or informer is None:
            return None
        owner = informer.get(f"{namespace}/{ref.get('name')}")
        return owner if owner is not None and uid_of(owner) == ref.get("uid") else None

    async def reconcile(self, key: str) -> None:
        budget = self.budgets.get(key)
        if budget is None:
            self._warned.pop(key, None)
            return
        now = self.clock()
        plan = plan_budget(budget, self.pods.in_namespace(namespace_of(budget)), self.scale_of, now)
        unmanaged = tuple(sorted(plan.unmanaged))
        if unmanaged and self._warned.get(key) != unmanaged:
            selector = (budget.get("spec") or {}).get("selector")
            self.events.record(
                budget,
                "PodDisruptionBudget",
                "policy/v1",
                "Warning",
                "UnmanagedPods",
                f"Pods selected by this PodDisruptionBudget (selector: {selector}) were found "
                "to be unmanaged. As a result, the status of the PDB cannot be calculated "
                "correctly, which may result in undefined behavior. To account for these pods "
                'please set ".spec.minAvailable" field of the PDB to an integer value.',
            )
        self._warned[key] = unmanaged
        for w in plan.writes:
            try:
                await apply_write(self.api, w)
            except ApiError as e:
                if e.code != 404:
                    raise
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)
