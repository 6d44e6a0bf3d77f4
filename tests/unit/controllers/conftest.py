"""An in-memory `Api` with real list/watch/resourceVersion semantics, for controller tests.

`FakeApi` keeps objects in a dict with one global revision counter (like the store), answers
list with the revision it was read at, and serves watches that replay history after a
resourceVersion (410 once compacted), then stream live. It implements the parts of the API
server's semantics the controllers rely on: generateName, uid/creationTimestamp/generation,
resourceVersion preconditions (409), status and binding subresources, finalizers with
deletionTimestamp, propagationPolicy Foreground/Orphan finalizers, uid delete preconditions.
Failure injection (`fail_next`) and `disconnect_watches()` simulate an unreliable server.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from podnet.api import errors
from podnet.api.errors import ApiError
from podnet.api.resources import resource as lookup_resource

Obj = dict[str, Any]
STATUS_RESOURCES = {"pods", "services", "nodes", "deployments", "replicasets", "namespaces"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selector_ok(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k.strip()) != v.strip():
            return False
    return True


def _field_ok(selector: str | None, obj: Obj) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        path, _, want = term.partition("=")
        cur: Any = obj
        for part in path.strip().split("."):
            cur = (cur or {}).get(part) if isinstance(cur, dict) else None
        if str(cur or "") != want.strip():
            return False
    return True


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


class FakeApi:
    def __init__(self) -> None:
        self.revision = 0
        self.objects: dict[tuple[str, str | None, str], Obj] = {}
        self.history: list[tuple[int, str, str, Obj]] = []  # (rev, resource, type, obj)
        self.compacted = 0
        self._watchers: list[tuple[str, asyncio.Queue[tuple[int, str, Obj] | None]]] = []
        self._failures: list[tuple[str, str, ApiError]] = []
        self.calls: list[tuple[str, str, str]] = []  # (verb, resource, name)

    # --- test controls -------------------------------------------------------------------------

    def fail_next(self, verb: str, resource: str, error: ApiError) -> None:
        self._failures.append((verb, resource, error))

    def _maybe_fail(self, verb: str, resource: str) -> None:
        for i, (v, r, e) in enumerate(self._failures):
            if v == verb and r == resource:
                del self._failures[i]
                raise e

    def compact(self) -> None:
        self.compacted = self.revision
        self.history.clear()

    def disconnect_watches(self) -> None:
        for _, q in self._watchers:
            q.put_nowait(None)

    def writes(self, resource: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[1] == resource and c[0] != "get"]

    # --- internals -----------------------------------------------------------------------------

    def _key(self, resource: str, namespace: str | None, name: str) -> tuple[str, str | None, str]:
        res = lookup_resource(resource)
        return (resource, namespace if res.namespaced else None, name)

    def _emit(self, resource: str, kind: str, obj: Obj) -> None:
        self.history.append((self.revision, resource, kind, copy.deepcopy(obj)))
        for res, q in self._watchers:
            if res == resource:
                q.put_nowait((self.revision, kind, copy.deepcopy(obj)))

    def _bump(self, obj: Obj) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def _really_delete(self, key: tuple[str, str | None, str]) -> Obj:
        obj = self.objects.pop(key)
        self._bump(obj)
        self._emit(key[0], "DELETED", obj)
        return obj

    # --- the Api -------------------------------------------------------------------------------

    async def get(
        self, resource: str, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        await asyncio.sleep(0)
        self.calls.append(("get", resource, name))
        self._maybe_fail("get", resource)
        obj = self.objects.get(self._key(resource, namespace, name))
        if obj is None:
            raise errors.not_found(resource, name)
        return copy.deepcopy(obj)

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        await asyncio.sleep(0)
        self._maybe_fail("list", resource)
        res = lookup_resource(resource)
        items = [
            copy.deepcopy(o)
            for (r, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if r == resource
            and (namespace is None or ns == namespace)
            and _selector_ok(label_selector, o["metadata"].get("labels") or {})
            and _field_ok(field_selector, o)
        ]
        return {
            "kind": res.list_kind,
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(self.revision)},
            "items": items,
        }

    async def create(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        await asyncio.sleep(0)
        self._maybe_fail("create", resource)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        namespace = namespace or meta.get("namespace")
        if subresource == "binding":
            return await self._bind(resource, obj, namespace)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(lookup_resource(resource).kind, "", [])
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        self.calls.append(("create", resource, meta["name"]))
        key = self._key(resource, namespace, meta["name"])
        if key in self.objects:
            raise errors.already_exists(resource, meta["name"])
        res = lookup_resource(resource)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.namespaced:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta.pop("resourceVersion", None)
        self._bump(obj)
        self.objects[key] = obj
        self._emit(resource, "ADDED", obj)
        return copy.deepcopy(obj)

    async def _bind(self, resource: str, binding: Obj, namespace: str | None) -> Obj:
        name = binding["metadata"]["name"]
        self.calls.append(("bind", resource, name))
        key = self._key("pods", namespace, name)
        pod = self.objects.get(key)
        if pod is None:
            raise errors.not_found("pods", name)
        if pod.get("spec", {}).get("nodeName"):
            raise errors.conflict(
                "pods",
                name,
                why=f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"',
            )
        pod = copy.deepcopy(pod)
        pod["spec"]["nodeName"] = binding["target"]["name"]
        self._bump(pod)
        self.objects[key] = pod
        self._emit("pods", "MODIFIED", pod)
        return {"kind": "Status", "status": "Success"}

    async def update(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        await asyncio.sleep(0)
        self._maybe_fail("update", resource)
        meta = obj.get("metadata") or {}
        name = meta["name"]
        self.calls.append(("update", resource, name))
        key = self._key(resource, namespace or meta.get("namespace"), name)
        cur = self.objects.get(key)
        if cur is None:
            raise errors.not_found(resource, name)
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
            raise errors.conflict(resource, name)
        return self._replace(resource, key, cur, copy.deepcopy(obj), subresource)

    def _replace(
        self,
        resource: str,
        key: tuple[str, str | None, str],
        cur: Obj,
        new: Obj,
        subresource: str | None,
    ) -> Obj:
        if subresource == "status":
            merged = copy.deepcopy(cur)
            merged["status"] = new.get("status") or {}
        else:
            merged = new
            for field in (
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "namespace",
            ):
                if field in cur["metadata"]:
                    merged["metadata"][field] = cur["metadata"][field]
                else:
                    merged["metadata"].pop(field, None)
            merged["apiVersion"], merged["kind"] = cur["apiVersion"], cur["kind"]
            if resource in STATUS_RESOURCES:
                merged["status"] = copy.deepcopy(cur.get("status") or {})
                if "status" not in cur:
                    merged.pop("status")
            if merged.get("spec") != cur.get("spec"):
                merged["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
        self._bump(merged)
        if merged["metadata"].get("deletionTimestamp") and not merged["metadata"].get("finalizers"):
            self.objects[key] = merged
            return copy.deepcopy(self._really_delete(key))
        self.objects[key] = merged
        self._emit(resource, "MODIFIED", merged)
        return copy.deepcopy(merged)

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        await asyncio.sleep(0)
        self._maybe_fail("patch", resource)
        self.calls.append(("patch", resource, name))
        assert patch_type == "merge", "FakeApi speaks merge patch only"
        key = self._key(resource, namespace, name)
        cur = self.objects.get(key)
        if cur is None:
            raise errors.not_found(resource, name)
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
            raise errors.conflict(resource, name)
        merged = _merge(cur, patch)
        return self._replace(resource, key, cur, merged, subresource)

    async def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        await asyncio.sleep(0)
        self._maybe_fail("delete", resource)
        self.calls.append(("delete", resource, name))
        key = self._key(resource, namespace, name)
        cur = self.objects.get(key)
        if cur is None:
            raise errors.not_found(resource, name)
        if uid and cur["metadata"]["uid"] != uid:
            raise errors.conflict(resource, name, why="Precondition failed: UID in precondition")
        finalizers = list(cur["metadata"].get("finalizers") or [])
        if propagation_policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if propagation_policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if finalizers:
            if cur["metadata"].get("deletionTimestamp") and finalizers == cur["metadata"].get(
                "finalizers"
            ):
                return copy.deepcopy(cur)
            new = copy.deepcopy(cur)
            new["metadata"]["finalizers"] = finalizers
            new["metadata"].setdefault("deletionTimestamp", _now())
            self._bump(new)
            self.objects[key] = new
            self._emit(resource, "MODIFIED", new)
            return copy.deepcopy(new)
        return copy.deepcopy(self._really_delete(key))

    def watch(
        self,
        resource: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[Obj]:
        return self._watch(resource, namespace, resource_version)

    async def _watch(
        self, resource: str, namespace: str | None, resource_version: str | None
    ) -> AsyncIterator[Obj]:
        q: asyncio.Queue[tuple[int, str, Obj] | None] = asyncio.Queue()
        entry = (resource, q)
        self._watchers.append(entry)
        try:
            if resource_version and resource_version != "0":
                since = int(resource_version)
                if since < self.compacted:
                    raise errors.gone(f"too old resource version: {since} ({self.compacted})")
                backlog = [
                    (r, t, o) for (r, res, t, o) in self.history if res == resource and r > since
                ]
            else:
                since = self.revision
                backlog = [
                    (since, "ADDED", copy.deepcopy(o))
                    for (r, _, _), o in self.objects.items()
                    if r == resource
                ]
            for _rev, kind, obj in backlog:
                if namespace is None or obj["metadata"].get("namespace") == namespace:
                    yield {"type": kind, "object": obj}
            last = max([since] + [b[0] for b in backlog])
            while True:
                item = await q.get()
                if item is None:
                    return
                rev, kind, obj = item
                if rev <= last:
                    continue
                if namespace is None or obj["metadata"].get("namespace") == namespace:
                    yield {"type": kind, "object": obj}
        finally:
            self._watchers.remove(entry)


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 5.0,  # noqa: ASYNC109
    what: str = "condition",
) -> None:
    """Poll `check` until it holds; fail with `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def fake_api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def eventually_fn() -> Callable[..., Awaitable[None]]:
    return eventually
