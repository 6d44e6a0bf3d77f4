"""Pod eviction: `POST .../pods/<name>/eviction`, the delete that honours PodDisruptionBudgets.

What belongs here: `evict`, upstream's eviction REST (`pkg/registry/core/pod/storage/
eviction.go`) over the registry — what `kubectl drain` calls for every pod it moves — and its
pure pieces: `budgets_for` (the PodDisruptionBudgets guarding a pod) and `take_disruption`
(upstream `checkAndDecrement`: the budget's status after one more disruption, or the 429).

Semantics (upstream's):
- A pod that is Pending, Succeeded, Failed or already being deleted is deleted at once: it
  cannot take availability away.
- No budget selects the pod → plain delete. More than one → 500, "This pod has more than one
  PodDisruptionBudget, which the eviction subresource does not support."
- An unready pod is deleted without spending the budget when the budget says
  `unhealthyPodEvictionPolicy: AlwaysAllow`, or (IfHealthyBudget, the default) when the budget
  is healthy anyway (currentHealthy ≥ desiredHealthy > 0); the delete then carries the pod's
  resourceVersion as a precondition, so a pod that became ready meanwhile is not lost.
- Otherwise the budget must allow a disruption: a budget whose status is older than its spec
  (observedGeneration < generation) answers 429 "... is still being processed by the server."
  (Retry-After 10); `disruptionsAllowed == 0` answers 429 "Cannot evict pod as it would violate
  the pod's disruption budget." with a `DisruptionBudget` cause. Else `disruptionsAllowed` is
  decremented and the pod recorded in `disruptedPods` (compare-and-swap on the budget's status,
  so two evictions never spend the same disruption), then the pod is deleted.
- dryRun (the Eviction's `deleteOptions.dryRun: [All]`) checks everything and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from podnet.api import meta
from podnet.api.errors import ApiError, bad_request, forbidden, internal, too_many_requests
from podnet.api.interface import Obj
from podnet.api.resources import BY_PLURAL
from podnet.api.selectors import LabelSelector
from podnet.apiserver.registry import DeleteOptions, ListOptions, Registry, success_status

PODS = BY_PLURAL["pods"]
BUDGETS = BY_PLURAL["poddisruptionbudgets"]
MAX_DISRUPTED_PODS = 2000  # upstream MaxDisruptedPodSize
STILL_PROCESSING_RETRY_SECONDS = 10


def _selects(budget: Obj, pod: Obj) -> bool:
    selector = (budget.get("spec") or {}).get("selector")
    if not isinstance(selector, dict):
        return False  # policy/v1: a missing selector selects nothing, `{}` selects every pod
    try:
        return LabelSelector.from_spec(selector).matches(pod["metadata"].get("labels") or {})
    except ApiError:
        return False


def budgets_for(pod: Obj, budgets: list[Obj]) -> list[Obj]:
    """The budgets of the pod's namespace whose selector matches it."""
    namespace = pod["metadata"].get("namespace")
    return [b for b in budgets if b["metadata"].get("namespace") == namespace and _selects(b, pod)]


