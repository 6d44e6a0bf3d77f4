"""The resource quota controller: what each ResourceQuota's namespace uses of what it allows.

What belongs here: the pure `quota_usage` (a quota and the objects of its namespace → its
status) and `ResourceQuotaController`, the loop that keeps `status.hard` and `status.used`
current — what `kubectl describe quota` and `kubectl get quota` print.

Semantics (upstream's evaluators, for the resources podnet serves):
- `pods`, `count/pods`: pods not Succeeded or Failed (and not being deleted);
  `requests.cpu`/`cpu`, `requests.memory`/`memory`, `limits.cpu`, `limits.memory`: the sums
  over those pods' containers (init containers as upstream: the larger of their max and the
  containers' sum);
- `services`, `services.nodeports`, `services.loadbalancers`, `configmaps`, `secrets`,
  `persistentvolumeclaims`, `replicationcontrollers`, `resourcequotas`, `requests.storage`,
  and `count/<resource>[.<group>]` for every kind podnet serves: object counts (and claimed
  storage);
- scopes Terminating / NotTerminating (activeDeadlineSeconds set or not) and BestEffort /
  NotBestEffort (QoS) narrow which pods count; other scopes and `scopeSelector` count nothing.
Quotas are reported, not enforced: creating past a quota succeeds (see docs/workloads.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from podnet.api.defaults import qos_class
from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.resources import BY_PLURAL
from podnet.api.validation import quantity_value
from podnet.controllers.controller import Controller
from podnet.controllers.informer import EventType
from podnet.controllers.objects import is_deleting, name_of, namespace_of, object_key
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

COUNTED = (
    "pods",
    "services",
    "configmaps",
    "secrets",
    "persistentvolumeclaims",
    "replicationcontrollers",
    "resourcequotas",
)
POD_SCOPES = {"Terminating", "NotTerminating", "BestEffort", "NotBestEffort"}
_BINARY = (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10))


def format_quantity(value: Decimal, cpu: bool) -> str:
    """A sum as a quantity string: cores or millicores for cpu, binary suffixes for bytes."""
    if cpu:
        return str(int(value)) if value == value.to_integral_value() else f"{int(value * 1000)}m"
    whole = int(value)
    for suffix, shift in _BINARY:
        if whole and whole % (1 << shift) == 0:
            return f"{whole >> shift}{suffix}"
    return str(whole)


def _pod_counts(pod: Obj) -> bool:
    return not is_deleting(pod) and (pod.get("status") or {}).get("phase") not in (
        "Succeeded",
        "Failed",
    )


def _in_scope(pod: Obj, scopes: list[str]) -> bool:
    spec = pod.get("spec") or {}
    for scope in scopes:
        terminating = spec.get("activeDeadlineSeconds") is not None
        best_effort = qos_class(spec) == "BestEffort"
        if (
            (scope == "Terminating" and not terminating)
            or (scope == "NotTerminating" and terminating)
            or (scope == "BestEffort" and not best_effort)
            or (scope == "NotBestEffort" and best_effort)
            or scope not in POD_SCOPES
        ):
            return False
    return True


def _pod_resource(pod: Obj, section: str, name: str) -> Decimal:
    spec = pod.get("spec") or {}

    def amount(container: Obj) -> Decimal:
        value = ((container.get("resources") or {}).get(section) or {}).get(name)
        return quantity_value(value) or Decimal(0)

    containers = sum((amount(c) for c in spec.get("containers") or []), Decimal(0))
    inits = max((amount(c) for c in spec.get("initContainers") or []), default=Decimal(0))
    return max(containers, inits)


def _pod_usage(key: str, pods: list[Obj]) -> Decimal | None:
    resource = {"cpu": "requests.cpu", "memory": "requests.memory"}.get(key, key)
    if resource in ("pods", "count/pods"):
        return Decimal(len(pods))
    section, _, name = resource.partition(".")
    if section in ("requests", "limits") and name in ("cpu", "memory"):
        return sum((_pod_resource(p, section, name) for p in pods), Decimal(0))
    return None


def _object_usage(key: str, objects: Callable[[str], list[Obj]]) -> Decimal | None:
    if key == "services.nodeports":
        return Decimal(
            sum(
                1
                for s in objects("services")
                for port in (s.get("spec") or {}).get("ports") or []
                if port.get("nodePort")
            )
        )
    if key == "services.loadbalancers":
        return Decimal(
            sum(
                1
                for s in objects("services")
                if (s.get("spec") or {}).get("type") == "LoadBalancer"
            )
        )
    if key == "requests.storage":
        total = Decimal(0)
        for claim in objects("persistentvolumeclaims"):
            requests = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
            total += quantity_value(requests.get("storage")) or Decimal(0)
        return total
    plural = key.removeprefix("count/").partition(".")[0]
    if plural in BY_PLURAL and (key.startswith("count/") or plural in COUNTED):
        return Decimal(len([o for o in objects(plural) if not is_deleting(o)]))
    return None


def quota_usage(quota: Obj, objects: Callable[[str], list[Obj]]) -> Obj:
    """The quota's status: `hard` as its spec says, `used` for each resource it names."""
    spec = quota.get("spec") or {}
    hard = dict(spec.get("hard") or {})
    scopes = list(spec.get("scopes") or [])
    pods = [p for p in objects("pods") if _pod_counts(p) and _in_scope(p, scopes)]
    used: dict[str, str] = {}
    for key in sorted(hard):
        value = _pod_usage(key, pods)
        if value is None and not scopes:
            value = _object_usage(key, objects)
        if value is not None:
            used[key] = format_quantity(value, cpu=key.endswith("cpu"))
    return {"hard": hard, "used": used}


class ResourceQuotaController(Controller):
    name = "resourcequota"
    component = "resourcequota-controller"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quotas = self.informers.informer("resourcequotas")
        self.quotas.add_handler(self._on_quota)
        self.counted = {p: self.informers.informer(p) for p in COUNTED if p != "resourcequotas"}
        for informer in self.counted.values():
            informer.add_handler(self._on_object)

    def all_keys(self) -> list[str]:
        return list(self.quotas.keys())

    def _on_quota(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        for quota in self.quotas.in_namespace(namespace_of(obj)):  # quotas count quotas too
            self.queue.add(object_key(quota))

    def _on_object(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        for quota in self.quotas.in_namespace(namespace_of(obj)):
            self.queue.add(object_key(quota))

    async def reconcile(self, key: str) -> None:
        quota = self.quotas.get(key)
        if quota is None or is_deleting(quota):
            return
        namespace = namespace_of(quota)

        def objects(plural: str) -> list[Obj]:
            informer = self.counted.get(plural) or (
                self.quotas if plural == "resourcequotas" else None
            )
            return informer.in_namespace(namespace) if informer is not None else []

        status = quota_usage(quota, objects)
        if status == (quota.get("status") or {}):
            return
        try:
            await apply_write(
                self.api,
                Write(
                    "update", "resourcequotas", {**quota, "status": status}, subresource="status"
                ),
            )
        except ApiError as e:
            if e.code != 404:
                raise
        log.debug("resourcequota %s/%s: %s", namespace, name_of(quota), status["used"])
