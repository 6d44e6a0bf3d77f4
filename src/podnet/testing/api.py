"""`InMemoryApi`: the real API semantics in process memory, with the controls tests need.

What belongs here: the one in-memory `podnet.api.interface.Api` for tests of anything that talks
to the API (controllers, kubelet loops, the proxy, flannel). It is not a fake: every call goes
through `LocalApi` into the server's own `Registry` (defaults, validation, allocation, graceful
deletion, finalizers, selectors, patch types, watch with resourceVersion and 410) over a
`MemoryStore`. `tests/unit/testing/test_testing_api.py` runs the same script against it and
against `LocalApi(Registry)` on SQLite and requires identical answers.

What it adds for tests:
- `calls`: every `Api` call the code under test made, in order (`Call`; `writes()` filters).
- fault injection: `fail_next(verb, resource, error)` raises once; `hold(verb, resource)` makes
  those calls wait until `release(...)`; `disconnect_watches()` ends every open watch (a
  server restart); `compact()` forgets history, so resuming an old watch gets 410.
- seeding: `put` creates or replaces an object with its status (creating its namespace when
  missing) and `remove` deletes at once; neither is recorded in `calls`.
- synchronous reads for assertions and polling predicates: `peek`, `peek_list`.
- TokenRequest (`create("serviceaccounts", {"metadata": {"name": sa}, "spec": ...}, ns,
  subresource="token")`), signed by a key of its own, as a kubelet asks for projected tokens.

Invariants: the namespaces in `namespaces` (default: the four every cluster has, each with its
`default` ServiceAccount and `kube-root-ca.crt`) exist before the first call is answered; one
instance belongs to one event loop (the store wakes watchers on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from podnet.api.errors import ApiError
from podnet.api.interface import Obj, PatchType
from podnet.api.resources import resource as lookup
from podnet.apiserver.auth.tokens import TokenSigner
from podnet.apiserver.bootstrap import SYSTEM_NAMESPACES
from podnet.apiserver.local import LocalApi
from podnet.apiserver.registry import DEFAULT_BOOKMARK_INTERVAL, Registry, decode, utc_now
from podnet.config import ClusterConfig
from podnet.store.memory import MemoryStore

Verb = Literal["get", "list", "create", "update", "patch", "delete", "watch"]
WRITE_VERBS: tuple[Verb, ...] = ("create", "update", "patch", "delete")


@dataclass(frozen=True, slots=True)
class Call:
    """One `Api` call as the code under test made it (bodies are copies)."""

    verb: Verb
    resource: str
    namespace: str | None
    name: str | None = None
    subresource: str | None = None
    body: Any = None  # the object (create/update) or the patch
    grace_period_seconds: int | None = None  # delete options
    propagation_policy: str | None = None
    uid: str | None = None


class InMemoryApi:
    """`Api` over the real registry on a `MemoryStore` (see the module docstring)."""

    def __init__(
        self,
        config: ClusterConfig | None = None,
        *,
        namespaces: Iterable[str] = SYSTEM_NAMESPACES,
        clock: Callable[[], dt.datetime] = utc_now,
        bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
    ) -> None:
        self.store = MemoryStore()
        self.registry = Registry(
            self.store, config or ClusterConfig(), clock=clock, bookmark_interval=bookmark_interval
        )
        self.calls: list[Call] = []
        self._local = LocalApi(
            self.registry, signer=TokenSigner(ec.generate_private_key(ec.SECP256R1()))
        )
        self._namespaces = tuple(namespaces)
        self._seeding: asyncio.Future[None] | None = None
        self._failures: list[tuple[Verb, str, Exception]] = []
        self._holds: dict[tuple[Verb, str], asyncio.Event] = {}
        self._disconnect = asyncio.Event()

    # -- test controls -------------------------------------------------------------------

    def writes(self, resource: str | None = None) -> list[Call]:
        """The create/update/patch/delete calls made so far (of one resource, if given)."""
        return [
            c
            for c in self.calls
            if c.verb in WRITE_VERBS and (resource is None or c.resource == resource)
        ]

    def fail_next(self, verb: Verb, resource: str, error: Exception) -> None:
        """The next `verb` call on `resource` raises `error` instead of reaching the registry
        (an ApiError, or e.g. ConnectionRefusedError for a server that cannot be reached)."""
        self._failures.append((verb, resource, error))

    def hold(self, verb: Verb, resource: str) -> None:
        """`verb` calls on `resource` wait (after being recorded) until `release`."""
        self._holds.setdefault((verb, resource), asyncio.Event())

    def release(self, verb: Verb, resource: str) -> None:
        held = self._holds.pop((verb, resource), None)
        if held is not None:
            held.set()

    def disconnect_watches(self) -> None:
        """End every open watch, as a server restart does; clients resume from their last
        resourceVersion (and get 410 if `compact` ran in between)."""
        self._disconnect.set()
        self._disconnect = asyncio.Event()

    async def compact(self) -> None:
        """Forget all history, the store's and the watch cache's (as a server restart does):
        a watch resumed from an older resourceVersion gets 410 Gone."""
        await self.store.compact(await self.store.current_revision())
        await self.registry.close()

    # -- seeding -------------------------------------------------------------------------

    async def put(self, resource: str, obj: Obj, namespace: str | None = None) -> Obj:
        """Create `obj` or replace the stored one, then write its `status` (if it has one and
        the resource has a status subresource; a create alone resets a Pod's status, as the
        server does). Creates the namespace when missing. Not recorded in `calls`."""
        await self._seeded()
        res = lookup(resource)
        metadata = obj.get("metadata") or {}
        namespace = (namespace or metadata.get("namespace")) if res.namespaced else None
        if namespace is not None and self.peek("namespaces", namespace) is None:
            await self._local.create("namespaces", {"metadata": {"name": namespace}})
        try:
            stored = await self._local.create(resource, obj, namespace)
        except ApiError as exc:
            if exc.code != 409:
                raise
            replacement = json.loads(json.dumps(obj))
            replacement.setdefault("metadata", {}).pop("resourceVersion", None)
            stored = await self._local.update(resource, replacement, namespace)
        if "status" in obj and res.subresource("status") is not None:
            stored["status"] = obj["status"]
            stored = await self._local.update(resource, stored, namespace, subresource="status")
        return stored

    async def remove(self, resource: str, name: str, namespace: str | None = None) -> None:
        """Delete at once (grace period 0); an object that is already gone is fine."""
        await self._seeded()
        with contextlib.suppress(ApiError):
            await self._local.delete(resource, name, namespace, grace_period_seconds=0)

    # -- synchronous reads ---------------------------------------------------------------

    def peek(self, resource: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object (a fresh copy) or None; no call, no await, never fails."""
        res = lookup(resource)
        kv = self.store.read(res.storage_key(namespace if res.namespaced else None, name))
        return None if kv is None else decode(kv)

    def peek_list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Every stored object of `resource` (in `namespace`, if given), sorted by key."""
        res = lookup(resource)
        return [decode(kv) for kv in self.store.read_prefix(res.storage_prefix(namespace)).items]

    # -- the Api -------------------------------------------------------------------------

    async def get(
        self, resource: str, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        await self._enter(Call("get", resource, namespace, name, subresource))
        return await self._local.get(resource, name, namespace, subresource)

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        await self._enter(Call("list", resource, namespace))
        return await self._local.list(
            resource, namespace, label_selector, field_selector, limit, continue_token
        )

    async def create(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        name = (obj.get("metadata") or {}).get("name")
        await self._enter(Call("create", resource, namespace, name, subresource, _copy(obj)))
        return await self._local.create(resource, obj, namespace, subresource)

    async def update(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        metadata = obj.get("metadata") or {}
        namespace_used = namespace or metadata.get("namespace")
        call = Call(
            "update", resource, namespace_used, metadata.get("name"), subresource, _copy(obj)
        )
        await self._enter(call)
        return await self._local.update(resource, obj, namespace, subresource)

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Obj:
        await self._enter(Call("patch", resource, namespace, name, subresource, _copy(patch)))
        return await self._local.patch(resource, name, patch, namespace, patch_type, subresource)

    async def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        await self._enter(
            Call(
                "delete",
                resource,
                namespace,
                name,
                grace_period_seconds=grace_period_seconds,
                propagation_policy=propagation_policy,
                uid=uid,
            )
        )
        return await self._local.delete(
            resource, name, namespace, grace_period_seconds, propagation_policy, uid
        )

    async def watch(
        self,
        resource: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[Obj]:
        await self._enter(Call("watch", resource, namespace))
        # the watch ends when this event is set: `disconnect_watches` swaps in a fresh one
        local = LocalApi(self.registry, self._disconnect)
        events = local.watch(
            resource,
            namespace,
            resource_version,
            label_selector,
            field_selector,
            timeout_seconds,
            allow_bookmarks,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    # -- internals -----------------------------------------------------------------------

    async def _enter(self, call: Call) -> None:
        """Record the call, wait while it is held, raise an injected failure."""
        self.calls.append(call)
        held = self._holds.get((call.verb, call.resource))
        if held is not None:
            await held.wait()
        for index, (verb, resource, error) in enumerate(self._failures):
            if (verb, resource) == (call.verb, call.resource):
                del self._failures[index]
                raise error
        await self._seeded()

    async def _seeded(self) -> None:
        if self._seeding is None:
            self._seeding = asyncio.ensure_future(self._create_namespaces())
        await asyncio.shield(self._seeding)

    async def _create_namespaces(self) -> None:
        for name in self._namespaces:
            await self._local.create("namespaces", {"metadata": {"name": name}})


def _copy(body: Any) -> Any:
    return json.loads(json.dumps(body))


if TYPE_CHECKING:  # mypy proves InMemoryApi implements `Api`; nothing runs here
    from podnet.api.interface import Api

    def _conforms(api: InMemoryApi) -> Api:
        return api
