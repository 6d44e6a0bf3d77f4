"""What exists in every cluster from the start, and the namespace finalizer loop.

What belongs here: `bootstrap` (idempotent, run at every server start): the namespaces default,
kube-system, kube-public and kube-node-lease, each with its `default` ServiceAccount and `kube-
root-ca.crt` ConfigMap; the `default/kubernetes` Service (the first service IP, port 443 "https"
-> the server's secure port) with Endpoints and an EndpointSlice pointing at the advertise
address; the default RBAC policy (`auth.bootstrappolicy`). And the server's two small loops:
`run_namespace_finalizer`, which empties terminating namespaces, and `run_allocation_repair`,
which frees leaked Service IPs/ports.

Invariants: bootstrap never overwrites user changes except the `kubernetes` Endpoints/slice
addresses, to which it only *adds* this server's address (several servers may share a store;
`endpointreconciler` then keeps them to the servers alive); running it twice, or from two
servers at once, leaves the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth.bootstrappolicy import ensure_policy
from podnet.apiserver.endpointreconciler import (
    endpoint_addresses,
    slice_addresses,
    slice_with_addresses,
    with_addresses,
)
from podnet.apiserver.registry import Obj, Registry
from podnet.apiserver.strategies.namespaces import finalize_namespaces, populate_namespace
from podnet.apiserver.strategies.services import repair_allocations
from podnet.retry import Backoff, Retry

log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVICE_NAME = "kubernetes"
FINALIZER_RETRY = Backoff(0.5, 30.0)  # a failed namespace finalizer pass
NAMESPACES = BY_PLURAL["namespaces"]
SERVICES = BY_PLURAL["services"]


async def bootstrap(registry: Registry, advertise_ip: str, secure_port: int) -> None:
    for ns in SYSTEM_NAMESPACES:
        try:
            await registry.create(NAMESPACES, None, {"metadata": {"name": ns}})
        except ApiError as exc:
            if exc.code != 409:
                raise
            await populate_namespace(registry, ns)

    service: Obj = {
        "metadata": {
            "name": SERVICE_NAME,
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": registry.config.kubernetes_service_ip,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": secure_port}],
            "sessionAffinity": "None",
        },
    }
    for attempt in range(50):
        try:
            await registry.create(SERVICES, "default", service)
            break
        except ApiError as exc:
            # servers sharing a store start together: another one's create of the Service
            # (409), or its allocation of the kubernetes IP just before ours (422 "already
            # allocated"), can beat ours; once its create is stored, all this server needs is
            # there (between its allocation and its store write, wait a moment)
            if exc.code not in (409, 422) or attempt == 49:
                raise
            if await _service_exists(registry):
                break
            await asyncio.sleep(0.1)

    def add_endpoint(current: Obj | None) -> Obj:
        have = endpoint_addresses(current)
        return with_addresses(current, dict.fromkeys([*have, advertise_ip]), secure_port)

    def add_slice_endpoint(current: Obj | None) -> Obj:
        have = slice_addresses(current)
        return slice_with_addresses(current, dict.fromkeys([*have, advertise_ip]), secure_port)

    await _ensure(registry, "endpoints", add_endpoint)
    await _ensure(registry, "endpointslices", add_slice_endpoint)
    await ensure_policy(registry)


async def _service_exists(registry: Registry) -> bool:
    try:
        await registry.get(SERVICES, "default", SERVICE_NAME)
    except ApiError as exc:
        if exc.code == 404:
            return False
        raise
    return True


async def _ensure(registry: Registry, plural: str, mutate: Callable[[Obj | None], Obj]) -> None:
    res = BY_PLURAL[plural]
    for _ in range(16):
        try:
            current = await registry.get(res, "default", SERVICE_NAME)
        except ApiError as exc:
            if exc.code != 404:
                raise
            try:
                await registry.create(res, "default", mutate(None))
                return
            except ApiError as create_error:
                if create_error.code == 409:
                    continue
                raise
        wanted = mutate(dict(current))
        try:
            await registry.update(res, "default", SERVICE_NAME, wanted)
            return
        except ApiError as exc:
            if exc.code != 409:
                raise
    log.warning(
        "could not record this server in default/%s %s (too many conflicts)", SERVICE_NAME, plural
    )


async def run_allocation_repair(
    registry: Registry, stop: asyncio.Event, interval_seconds: float = 300.0
) -> None:
    """Free leaked Service IPs/ports at start and then every `interval_seconds`."""
    while not stop.is_set():
        try:
            freed = await repair_allocations(registry)
            if freed:
                log.info("released %d service IP/port reservation(s) no Service holds", freed)
        except Exception:
            log.exception("allocation repair failed; retrying later")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_seconds)


async def run_namespace_finalizer(
    registry: Registry, stop: asyncio.Event, poll_seconds: float = 5.0
) -> None:
    """Empty and remove terminating namespaces; woken at once by deletes in this process."""
    wake = asyncio.Event()
    registry.hooks.namespace_terminating.append(wake.set)
    busy_interval = 0.5
    retry = Retry(FINALIZER_RETRY)
    pending = True  # look once at start: a namespace may have been left terminating
    while not stop.is_set():
        timeout = poll_seconds
        if pending:
            try:
                pending = await finalize_namespaces(registry)
                retry.reset()
                timeout = busy_interval if pending else poll_seconds
            except Exception:
                timeout = retry.next()
                log.exception("namespace finalizer pass failed; retrying in %.1fs", timeout)
                pending = True
        waiter = asyncio.ensure_future(wake.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        wake.clear()
        pending = True
