"""`LocalApi`: the `podnet.api.interface.Api` protocol, in-process, over the server's registry.

What belongs here: the mapping from `Api` calls to `Registry` calls. The controllers running
inside `podnet server` use it; because it calls the same registry as the HTTP handlers they get
exactly the semantics kubectl gets (validation, defaults, allocation, graceful deletion),
without HTTP or JSON round trips.

Invariants: every object returned is a fresh dict (decoded from the store), so callers may
mutate what they get; an unknown resource is a 404 ApiError naming the valid ones; an expired
watch resourceVersion raises ApiError(410) rather than yielding an ERROR event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from podnet.api.errors import ApiError, bad_request
from podnet.api.interface import Obj, PatchType
from podnet.api.resources import Resource, resource
from podnet.api.selectors import FieldSelector, LabelSelector
from podnet.apiserver.auth import tokenrequest
from podnet.apiserver.auth.tokens import TokenSigner
from podnet.apiserver.eviction import evict
from podnet.apiserver.registry import DeleteOptions, ListOptions, Registry


def _resource(plural: str) -> Resource:
    try:
        return resource(plural)
    except KeyError as exc:
        raise ApiError(404, "NotFound", str(exc.args[0])) from None


def _options(
    res: Resource,
    label_selector: str | None,
    field_selector: str | None,
    limit: int | None = None,
    continue_token: str | None = None,
) -> ListOptions:
    return ListOptions(
        label_selector=LabelSelector.parse(label_selector) if label_selector else None,
        field_selector=FieldSelector.parse(field_selector, res) if field_selector else None,
        limit=limit,
        continue_token=continue_token,
    )


class LocalApi:
    """`Api` over a `Registry` in the same process (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        stop: asyncio.Event | None = None,
        signer: TokenSigner | None = None,
        watch_managed_fields: bool = True,
    ) -> None:
        self._registry = registry
        self._stop = stop
        self._signer = signer  # serves TokenRequest (serviceaccounts/<name>/token) when given
        # False: watch events' objects come without metadata.managedFields (for informers,
        # which drop them: they are not decoded at all)
        self._watch_managed_fields = watch_managed_fields

    async def get(
        self, resource: str, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        res = _resource(resource)
        if subresource == "scale":
            return await self._registry.get_scale(res, namespace, name)
        if subresource not in (None, "", "status"):
            raise bad_request(f"{resource}/{subresource} cannot be read with get")
        return await self._registry.get(res, namespace, name)

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        res = _resource(resource)
        options = _options(res, label_selector, field_selector, limit, continue_token)
        return await self._registry.list(res, namespace, options)

    async def create(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        res = _resource(resource)
        if subresource == "binding":
            if namespace is None:
                raise bad_request("pods/binding needs a namespace")
            name = str((obj.get("metadata") or {}).get("name") or "")
            return await self._registry.bind(namespace, name, obj)
        if subresource == "eviction":
            if namespace is None:
                raise bad_request("pods/eviction needs a namespace")
            name = str((obj.get("metadata") or {}).get("name") or "")
            return await evict(self._registry, namespace, name, obj)
        if subresource == "token" and resource == "serviceaccounts" and self._signer is not None:
            if namespace is None:
                raise bad_request("serviceaccounts/token needs a namespace")
            name = str((obj.get("metadata") or {}).get("name") or "")
            now = self._registry.clock()
            return await tokenrequest.issue(self._registry, self._signer, namespace, name, obj, now)
        if subresource not in (None, ""):
            raise bad_request(f"{resource}/{subresource} cannot be created")
        return await self._registry.create(res, namespace, obj)

    async def update(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        res = _resource(resource)
        name = str((obj.get("metadata") or {}).get("name") or "")
        if not name:
            raise bad_request("update needs metadata.name in the object")
        if namespace is None:
            namespace = (obj.get("metadata") or {}).get("namespace")
        if subresource == "scale":
            return await self._registry.update_scale(res, namespace, name, obj)
        return await self._registry.update(res, namespace, name, obj, subresource)

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Obj:
        res = _resource(resource)
        if subresource == "scale":
            return await self._registry.patch_scale(res, namespace, name, patch_type, patch)
        return await self._registry.patch(res, namespace, name, patch_type, patch, subresource)

    async def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        res = _resource(resource)
        return await self._registry.delete(
            res,
            namespace,
            name,
            DeleteOptions(
                grace_period_seconds=grace_period_seconds,
                propagation_policy=propagation_policy,
                precondition_uid=uid,
            ),
        )

    def watch(
        self,
        resource: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncGenerator[Obj, None]:
        res = _resource(resource)
        return self._registry.watch(
            res,
            namespace,
            resource_version,
            _options(res, label_selector, field_selector),
            bookmarks=allow_bookmarks,
            duration=float(timeout_seconds) if timeout_seconds else None,
            stop=self._stop,
            managed_fields=self._watch_managed_fields,
        )
