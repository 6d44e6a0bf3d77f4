"""The EndpointSlice mirroring controller: user-written Endpoints → EndpointSlices.

What belongs here: the pure planner `plan_mirrored_slices` and
`EndpointSliceMirroringController` (upstream `endpointslicemirroring`, kube-proxy.md §8.2).

Why: kube-proxy reads only EndpointSlices, while a Service without a selector is served by
an Endpoints object its user writes. This loop mirrors such Endpoints into slices so traffic to
those Services works like on a real cluster.

Semantics:
- Mirrored: Endpoints whose Service exists and has no selector (and is not ExternalName), unless
  the Endpoints carries `endpointslice.kubernetes.io/skip-mirror: "true"` (the API server's own
  `kubernetes` Endpoints does). Anything else → its mirrored slices are deleted.
- Each subset becomes endpoints grouped by its ports; `addresses` → ready/serving,
  `notReadyAddresses` → not ready; nodeName, hostname and targetRef are copied. At most 100
  endpoints per slice, the same stable distribution as the EndpointSlice controller.
- Labels: the Endpoints' labels plus `kubernetes.io/service-name` and
  `endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io`; owner
  reference: the Endpoints object. No placeholder slice (upstream mirrors nothing for nothing).
"""

from __future__ import annotations

import logging
from typing import Any

from podnet.api.interface import Obj
from podnet.controllers.controller import Controller
from podnet.controllers.endpointslices import (
    MANAGED_BY_LABEL,
    MAX_ENDPOINTS_PER_SLICE,
    SERVICE_NAME_LABEL,
    SliceOwner,
    distribute_slices,
    ports_key,
    slice_port,
)
from podnet.controllers.expectations import Expectations
from podnet.controllers.informer import EventType
from podnet.controllers.objects import (
    labels_of,
    make_owner_reference,
    name_of,
    namespace_of,
    object_key,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

MIRROR_CONTROLLER_NAME = "endpointslicemirroring-controller.k8s.io"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"


def should_mirror(endpoints: Obj | None, service: Obj | None) -> bool:
    if endpoints is None or service is None:
        return False
    spec = service.get("spec") or {}
    if spec.get("selector") or spec.get("type") == "ExternalName":
        return False
    return labels_of(endpoints).get(SKIP_MIRROR_LABEL) != "true"


def _address_endpoint(address: Obj, ready: bool) -> Obj:
    ep: Obj = {
        "addresses": [address.get("ip", "")],
        "conditions": {"ready": ready, "serving": ready, "terminating": False},
    }
    for field in ("hostname", "nodeName", "targetRef"):
        if address.get(field):
            ep[field] = address[field]
    return ep


def mirrored_groups(endpoints: Obj) -> dict[str, tuple[list[Obj], list[Obj]]]:
    groups: dict[str, tuple[list[Obj], list[Obj]]] = {}
    for subset in endpoints.get("subsets") or []:
        ports = [slice_port(p) for p in subset.get("ports") or [] if p.get("port")]
        key = ports_key(ports)
        eps = groups.setdefault(key, (ports, []))[1]
        seen = {e["addresses"][0] for e in eps}
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for address in subset.get(field) or []:
                if address.get("ip") and address["ip"] not in seen:
                    seen.add(address["ip"])
                    eps.append(_address_endpoint(address, ready))
    return {k: v for k, v in groups.items() if v[1]}


def mirror_owner(endpoints: Obj) -> SliceOwner:
    labels = {
        k: v
        for k, v in labels_of(endpoints).items()
        if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)
    }
    labels[SERVICE_NAME_LABEL] = name_of(endpoints)
    labels[MANAGED_BY_LABEL] = MIRROR_CONTROLLER_NAME
    return SliceOwner(
        namespace_of(endpoints),
        labels,
        make_owner_reference(endpoints, "v1", "Endpoints"),
        f"{name_of(endpoints)}-",
    )


def plan_mirrored_slices(
    endpoints: Obj | None,
    service: Obj | None,
    current: list[Obj],
    max_per_slice: int = MAX_ENDPOINTS_PER_SLICE,
) -> list[Write]:
    if endpoints is None or not should_mirror(endpoints, service):
        return [Write("delete", "endpointslices", s) for s in sorted(current, key=name_of)]
    return distribute_slices(
        mirror_owner(endpoints),
        mirrored_groups(endpoints),
        current,
        None,
        max_per_slice,
        placeholder=False,
    )


def _mirrored(obj: Obj) -> bool:
    labels = labels_of(obj)
    return labels.get(MANAGED_BY_LABEL) == MIRROR_CONTROLLER_NAME and bool(
        labels.get(SERVICE_NAME_LABEL)
    )


class EndpointSliceMirroringController(Controller):
    name = "endpointslicemirroring"
    workers = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.services = self.informers.informer("services")
        self.endpoints = self.informers.informer("endpoints")
        self.slices = self.informers.informer("endpointslices")
        self.services.add_handler(self._on_keyed)
        self.endpoints.add_handler(self._on_keyed)
        self.slices.add_handler(self._on_slice)
        self._by_owner: dict[str, set[str]] = {}
        self.expectations = Expectations(self.slices.get)

    def all_keys(self) -> list[str]:
        return list(self.endpoints.keys())

    def _on_keyed(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        key = object_key(obj)
        if self.endpoints.get(key) is not None or self._by_owner.get(key):
            self.queue.add(key)

    def _on_slice(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        for obj in (old, new):
            if obj is None or not _mirrored(obj):
                continue
            owner_key = f"{namespace_of(obj)}/{labels_of(obj)[SERVICE_NAME_LABEL]}"
            if obj is new:
                self._by_owner.setdefault(owner_key, set()).add(object_key(obj))
            else:
                self._by_owner.get(owner_key, set()).discard(object_key(obj))
        obj = new or old
        assert obj is not None
        woken = self.expectations.observe(object_key(obj))
        if woken is not None:
            self.queue.add(woken)
        elif _mirrored(obj) and kind != "ADDED":
            self.queue.add(f"{namespace_of(obj)}/{labels_of(obj)[SERVICE_NAME_LABEL]}")

    async def reconcile(self, key: str) -> None:
        if not self.expectations.satisfied(key):
            self.queue.add_after(key, self.expectations.remaining_seconds(key) + 0.01)
            return
        current = [
            s
            for k in sorted(self._by_owner.get(key, set()))
            if (s := self.slices.get(k)) is not None
        ]
        writes = plan_mirrored_slices(self.endpoints.get(key), self.services.get(key), current)
        for w in writes:
            result = await apply_write(self.api, w)
            if result is not None:
                self.expectations.expect_present(
                    key, object_key(result), str(result["metadata"].get("resourceVersion", ""))
                )
            else:
                self.expectations.expect_absent(key, object_key(w.obj))
            log.debug("endpointslicemirroring: %s", w.describe())
