"""The root CA publisher (upstream's `rootcacertpublisher` controller): every namespace that is
not terminating holds the ConfigMap `kube-root-ca.crt` with the cluster CA under `ca.crt`, which
the `kube-api-access-*` volume of every pod projects. A deleted one is recreated and an edited
one put back, at once.

What belongs here: `root_ca_configmap` (the object; namespace creation writes it synchronously
too, so a pod created right after its namespace finds it), `plan_root_ca` (pure: which
namespaces need it created or rewritten) and `run_root_ca_publisher`, which keeps a reflected
copy of the namespaces and of these ConfigMaps and applies the plan after every change. Every
server runs it: the writes are idempotent and a conflict is settled by the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.reflector import reflect
from podnet.retry import Backoff, Retry, sleep_or_stop

log = logging.getLogger(__name__)

NAME = "kube-root-ca.crt"
DESCRIPTION_ANNOTATION = "kubernetes.io/description"
DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
    "endpoints such as the internal service IP or kubernetes.default.svc. No other usage is "
    "guaranteed across distributions of Kubernetes clusters."
)
RETRY = Backoff(0.5, 30.0)


def root_ca_configmap(ca_pem: bytes) -> Obj:
    return {
        "metadata": {"name": NAME, "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION}},
        "data": {"ca.crt": ca_pem.decode()},
    }


@dataclass(frozen=True, slots=True)
class RootCaPlan:
    create: tuple[str, ...]  # namespaces without the ConfigMap
    rewrite: tuple[str, ...]  # namespaces whose ConfigMap does not hold the CA


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def plan_root_ca(
    namespaces: Mapping[str, Obj], configmaps: Mapping[str, Obj], ca_pem: bytes
) -> RootCaPlan:
    """`namespaces` by name; `configmaps` (the `kube-root-ca.crt` ones) by namespace."""
    wanted = root_ca_configmap(ca_pem)
    create, rewrite = [], []
    for name in sorted(namespaces):
        if _meta(namespaces[name]).get("deletionTimestamp"):
            continue
        current = configmaps.get(name)
        if current is None:
            create.append(name)
        elif current.get("data") != wanted["data"] or (
            (_meta(current).get("annotations") or {}).get(DESCRIPTION_ANNOTATION) != DESCRIPTION
        ):
            rewrite.append(name)
    return RootCaPlan(tuple(create), tuple(rewrite))


class _Copy:
    """One reflected resource, keyed by name (namespaces) or namespace (the ConfigMaps)."""

    def __init__(self, key: str, changed: asyncio.Event) -> None:
        self.key = key
        self.items: dict[str, Obj] = {}
        self.synced = False
        self.changed = changed

    def replace(self, items: list[Obj]) -> None:
        self.items = {str(_meta(o).get(self.key)): o for o in items}
        self.synced = True
        self.changed.set()

    def apply(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            self.items.pop(str(_meta(obj).get(self.key)), None)
        else:
            self.items[str(_meta(obj).get(self.key))] = obj
        self.changed.set()


async def _apply(api: Api, plan: RootCaPlan, configmaps: Mapping[str, Obj], ca_pem: bytes) -> None:
    for namespace in plan.create:
        try:
            await api.create("configmaps", root_ca_configmap(ca_pem), namespace)
            log.info("published %s in namespace %s", NAME, namespace)
        except ApiError as exc:
            if exc.code not in (409, 403, 404):  # exists / namespace terminating / gone
                raise
    for namespace in plan.rewrite:
        current = configmaps[namespace]
        wanted = root_ca_configmap(ca_pem)
        meta = dict(_meta(current))
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            **wanted["metadata"]["annotations"],
        }
        try:
            await api.update(
                "configmaps", {**current, "metadata": meta, "data": wanted["data"]}, namespace
            )
            log.info("put back the CA in %s of namespace %s", NAME, namespace)
        except ApiError as exc:
            if exc.code not in (409, 404):  # changed again or deleted: the next pass sees it
                raise


async def run_root_ca_publisher(api: Api, ca_pem: bytes, stop: asyncio.Event) -> None:
    changed = asyncio.Event()
    namespaces = _Copy("name", changed)
    configmaps = _Copy("namespace", changed)
    watches = [
        asyncio.create_task(
            reflect(api, "namespaces", replace=namespaces.replace, apply=namespaces.apply,
                    stop=stop, who="root-ca-publisher")
        ),
        asyncio.create_task(
            reflect(api, "configmaps", replace=configmaps.replace, apply=configmaps.apply,
                    stop=stop, field_selector=f"metadata.name={NAME}", who="root-ca-publisher")
        ),
    ]  # fmt: skip
    retry = Retry(RETRY)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            waker = asyncio.ensure_future(changed.wait())
            await asyncio.wait({waker, stopping}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            if stop.is_set():
                return
            changed.clear()
            if not (namespaces.synced and configmaps.synced):
                continue
            plan = plan_root_ca(namespaces.items, configmaps.items, ca_pem)
            try:
                await _apply(api, plan, configmaps.items, ca_pem)
                retry.reset()
            except Exception as exc:
                delay = retry.next()
                log.warning("publishing %s failed (%s); retrying in %.1fs", NAME, exc, delay)
                await sleep_or_stop(stop, delay)
                changed.set()
    finally:
        stopping.cancel()
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
