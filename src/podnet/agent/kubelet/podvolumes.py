"""The kubelet's volume manager for the volumes it fills: ConfigMaps, Secrets, the downward API
and projected ServiceAccount tokens, written under `<state dir>/pod-volumes/<pod uid>/<volume>/`.

What belongs here: `PodVolumes`, the I/O around the pure `volumes.py`: it reads what a pod's
volumes need through the node's API client (as the node: the Node authorizer lets it read only
what its pods reference, and request tokens only bound to its own pods), renders the files and
writes each volume with `atomicwriter.write_volume`. `PodSync` calls `ensure(pod)` on every
sync of a live pod (so at least every full resync, 10 s), `ready(pod)` before starting
containers and `forget(uid)` once the pod is gone; `env_objects` reads the ConfigMaps and
Secrets a container's env names, from the same cache, before the container starts.

Refresh (upstream's token manager and cache-based ConfigMap/Secret managers):
- a token is requested again once 80% of its lifetime has passed (or 24 h, whichever is
  first): `TokenRequest` with the source's audience and expirationSeconds, bound to the pod;
  the old token stays valid until it expires, so a reader never holds a dead token;
- ConfigMaps and Secrets are read again when the copy is older than `OBJECT_TTL`; a change
  reaches the files at the next sync after that. A missing one is asked for at every sync, so
  a pod waiting for it starts as soon as it exists.
A failed refresh leaves the volume as it was (containers keep running with the last good
files); a pod whose volumes were never written does not start its containers.

Files are 0644 in directories only root can enter (the state dir is 0700): upstream keeps
Secret volumes on a tmpfs, podnet keeps them in the private state dir.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podnet.agent.kubelet.atomicwriter import DATA_DIR, write_volume
from podnet.agent.kubelet.volumes import (
    Fetched,
    TokenNeed,
    filled_volumes,
    render_volume,
    volume_needs,
)
from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.meta import parse_rfc3339

OBJECT_TTL = 30.0  # seconds a ConfigMap/Secret copy is used before it is read again
REFRESH_AT = 0.8  # of a token's lifetime
MAX_TOKEN_AGE = 24 * 3600.0  # upstream refreshes a token at least daily


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    refresh_at: float  # Unix time


class PodVolumes:
    def __init__(
        self,
        api: Api,
        root: Path,
        *,
        clock: Callable[[], float] = time.time,
        object_ttl: float = OBJECT_TTL,
    ) -> None:
        self.api = api
        self.root = root
        self.clock = clock
        self.object_ttl = object_ttl
        self._objects: dict[tuple[str, str, str], tuple[float, Obj]] = {}
        self._tokens: dict[tuple[str, str, TokenNeed], IssuedToken] = {}

    def directory(self, uid: str) -> Path:
        return self.root / uid

    def ready(self, pod: Mapping[str, Any]) -> bool:
        """Every filled volume of the pod has been written at least once."""
        base = self.directory(_uid(pod))
        return all((base / str(v.get("name")) / DATA_DIR).is_symlink() for v in filled_volumes(pod))

    async def ensure(self, pod: Mapping[str, Any]) -> None:
        """Write (or refresh) every filled volume of the pod; raises `VolumeError` or
        `ApiError` saying what could not be read."""
        volumes = filled_volumes(pod)
        if not volumes:
            return
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        needs = volume_needs(pod)
        fetched = Fetched(
            configmaps={
                n: await self._object("configmaps", namespace, n) for n in needs.configmaps
            },
            secrets={n: await self._object("secrets", namespace, n) for n in needs.secrets},
            tokens={need: await self._token(pod, need) for need in sorted(needs.tokens)},
        )
        base = self.directory(_uid(pod))
        if not base.exists():
            base.mkdir(parents=True, mode=0o700)
        for volume in volumes:
            write_volume(base / str(volume.get("name")), render_volume(volume, pod, fetched))
        names = {str(v.get("name")) for v in volumes}
        for entry in base.iterdir():
            if entry.name not in names:  # a volume the pod no longer has (never in practice)
                shutil.rmtree(entry, ignore_errors=True)
        self._expire_objects()

    def forget(self, uid: str) -> None:
        """The pod is gone: its files and tokens go too."""
        shutil.rmtree(self.directory(uid), ignore_errors=True)
        for key in [k for k in self._tokens if k[0] == uid]:
            del self._tokens[key]

    def remove_orphans(self, known: Iterable[str]) -> list[str]:
        """Remove the directories of pods not in `known` (gone while the agent was down)."""
        keep = set(known)
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.root.iterdir():
                if entry.name not in keep:
                    self.forget(entry.name)
                    removed.append(entry.name)
        return removed

    async def env_objects(
        self, namespace: str, configmaps: Iterable[str], secrets: Iterable[str]
    ) -> tuple[dict[str, Obj | None], dict[str, Obj | None]]:
        """The ConfigMaps and Secrets a container's env reads (None: not found), from the same
        cache as the volumes' (upstream's ConfigMap and Secret managers serve both)."""
        found_configmaps = {n: await self._object("configmaps", namespace, n) for n in configmaps}
        found_secrets = {n: await self._object("secrets", namespace, n) for n in secrets}
        return found_configmaps, found_secrets

    async def _object(self, resource: str, namespace: str, name: str) -> Obj | None:
        key = (resource, namespace, name)
        cached = self._objects.get(key)
        now = self.clock()
        if cached is not None and now - cached[0] < self.object_ttl:
            return cached[1]
        try:
            obj: Obj = await self.api.get(resource, name, namespace)
        except ApiError as exc:
            if exc.code != 404:
                raise
            return None  # not cached: a pod waiting for it starts as soon as it exists
        self._objects[key] = (now, obj)
        return obj

    def _expire_objects(self) -> None:
        now = self.clock()
        for key in [k for k, (at, _) in self._objects.items() if now - at >= self.object_ttl]:
            del self._objects[key]

    async def _token(self, pod: Mapping[str, Any], need: TokenNeed) -> str:
        meta = pod.get("metadata") or {}
        account = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
        key = (_uid(pod), account, need)
        cached = self._tokens.get(key)
        if cached is not None and self.clock() < cached.refresh_at:
            return cached.token
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": account},
            "spec": {
                "audiences": [need.audience] if need.audience else [],
                "expirationSeconds": need.expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": str(meta.get("name")),
                    "uid": str(meta.get("uid")),
                },
            },
        }
        answer = await self.api.create(
            "serviceaccounts", request, str(meta.get("namespace")), subresource="token"
        )
        status = answer.get("status") or {}
        token = str(status.get("token") or "")
        expires = parse_rfc3339(status.get("expirationTimestamp"))
        if not token or expires is None:
            raise ApiError(500, "InternalError", "the TokenRequest answer has no token or expiry")
        lifetime = int((answer.get("spec") or {}).get("expirationSeconds") or 0)
        lifetime = lifetime or need.expiration_seconds
        issued_at = expires.timestamp() - lifetime
        refresh_at = issued_at + min(REFRESH_AT * lifetime, MAX_TOKEN_AGE)
        self._tokens[key] = IssuedToken(token, refresh_at)
        return token


def _uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")
