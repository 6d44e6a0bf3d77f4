"""Pure readers of Kubernetes object shapes that several control loops share.

What belongs here: small, side-effect-free helpers over JSON dicts — object keys, label
selector matching (`spec.selector` shapes), owner references, pod readiness and phase,
conditions. No I/O, no clock: callers pass `now`. Timestamps are written and read with
`podnet.api.meta.rfc3339` / `parse_rfc3339`, like everywhere else.

Label selectors are `podnet.api.selectors.LabelSelector` (the API server's own parser, so a
selector means the same everywhere; parsed ones are cached). Invariant: a `None` selector
matches nothing, an empty selector (`{}`) matches everything (upstream
`metav1.LabelSelectorAsSelector`); a Service's map selector, empty or missing, matches nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
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
    since = parse_rfc3339(cond.get("lastTransitionTime"))
    if since is None:
        return False
    return (now - since).total_seconds() >= min_ready_seconds


def seconds_until_available(pods: list[Obj], min_ready_seconds: int, now: datetime) -> float | None:
    """How long until the first of `pods` that is Ready but not yet available (Ready for
    `min_ready_seconds`) becomes available; None when none is waiting. A loop whose status or
    progress counts available pods looks again then: no event marks that moment."""
    waits = []
    for pod in pods:
        if (
            min_ready_seconds <= 0
            or not pod_is_ready(pod)
            or pod_available(pod, min_ready_seconds, now)
        ):
            continue
        since = parse_rfc3339((get_condition(pod, "Ready") or {}).get("lastTransitionTime"))
        if since is not None:
            waits.append(min_ready_seconds - (now - since).total_seconds())
    return max(min(waits), 0.0) if waits else None


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
            merged.setdefault("lastTransitionTime", rfc3339(now))
        out.append(merged)
    if not found:
        merged = dict(new)
        merged.setdefault("lastTransitionTime", rfc3339(now))
        out.append(merged)
    return out
