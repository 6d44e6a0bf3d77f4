"""The Services the kubelet knows, for its pods' environment variables (upstream's service
lister in the kubelet).

What belongs here: `ServiceLister`, the local copy `api.reflector.reflect` keeps of every
Service (a node may read them all), with `synced` set once the first list is in. Containers
start only after that (upstream: "services have not yet been read at least once, cannot
construct envvars"), so no pod ever starts without its `KUBERNETES_SERVICE_HOST`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from podnet.agent.kubelet.podspec import MASTER_SERVICES, service_env
from podnet.api.interface import Api, Obj
from podnet.api.reflector import reflect


def _key(svc: Mapping[str, Any]) -> tuple[str, str]:
    meta = svc.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class ServiceLister:
    def __init__(self, on_synced: Callable[[], None] = lambda: None) -> None:
        self.by_namespace: dict[str, dict[str, Obj]] = {}
        self.synced = asyncio.Event()
        self.on_synced = on_synced  # called after every full list

    def replace(self, items: list[Obj]) -> None:
        self.by_namespace = {}
        for svc in items:
            self.apply("ADDED", svc)
        self.synced.set()
        self.on_synced()

    def apply(self, kind: str, svc: Obj) -> None:
        namespace, name = _key(svc)
        if kind == "DELETED":
            self.by_namespace.get(namespace, {}).pop(name, None)
        else:
            self.by_namespace.setdefault(namespace, {})[name] = svc

    def env_for(self, namespace: str, enable_service_links: bool) -> dict[str, str]:
        """The Service variables of a pod in `namespace`."""
        default = self.by_namespace.get("default", {})
        masters = [default[n] for n in MASTER_SERVICES if n in default]
        own = list(self.by_namespace.get(namespace, {}).values())
        return service_env([*masters, *own], namespace, enable_service_links)

    async def run(self, api: Api, stop: asyncio.Event) -> None:
        await reflect(
            api, "services", replace=self.replace, apply=self.apply, stop=stop, who="kubelet"
        )
