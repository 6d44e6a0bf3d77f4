"""Change tracking between syncs: what watch events did to Services and EndpointSlices.

What belongs here: `ChangeTracker` (per object key: the applied value before the first pending
change and the latest value; upstream ServiceChangeTracker / EndpointsChangeTracker) and
`ProxyState`, which owns the applied maps, the two trackers and the trigger times of the
network-programming-latency metric.

Invariants:
- Watch handlers only call `on_service` / `on_slice`: they record, never touch the kernel.
- A change undone before the next sync disappears (`previous == current` drops the entry).
- `apply()` is the only place pending changes become applied state; it returns the set of
  Services whose rules must be rewritten on a partial sync, then the trackers are empty.
- Pure: time comes in as numbers (`now` arguments) so tests need no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from podnet.agent.proxy.model import (
    TRIGGER_TIME_ANNOTATION,
    Endpoint,
    ServicePort,
    ServicePortName,
    merge_endpoints,
    service_ports,
    slice_endpoints,
    slice_service,
)
from podnet.api.meta import parse_rfc3339

V = TypeVar("V")


@dataclass(slots=True)
class Change(Generic[V]):
    previous: V | None
    current: V | None


class ChangeTracker(Generic[V]):
    """Pending (previous, current) per object key over an `applied` dict it updates on apply."""

    def __init__(self, applied: dict[str, V]) -> None:
        self._applied = applied
        self._pending: dict[str, Change[V]] = {}

    def record(self, key: str, current: V | None) -> bool:
        """Record the object's latest value (None: deleted). True if any change is pending."""
        change = self._pending.get(key)
        if change is None:
            change = Change(self._applied.get(key), current)
            self._pending[key] = change
        else:
            change.current = current
        if change.previous == change.current:
            del self._pending[key]
        return bool(self._pending)

    def pending(self) -> Mapping[str, Change[V]]:
        return self._pending

    def apply(self) -> dict[str, Change[V]]:
        changes, self._pending = self._pending, {}
        for key, change in changes.items():
            if change.current is None:
                self._applied.pop(key, None)
            else:
                self._applied[key] = change.current
        return changes


@dataclass(frozen=True, slots=True)
class SliceInfo:
    service: str  # namespace/name
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]]


@dataclass(frozen=True, slots=True)
class AppliedChanges:
    updated_services: frozenset[str]
    service_changes: int
    endpoint_changes: int
    udp_changed: bool  # some UDP port's service or endpoints changed: conntrack cleanup needed
    trigger_times: tuple[float, ...] = ()  # epoch seconds, for network programming latency


def parse_trigger_time(value: str) -> float | None:
    """RFC3339(Nano) → epoch seconds; None if unparsable (the metric then skips it)."""
    when = parse_rfc3339(value)
    return None if when is None else when.timestamp()


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"


@dataclass(slots=True)
class ProxyState:
    """Applied Services and EndpointSlices of one node, plus what changed since the last sync."""

    node_name: str
    started_at: float = 0.0  # trigger times older than this are ignored (upstream does too)
    services: dict[str, tuple[ServicePort, ...]] = field(default_factory=dict)
    slices: dict[str, SliceInfo] = field(default_factory=dict)
    service_changes: ChangeTracker[tuple[ServicePort, ...]] = field(init=False)
    slice_changes: ChangeTracker[SliceInfo] = field(init=False)
    _triggers: dict[str, float] = field(default_factory=dict)
    _slices_of: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.service_changes = ChangeTracker(self.services)
        self.slice_changes = ChangeTracker(self.slices)

    def on_service(self, obj: Mapping[str, Any], deleted: bool = False) -> bool:
        ports = None if deleted else service_ports(obj)
        return self.service_changes.record(_key(obj), ports or None)

    def on_slice(self, obj: Mapping[str, Any], deleted: bool = False) -> bool:
        key = _key(obj)
        service = slice_service(obj)
        info = None
        if not deleted and service is not None:
            info = SliceInfo(service, slice_endpoints(obj, self.node_name))
        pending = self.slice_changes.record(key, info)
        if key in self.slice_changes.pending():
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            raw = annotations.get(TRIGGER_TIME_ANNOTATION)
            when = parse_trigger_time(raw) if isinstance(raw, str) else None
            if when is not None and when >= self.started_at:
                self._triggers[key] = when
        else:
            self._triggers.pop(key, None)
        return pending

    def has_pending(self) -> bool:
        return bool(self.service_changes.pending() or self.slice_changes.pending())

    def apply(self) -> AppliedChanges:
        svc = self.service_changes.apply()
        eps = self.slice_changes.apply()
        updated = set(svc)
        udp = any(
            sp.protocol == "udp"
            for ch in svc.values()
            for sp in (ch.previous or ()) + (ch.current or ())
        )
        for key, ch in eps.items():
            for info in (ch.previous, ch.current):
                if info is None:
                    continue
                updated.add(info.service)
                udp = udp or any(spn.protocol == "udp" for spn in info.endpoints)
            if ch.previous is not None:
                self._slices_of.get(ch.previous.service, set()).discard(key)
            if ch.current is not None:
                self._slices_of.setdefault(ch.current.service, set()).add(key)
        triggers = tuple(self._triggers.values())
        self._triggers.clear()
        return AppliedChanges(frozenset(updated), len(svc), len(eps), udp, triggers)

    def service_port_map(self) -> dict[ServicePortName, ServicePort]:
        return {sp.name: sp for ports in self.services.values() for sp in ports}

    def endpoints_of(self, service: str) -> Mapping[ServicePortName, tuple[Endpoint, ...]]:
        keys = self._slices_of.get(service, ())
        if len(keys) == 1:  # the common case: one slice is already merged and sorted
            (key,) = keys
            return self.slices[key].endpoints
        return merge_endpoints(self.slices[k].endpoints for k in sorted(keys))

    def endpoints_map(self) -> dict[ServicePortName, tuple[Endpoint, ...]]:
        result: dict[ServicePortName, tuple[Endpoint, ...]] = {}
        for service in self._slices_of:
            result.update(self.endpoints_of(service))
        return result
