"""The `Strategy` base class: what the registry asks a kind, and what every kind gets by default.

What belongs here: the hooks the generic registry (`apiserver.registry`) calls at fixed points of
create, update, status update and delete; their defaults (which are right for most kinds); the
`Context` a hook receives; `Backend`, the narrow view of the registry a hook may call back into;
and `ScaleSpec`, which a kind with a `scale` subresource declares. The order in which the
registry calls the hooks is in the package header (`apiserver/strategies/__init__.py`).

Invariants:
- Strategies hold no state: one instance serves every request for its kind, and anything a hook
  needs (the resource, the store, the cluster config) comes in through `Context`.
- `prepare_*` hooks mutate the object they are given and never raise for bad input: a value of
  the wrong JSON type is left for `validate*` to report (validation is the only place that
  turns input into 422 causes).
- `begin_*` hooks run only for real (not dry-run) writes, after validation and before the
  store write; the `Finish` they return is always awaited exactly once, with whether the write
  happened, so a reservation is either kept or released (upstream's BeginCreate/FinishFunc).
- This module imports nothing from `apiserver.registry` (the registry imports strategies), so
  hooks reach the registry only through `Backend`.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from podnet.api import validation
from podnet.api.errors import Cause
from podnet.api.interface import Obj
from podnet.api.resources import Resource
from podnet.config import ClusterConfig
from podnet.store.base import KeyValue, Store

Finish = Callable[[bool], Awaitable[None]]
"""Called once after a write that a `begin_*` hook prepared: True when the write happened."""


async def finish_nothing(success: bool) -> None:
    """The `Finish` of a hook that reserved nothing."""


@dataclass(slots=True)
class Hooks:
    """Callbacks the server wires into the registry after building it."""

    namespace_terminating: list[Callable[[], None]] = field(default_factory=list)


class Backend(Protocol):
    """What a strategy may use of the registry that calls it."""

    @property
    def store(self) -> Store: ...

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def ca_pem(self) -> bytes: ...

    @property
    def hooks(self) -> Hooks: ...

    async def lookup(self, key: str) -> KeyValue | None:
        """An admission look-up of a store key: a value the server saw very recently, else
        the store's (what upstream's admission plugins read from listers)."""
        ...

    async def create(self, res: Resource, namespace: str | None, body: Any) -> Obj:
        """A create with every client-facing rule applied (as if a client had sent it)."""
        ...

    async def delete(self, res: Resource, namespace: str | None, name: str) -> Obj:
        """A delete with default options (graceful for kinds that have a grace period)."""
        ...

    async def rewrite(
        self, res: Resource, namespace: str | None, name: str, mutate: Callable[[Obj], Obj]
    ) -> Obj:
        """A server-internal compare-and-swap write of state the server owns: `mutate` gets the
        stored object and returns the new one, no client rule is applied; the object leaves the
        store if it is then ready to (`Strategy.ready_to_remove`)."""
        ...


@dataclass(frozen=True, slots=True)
class Context:
    """One request's view for a hook: which resource, and the registry serving it."""

    res: Resource
    backend: Backend


@dataclass(frozen=True, slots=True)
class ScaleSpec:
    """Where a kind keeps what `autoscaling/v1` Scale shows (upstream's CRD scale paths).

    Paths are dotted JSON paths from the object root. `selector` names a `metav1.LabelSelector`
    (matchLabels/matchExpressions), shown in Scale's `status.selector` in query-string form.
    """

    spec_replicas: str = "spec.replicas"
    status_replicas: str = "status.replicas"
    selector: str = "spec.selector"


