"""The Node authorizer and NodeRestriction: a node reads what its pods use and writes its own.

What belongs here (upstream `plugin/pkg/auth/authorizer/node` and
`plugin/pkg/admission/noderestriction` are the models; this is the documented subset podnet's
agent needs). A user `system:node:<name>` in `system:nodes` may:
- read (get/list/watch) nodes, pods, services, endpoints, endpointslices, namespaces and
  networkpolicies (the kubelet, kube-proxy and the policy agent list and watch them);
- create and patch events anywhere; create tokenreviews and subjectaccessreviews;
- create its own Node; update/patch only its own Node and `nodes/<own>/status`; delete its own;
- get/create/update/patch/delete only its own Lease in kube-node-lease;
- update/patch `pods/status`, delete pods and create `pods/eviction` only for pods bound to it;
- get the secrets, configmaps, persistentvolumeclaims and serviceaccounts that pods bound to it
  reference (volumes, env, envFrom, imagePullSecrets, projected sources, its ServiceAccount) —
  upstream's graph, here `PodIndex`, fed by a watch of pods (its own, or the controllers'
  shared pod informer while this server runs them: `PodIndex.follow`);
- create `serviceaccounts/token` only for the ServiceAccount of a pod bound to it, and only
  bound to that pod (`admit_token_request`, NodeRestriction's rule).
Everything else gets no opinion from here (and so a 403 unless RBAC allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from podnet.api import sharedjson
from podnet.api.errors import ApiError, forbidden
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth.attributes import READ_VERBS, Attributes
from podnet.apiserver.auth.user import UserInfo, node_name
from podnet.apiserver.registry import ListOptions, Registry
from podnet.retry import Backoff, Retry, first_of

if TYPE_CHECKING:
    from podnet.controllers.informer import EventType, Informer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LEASE_NAMESPACE = "kube-node-lease"
WATCH_RETRY = Backoff(0.2, 5.0)
READABLE = frozenset(
    {"nodes", "pods", "services", "endpoints", "endpointslices", "namespaces", "networkpolicies"}
)
GRAPH_KINDS = {
    "secrets": "secrets",
    "configmaps": "configmaps",
    "persistentvolumeclaims": "claims",
    "serviceaccounts": "accounts",
}


@dataclass(frozen=True, slots=True)
class PodRefs:
    node: str
    secrets: frozenset[str]
    configmaps: frozenset[str]
    claims: frozenset[str]
    accounts: frozenset[str]


def pod_refs(pod: Obj) -> PodRefs:
    """What a pod's node may read on its behalf."""
    spec = pod.get("spec") or {}
    secrets: set[str] = {str(s.get("name")) for s in spec.get("imagePullSecrets") or ()}
    configmaps: set[str] = set()
    claims: set[str] = set()
    for volume in spec.get("volumes") or ():
        if "secret" in volume:
            secrets.add(str((volume["secret"] or {}).get("secretName")))
        if "configMap" in volume:
            configmaps.add(str((volume["configMap"] or {}).get("name")))
        if "persistentVolumeClaim" in volume:
            claims.add(str((volume["persistentVolumeClaim"] or {}).get("claimName")))
        for source in (volume.get("projected") or {}).get("sources") or ():
            if "secret" in source:
                secrets.add(str((source["secret"] or {}).get("name")))
            if "configMap" in source:
                configmaps.add(str((source["configMap"] or {}).get("name")))
    containers = [
        *(spec.get("initContainers") or ()),
        *(spec.get("containers") or ()),
        *(spec.get("ephemeralContainers") or ()),
    ]
    for container in containers:
        for env in container.get("env") or ():
            source = env.get("valueFrom") or {}
            if "secretKeyRef" in source:
                secrets.add(str((source["secretKeyRef"] or {}).get("name")))
            if "configMapKeyRef" in source:
                configmaps.add(str((source["configMapKeyRef"] or {}).get("name")))
        for env_from in container.get("envFrom") or ():
            if "secretRef" in env_from:
                secrets.add(str((env_from["secretRef"] or {}).get("name")))
            if "configMapRef" in env_from:
                configmaps.add(str((env_from["configMapRef"] or {}).get("name")))
    account = str(spec.get("serviceAccountName") or "default")
    return PodRefs(
        sharedjson.share(str(spec.get("nodeName") or "")),
        _shared(frozenset(secrets)),
        _shared(frozenset(configmaps)),
        _shared(frozenset(claims)),
        _shared(frozenset({account})),
    )


