"""The one value every planner returns: a write to make through the API.

What belongs here: `Write` and `apply_write`, the thin applier that turns one planned write
into an API call, and the writes every owning controller plans alike (`adopt`, `release`).
Planners stay pure (they return `Write`s); controllers call `apply_write`.

Invariants: `update` writes carry the `metadata.resourceVersion` the plan was computed from,
so a plan made from a stale cache fails with 409 and is re-planned instead of overwriting a
newer object; `delete` carries the uid precondition for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.controllers.objects import (
    make_owner_reference,
    name_of,
    namespace_of,
    owner_references,
    uid_of,
)

Verb = Literal["create", "update", "patch", "delete"]


@dataclass(frozen=True, slots=True)
class Write:
    verb: Verb
    resource: str
    obj: Obj  # the full object (create/update), or a stub with metadata (patch/delete)
    subresource: str | None = None
    patch: Any = None  # merge patch body for verb == "patch"
    options: dict[str, Any] = field(default_factory=dict)  # delete: grace_period_seconds, ...

    @property
    def name(self) -> str:
        return name_of(self.obj)

    @property
    def namespace(self) -> str | None:
        return namespace_of(self.obj)

    def describe(self) -> str:
        target = self.name or f"{self.obj.get('metadata', {}).get('generateName', '')}*"
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {self.resource}{sub} {self.namespace or ''}/{target}"


async def apply_write(api: Api, w: Write) -> Obj | None:
    """Make one write. A delete of an object already gone is success (idempotent)."""
    if w.verb == "create":
        return await api.create(w.resource, w.obj, w.namespace, subresource=w.subresource)
    if w.verb == "update":
        return await api.update(w.resource, w.obj, w.namespace, subresource=w.subresource)
    if w.verb == "patch":
        return await api.patch(
            w.resource, w.name, w.patch, w.namespace, patch_type="merge", subresource=w.subresource
        )
    try:
        await api.delete(
            w.resource,
            w.name,
            w.namespace,
            grace_period_seconds=w.options.get("grace_period_seconds"),
            propagation_policy=w.options.get("propagation_policy"),
            uid=uid_of(w.obj) or None,
        )
    except ApiError as e:
        if e.code != 404:
            raise
    return None


def adopt(resource: str, obj: Obj, owner: Obj, api_version: str, kind: str) -> Write:
    """Make `owner` the controller of the orphan `obj` (a patch guarded by its
    resourceVersion, so an object that changed meanwhile is looked at again)."""
    refs = [*owner_references(obj), make_owner_reference(owner, api_version, kind)]
    return Write("patch", resource, obj, patch=_references_patch(obj, refs))


def release(resource: str, obj: Obj, owner: Obj) -> Write:
    """Drop `owner` from `obj`'s ownerReferences (it no longer matches the selector)."""
    refs = [r for r in owner_references(obj) if r.get("uid") != uid_of(owner)]
    return Write("patch", resource, obj, patch=_references_patch(obj, refs or None))


def _references_patch(obj: Obj, refs: list[Obj] | None) -> Obj:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"ownerReferences": refs, "resourceVersion": version}}
