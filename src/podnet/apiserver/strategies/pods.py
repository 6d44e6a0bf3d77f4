"""Pods: initial status, graceful deletion, and upstream's warnings for pod specs.

What belongs here: `PodStrategy` (upstream `pkg/registry/core/pod/strategy.go`) and
`pod_spec_warnings`, which kinds with a pod template reuse for `spec.template.spec`.

Invariants:
- A new pod's status is the server's: phase Pending and its QoS class (computed once, at
  create, by `defaults.qos_class`; a `/status` write that omits it keeps the stored one).
- Deleting a pod that a node runs waits for that node's kubelet (the grace period); a pod that
  was never scheduled, or has finished, goes at once because nobody would confirm it.
"""

from __future__ import annotations

import json
import math

from podnet.api import defaults
from podnet.api.errors import forbidden
from podnet.api.interface import Obj
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth import serviceaccount
from podnet.apiserver.strategies.base import Context, Strategy

# upstream pkg/api/node/util.go deprecatedNodeLabels
DEPRECATED_NODE_LABELS = {
    "beta.kubernetes.io/arch": 'deprecated since v1.14; use "kubernetes.io/arch" instead',
    "beta.kubernetes.io/os": 'deprecated since v1.14; use "kubernetes.io/os" instead',
    "failure-domain.beta.kubernetes.io/region": (
        'deprecated since v1.17; use "topology.kubernetes.io/region" instead'
    ),
    "failure-domain.beta.kubernetes.io/zone": (
        'deprecated since v1.17; use "topology.kubernetes.io/zone" instead'
    ),
    "beta.kubernetes.io/instance-type": (
        'deprecated since v1.17; use "node.kubernetes.io/instance-type" instead'
    ),
}
CRITICAL_POD_ANNOTATION = "scheduler.alpha.kubernetes.io/critical-pod"


class PodStrategy(Strategy):
    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        spec = obj["spec"]
        obj["status"] = {
            "phase": "Pending",
            "qosClass": defaults.qos_class(spec if isinstance(spec, dict) else {}),
        }

    async def admit_create(self, ctx: Context, obj: Obj) -> None:
        """DefaultTolerationSeconds, then ServiceAccount admission: the pod's account must
        exist; its token is mounted."""
        if not isinstance(obj.get("spec"), dict):
            return  # validation refuses it
        add_default_tolerations(obj["spec"], ctx.backend.config.pod_eviction_timeout_seconds)
        meta = obj["metadata"]
        name = serviceaccount.account_name(obj)
        res = BY_PLURAL["serviceaccounts"]
        kv = await ctx.backend.lookup(res.storage_key(meta.get("namespace"), name))
        if kv is None:
            namespaces = BY_PLURAL["namespaces"]
            if await ctx.backend.lookup(namespaces.storage_key(None, meta["namespace"])) is None:
                return  # the registry answers 404 for the namespace
            raise forbidden(
                f'pods "{meta.get("name")}" is forbidden: error looking up service account '
                f'{meta.get("namespace")}/{name}: serviceaccount "{name}" not found',
                "pods",
                str(meta.get("name") or ""),
            )
        serviceaccount.admit_pod(obj, json.loads(kv.value))

    def prepare_for_status_update(self, ctx: Context, new: Obj, old: Obj) -> None:
        # as the default (only `status` changes), but what stays is taken from `old` by
        # reference instead of deep-copied (the copy was about a third of a kubelet's status
        # write): `old` is the registry's own decode of the stored pod for this one write, and
        # after this step only `metadata`'s own keys change (managedFields), so `metadata` is
        # the one level copied; the pod's begin_update reserves nothing, so no later step
        # writes into the shared spec
        status = new.get("status", {})
        new.clear()
        for key, value in old.items():
            new[key] = dict(value) if key == "metadata" and isinstance(value, dict) else value
        new["status"] = status
        status, old_status = new.get("status"), old.get("status")
        # the QoS class is fixed at create; a status writer that drops it does not clear it
        if isinstance(status, dict) and isinstance(old_status, dict) and old_status.get("qosClass"):
            status.setdefault("qosClass", old_status["qosClass"])

    def warnings_on_create(self, ctx: Context, obj: Obj) -> list[str]:
        return pod_warnings(obj)

    def warnings_on_update(self, ctx: Context, new: Obj, old: Obj) -> list[str]:
        return pod_warnings(new)

    def grace_period(self, ctx: Context, obj: Obj, requested: int | None) -> int:
        spec = obj.get("spec") or {}
        if not spec.get("nodeName"):
            return 0  # never scheduled: no kubelet will confirm, delete at once (upstream)
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(0, int(requested))
        configured = spec.get("terminationGracePeriodSeconds")
        if isinstance(configured, int) and configured >= 0:
            return configured
        return defaults.DEFAULT_TERMINATION_GRACE_SECONDS


NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"


def add_default_tolerations(spec: Obj, seconds: float) -> None:
    """Upstream's DefaultTolerationSeconds admission: a pod that does not tolerate the
    not-ready/unreachable NoExecute taints already gets tolerations for `seconds` (upstream
    300; the lab's `podnet up --eviction`), after which the taint manager evicts it."""
    tolerations = spec.get("tolerations")
    if tolerations is not None and not isinstance(tolerations, list):
        return  # validation refuses it
    current = list(tolerations or [])
    for key in (NOT_READY_TAINT, UNREACHABLE_TAINT):
        if any(
            isinstance(t, dict)
            and t.get("effect") in (None, "", "NoExecute")
            and (t.get("key") == key or (not t.get("key") and t.get("operator") == "Exists"))
            for t in current
        ):
            continue
        current.append(
            {
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": math.ceil(seconds),
            }
        )
    spec["tolerations"] = current


def pod_warnings(pod: Obj) -> list[str]:
    """Upstream's GetWarningsForPod, for the parts podnet can judge."""
    warnings: list[str] = []
    annotations = (pod.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict) and CRITICAL_POD_ANNOTATION in annotations:
        warnings.append(
            f"metadata.annotations[{CRITICAL_POD_ANNOTATION}]: non-functional in v1.16+; "
            'use the "priorityClassName" field instead'
        )
    spec = pod.get("spec")
    if isinstance(spec, dict):
        warnings.extend(pod_spec_warnings(spec, "spec"))
    return warnings


def pod_spec_warnings(spec: Obj, path: str) -> list[str]:
    """Warnings for a pod spec at `path` (`spec`, or `spec.template.spec` in a template)."""
    node_selector = spec.get("nodeSelector")
    if not isinstance(node_selector, dict):
        return []
    return [
        f"{path}.nodeSelector[{label}]: {DEPRECATED_NODE_LABELS[label]}"
        for label in node_selector
        if label in DEPRECATED_NODE_LABELS
    ]
