"""The EndpointSlice controller: a Service's selected pods as `discovery.k8s.io/v1` slices.

What belongs here: the pure planner `plan_endpoint_slices` (kube-proxy.md §8.2, upstream
`endpointslice` reconciler) and `EndpointSliceController`, its thin loop.

Semantics:
- Terminating pods are included (`ShouldPodBeInEndpoints(pod, true)`); conditions are
  `serving = PodReady`, `terminating = deletionTimestamp set`,
  `ready = publishNotReadyAddresses or (serving and not terminating)`; plus `nodeName`,
  `targetRef` and `hostname` (when `spec.hostname` is set and `subdomain` is the Service).
- Endpoints are grouped by their resolved port list (pods whose named ports resolve
  differently land in different slices), at most `max_per_slice` (100) per slice, IPv4 only.
- Labels: the Service's labels plus `kubernetes.io/service-name` and
  `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`
  (+ `service.kubernetes.io/headless`); owner reference: the Service (controller).
  Annotation `endpoints.kubernetes.io/last-change-trigger-time` on every slice written.
- Stability: an endpoint stays in the slice it is in; new endpoints fill existing slices
  before a new one is created (named by `generateName: <service>-`); slices left empty are
  deleted; a slice whose content is already right (endpoints in `_build_slice`'s order) is not
  written. A Service with no
  endpoints at all keeps one placeholder slice with no ports and no endpoints (upstream).
- Slices of other managers (the mirroring controller, users) are never touched; a Service
  that loses its selector loses the slices this controller made for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from podnet.api.interface import Obj
from podnet.api.meta import rfc3339
from podnet.controllers.endpoints import (
    HEADLESS_LABEL,
    TRIGGER_TIME_ANNOTATION,
    ServiceTriggeredController,
    is_headless,
    pod_hostname_for,
    pod_in_endpoints,
    pod_ports,
    pod_target_ref,
    selected_pods,
    service_selects,
)
from podnet.controllers.expectations import Expectations
from podnet.controllers.informer import EventType
from podnet.controllers.objects import (
    is_deleting,
    labels_of,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
    pod_ip,
    pod_is_ready,
    pod_node,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100


def slice_port(endpoint_port: Obj) -> Obj:
    port: Obj = {
        "name": endpoint_port.get("name", ""),
        "port": endpoint_port["port"],
        "protocol": endpoint_port.get("protocol") or "TCP",
    }
    if endpoint_port.get("appProtocol"):
        port["appProtocol"] = endpoint_port["appProtocol"]
    return port


def pod_endpoint(service: Obj, pod: Obj) -> Obj:
    """Upstream `podToEndpoint`."""
    publish_not_ready = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    serving = pod_is_ready(pod)
    terminating = is_deleting(pod)
    ep: Obj = {
        "addresses": [pod_ip(pod)],
        "conditions": {
            "ready": publish_not_ready or (serving and not terminating),
            "serving": serving,
            "terminating": terminating,
        },
    }
    hostname = pod_hostname_for(service, pod)
    if hostname:
        ep["hostname"] = hostname
    if pod_node(pod):
        ep["nodeName"] = pod_node(pod)
    ep["targetRef"] = pod_target_ref(pod)
    return ep


def desired_endpoint_groups(
    service: Obj, pods: list[Obj]
) -> dict[str, tuple[list[Obj], list[Obj]]]:
    """ports-key -> (slice ports, endpoints) for the Service over the given pods."""
    has_ports = bool((service.get("spec") or {}).get("ports"))
    groups: dict[str, tuple[list[Obj], list[Obj]]] = {}
    for pod in selected_pods(service, pods):
        if not pod_in_endpoints(pod, include_terminating=True):
            continue
        ports = [slice_port(p) for p in pod_ports(service, pod)]
        if has_ports and not ports:
            continue
        key = ports_key(ports)
        groups.setdefault(key, (ports, []))[1].append(pod_endpoint(service, pod))
    return groups


def ports_key(ports: list[Obj]) -> str:
    """The set of ports as one string (a group's key): equal for the same ports in any
    order, defaults filled in as `slice_port` does (no JSON encoding: every pod of every
    plan asks for it)."""
    return repr(
        sorted(
            (
                str(p.get("name") or ""),
                repr(p.get("port")),
                str(p.get("protocol") or "TCP"),
                str(p.get("appProtocol") or ""),
            )
            for p in ports
        )
    )


def endpoint_id(ep: Obj) -> str:
    ref = ep.get("targetRef") or {}
    return str(ref.get("uid") or ",".join(ep.get("addresses") or []))


def slice_labels(service: Obj) -> dict[str, str]:
    labels = {
        k: v
        for k, v in labels_of(service).items()
        if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL)
    }
    labels[SERVICE_NAME_LABEL] = name_of(service)
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    if is_headless(service):
        labels[HEADLESS_LABEL] = ""
    return labels


def _endpoint_order(ep: Obj) -> tuple[tuple[int, ...], str]:
    ip = (ep.get("addresses") or [""])[0]
    try:
        return tuple(map(int, ip.split("."))), ip
    except ValueError:
        return (), ip


@dataclass(frozen=True, slots=True)
class SliceOwner:
    """What every slice of one owner carries (the Service, or the mirrored Endpoints)."""

    namespace: str | None
    labels: dict[str, str]
    owner_reference: Obj
    generate_name: str


def service_slice_owner(service: Obj) -> SliceOwner:
    return SliceOwner(
        namespace_of(service),
        slice_labels(service),
        make_owner_reference(service, "v1", "Service"),
        f"{name_of(service)}-",
    )


def _build_slice(
    owner: SliceOwner,
    ports: list[Obj],
    endpoints: list[Obj],
    current: Obj | None,
    trigger_time: datetime | None,
) -> Obj:
    meta: Obj = {
        "namespace": owner.namespace,
        "labels": dict(owner.labels),
        "ownerReferences": [owner.owner_reference],
    }
    annotations: dict[str, str] = {}
    if current is not None:
        cur_meta = current.get("metadata") or {}
        meta["name"] = cur_meta.get("name")
        meta["resourceVersion"] = cur_meta.get("resourceVersion")
        meta["uid"] = cur_meta.get("uid")
        annotations = dict(cur_meta.get("annotations") or {})
    else:
        meta["generateName"] = owner.generate_name
    if trigger_time is not None:
        annotations[TRIGGER_TIME_ANNOTATION] = rfc3339(trigger_time, 9)
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": sorted(endpoints, key=_endpoint_order),
        "ports": ports,
    }


def _slice_differs(current: Obj, desired: Obj) -> bool:
    """Whether `current` (a slice of this owner) must be rewritten as `desired`. Endpoints
    are compared in order: `_build_slice` sorts them, so a slice this controller wrote is in
    that order (one ordered otherwise is rewritten once, sorted, as upstream's deep-equal
    check of the repacked object would)."""
    cur_meta = current.get("metadata") or {}
    want_meta = desired["metadata"]
    return bool(
        (cur_meta.get("labels") or {}) != want_meta["labels"]
        or [r.get("uid") for r in cur_meta.get("ownerReferences") or []]
        != [r["uid"] for r in want_meta["ownerReferences"]]
        or ports_key(current.get("ports") or []) != ports_key(desired["ports"])
        or (current.get("endpoints") or []) != desired["endpoints"]
    )


def distribute_slices(
    owner: SliceOwner,
    groups: dict[str, tuple[list[Obj], list[Obj]]],
    current: list[Obj],
    trigger_time: datetime | None,
    max_per_slice: int,
    placeholder: bool,
) -> list[Write]:
    """Writes that spread `groups` (ports-key -> (ports, endpoints)) over `current` slices:
    endpoints stay where they are, new ones fill free room first, empty slices go, and with
    `placeholder` an owner without endpoints keeps one empty slice."""
    by_group: dict[str, list[Obj]] = {}
    stale: list[Obj] = []
    for s in sorted(current, key=name_of):
        key = ports_key(s.get("ports") or [])
        if s.get("addressType", "IPv4") == "IPv4" and key in groups:
            by_group.setdefault(key, []).append(s)
        else:
            stale.append(s)
    writes: list[Write] = []
    for key, (ports, endpoints) in groups.items():
        wanted = {endpoint_id(e): e for e in sorted(endpoints, key=_endpoint_order)}
        placed: set[str] = set()
        plans: list[tuple[Obj | None, list[Obj]]] = []
        for existing in by_group.get(key, []):
            kept: list[Obj] = []
            for e in existing.get("endpoints") or []:
                eid = endpoint_id(e)
                if eid in wanted and eid not in placed and len(kept) < max_per_slice:
                    kept.append(wanted[eid])
                    placed.add(eid)
            plans.append((existing, kept))
        remaining = [e for eid, e in wanted.items() if eid not in placed]
        for _, kept in plans:
            while remaining and len(kept) < max_per_slice:
                kept.append(remaining.pop(0))
        while remaining:
            plans.append((None, remaining[:max_per_slice]))
            remaining = remaining[max_per_slice:]
        for target, eps in plans:
            if target is not None and not eps:
                stale.append(target)
                continue
            built = _build_slice(owner, ports, eps, target, trigger_time)
            if target is None:
                writes.append(Write("create", "endpointslices", built))
            elif _slice_differs(target, built):
                writes.append(Write("update", "endpointslices", built))
    if not groups and placeholder:
        empty = next((s for s in stale if not s.get("ports") and not s.get("endpoints")), None)
        if empty is None:
            writes.append(
                Write("create", "endpointslices", _build_slice(owner, [], [], None, trigger_time))
            )
        else:
            stale.remove(empty)
            desired = _build_slice(owner, [], [], empty, trigger_time)
            if _slice_differs(empty, desired):
                writes.append(Write("update", "endpointslices", desired))
    # creates and updates first, deletes last: endpoints never vanish in between
    writes.extend(Write("delete", "endpointslices", s) for s in stale)
    return writes


def plan_endpoint_slices(
    service: Obj | None,
    pods: list[Obj],
    current: list[Obj],
    trigger_time: datetime | None,
    max_per_slice: int = MAX_ENDPOINTS_PER_SLICE,
) -> list[Write]:
    """The writes that make the Service's managed slices (`current`) match its pods."""
    if service is None or not service_selects(service):
        # gone, or no longer selecting (its endpoints are now the user's, mirrored elsewhere)
        return [Write("delete", "endpointslices", s) for s in sorted(current, key=name_of)]
    groups = desired_endpoint_groups(service, pods)
    return distribute_slices(
        service_slice_owner(service), groups, current, trigger_time, max_per_slice, placeholder=True
    )


class EndpointSliceController(ServiceTriggeredController):
    name = "endpointslices"
    # writes wait on the store, not the CPU: many in flight share one SQLite group commit
    # (benchmarks/endpoints.py: burst p50 ~200 ms with 4 workers, ~70 ms with 16)
    workers = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slices = self.informers.informer("endpointslices")
        self.slices.add_handler(self._on_slice)
        self._by_service: dict[str, set[str]] = {}
        self.expectations = Expectations(self.slices.get)
        self._own_rv: dict[str, str] = {}  # slice key -> resourceVersion of our last write

    def _on_slice(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        for obj in (old, new):
            if obj is None or not _managed(obj):
                continue
            svc_key = f"{namespace_of(obj)}/{labels_of(obj)[SERVICE_NAME_LABEL]}"
            if obj is new:
                self._by_service.setdefault(svc_key, set()).add(object_key(obj))
            elif new is None or labels_of(new).get(SERVICE_NAME_LABEL) != labels_of(obj).get(
                SERVICE_NAME_LABEL
            ):
                self._by_service.get(svc_key, set()).discard(object_key(obj))
        obj = new or old
        assert obj is not None
        if new is None:
            self._own_rv.pop(object_key(obj), None)
        woken = self.expectations.observe(object_key(obj))
        if woken is not None:
            self.queue.add(woken)
            return
        if _managed(obj) and not self._expected(obj, new):
            self.queue.add(f"{namespace_of(obj)}/{labels_of(obj)[SERVICE_NAME_LABEL]}")

    def _expected(self, obj: Obj, new: Obj | None) -> bool:
        """Our own write coming back (nothing to re-check)."""
        return new is not None and self._own_rv.get(object_key(obj)) == str(
            (new.get("metadata") or {}).get("resourceVersion")
        )

    def current_slices(self, service_key: str) -> list[Obj]:
        out = []
        for k in sorted(self._by_service.get(service_key, set())):
            s = self.slices.get(k)
            if s is not None:
                out.append(s)
        return out

    async def reconcile(self, key: str) -> None:
        if not self.expectations.satisfied(key):
            self.queue.add_after(key, self.expectations.remaining_seconds(key) + 0.01)
            return
        service = self.services.get(key)
        current = self.current_slices(key)
        if service is None and not current:
            self.trigger_times.pop(key, None)
            return
        trigger = self.take_trigger_time(key)
        writes = plan_endpoint_slices(service, self.pods_of(service), current, trigger)
        try:
            for w in writes:
                result = await apply_write(self.api, w)
                if result is not None:
                    rv = str((result.get("metadata") or {}).get("resourceVersion") or "")
                    self._own_rv[object_key(result)] = rv
                    self.expectations.expect_present(key, object_key(result), rv)
                elif w.verb == "delete":
                    self.expectations.expect_absent(key, object_key(w.obj))
                log.debug("endpointslices: %s", w.describe())
        except Exception:
            if trigger is not None:
                self.trigger_times.setdefault(key, trigger)
            raise


def _managed(obj: Obj) -> bool:
    labels = labels_of(obj)
    return labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME and bool(labels.get(SERVICE_NAME_LABEL))
