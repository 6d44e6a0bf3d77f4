"""Shared informers: one list + watch cache per resource, feeding every control loop.

What belongs here: `Informer` (a local, eventually consistent copy of one resource kept by
list-then-watch) and `InformerFactory` (one informer per resource, shared by all controllers).

Invariants:
- The cache is filled by a full `list` first; `synced` is set only after that, so no controller
  reconciles against a partial view. The watch resumes from the last resourceVersion seen; a
  watch that ends normally is simply re-opened from there; `410 Gone` (or an ERROR event)
  triggers a fresh list, and the difference between the old and new cache is delivered to the
  handlers as ADDED/MODIFIED/DELETED, so no change is lost across a re-list or server restart.
- Handlers run synchronously inside the informer task and must only enqueue keys (never await
  or write to the API); the work happens in the controllers' reconcile.
- Objects in the cache are shared, never mutated: controllers deep-copy before changing.
- Objects are kept without `metadata.managedFields` (upstream's controller-manager and
  scheduler informers strip them too: TransformStripManagedFields). No control loop reads
  them, and a write without them keeps the stored ones; they were about a third of a pod
  that a hollow node had reported status for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

from podnet.api.interface import Api, Obj
from podnet.api.reflector import reflect
from podnet.controllers.objects import controller_ref, labels_of, namespace_of, object_key

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Handler = Callable[[EventType, Obj | None, Obj | None], None]
"""(event, old, new): ADDED has old None, DELETED has new None."""


class Informer:
    def __init__(self, api: Api, resource: str, namespace: str | None = None) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.synced = asyncio.Event()
        self._items: dict[str, Obj] = {}
        self._by_namespace: dict[str | None, dict[str, Obj]] = {}
        # (namespace, label key, label value) -> object keys: selector lookups without scans
        self._by_label: dict[tuple[str | None, str, str], set[str]] = {}
        # controller uid (or ("", namespace) for objects without one) -> object keys
        self._by_controller: dict[tuple[str, str | None], set[str]] = {}
        self._handlers: list[Handler] = []

    # --- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> Obj | None:
        return self._items.get(key)

    def items(self) -> list[Obj]:
        return list(self._items.values())

    def in_namespace(self, namespace: str | None) -> list[Obj]:
        return list(self._by_namespace.get(namespace, {}).values())

    def select(self, namespace: str | None, selector: Mapping[str, str]) -> list[Obj]:
        """Objects of `namespace` whose labels include every pair of `selector` (a Service
        selector map; empty selects nothing). Uses the label index: cost ~ the smallest
        matching set, not the namespace size."""
        if not selector:
            return []
        sets = []
        for k, v in selector.items():
            found = self._by_label.get((namespace, k, v))
            if not found:
                return []
            sets.append(found)
        smallest = min(sets, key=len)
        out = []
        for key in smallest:
            obj = self._items.get(key)
            if obj is not None and all(key in other for other in sets if other is not smallest):
                out.append(obj)
        return out

    def controlled_by(self, uid: str) -> list[Obj]:
        """Objects whose controller ownerReference has this uid."""
        return self._lookup(self._by_controller.get((uid, None), set()))

    def uncontrolled(self, namespace: str | None) -> list[Obj]:
        """Objects of `namespace` without a controller (candidates for adoption)."""
        return self._lookup(self._by_controller.get(("", namespace), set()))

    def _lookup(self, keys: set[str]) -> list[Obj]:
        return [obj for k in sorted(keys) if (obj := self._items.get(k)) is not None]

    def keys(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def remove_handler(self, handler: Handler) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.remove(handler)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """List then watch, forever (cancel the task to stop)."""
        await reflect(
            self.api,
            self.resource,
            namespace=self.namespace,
            replace=self._replace,
            apply=self._apply,
            stop=asyncio.Event(),  # never set: controllers stop informers by cancelling them
            who=f"informer {self.resource}",
        )

    def _replace(self, items: list[Obj]) -> None:
        """A full list: deliver its difference from the cache, then mark the cache synced."""
        fresh = {object_key(o): _trimmed(o) for o in items}
        old_items = dict(self._items)
        for key, obj in fresh.items():
            self._store(key, obj)
            prev = old_items.get(key)
            if prev is None:
                self._emit("ADDED", None, obj)
            elif _rv(prev) != _rv(obj):
                self._emit("MODIFIED", prev, obj)
        for key, prev in list(old_items.items()):
            if key not in fresh:
                self._drop(key)
                self._emit("DELETED", prev, None)
        self.synced.set()

    def _apply(self, kind: str, obj: Obj) -> None:
        obj = _trimmed(obj)
        key = object_key(obj)
        prev = self._items.get(key)
        if kind == "DELETED":
            if prev is not None:
                self._drop(key)
            self._emit("DELETED", prev or obj, None)
        elif kind in ("ADDED", "MODIFIED"):
            self._store(key, obj)
            self._emit("MODIFIED" if prev is not None else "ADDED", prev, obj)

    def _store(self, key: str, obj: Obj) -> None:
        prev = self._items.get(key)
        if prev is not None:
            self._unindex(key, prev)
        self._items[key] = obj
        ns = namespace_of(obj)
        self._by_namespace.setdefault(ns, {})[key] = obj
        for k, v in labels_of(obj).items():
            self._by_label.setdefault((ns, k, v), set()).add(key)
        self._by_controller.setdefault(_controller_slot(obj), set()).add(key)

    def _drop(self, key: str) -> None:
        obj = self._items.pop(key, None)
        if obj is not None:
            self._by_namespace.get(namespace_of(obj), {}).pop(key, None)
            self._unindex(key, obj)

    def _unindex(self, key: str, obj: Obj) -> None:
        slot = _controller_slot(obj)
        owned = self._by_controller.get(slot)
        if owned is not None:
            owned.discard(key)
            if not owned:
                del self._by_controller[slot]
        ns = namespace_of(obj)
        for k, v in labels_of(obj).items():
            keys = self._by_label.get((ns, k, v))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_label[(ns, k, v)]

    def _emit(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, old, new)
            except Exception:
                log.exception("informer %s: handler failed", self.resource)


def _trimmed(obj: Obj) -> Obj:
    """`obj` (the informer's own: every object an Api returns is fresh) without its
    managedFields."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return obj


def _controller_slot(obj: Obj) -> tuple[str, str | None]:
    ref = controller_ref(obj)
    if ref is not None and ref.get("uid"):
        return str(ref["uid"]), None
    return "", namespace_of(obj)


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class InformerFactory:
    """One informer per resource, shared by every controller in the process."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._informers: dict[str, Informer] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def informer(self, resource: str, namespace: str | None = None) -> Informer:
        """The informer of `resource` (in one `namespace`, for a loop that needs only those:
        the token cleaner's kube-system Secrets)."""
        key = resource if namespace is None else f"{resource}@{namespace}"
        inf = self._informers.get(key)
        if inf is None:
            inf = Informer(self.api, resource, namespace)
            self._informers[key] = inf
        return inf

    def start(self) -> None:
        for key, inf in self._informers.items():
            if not any(t.get_name() == f"informer-{key}" for t in self._tasks):
                self._tasks.append(asyncio.create_task(inf.run(), name=f"informer-{key}"))

    async def wait_synced(self) -> None:
        await asyncio.gather(*(inf.synced.wait() for inf in self._informers.values()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
