"""Whether a pod fits a node by the node's labels, name and taints — the predicates the
scheduler and the DaemonSet controller share, so both decide placement the same way.

What belongs here: `tolerates` (one taint against a pod's tolerations), `untolerated_taint`
(the first taint of some effects a pod does not tolerate), `matches_node_selector`
(`spec.nodeSelector`) and `matches_node_affinity` (`requiredDuringSchedulingIgnoredDuring
Execution`: terms ORed, a term's `matchExpressions` on labels and `matchFields` on
`metadata.name` ANDed; operators In, NotIn, Exists, DoesNotExist, Gt, Lt), transcribed from
upstream's `v1helper.TolerationsTolerateTaint` and `nodeaffinity.RequiredNodeAffinity`.

Pure and total: malformed tolerations or terms never raise; a term that names nothing
matches no node (upstream's rule), a pod without affinity matches every node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from podnet.api.interface import Obj
from podnet.controllers.objects import labels_of, name_of


def tolerates(tolerations: Iterable[Any], taint: Obj) -> bool:
    for t in tolerations:
        if not isinstance(t, dict):
            continue
        effect = t.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        op = t.get("operator") or "Equal"
        key = t.get("key")
        if op == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def untolerated_taint(
    pod_spec: Obj, node: Obj, effects: tuple[str, ...] = ("NoSchedule", "NoExecute")
) -> Obj | None:
    """The first taint of `effects` on `node` that the pod does not tolerate."""
    tolerations = pod_spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if (
            isinstance(taint, dict)
            and taint.get("effect") in effects
            and not tolerates(tolerations, taint)
        ):
            return taint
    return None


def matches_node_selector(pod_spec: Obj, node: Obj) -> bool:
    labels = labels_of(node)
    selector = pod_spec.get("nodeSelector") or {}
    return isinstance(selector, dict) and all(labels.get(k) == v for k, v in selector.items())


def _number(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _requirement(expr: Any, values_of: dict[str, str]) -> bool:
    if not isinstance(expr, dict):
        return False
    key, op = expr.get("key"), expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    present = key in values_of
    value = values_of.get(str(key))
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        have, want = _number(value), _number(values[0])
        if have is None or want is None:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _term_matches(term: Any, node: Obj) -> bool:
    if not isinstance(term, dict):
        return False
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    labels = labels_of(node)
    node_fields = {"metadata.name": name_of(node)}
    return all(_requirement(e, labels) for e in expressions) and all(
        _requirement(f, node_fields) for f in fields
    )


def matches_node_affinity(pod_spec: Obj, node: Obj) -> bool:
    """`spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution`."""
    affinity = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not isinstance(affinity, dict):
        return True
    return any(_term_matches(t, node) for t in affinity.get("nodeSelectorTerms") or [])
