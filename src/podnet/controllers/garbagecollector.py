"""The garbage collector: deletes dependents whose owners are gone, and runs the
`foregroundDeletion` and `orphan` finalizers.

What belongs here: the pure planner `plan_garbage` (one object, its owners' states, its
dependents → writes) and `GarbageCollector`, which keeps a uid graph over the resources that
carry ownerReferences (`GC_RESOURCES`).

Semantics (upstream `garbagecollector.go`, simplified to one pass per object):
- Background: an object all of whose owners are gone (no object of that name, or one with
  another uid) is deleted; if only some are gone, the dangling references are removed. An
  owner missing from the cache is confirmed with a live GET before anything is deleted, so a
  cache that lags behind a just-created owner never causes a deletion.
- Foreground: an owner with `deletionTimestamp` and the `foregroundDeletion` finalizer has its
  dependents deleted (Foreground themselves when they have dependents, so whole trees go
  leaves-first); once no dependent with `blockOwnerDeletion` remains, the finalizer is removed
  and the API server completes the deletion.
- Orphan: an owner with the `orphan` finalizer has its ownerReference removed from every
  dependent, then the finalizer removed.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Literal

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.resources import BY_KIND
from podnet.controllers.controller import Controller
from podnet.controllers.informer import EventType
from podnet.controllers.objects import (
    is_deleting,
    namespace_of,
    object_key,
    owner_references,
    uid_of,
)
from podnet.controllers.writes import Write, apply_write

log = logging.getLogger(__name__)

GC_RESOURCES = (
    "deployments",
    "replicasets",
    "jobs",
    "cronjobs",
    "daemonsets",
    "statefulsets",
    "replicationcontrollers",
    "controllerrevisions",
    "pods",
    "services",
    "endpoints",
    "endpointslices",
    "configmaps",
    "secrets",
    "serviceaccounts",
    "nodes",
    "leases",
)
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"

OwnerState = Literal["present", "absent", "deleting-foreground", "unknown"]


@dataclass(frozen=True, slots=True)
class Dependent:
    resource: str
    obj: Obj
    has_dependents: bool = False


def finalizers_of(obj: Obj) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


def _without_finalizer(resource: str, obj: Obj, finalizer: str) -> Write:
    updated = copy.deepcopy(obj)
    updated["metadata"]["finalizers"] = [f for f in finalizers_of(obj) if f != finalizer]
    return Write("update", resource, updated)


def _without_owner(resource: str, obj: Obj, owner_uids: set[str]) -> Write:
    refs = [r for r in owner_references(obj) if r.get("uid") not in owner_uids]
    return Write(
        "patch",
        resource,
        obj,
        patch={
            "metadata": {
                "ownerReferences": refs or None,
                "resourceVersion": (obj.get("metadata") or {}).get("resourceVersion"),
            }
        },
    )


def plan_garbage(
    resource: str,
    obj: Obj,
    owner_states: dict[str, OwnerState],
    dependents: list[Dependent],
) -> list[Write]:
    """What the collector does for `obj` (as a dependent of its owners and as an owner)."""
    writes: list[Write] = []
    finalizers = finalizers_of(obj)
    uid = uid_of(obj)
    if is_deleting(obj) and ORPHAN in finalizers:
        writes.extend(_without_owner(d.resource, d.obj, {uid}) for d in dependents)
        if not dependents:
            writes.append(_without_finalizer(resource, obj, ORPHAN))
        return writes
    if is_deleting(obj) and FOREGROUND in finalizers:
        blocking = 0
        for d in dependents:
            ref = next((r for r in owner_references(d.obj) if r.get("uid") == uid), {})
            if ref.get("blockOwnerDeletion"):
                blocking += 1
            if not is_deleting(d.obj):
                policy = "Foreground" if d.has_dependents else "Background"
                writes.append(
                    Write("delete", d.resource, d.obj, options={"propagation_policy": policy})
                )
        if blocking == 0:
            writes.append(_without_finalizer(resource, obj, FOREGROUND))
        return writes
    refs = owner_references(obj)
    if not refs or is_deleting(obj):
        return writes
    states = [owner_states.get(str(r.get("uid")), "unknown") for r in refs]
    gone = {str(r.get("uid")) for r, s in zip(refs, states, strict=True) if s == "absent"}
    waiting = any(s == "deleting-foreground" for s in states)
    if all(s in ("absent", "deleting-foreground") for s in states):
        if waiting:
            return writes  # the foreground owner deletes its dependents itself
        writes.append(Write("delete", resource, obj, options={"propagation_policy": "Background"}))
    elif gone:
        writes.append(_without_owner(resource, obj, gone))
    return writes


class GarbageCollector(Controller):
    name = "garbagecollector"
    workers = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.caches = {r: self.informers.informer(r) for r in GC_RESOURCES}
        self.by_uid: dict[str, tuple[str, str]] = {}  # uid -> (resource, key)
        self.dependents_of: dict[str, set[tuple[str, str]]] = {}  # owner uid -> dependents
        for resource, inf in self.caches.items():
            inf.add_handler(self._handler(resource))

    def all_keys(self) -> list[str]:
        keys: list[str] = []
        for resource, inf in self.caches.items():
            for obj in inf.items():
                if owner_references(obj) or is_deleting(obj):
                    keys.append(f"{resource}|{object_key(obj)}")
        return keys

    def _handler(self, resource: str) -> Any:
        def on_event(kind: EventType, old: Obj | None, new: Obj | None) -> None:
            self._on_event(resource, kind, old, new)

        return on_event

    def _on_event(self, resource: str, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        key = object_key(obj)
        node = (resource, key)
        if old is not None:
            for ref in owner_references(old):
                self.dependents_of.get(str(ref.get("uid")), set()).discard(node)
        if new is None:
            self.by_uid.pop(uid_of(obj), None)
            for dep_resource, dep_key in self.dependents_of.get(uid_of(obj), set()):
                self.queue.add(f"{dep_resource}|{dep_key}")
            for ref in owner_references(obj):
                self._enqueue_uid(str(ref.get("uid")))
            return
        self.by_uid[uid_of(new)] = node
        for ref in owner_references(new):
            self.dependents_of.setdefault(str(ref.get("uid")), set()).add(node)
        unchanged = (
            old is not None
            and owner_references(old) == owner_references(new)
            and is_deleting(old) == is_deleting(new)
            and finalizers_of(old) == finalizers_of(new)
        )
        if not unchanged and (owner_references(new) or (is_deleting(new) and finalizers_of(new))):
            self.queue.add(f"{resource}|{key}")
        if old is not None and owner_references(old) != owner_references(new):
            for ref in owner_references(old):
                self._enqueue_uid(str(ref.get("uid")))

    def _enqueue_uid(self, uid: str) -> None:
        found = self.by_uid.get(uid)
        if found is not None:
            self.queue.add(f"{found[0]}|{found[1]}")

    async def _owner_state(self, obj: Obj, ref: Obj) -> OwnerState:
        uid = str(ref.get("uid"))
        found = self.by_uid.get(uid)
        owner: Obj | None = None
        if found is not None:
            owner = self.caches[found[0]].get(found[1])
        if owner is None:
            res = BY_KIND.get(str(ref.get("kind")))
            if res is None:
                return "unknown"
            ns = namespace_of(obj) if res.namespaced else None
            try:
                owner = await self.api.get(res.plural, str(ref.get("name")), ns)
            except ApiError as e:
                if e.code == 404:
                    return "absent"
                raise
            if uid_of(owner) != uid:
                return "absent"
        if is_deleting(owner) and FOREGROUND in finalizers_of(owner):
            return "deleting-foreground"
        return "present"

    async def reconcile(self, key: str) -> None:
        resource, _, obj_key = key.partition("|")
        obj = self.caches[resource].get(obj_key)
        if obj is None:
            return
        states: dict[str, OwnerState] = {}
        for ref in owner_references(obj):
            states[str(ref.get("uid"))] = await self._owner_state(obj, ref)
        deps: list[Dependent] = []
        if is_deleting(obj) and finalizers_of(obj):
            for dep_resource, dep_key in sorted(self.dependents_of.get(uid_of(obj), set())):
                dep = self.caches[dep_resource].get(dep_key)
                if dep is not None:
                    deps.append(
                        Dependent(dep_resource, dep, bool(self.dependents_of.get(uid_of(dep))))
                    )
        for w in plan_garbage(resource, obj, states, deps):
            try:
                await apply_write(self.api, w)
            except ApiError as e:
                if e.code != 404:
                    raise
            log.info("garbagecollector: %s", w.describe())
