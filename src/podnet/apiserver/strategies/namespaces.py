"""Namespaces: their default objects, two-phase deletion, and the namespace finalizer.

What belongs here: `NamespaceStrategy` (upstream `pkg/registry/core/namespace`, plus the
NamespaceLifecycle admission rule that protects system namespaces), `populate_namespace` (the
`default` ServiceAccount and `kube-root-ca.crt` ConfigMap every namespace has; upstream's
serviceaccount and root-ca-publisher controllers, done synchronously here; `apiserver.rootca`
puts the ConfigMap back when it is deleted or edited) and
`finalize_namespaces`, one pass of the namespace controller that `apiserver.bootstrap` runs.

Invariants:
- Deleting a namespace never removes it at once: it turns Terminating (deletionTimestamp set,
  `status.phase: Terminating`) and stays until `finalize_namespaces` has deleted everything in
  it and dropped the `kubernetes` entry of `spec.finalizers` — of that namespace, by uid: the
  contents and the finalizer of one created again under its name meanwhile are left alone.
- default, kube-system and kube-public can never be deleted.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable

from podnet.api.errors import ApiError, conflict, forbidden
from podnet.api.interface import Obj
from podnet.api.resources import BY_PLURAL, RESOURCES
from podnet.apiserver.rootca import root_ca_configmap
from podnet.apiserver.strategies.base import Backend, Context, Strategy

# upstream's NamespaceLifecycle admission refuses to delete these
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
NAMESPACE_FINALIZER = "kubernetes"


class NamespaceStrategy(Strategy):
    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        obj["status"] = {"phase": "Active"}
        # upstream's PrepareForCreate, not a default: every namespace starts with the
        # `kubernetes` finalizer, appended to any the client asked for (a default would put it
        # back whenever an update's body leaves the emptied list out)
        if obj.get("spec") is None:
            obj["spec"] = {}
        spec = obj["spec"]
        if not isinstance(spec, dict):
            return  # validation reports it
        finalizers = spec.get("finalizers")
        if finalizers is None:
            spec["finalizers"] = [NAMESPACE_FINALIZER]
        elif isinstance(finalizers, list) and NAMESPACE_FINALIZER not in finalizers:
            spec["finalizers"] = [*finalizers, NAMESPACE_FINALIZER]

    def prepare_for_update(self, ctx: Context, new: Obj, old: Obj) -> None:
        """A plain update (PUT, every PATCH, apply) keeps `spec.finalizers` as stored (upstream's
        namespace strategy): only `namespaces/NAME/finalize` (`prepare_for_finalize`) and the
        namespace finalizer change them."""
        super().prepare_for_update(ctx, new, old)
        self._keep_old_finalizers(new, old)

    def prepare_for_finalize(self, ctx: Context, new: Obj, old: Obj) -> None:
        super().prepare_for_update(ctx, new, old)  # status stays the server's; the rest is taken

    @staticmethod
    def _keep_old_finalizers(new: Obj, old: Obj) -> None:
        old_spec = old.get("spec")
        kept = old_spec.get("finalizers") if isinstance(old_spec, dict) else None
        spec = new.get("spec")
        if not isinstance(spec, dict):
            if kept is None:
                return  # validation reports a spec of the wrong type
            spec = new["spec"] = {}
        if kept is None:
            spec.pop("finalizers", None)
        else:
            spec["finalizers"] = copy.deepcopy(kept)

    async def after_create(self, ctx: Context, obj: Obj) -> None:
        await populate_namespace(ctx.backend, obj["metadata"]["name"])

    def check_delete(self, ctx: Context, obj: Obj) -> None:
        name = obj["metadata"].get("name")
        if name in PROTECTED_NAMESPACES:
            raise forbidden(
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                "namespaces",
                str(name),
            )

    def prepare_for_delete(self, ctx: Context, obj: Obj) -> None:
        obj.setdefault("status", {})["phase"] = "Terminating"

    def ready_to_remove(self, ctx: Context, obj: Obj) -> bool:
        return super().ready_to_remove(ctx, obj) and not (obj.get("spec") or {}).get("finalizers")

    async def after_deletion_recorded(self, ctx: Context, obj: Obj) -> None:
        for notify in ctx.backend.hooks.namespace_terminating:
            notify()


async def populate_namespace(backend: Backend, namespace: str) -> None:
    """Every namespace has a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap."""
    wanted: list[tuple[str, Obj]] = [
        ("serviceaccounts", {"metadata": {"name": "default"}}),
        ("configmaps", root_ca_configmap(backend.ca_pem)),
    ]
    for plural, obj in wanted:
        res = BY_PLURAL[plural]
        if await backend.store.get(res.storage_key(namespace, obj["metadata"]["name"])):
            continue
        with contextlib.suppress(ApiError):
            await backend.create(res, namespace, obj)


async def finalize_namespaces(backend: Backend) -> bool:
    """One pass of the namespace finalizer; True while some namespace is still terminating.

    For each terminating namespace: delete everything in it (pods gracefully, like the upstream
    namespace controller; deleting an object that is already deleting again lets a shorter grace
    period apply); when nothing is left, drop the `kubernetes` finalizer, which removes the
    namespace.
    """
    namespaces = BY_PLURAL["namespaces"]
    listed = await backend.store.list(namespaces.storage_prefix(None))
    pending = False
    for kv in listed.items:
        ns_meta = json.loads(kv.value).get("metadata", {})
        if not ns_meta.get("deletionTimestamp"):
            continue
        name, uid = ns_meta["name"], ns_meta["uid"]
        remaining = 0
        replaced = False
        for res in RESOURCES:
            if not res.namespaced:
                continue
            contents = await backend.store.list(res.storage_prefix(name))
            if contents.items and not await _is_namespace(backend, name, uid):
                replaced = True  # what is in it now belongs to a namespace created again
                break
            for item in contents.items:
                item_name = json.loads(item.value)["metadata"]["name"]
                with contextlib.suppress(ApiError):
                    await backend.delete(res, name, item_name)
            remaining += len((await backend.store.list(res.storage_prefix(name))).items)
        if replaced:
            continue
        if remaining:
            pending = True
            continue
        try:
            await backend.rewrite(namespaces, None, name, _finalizer_dropper(uid))
        except _NamespaceReplaced:
            pass  # finalized meanwhile (another server's pass) and created again: not ours
        except ApiError as exc:
            if exc.code != 404:
                pending = True
    return pending


async def _is_namespace(backend: Backend, name: str, uid: str) -> bool:
    """Whether the namespace called `name` is still the one with `uid`: a pass reads the
    terminating namespaces once, and while it works through them another API server's pass
    may finalize one and a client create the name again, with new contents of its own."""
    kv = await backend.store.get(BY_PLURAL["namespaces"].storage_key(None, name))
    return kv is not None and json.loads(kv.value).get("metadata", {}).get("uid") == uid


class _NamespaceReplaced(ApiError):
    pass


def _finalizer_dropper(uid: str) -> Callable[[Obj], Obj]:
    """Drops the `kubernetes` finalizer of the namespace with this uid only (upstream's UID
    precondition): the pass writes by name, and between its read and its write the namespace
    may have been finalized by another API server's pass and created again; dropping the new
    one's finalizer would let its deletion skip emptying it."""

    def drop(namespace: Obj) -> Obj:
        meta = namespace.get("metadata", {})
        if meta.get("uid") != uid:
            why = f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
            error = conflict("namespaces", str(meta.get("name")), why=why + str(meta.get("uid")))
            raise _NamespaceReplaced(error.code, error.reason, error.message, error.details)
        spec = namespace.setdefault("spec", {})
        spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != NAMESPACE_FINALIZER]
        return namespace

    return drop
