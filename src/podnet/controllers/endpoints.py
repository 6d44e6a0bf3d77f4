"""The Endpoints controller: a Service's selector, turned into its `v1 Endpoints` object.

What belongs here: the pure planner `plan_endpoints` (upstream `endpoints_controller.go
syncService`, kube-proxy.md §8.1), the per-pod helpers the EndpointSlice controller shares
(`pod_in_endpoints`, `resolve_target_port`, `service_port_to_endpoint_port`), and
`EndpointsController`, its thin loop.

Semantics (upstream's):
- No Service → its Endpoints are deleted. `type: ExternalName` or no `spec.selector` → the
  Endpoints object is the user's: never written nor deleted while the Service exists.
- Pods of the Service's namespace matching the selector, without terminal phase, with a podIP,
  and (unless `publishNotReadyAddresses`) not being deleted. Ready (or publishNotReady) →
  `addresses`, otherwise `notReadyAddresses`. Named `targetPort`s are resolved per pod; a pod
  that resolves no port contributes nothing (a headless Service without ports gets address-only
  subsets). Subsets are repacked: addresses with identical port sets share a subset, sorted.
- Labels: the Service's, plus `service.kubernetes.io/headless` for `clusterIP: None`.
- Above 1000 addresses the object is truncated (ready first) and annotated
  `endpoints.kubernetes.io/over-capacity: truncated`.
- Nothing is written when subsets and labels already match (resourceVersions ignored). Subsets
  are compared as `desired_subsets` repacks them (addresses by IP, subsets by ports), as
  upstream deep-compares the repacked subsets: Endpoints this controller wrote are in that
  order; ones ordered otherwise are rewritten once, sorted.
- `endpoints.kubernetes.io/last-change-trigger-time` is the RFC3339Nano time at which the
  controller observed the newest pod/service change folded into this write (upstream derives it
  from object timestamps that have only second precision; observation time is what the
  network-programming latency is measured against here).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from podnet.api.interface import Obj
from podnet.api.meta import rfc3339
from podnet.controllers.controller import Controller
from podnet.controllers.expectations import Expectations
from podnet.controllers.informer import EventType
from podnet.controllers.objects import (
    is_deleting,
    labels_of,
    map_selector_matches,
    name_of,
    namespace_of,
    object_key,
    pod_ip,
    pod_is_ready,
    pod_is_terminal,
    pod_node,
    uid_of,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"
HEADLESS_LABEL = "service.kubernetes.io/headless"
MAX_ENDPOINTS_CAPACITY = 1000


# --- per-pod helpers shared with the EndpointSlice controller -------------------------------


def service_selects(service: Obj) -> bool:
    """Whether controllers manage this Service's endpoints (a selector, not ExternalName)."""
    spec = service.get("spec") or {}
    return spec.get("type") != "ExternalName" and bool(spec.get("selector"))


def selected_pods(service: Obj, pods: list[Obj]) -> list[Obj]:
    selector = (service.get("spec") or {}).get("selector")
    ns = namespace_of(service)
    return sorted(
        (p for p in pods if namespace_of(p) == ns and map_selector_matches(selector, labels_of(p))),
        key=lambda p: (name_of(p), uid_of(p)),
    )


def pod_in_endpoints(pod: Obj, include_terminating: bool) -> bool:
    """Upstream `ShouldPodBeInEndpoints`."""
    if pod_is_terminal(pod) or not pod_ip(pod):
        return False
    return include_terminating or not is_deleting(pod)


def resolve_target_port(pod: Obj, service_port: Obj) -> int | None:
    """Upstream `podutil.FindPort`: an int targetPort as is; a name looked up in the pod."""
    target: Any = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str):
        if target.isdigit():
            return int(target)
        protocol = service_port.get("protocol") or "TCP"
        for container in (pod.get("spec") or {}).get("containers") or []:
            for p in container.get("ports") or []:
                if p.get("name") == target and (p.get("protocol") or "TCP") == protocol:
                    port = p.get("containerPort")
                    return int(port) if isinstance(port, int) else None
    return None


def service_port_to_endpoint_port(service_port: Obj, number: int) -> Obj:
    port: Obj = {"port": number, "protocol": service_port.get("protocol") or "TCP"}
    if service_port.get("name"):
        port["name"] = service_port["name"]
    if service_port.get("appProtocol"):
        port["appProtocol"] = service_port["appProtocol"]
    return port


def pod_ports(service: Obj, pod: Obj) -> list[Obj]:
    """The Service's ports as this pod serves them (unresolvable ones left out)."""
    out: list[Obj] = []
    for sp in (service.get("spec") or {}).get("ports") or []:
        number = resolve_target_port(pod, sp)
        if number is not None:
            out.append(service_port_to_endpoint_port(sp, number))
    return out


def pod_target_ref(pod: Obj) -> Obj:
    return {
        "kind": "Pod",
        "namespace": namespace_of(pod) or "",
        "name": name_of(pod),
        "uid": uid_of(pod),
    }


