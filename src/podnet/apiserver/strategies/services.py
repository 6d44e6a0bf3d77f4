"""Services: ClusterIP/NodePort allocation around the write, allocated values kept on update.

What belongs here: `ServiceStrategy` (upstream `pkg/registry/core/service/strategy.go` plus the
allocation its REST storage does in BeginCreate/BeginUpdate) and `repair_allocations`, the
periodic pass that frees reservations no Service holds. The allocation itself is
`apiserver.allocators.ServiceAllocator`; this module decides *when* it runs.

Invariants:
- A Service's clusterIP and nodePorts are reserved before it is written and are part of the
  create response. A failed write releases what it reserved (a failed update: not what the
  stored Service holds by then, which a concurrent update of it may have taken); a successful
  update releases only what the old Service held and the new one does not; a removed Service
  releases everything.
- An update that omits clusterIP/nodePorts keeps the allocated ones (patchAllocatedValues), and
  a type change drops what only the old type needed (dropTypeDependentFields), so
  `type: NodePort -> ClusterIP` alone is a valid update.
"""

from __future__ import annotations

import json

from podnet.api.errors import already_exists
from podnet.api.interface import Obj
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.allocators import ServiceAllocator
from podnet.apiserver.strategies.base import Backend, Context, Finish, Strategy

_NODE_PORT_TYPES = ("NodePort", "LoadBalancer")


def allocator(backend: Backend) -> ServiceAllocator:
    """The allocator over the registry's store (cheap: it keeps no state of its own)."""
    return ServiceAllocator(backend.store, backend.config)


class ServiceStrategy(Strategy):
    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        obj["status"] = {"loadBalancer": {}}

    def warnings_on_create(self, ctx: Context, obj: Obj) -> list[str]:
        return service_warnings(obj)

    def warnings_on_update(self, ctx: Context, new: Obj, old: Obj) -> list[str]:
        return service_warnings(new)

    async def begin_create(self, ctx: Context, obj: Obj) -> Finish:
        metadata = obj["metadata"]
        key = ctx.res.storage_key(metadata.get("namespace"), metadata["name"])
        # an existing name is AlreadyExists, not "IP already allocated" (the common case of
        # re-creating; a concurrent create still ends in AlreadyExists at the store)
        if await ctx.backend.store.get(key) is not None:
            raise already_exists(ctx.res.plural, metadata["name"], ctx.res.group)
        alloc = allocator(ctx.backend)
        reserved = await alloc.assign(obj, None)

        async def finish(success: bool) -> None:
            if not success:
                await alloc.release(reserved, str(metadata.get("uid", "")))

        return finish

    def prepare_for_update(self, ctx: Context, new: Obj, old: Obj) -> None:
        super().prepare_for_update(ctx, new, old)
        carry_allocated_values(new, old)
        drop_type_dependent_fields(new, old)

    async def begin_update(self, ctx: Context, new: Obj, old: Obj) -> Finish:
        alloc = allocator(ctx.backend)
        reserved = await alloc.assign(new, old)

        async def finish(success: bool) -> None:
            if success:
                await alloc.release_unused(old, new)
            elif reserved.ips or reserved.node_ports:
                metadata = new["metadata"]
                key = ctx.res.storage_key(metadata.get("namespace"), metadata["name"])
                kv = await ctx.backend.store.get(key)
                stored = json.loads(kv.value) if kv is not None else None
                await alloc.roll_back(reserved, str(metadata.get("uid", "")), stored)

        return finish

    async def after_removal(self, ctx: Context, obj: Obj) -> None:
        await allocator(ctx.backend).release_unused(obj, None)


async def repair_allocations(backend: Backend, min_age_seconds: float = 60.0) -> int:
    """Free ClusterIPs/NodePorts whose Service is gone (see `ServiceAllocator.repair`)."""
    listed = await backend.store.list(BY_PLURAL["services"].storage_prefix(None))
    services = [json.loads(kv.value) for kv in listed.items]
    return await allocator(backend).repair(services, min_age_seconds)


def carry_allocated_values(new: Obj, old: Obj) -> None:
    """A Service update that omits clusterIP/clusterIPs keeps the allocated ones (upstream
    patchAllocatedValues; nodePorts are carried by `ServiceAllocator.assign`)."""
    spec, old_spec = new.setdefault("spec", {}), old.get("spec", {})
    if spec.get("type", "ClusterIP") != "ExternalName" and old_spec.get("clusterIP"):
        if not spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIPs"):
            spec["clusterIPs"] = old_spec.get("clusterIPs") or [old_spec["clusterIP"]]


def drop_type_dependent_fields(new: Obj, old: Obj) -> None:
    """A type change clears what the old type needed and the user left as it was (upstream
    dropTypeDependentFields)."""
    spec, old_spec = new.setdefault("spec", {}), old.get("spec", {})
    new_type, old_type = spec.get("type", "ClusterIP"), old_spec.get("type", "ClusterIP")
    if old_type in _NODE_PORT_TYPES and new_type not in _NODE_PORT_TYPES:
        old_ports = [p.get("nodePort") for p in old_spec.get("ports") or [] if isinstance(p, dict)]
        new_ports = [p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict)]
        if new_ports == old_ports or not any(new_ports):
            for port in spec.get("ports") or []:
                if isinstance(port, dict):
                    port.pop("nodePort", None)
        if spec.get("externalTrafficPolicy") == old_spec.get("externalTrafficPolicy"):
            spec.pop("externalTrafficPolicy", None)
    if (
        old_type != "ExternalName"
        and new_type == "ExternalName"
        and spec.get("clusterIP") == old_spec.get("clusterIP")
    ):
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)


def service_warnings(svc: Obj) -> list[str]:
    """Upstream's GetWarningsForService, for the fields one type ignores."""
    spec = svc.get("spec")
    if not isinstance(spec, dict):
        return []
    warnings: list[str] = []
    svc_type = spec.get("type", "ClusterIP")
    if svc_type == "ExternalName" and spec.get("externalIPs"):
        warnings.append('spec.externalIPs is ignored when spec.type is "ExternalName"')
    if svc_type != "ExternalName" and spec.get("externalName"):
        warnings.append('spec.externalName is ignored when spec.type is not "ExternalName"')
    return warnings