def _ignores_budgets(pod: Obj) -> bool:
    """Upstream `canIgnorePDB`: evicting this pod takes no availability away."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Pending", "Succeeded", "Failed") or bool(
        pod["metadata"].get("deletionTimestamp")
    )


def _is_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _status_int(budget: Obj, name: str) -> int:
    value = (budget.get("status") or {}).get(name)
    return value if isinstance(value, int) else 0


def unready_pod_may_go(budget: Obj) -> bool:
    """Whether an unready pod may be evicted without spending `budget` (upstream's
    unhealthyPodEvictionPolicy handling)."""
    policy = (budget.get("spec") or {}).get("unhealthyPodEvictionPolicy")
    if policy == "AlwaysAllow":
        return True
    desired = _status_int(budget, "desiredHealthy")
    return _status_int(budget, "currentHealthy") >= desired > 0


def _pdb_forbidden(name: str, why: str) -> ApiError:
    # upstream NewForbidden(policy.Resource("poddisruptionbudget"), name, why)
    resource = "poddisruptionbudget"
    return forbidden(f'{resource}.policy "{name}" is forbidden: {why}', resource, name, "policy")


def take_disruption(budget: Obj, pod_name: str, now: dt.datetime) -> Obj:
    """The budget's status after evicting `pod_name`, or the ApiError that refuses it."""
    name = budget["metadata"]["name"]
    status = dict(budget.get("status") or {})
    observed = status.get("observedGeneration")
    if not isinstance(observed, int) or observed < int(budget["metadata"].get("generation") or 1):
        raise too_many_requests(
            "Cannot evict pod as it would violate the pod's disruption budget. The disruption "
            f"budget {name} is still being processed by the server.",
            STILL_PROCESSING_RETRY_SECONDS,
        )
    allowed = _status_int(budget, "disruptionsAllowed")
    if allowed < 0:
        raise _pdb_forbidden(name, "pdb disruptions allowed is negative")
    disrupted = dict(status.get("disruptedPods") or {})
    if len(disrupted) > MAX_DISRUPTED_PODS:
        raise _pdb_forbidden(
            name, "DisruptedPods map too big - too many evictions not confirmed by PDB controller"
        )
    if allowed == 0:
        raise too_many_requests(
            "Cannot evict pod as it would violate the pod's disruption budget.",
            causes=[
                {
                    "reason": "DisruptionBudget",
                    "message": f"The disruption budget {name} needs "
                    f"{_status_int(budget, 'desiredHealthy')} healthy pods and has "
                    f"{_status_int(budget, 'currentHealthy')} currently",
                }
            ],
        )
    status["disruptionsAllowed"] = allowed - 1
    if allowed == 1:
        conditions = [
            c for c in status.get("conditions") or [] if c.get("type") != "DisruptionAllowed"
        ]
        conditions.append(
            {
                "type": "DisruptionAllowed",
                "status": "False",
                "reason": "InsufficientPods",
                "message": "",
                "observedGeneration": observed,
                "lastTransitionTime": meta.rfc3339(now),
            }
        )
        status["conditions"] = conditions
    disrupted[pod_name] = meta.rfc3339(now)
    status["disruptedPods"] = disrupted
    return status


def _eviction_options(body: Any, name: str) -> DeleteOptions:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a policy/v1 Eviction")
    if body.get("kind") not in (None, "", "Eviction"):
        raise bad_request(f"the kind in the data ({body.get('kind')}) must be Eviction")
    evicted = (body.get("metadata") or {}).get("name")
    if evicted and evicted != name:
        raise bad_request("name in URL does not match name in Eviction object")
    return DeleteOptions.from_json(body.get("deleteOptions"))


async def evict(registry: Registry, namespace: str, name: str, body: Any) -> Obj:
    """Serve one Eviction (see the module docstring); returns the success Status."""
    opts = _eviction_options(body, name)
    pod = await registry.get(PODS, namespace, name)
    if not _ignores_budgets(pod):
        listed = await registry.list(BUDGETS, namespace, ListOptions())
        budgets = budgets_for(pod, listed["items"])
        if len(budgets) > 1:
            raise internal(
                "This pod has more than one PodDisruptionBudget, which the eviction "
                "subresource does not support."
            )
        if budgets and not _is_ready(pod) and unready_pod_may_go(budgets[0]):
            opts = DeleteOptions(
                opts.grace_period_seconds,
                opts.propagation_policy,
                opts.precondition_uid,
                pod["metadata"].get("resourceVersion"),
                opts.dry_run,
            )
        elif budgets:
            await _spend(registry, budgets[0], name, opts.dry_run)
    await registry.delete(PODS, namespace, name, opts)
    return success_status(201)


async def _spend(registry: Registry, budget: Obj, pod_name: str, dry_run: bool) -> None:
    now = registry.clock()
    if dry_run:
        take_disruption(budget, pod_name, now)
        return

    def decrement(current: Obj) -> Obj:
        current["status"] = take_disruption(current, pod_name, now)
        return current

    await registry.rewrite(
        BUDGETS, budget["metadata"]["namespace"], budget["metadata"]["name"], decrement
    )