class Strategy:
    """The default strategy. A kind that needs nothing special uses it unchanged; a kind that
    does subclasses it and overrides only the hooks it needs (call `super()` in `prepare_*` to
    keep the status-subresource rules)."""

    scale: ScaleSpec | None = None
    """Set by kinds with a `scale` subresource (the resource table must list it too)."""

    # -- create ------------------------------------------------------------------------------

    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        """Clear what a client may not set on create. Called after defaulting, before
        validation. Default: a kind with a status subresource always carries `spec` and
        `status` (upstream's Go structs do) and starts with an empty status, the server's."""
        if _has_status(ctx):
            if obj.get("spec") is None:
                obj["spec"] = {}
            obj["status"] = {}

    async def admit_create(self, ctx: Context, obj: Obj) -> None:
        """Mutating admission that reads other objects (upstream's admission plugins, e.g.
        ServiceAccount for pods); may raise ApiError to refuse. Called after
        prepare_for_create, before validation (so dry run shows its changes)."""

    def validate(self, ctx: Context, obj: Obj) -> list[Cause]:
        """Causes that make a new object invalid (empty: valid)."""
        return validation.validate(ctx.res, obj, None)

    def warnings_on_create(self, ctx: Context, obj: Obj) -> list[str]:
        """`Warning` headers for a valid create that is probably not what the client meant."""
        return []

    async def begin_create(self, ctx: Context, obj: Obj) -> Finish:
        """Reserve what the object needs outside its own key (Service IPs), filling it in."""
        return finish_nothing

    async def after_create(self, ctx: Context, obj: Obj) -> None:
        """Side effects of a stored create (a new namespace's default objects)."""

    # -- update ------------------------------------------------------------------------------

    def prepare_for_update(self, ctx: Context, new: Obj, old: Obj) -> None:
        """Make `new` (a client's replacement, defaulted, with server metadata restored) what
        may be stored. Default: the main resource of a kind with a status subresource cannot
        change status (it is written through `/status`)."""
        if _has_status(ctx):
            if new.get("spec") is None:
                new["spec"] = {}
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)

    def prepare_for_finalize(self, ctx: Context, new: Obj, old: Obj) -> None:
        """Make `new` (a client's `namespaces/NAME/finalize` write) what may be stored.
        Default: as a plain update; `NamespaceStrategy` lets this one change spec.finalizers."""
        self.prepare_for_update(ctx, new, old)

    def prepare_for_status_update(self, ctx: Context, new: Obj, old: Obj) -> None:
        """Make `new` (a client's `/status` write) what may be stored. Default: only `status`
        changes; everything else stays as stored. `new` may share with `old` every part a
        status merge patch did not reach (`Registry.patch`, `patch.merge_patch_sharing`), so
        an override keeps only `new`'s `status` and writes into no part of it that `old` may
        share (only into dicts it replaces or made itself, or the values `old` has already)."""
        status = new.get("status", {})
        new.clear()
        new.update(copy.deepcopy(old))
        new["status"] = status

    def validate_update(self, ctx: Context, new: Obj, old: Obj) -> list[Cause]:
        """Causes that make an update (main resource or status) invalid."""
        return validation.validate(ctx.res, new, old)

    def warnings_on_update(self, ctx: Context, new: Obj, old: Obj) -> list[str]:
        return []

    async def begin_update(self, ctx: Context, new: Obj, old: Obj) -> Finish:
        """Reserve what `new` needs and `old` did not hold; the `Finish` releases either the
        new reservations (write failed) or what only `old` held (write succeeded)."""
        return finish_nothing

    # -- delete ------------------------------------------------------------------------------

    def check_delete(self, ctx: Context, obj: Obj) -> None:
        """Raise an ApiError if `obj` may not be deleted at all."""

    def grace_period(self, ctx: Context, obj: Obj, requested: int | None) -> int:
        """Seconds the object lingers with a deletionTimestamp before it may go (upstream
        CheckGracefulDelete). Default: 0, whatever was requested."""
        return 0

    def prepare_for_delete(self, ctx: Context, obj: Obj) -> None:
        """Adjust an object whose deletion has just been recorded (deletionTimestamp set)."""

    def ready_to_remove(self, ctx: Context, obj: Obj) -> bool:
        """Whether a deleting object may leave the store now: its grace period is over and no
        finalizer is left."""
        metadata = obj.get("metadata", {})
        if not metadata.get("deletionTimestamp") or metadata.get("finalizers"):
            return False
        return int(metadata.get("deletionGracePeriodSeconds") or 0) == 0

    async def after_deletion_recorded(self, ctx: Context, obj: Obj) -> None:
        """Side effects of a delete that was recorded but leaves the object in the store
        (grace period, finalizers)."""

    async def after_removal(self, ctx: Context, obj: Obj) -> None:
        """Side effects of the object leaving the store (release its reservations)."""


def _has_status(ctx: Context) -> bool:
    return ctx.res.subresource("status") is not None