def pod_hostname_for(service: Obj, pod: Obj) -> str | None:
    spec = pod.get("spec") or {}
    if spec.get("hostname") and spec.get("subdomain") == name_of(service):
        return str(spec["hostname"])
    return None


def is_headless(service: Obj) -> bool:
    return (service.get("spec") or {}).get("clusterIP") == "None"


# --- the planner -----------------------------------------------------------------------------


def desired_subsets(service: Obj, pods: list[Obj]) -> tuple[list[Obj], bool]:
    """(subsets, truncated) for the Service over the given pods (upstream order)."""
    spec = service.get("spec") or {}
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    service_ports = spec.get("ports") or []
    # port-set (canonical JSON) -> (ports, ready addresses, not-ready addresses)
    groups: dict[str, tuple[list[Obj], list[Obj], list[Obj]]] = {}
    for pod in selected_pods(service, pods):
        if not pod_in_endpoints(pod, include_terminating=publish_not_ready):
            continue
        address: Obj = {"ip": pod_ip(pod)}
        hostname = pod_hostname_for(service, pod)
        if hostname:
            address["hostname"] = hostname
        if pod_node(pod):
            address["nodeName"] = pod_node(pod)
        address["targetRef"] = pod_target_ref(pod)
        ports = pod_ports(service, pod)
        if not ports and service_ports:
            continue  # no port of this pod serves the Service
        ports = sorted(ports, key=lambda p: (p.get("name", ""), p["port"], p["protocol"]))
        group_key = repr(
            [(p.get("name"), p["port"], p["protocol"], p.get("appProtocol")) for p in ports]
        )
        _, ready, not_ready = groups.setdefault(group_key, (ports, [], []))
        (ready if publish_not_ready or pod_is_ready(pod) else not_ready).append(address)
    subsets: list[Obj] = []
    for ports, ready, not_ready in groups.values():
        subset: Obj = {}
        if ready:
            subset["addresses"] = sorted(ready, key=_address_order)
        if not_ready:
            subset["notReadyAddresses"] = sorted(not_ready, key=_address_order)
        if ports:
            subset["ports"] = ports
        subsets.append(subset)
    subsets.sort(key=_subset_order)
    return _truncate(subsets)


def _address_order(address: Obj) -> tuple[tuple[int, ...], str]:
    ip = str(address.get("ip", ""))
    try:
        return tuple(map(int, ip.split("."))), ip
    except ValueError:
        return (), ip


def _subset_order(subset: Obj) -> str:
    return json.dumps(subset.get("ports") or [], sort_keys=True)


def _truncate(subsets: list[Obj]) -> tuple[list[Obj], bool]:
    total = sum(len(s.get("addresses", [])) + len(s.get("notReadyAddresses", [])) for s in subsets)
    if total <= MAX_ENDPOINTS_CAPACITY:
        return subsets, False
    budget = MAX_ENDPOINTS_CAPACITY
    out = [dict(s) for s in subsets]
    for field in ("addresses", "notReadyAddresses"):  # ready addresses are kept first
        for s in out:
            kept = s.get(field, [])[: max(budget, 0)]
            budget -= len(kept)
            if kept:
                s[field] = kept
            else:
                s.pop(field, None)
    return [s for s in out if s.get("addresses") or s.get("notReadyAddresses")], True


def desired_endpoint_labels(service: Obj) -> dict[str, str]:
    labels = labels_of(service)
    if is_headless(service):
        labels[HEADLESS_LABEL] = ""
    else:
        labels.pop(HEADLESS_LABEL, None)
    return labels


