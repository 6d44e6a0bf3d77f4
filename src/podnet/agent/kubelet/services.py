"""The Services the kubelet knows, for its pods' environment variables (upstream's service
lister in the kubelet).

What belongs here: `ServiceLister`, the local copy `api.reflector.reflect` keeps of every
Service (a node may read them all), with `synced` set once the first list is in. Containers
start only after that (upstream: "services have not yet been read at least once, cannot
construct envvars"), so no pod ever starts without its `KUBERNETES_SERVICE_HOST`.

Of each Service it keeps what `podspec.service_env` reads (`slim_service`: name, namespace,
cluster IP, ports' name, port and protocol; a whole Service was ~6.5 KB decoded, 6.5 MB at
1,000 Services), and the first list comes in pages (`reflector.PAGE_SIZE`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from podnet.agent.kubelet.podspec import MASTER_SERVICES, service_env
from podnet.api.interface import Api, Obj
from podnet.api.reflector import PAGE_SIZE, reflect


def slim_service(svc: Mapping[str, Any]) -> Obj:
    """What the lister keeps of a Service: the fields `service_env` reads, nothing else."""
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    ports = spec.get("ports")
    kept: Obj = {
        "metadata": {k: meta[k] for k in ("name", "namespace") if k in meta},
        "spec": {k: spec[k] for k in ("clusterIP",) if k in spec},
    }
    if ports is not None:
        kept["spec"]["ports"] = [
            {k: p[k] for k in ("name", "port", "protocol") if k in p} if isinstance(p, Mapping)
            else p
            for p in ports
        ]  # fmt: skip
    return kept


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
            self.by_namespace.setdefault(namespace, {})[name] = slim_service(svc)

    def env_for(self, namespace: str, enable_service_links: bool) -> dict[str, str]:
        """The Service variables of a pod in `namespace`."""
        default = self.by_namespace.get("default", {})
        masters = [default[n] for n in MASTER_SERVICES if n in default]
        own = list(self.by_namespace.get(namespace, {}).values())
        return service_env([*masters, *own], namespace, enable_service_links)

    async def run(self, api: Api, stop: asyncio.Event) -> None:
        await reflect(
            api, "services", replace=self.replace, apply=self.apply, stop=stop, who="kubelet",
            page_size=PAGE_SIZE, transform=slim_service,
        )  # fmt: skip