_SHARED_LIMIT = 4096
_shared_sets: dict[frozenset[str], frozenset[str]] = {}


def _shared(names: frozenset[str]) -> frozenset[str]:
    """One frozenset for every pod that references the same names (most pods of a cluster
    reference `kube-root-ca.crt` and their namespace's `default` account and nothing else): an
    empty or one-name frozenset is 216 bytes, four per pod, 26 MB at 30,000 pods unshared.
    The memo is emptied when it passes `_SHARED_LIMIT` sets."""
    if len(_shared_sets) > _SHARED_LIMIT:
        _shared_sets.clear()
    return _shared_sets.setdefault(names, names)


@dataclass(slots=True)
class PodIndex:
    """Pods by (namespace, name), and which pods each node runs.

    Fed by its own list and watch of pods (`run`), except while `follow` has given it the
    controllers' shared pod informer (this server holds the controllers' lease): then it
    reads that informer's events and its own watch is closed, so a pod write is decoded and
    watched once in the process, not twice. The hand-over keeps the index exact: once the
    informer has its first full list, the own watch is cancelled (none of its events is
    applied after that) and the index is rebuilt from the informer's cache, whose events
    follow from there; when the informer stops (`follow`'s undo: the lease is lost or the
    controllers end), the own watch lists again.
    """

    pods: dict[tuple[str, str], PodRefs] = field(default_factory=dict)
    by_node: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    _informer: Informer | None = None  # given by `follow`
    _following: Informer | None = None  # the informer whose events are applied
    _wake: asyncio.Event = field(default_factory=asyncio.Event)  # `follow` or its undo

    def apply(self, event: str, pod: Obj) -> None:
        meta = pod.get("metadata") or {}
        # kept for the pod's life: shared with the informers' equal strings (`pod` may be a
        # json.loads decode, read here and dropped)
        share = sharedjson.share
        key = (share(str(meta.get("namespace", ""))), share(str(meta.get("name", ""))))
        old = self.pods.pop(key, None)
        if old is not None:
            self.by_node[old.node].discard(key)
        if event == "DELETED":
            return
        refs = pod_refs(pod)
        if refs.node:
            self.pods[key] = refs
            self.by_node[refs.node].add(key)

    def replace(self, pods: list[Obj]) -> None:
        self.pods.clear()
        self.by_node.clear()
        for pod in pods:
            self.apply("ADDED", pod)
        self.synced.set()

    def bound_to(self, node: str, namespace: str, pod: str) -> bool:
        refs = self.pods.get((namespace, pod))
        return refs is not None and refs.node == node

    def references(self, node: str, namespace: str, kind: str, name: str) -> bool:
        attr = GRAPH_KINDS[kind]
        for ns, pod in self.by_node.get(node, ()):
            if ns == namespace and name in getattr(self.pods[(ns, pod)], attr):
                return True
        return False

    def follow(self, informer: Informer) -> Callable[[], None]:
        """Take pods from `informer` (all namespaces, not yet started or running) once it has
        synced; returns the undo, to call when the informer stops."""
        informer.add_handler(self._on_event)
        self._informer, self._following = informer, None
        self._wake.set()

        def undo() -> None:
            informer.remove_handler(self._on_event)
            if self._informer is informer:
                self._informer = self._following = None
                self._wake.set()

        return undo

    def _on_event(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if self._following is not None:  # before the hand-over the own watch is current
            pod = new if new is not None else old
            if pod is not None:
                self.apply(kind, pod)

    async def run(self, registry: Registry, stop: asyncio.Event) -> None:
        """Keep the index current until `stop`: from the followed informer when there is
        one that has synced, else from a watch of its own."""
        own: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                self._wake.clear()
                informer = self._informer
                if informer is not None and informer.synced.is_set():
                    if own is not None:
                        own.cancel()  # applies nothing more, even an event already read
                        await asyncio.gather(own, return_exceptions=True)
                        own = None
                    self.replace(informer.items())
                    self._following = informer
                    await first_of(stop, self._wake)
                    continue
                self._following = None
                if own is None:
                    own = asyncio.create_task(self._watch(registry, stop), name="pod-index")
                await first_of(
                    stop, self._wake, *([informer.synced] if informer is not None else [])
                )
        finally:
            self._following = None
            if own is not None:
                own.cancel()
                await asyncio.gather(own, return_exceptions=True)

    async def _watch(self, registry: Registry, stop: asyncio.Event) -> None:
        res = BY_PLURAL["pods"]
        retry = Retry(WATCH_RETRY)
        while not stop.is_set():
            try:
                listed = await registry.list(res, None, ListOptions())
                self.replace(listed["items"])
                version = listed["metadata"]["resourceVersion"]
                # the events' JSON decoded with json.loads (a third of sharedjson's CPU on
                # every pod write): only the strings `apply` keeps are shared
                events = registry.watch_stream(res, None, version, ListOptions(), stop=stop)
                async with contextlib.aclosing(events):
                    async for event in events:
                        if event.type in ("ADDED", "MODIFIED", "DELETED"):
                            self.apply(event.type, json.loads(event.object))
                            retry.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = retry.next()
                log.warning(
                    "node authorizer: watching pods failed (%s); retry in %.1fs", exc, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


class NodeAuthorizer:
    name = "Node"

    def __init__(self, pods: PodIndex) -> None:
        self.pods = pods

    def authorize(self, attrs: Attributes) -> tuple[bool | None, str]:
        node = node_name(attrs.user)
        if node is None:
            return None, ""
        if not attrs.resource_request:
            return None, ""
        allowed = self._allows(node, attrs)
        if allowed:
            return True, "allowed by the Node authorizer"
        return None, f"node {node!r} may not {attrs.verb} {attrs.combined_resource}"

    def _allows(self, node: str, a: Attributes) -> bool:
        resource, sub, verb, group = a.resource, a.subresource, a.verb, a.api_group
        if group not in ("", "coordination.k8s.io", "discovery.k8s.io", "networking.k8s.io"):
            return group in ("authentication.k8s.io", "authorization.k8s.io") and (
                verb == "create" and resource in ("tokenreviews", "subjectaccessreviews")
            )
        if resource == "events":
            return verb in ("create", "patch", "update")
        if not sub and verb in READ_VERBS and resource in READABLE:
            return True
        if resource == "nodes":
            if sub not in ("", "status"):  # nodes/proxy, nodes/log, ...: never for a node
                return False
            if verb == "create" and not sub:
                return True  # NodeRestriction (admit_create) checks the name in the body
            return a.name == node and verb in ("get", "update", "patch", "delete")
        if resource == "leases":
            return a.namespace == LEASE_NAMESPACE and (
                verb == "create"
                or (a.name == node and verb in ("get", "update", "patch", "delete"))
            )
        if resource == "pods":
            own = self.pods.bound_to(node, a.namespace, a.name)
            if sub == "status":
                return own and verb in ("get", "update", "patch")
            if sub == "eviction":
                return own and verb == "create"
            return own and not sub and verb == "delete"
        if resource == "serviceaccounts" and sub == "token":
            # the binding to one of this node's pods is checked by admit_token_request
            return verb == "create" and self.pods.references(
                node, a.namespace, "serviceaccounts", a.name
            )
        if resource in GRAPH_KINDS and not sub and verb == "get":
            return self.pods.references(node, a.namespace, resource, a.name)
        return False


def admit_create(user: UserInfo, resource: str, body: Obj) -> None:
    """NodeRestriction for creates: a node creates only its own Node and Lease."""
    node = node_name(user)
    if node is None or resource not in ("nodes", "leases"):
        return
    name = (body.get("metadata") or {}).get("name") if isinstance(body, dict) else None
    if name != node:
        raise forbidden(
            f'{resource} "{name}" is forbidden: node "{node}" is not allowed to modify '
            f"{resource[:-1]} {name!r}",
            resource,
            str(name or ""),
            "coordination.k8s.io" if resource == "leases" else "",
        )


def admit_token_request(user: UserInfo, pods: PodIndex, namespace: str, body: Obj) -> None:
    """NodeRestriction for TokenRequest: a node's tokens are bound to its own pods."""
    node = node_name(user)
    if node is None:
        return
    ref = ((body.get("spec") or {}).get("boundObjectRef") or {}) if isinstance(body, dict) else {}
    if ref.get("kind") != "Pod" or not pods.bound_to(node, namespace, str(ref.get("name"))):
        raise ApiError(
            403,
            "Forbidden",
            f'serviceaccounts "token" is forbidden: node "{node}" can only create tokens bound '
            "to pods scheduled to it",
        )
