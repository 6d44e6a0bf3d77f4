"""Pure readers of Kubernetes object shapes that several control loops share.

What belongs here: small, side-effect-free helpers over JSON dicts — object keys, label
selector matching (`spec.selector` shapes), owner references, pod readiness and phase,
conditions, RFC 3339 time formatting/parsing. No I/O, no clock: callers pass `now`.

Label selectors are `podnet.api.selectors.LabelSelector` (the API server's own parser, so a
selector means the same everywhere; parsed ones are cached). Invariant: a `None` selector
matches nothing, an empty selector (`{}`) matches everything (upstream
`metav1.LabelSelectorAsSelector`); a Service's map selector, empty or missing, matches nothing.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.selectors import LabelSelector


def object_key(obj: Obj) -> str:
    """`namespace/name` for namespaced objects, `name` for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = str(meta.get("name", ""))
    return f"{ns}/{name}" if ns else name


def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def namespace_of(obj: Obj) -> str | None:
    ns = (obj.get("metadata") or {}).get("namespace")
    return str(ns) if ns else None


def uid_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def labels_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def is_deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


# --- label selectors -------------------------------------------------------------------------


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A `metav1.LabelSelector` (matchLabels + matchExpressions) against a label set, with the
    API's own semantics (`podnet.api.selectors`); a malformed selector selects nothing."""
    if selector is None:
        return False
    parsed = _parse_selector(json.dumps(selector, sort_keys=True))
    return parsed is not None and parsed.matches(labels)


@functools.lru_cache(maxsize=4096)
def _parse_selector(spec_json: str) -> LabelSelector | None:
    try:
        return LabelSelector.from_spec(json.loads(spec_json))
    except ApiError:
        return None


def map_selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service-style `spec.selector` map; `None`/empty never selects (Service semantics)."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


# --- owner references ------------------------------------------------------------------------


def owner_references(obj: Obj) -> list[Obj]:
    return list((obj.get("metadata") or {}).get("ownerReferences") or [])


def controller_ref(obj: Obj) -> Obj | None:
    for ref in owner_references(obj):
        if ref.get("controller"):
            return ref
    return None


def make_owner_reference(
    owner: Obj, api_version: str, kind: str, controller: bool = True, block: bool = True
) -> Obj:
    """A controller reference to `owner` (apiVersion/kind explicit: cached objects from some
    list responses omit them)."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": controller,
        "blockOwnerDeletion": block,
    }


# --- pods ------------------------------------------------------------------------------------


def get_condition(obj: Obj, cond_type: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == cond_type:
            return dict(c)
    return None


def pod_is_ready(pod: Obj) -> bool:
    cond = get_condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_is_active(pod: Obj) -> bool:
    """Upstream `controller.IsPodActive`: not terminal and not being deleted."""
    return not pod_is_terminal(pod) and not is_deleting(pod)


def pod_ip(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")


def pod_node(pod: Obj) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def pod_available(pod: Obj, min_ready_seconds: int, now: datetime) -> bool:
    """Ready for at least `min_ready_seconds` (upstream `podutil.IsPodAvailable`)."""
    cond = get_condition(pod, "Ready")
    if cond is None or cond.get("status") != "True":
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time(cond.get("lastTransitionTime"))
    if since is None:
        return False
    return (now - since).total_seconds() >= min_ready_seconds


def set_condition(conditions: list[Obj], new: Obj, now: datetime) -> list[Obj]:
    """Return a new list with `new` set; lastTransitionTime moves only when status changes."""
    out: list[Obj] = []
    found = False
    for c in conditions:
        if c.get("type") != new["type"]:
            out.append(c)
            continue
        found = True
        merged = dict(new)
        if c.get("status") == new.get("status") and c.get("lastTransitionTime"):
            merged["lastTransitionTime"] = c["lastTransitionTime"]
        else:
            merged.setdefault("lastTransitionTime", format_time(now))
        out.append(merged)
    if not found:
        merged = dict(new)
        merged.setdefault("lastTransitionTime", format_time(now))
        out.append(merged)
    return out


# --- time ------------------------------------------------------------------------------------


def format_time(t: datetime) -> str:
    """RFC 3339 with second precision, the wire form of `metav1.Time`."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time_nano(t: datetime) -> str:
    """RFC 3339 with nanosecond digits (`RFC3339Nano`; Python has microseconds)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def format_micro_time(t: datetime) -> str:
    """`metav1.MicroTime` (Lease renewTime)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime | None:
    """Parse RFC 3339 (any sub-second precision); `None` for missing or malformed values."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.11 accepts at most 6 fractional digits: trim nanoseconds
    if "." in text:
        head, _, tail = text.partition(".")
        digits = ""
        rest = ""
        for i, ch in enumerate(tail):
            if not ch.isdigit():
                rest = tail[i:]
                break
            digits += ch
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def deep_copy(obj: Obj) -> Obj:
    return copy.deepcopy(obj)