def plan_endpoints(
    service: Obj | None,
    pods: list[Obj],
    current: Obj | None,
    trigger_time: datetime | None,
) -> list[Write]:
    """The writes that make `current` (the Service's Endpoints, or None) match the Service."""
    if service is None:
        return [Write("delete", "endpoints", current)] if current is not None else []
    if not service_selects(service):
        return []
    subsets, truncated = desired_subsets(service, pods)
    labels = desired_endpoint_labels(service)
    if current is not None:
        same_labels = labels_of(current) == labels
        same_subsets = (current.get("subsets") or []) == subsets
        was_truncated = OVER_CAPACITY_ANNOTATION in (
            (current.get("metadata") or {}).get("annotations") or {}
        )
        if same_labels and same_subsets and was_truncated == truncated:
            return []
    annotations: dict[str, str] = {}
    if current is not None:
        annotations = dict((current.get("metadata") or {}).get("annotations") or {})
    if trigger_time is not None:
        annotations[TRIGGER_TIME_ANNOTATION] = rfc3339(trigger_time, 9)
    else:
        annotations.pop(TRIGGER_TIME_ANNOTATION, None)
    if truncated:
        annotations[OVER_CAPACITY_ANNOTATION] = "truncated"
    else:
        annotations.pop(OVER_CAPACITY_ANNOTATION, None)
    meta: Obj = {"name": name_of(service), "namespace": namespace_of(service), "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    obj: Obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": subsets}
    if current is None:
        return [Write("create", "endpoints", obj)]
    meta["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
    meta["uid"] = uid_of(current)
    return [Write("update", "endpoints", obj)]


# --- the loop --------------------------------------------------------------------------------


class ServiceTriggeredController(Controller):
    """Shared wiring of the Endpoints and EndpointSlice loops: keys are Service keys; a pod
    change enqueues every Service (old or new labels) that selects it, stamped with the time
    the change was observed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.services = self.informers.informer("services")
        self.pods = self.informers.informer("pods")
        self.trigger_times: dict[str, datetime] = {}
        # (namespace, label key, value) -> Services whose selector has that pair
        self._services_by_pair: dict[tuple[str | None, str, str], set[str]] = {}
        self.services.add_handler(self._on_service)
        self.pods.add_handler(self._on_pod)

    def all_keys(self) -> list[str]:
        return list(self.services.keys())

    def _touch(self, key: str) -> None:
        now = datetime.now(UTC)
        prev = self.trigger_times.get(key)
        if prev is None or now > prev:
            self.trigger_times[key] = now
        self.queue.add(key)

    def _on_service(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        key = object_key(obj)
        ns = namespace_of(obj)
        if old is not None:
            for pair in _selector_of(old).items():
                self._services_by_pair.get((ns, *pair), set()).discard(key)
        if new is not None:
            for pair in _selector_of(new).items():
                self._services_by_pair.setdefault((ns, *pair), set()).add(key)
        self._touch(key)

    def _on_pod(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if old is not None and new is not None and not _pod_change_matters(old, new):
            return
        ns = namespace_of(new or old or {})
        label_sets = [labels_of(o) for o in (old, new) if o is not None]
        candidates: set[str] = set()
        for labels in label_sets:
            for pair in labels.items():
                candidates |= self._services_by_pair.get((ns, *pair), set())
        for key in candidates:
            svc = self.services.get(key)
            if svc is None:
                continue
            selector = _selector_of(svc)
            if any(map_selector_matches(selector, labels) for labels in label_sets):
                self._touch(key)

    def pods_of(self, service: Obj | None) -> list[Obj]:
        """The Service's candidate pods from the label index (the planner filters again)."""
        if service is None:
            return []
        return self.pods.select(namespace_of(service), _selector_of(service))

    def take_trigger_time(self, key: str) -> datetime | None:
        return self.trigger_times.pop(key, None)


def _selector_of(service: Obj) -> dict[str, str]:
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return {}
    return dict(spec.get("selector") or {})


def _pod_change_matters(old: Obj, new: Obj) -> bool:
    """Pod fields that endpoints depend on (status heartbeats alone change nothing)."""

    def view(p: Obj) -> Any:
        spec = p.get("spec") or {}
        return (
            labels_of(p),
            pod_ip(p),
            pod_is_ready(p),
            pod_is_terminal(p),
            is_deleting(p),
            pod_node(p),
            spec.get("hostname"),
            spec.get("subdomain"),
            [c.get("ports") for c in spec.get("containers") or []],
        )

    return bool(view(old) != view(new))


class EndpointsController(ServiceTriggeredController):
    name = "endpoints"
    # writes wait on the store, not the CPU: many in flight share one SQLite group commit
    # (benchmarks/endpoints.py: burst p50 ~200 ms with 4 workers, ~70 ms with 16)
    workers = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.endpoints = self.informers.informer("endpoints")
        self.endpoints.add_handler(self._on_endpoints)
        self.expectations = Expectations(self.endpoints.get)
        self._own_rv: dict[str, str] = {}

    def _on_endpoints(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        key = object_key(obj)
        woken = self.expectations.observe(key)
        if woken is not None:
            self.queue.add(woken)
            return
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if new is not None and self._own_rv.get(key) == rv:
            return  # our own write coming back
        if new is None:
            self._own_rv.pop(key, None)
        # someone else changed or deleted an Endpoints of a Service: level-trigger it again
        if kind != "ADDED" and self.services.get(key) is not None:
            self.queue.add(key)

    async def reconcile(self, key: str) -> None:
        if not self.expectations.satisfied(key):
            self.queue.add_after(key, self.expectations.remaining_seconds(key) + 0.01)
            return
        service = self.services.get(key)
        current = self.endpoints.get(key)
        if service is None and current is None:
            self.trigger_times.pop(key, None)
            return
        trigger = self.take_trigger_time(key)
        writes = plan_endpoints(service, self.pods_of(service), current, trigger)
        try:
            for w in writes:
                result = await apply_write(self.api, w)
                if result is not None:
                    rv = str((result.get("metadata") or {}).get("resourceVersion") or "")
                    self._own_rv[key] = rv
                    self.expectations.expect_present(key, key, rv)
                else:
                    self.expectations.expect_absent(key, key)
                log.debug("endpoints: %s", w.describe())
        except Exception:
            if trigger is not None:  # keep the trigger time for the retry
                self.trigger_times.setdefault(key, trigger)
            raise
