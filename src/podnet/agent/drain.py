"""Endpoint drain, an opt-in beyond upstream (#18 item 4): a terminating pod gets its SIGTERM
only once every node's proxy has stopped sending it new connections.

Upstream races: the pod is deleted, the endpoints controller marks it terminating, and every
node's kube-proxy reprograms -- while the kubelet sends SIGTERM at once. A server that exits
at once on SIGTERM (agnhost netexec does) refuses the connections that nodes still send it.
With `ClusterConfig.endpoint_drain` (`podnet up --endpoint-drain`):

- each agent's proxy, after every successful sync, publishes on its Node the highest
  EndpointSlice resourceVersion it has programmed (`PROXY_REVISION`);
- the kubelet of a terminating pod waits, bounded by the grace period, until no slice lists
  the pod's address as ready, and every Ready node's proxy has published a revision at least
  that of those slices; then it stops the containers with the grace that is left.

What belongs here: the annotation and `drained` (pure: the wait's condition).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PROXY_REVISION = "podnet.io/proxy-endpointslices-revision"

Obj = Mapping[str, Any]


def _revision(obj: Obj) -> int:
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "0")
    return int(rv) if rv.isdigit() else 0


def _ready(node: Obj) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def drained(pod_ip: str, slices: Iterable[Obj], nodes: Iterable[Obj]) -> str | None:
    """None when no Ready node's proxy can send the pod new connections any more; else what
    is still awaited (for the log)."""
    revision = 0
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            if pod_ip not in (endpoint.get("addresses") or []):
                continue
            if (endpoint.get("conditions") or {}).get("ready") is not False:
                return "the endpoints controller to mark the pod's endpoint not ready"
            revision = max(revision, _revision(item))
    if revision == 0:
        return None  # in no Service's slice: nobody sends it Service traffic
    behind = []
    for node in nodes:
        if not _ready(node):
            continue  # an unreachable node's proxy cannot report; waiting would not help
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        published = str(annotations.get(PROXY_REVISION) or "0")
        if not published.isdigit() or int(published) < revision:
            behind.append(str((node.get("metadata") or {}).get("name")))
    if behind:
        return f"the proxies of {', '.join(sorted(behind))} (revision {revision})"
    return None
