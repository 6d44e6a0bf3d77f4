"""Volumes a container mounts, and the files of the volumes the kubelet fills itself. Pure.

Two kinds of volume reach a container:
- `hostPath`: a path of the node, bind-mounted as written (how kubeadm's static pods reach host
  files). The host path must be absolute; `type` may be "" (no check), `Directory` or `File`
  (the runtime's bind fails with the path if it is missing); `readOnly` comes from the mount;
  `subPath` and the create types (`DirectoryOrCreate`, `FileOrCreate`, ...) are refused.
- kubelet-filled volumes (`FILLED_KINDS`: `projected`, `configMap`, `secret`, `downwardAPI`):
  the kubelet writes their files into `<volumes dir>/<volume name>/` (`podvolumes.py`, with
  `atomicwriter.py`) and the directory is bind-mounted, always read-only as upstream mounts
  them; a `subPath` mounts one entry of it (and, as upstream, does not see later updates).
Mounts of other volume types are left out (podnet's kubelet serves none of them yet).

`volume_needs(pod)` says what the filled volumes read from the API (ConfigMaps, Secrets,
ServiceAccount tokens); `render_volume` turns one volume plus what was read into its files, by
upstream's rules (`pkg/volume/{projected,configmap,secret,downwardapi}`): every key, or the
listed `items` (a missing key or object is an error unless `optional`); file modes from the
item, else `defaultMode` (0644); downward API `fieldRef`s of the pod's metadata, labels and
annotations as `key="value"` lines; a token source becomes the token a TokenRequest returned.
Every error is a `VolumeError` naming the volume.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

SUPPORTED_TYPES = ("", "Directory", "File")
FILLED_KINDS = ("projected", "configMap", "secret", "downwardAPI")
DEFAULT_MODE = 0o644
DEFAULT_TOKEN_EXPIRATION = 3600  # upstream's default for a serviceAccountToken source


class VolumeError(ValueError):
    """A volume cannot be mounted as written; the message says which and why."""


@dataclass(frozen=True, slots=True)
class HostMount:
    source: str  # absolute path on the node
    target: str  # absolute path in the container
    read_only: bool


@dataclass(frozen=True, slots=True)
class VolumeFile:
    data: bytes
    mode: int


@dataclass(frozen=True, slots=True, order=True)
class TokenNeed:
    """One projected ServiceAccount token: the TokenRequest the kubelet makes for it (bound to
    the pod, as the pod's ServiceAccount)."""

    audience: str  # "" : the API server's own audiences
    expiration_seconds: int


@dataclass(frozen=True, slots=True)
class VolumeNeeds:
    configmaps: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    tokens: frozenset[TokenNeed] = frozenset()


@dataclass(frozen=True, slots=True)
class Fetched:
    """What the kubelet read for a pod's volumes: objects by name (None: not found) and
    tokens by need."""

    configmaps: Mapping[str, Mapping[str, Any] | None]
    secrets: Mapping[str, Mapping[str, Any] | None]
    tokens: Mapping[TokenNeed, str]


def _volumes(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    return [v for v in spec.get("volumes") or () if isinstance(v, Mapping)]


def filled_kind(volume: Mapping[str, Any]) -> str | None:
    return next((k for k in FILLED_KINDS if k in volume), None)


def filled_volumes(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pod's volumes the kubelet fills, in spec order."""
    return [v for v in _volumes(pod) if filled_kind(v) is not None]


def container_mounts(
    container: Mapping[str, Any], pod: Mapping[str, Any], volumes_dir: str
) -> tuple[HostMount, ...]:
    """The container's bind mounts, in the order written: hostPath volumes at their host path,
    filled volumes from `volumes_dir/<volume>` (read-only)."""
    volumes = {str(v.get("name")): v for v in _volumes(pod)}
    mounts = []
    for mount in container.get("volumeMounts") or ():
        name = str(mount.get("name"))
        volume = volumes.get(name)
        if volume is None:
            continue
        target = str(mount.get("mountPath") or "")
        sub_path = mount.get("subPath") or mount.get("subPathExpr")
        host_path = volume.get("hostPath")
        if isinstance(host_path, Mapping):
            source = _host_path_source(name, host_path)
            if sub_path:
                raise VolumeError(
                    f"volume {name!r} (hostPath {source!r}): subPath is not supported; mount "
                    "the file itself"
                )
            read_only = bool(mount.get("readOnly"))
        elif filled_kind(volume) is not None:
            source = f"{volumes_dir}/{name}"
            if mount.get("subPathExpr"):
                raise VolumeError(f"volume {name!r}: subPathExpr is not supported; use subPath")
            if sub_path:
                source += "/" + _relative(name, "subPath", str(sub_path))
            read_only = True
        else:
            continue
        if not target.startswith("/"):
            raise VolumeError(f"volume {name!r}: mountPath {target!r} must be absolute")
        mounts.append(HostMount(source, target, read_only))
    return tuple(mounts)


def _host_path_source(name: str, host_path: Mapping[str, Any]) -> str:
    source = str(host_path.get("path") or "")
    kind = str(host_path.get("type") or "")
    where = f"volume {name!r} (hostPath {source!r})"
    if not source.startswith("/"):
        raise VolumeError(f"{where}: the host path must be absolute")
    if kind not in SUPPORTED_TYPES:
        raise VolumeError(
            f"{where}: type {kind!r} is not supported by podnet's kubelet; use one of "
            f"{', '.join(repr(t) for t in SUPPORTED_TYPES)} and create the path first"
        )
    return source


def inside_volume(path: str) -> bool:
    """Relative, no `..` element, not starting with `..` (upstream's `validatePath`)."""
    return bool(path) and not path.startswith(("/", "..")) and ".." not in PurePosixPath(path).parts


def _relative(volume: str, what: str, path: str) -> str:
    if not inside_volume(path):
        raise VolumeError(
            f"volume {volume!r}: {what} {path!r} must be a relative path without '..'"
        )
    return PurePosixPath(path).as_posix()


def _sources(volume: Mapping[str, Any]) -> tuple[list[tuple[str, Mapping[str, Any]]], int]:
    """A filled volume as projected sources [(kind, source)] and its default mode."""
    name = str(volume.get("name"))
    kind = filled_kind(volume)
    body = volume.get(kind) if kind else None
    if not isinstance(body, Mapping):
        raise VolumeError(f"volume {name!r}: {kind} must be an object")
    mode = _mode(name, body.get("defaultMode"), DEFAULT_MODE)
    if kind == "projected":
        sources = []
        for source in body.get("sources") or ():
            if not isinstance(source, Mapping):
                raise VolumeError(f"volume {name!r}: every projected source must be an object")
            found = [k for k in ("secret", "configMap", "downwardAPI", "serviceAccountToken")
                     if k in source]  # fmt: skip
            if len(found) != 1 or not isinstance(source[found[0]], Mapping):
                raise VolumeError(
                    f"volume {name!r}: a projected source needs exactly one of secret, "
                    f"configMap, downwardAPI, serviceAccountToken (podnet serves no other)"
                )
            sources.append((found[0], source[found[0]]))
        return sources, mode
    if kind == "secret":  # a secret volume names its Secret `secretName`
        return [("secret", {**body, "name": body.get("secretName")})], mode
    return [(str(kind), body)], mode


def _mode(volume: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise VolumeError(f"volume {volume!r}: mode {value!r} must be an integer")
    if not 0 <= value <= 0o777:
        raise VolumeError(f"volume {volume!r}: mode {value:#o} must be between 0 and 0o777")
    return value


def volume_needs(pod: Mapping[str, Any]) -> VolumeNeeds:
    """What the pod's filled volumes read from the API."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    tokens: set[TokenNeed] = set()
    for volume in filled_volumes(pod):
        sources, _ = _sources(volume)
        for kind, source in sources:
            if kind == "configMap":
                configmaps.add(_object_name(volume, kind, source))
            elif kind == "secret":
                secrets.add(_object_name(volume, kind, source))
            elif kind == "serviceAccountToken":
                tokens.add(_token_need(volume, source))
    return VolumeNeeds(frozenset(configmaps), frozenset(secrets), frozenset(tokens))


def _object_name(volume: Mapping[str, Any], kind: str, source: Mapping[str, Any]) -> str:
    name = source.get("name")
    if not isinstance(name, str) or not name:
        raise VolumeError(f"volume {volume.get('name')!r}: the {kind} source needs a name")
    return name


def _token_need(volume: Mapping[str, Any], source: Mapping[str, Any]) -> TokenNeed:
    seconds = source.get("expirationSeconds", DEFAULT_TOKEN_EXPIRATION)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 600:
        raise VolumeError(
            f"volume {volume.get('name')!r}: serviceAccountToken expirationSeconds {seconds!r} "
            "must be at least 600"
        )
    return TokenNeed(str(source.get("audience") or ""), seconds)


def render_volume(
    volume: Mapping[str, Any], pod: Mapping[str, Any], fetched: Fetched
) -> dict[str, VolumeFile]:
    """The files of one filled volume: {relative path: file}."""
    name = str(volume.get("name"))
    sources, default_mode = _sources(volume)
    files: dict[str, VolumeFile] = {}
    for kind, source in sources:
        if kind == "configMap":
            obj = fetched.configmaps.get(_object_name(volume, kind, source))
            files.update(_key_files(name, kind, source, obj, default_mode))
        elif kind == "secret":
            obj = fetched.secrets.get(_object_name(volume, kind, source))
            files.update(_key_files(name, kind, source, obj, default_mode))
        elif kind == "downwardAPI":
            files.update(_downward_files(name, source, pod, default_mode))
        else:
            path = _relative(name, "path", str(source.get("path") or ""))
            token = fetched.tokens.get(_token_need(volume, source))
            if token is None:
                raise VolumeError(f"volume {name!r}: no token was issued for {path!r}")
            files[path] = VolumeFile(token.encode(), default_mode)
    return files


def _key_files(
    volume: str,
    kind: str,
    source: Mapping[str, Any],
    obj: Mapping[str, Any] | None,
    default_mode: int,
) -> dict[str, VolumeFile]:
    """The files of a ConfigMap or Secret source (upstream `MakePayload`)."""
    object_name = source.get("name")
    optional = bool(source.get("optional"))
    if obj is None:
        if optional:
            return {}
        noun = "configmap" if kind == "configMap" else "secret"
        raise VolumeError(f'volume {volume!r}: {noun} "{object_name}" not found')
    values = _values(volume, kind, obj)
    items = source.get("items")
    if not items:
        return {
            _relative(volume, "key", key): VolumeFile(data, default_mode)
            for key, data in values.items()
        }
    files = {}
    for item in items:
        if not isinstance(item, Mapping):
            raise VolumeError(f"volume {volume!r}: every item must be an object")
        key = str(item.get("key") or "")
        if key not in values:
            if optional:
                continue
            noun = "configmap" if kind == "configMap" else "secret"
            raise VolumeError(
                f'volume {volume!r}: {noun} "{object_name}" has no key "{key}" (listed in items)'
            )
        path = _relative(volume, "path", str(item.get("path") or ""))
        files[path] = VolumeFile(values[key], _mode(volume, item.get("mode"), default_mode))
    return files


def _values(volume: str, kind: str, obj: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's data and binaryData, or a Secret's data (base64; the server folds
    stringData into it), as bytes."""
    out: dict[str, bytes] = {}
    if kind == "configMap":
        out.update({str(k): str(v).encode() for k, v in (obj.get("data") or {}).items()})
    field = "binaryData" if kind == "configMap" else "data"
    for key, value in (obj.get(field) or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise VolumeError(
                f"volume {volume!r}: {field} key {key!r} is not valid base64"
            ) from None
    return out


VOLUME_FIELDS = ("metadata.name", "metadata.namespace", "metadata.uid")


def _downward_files(
    volume: str, source: Mapping[str, Any], pod: Mapping[str, Any], default_mode: int
) -> dict[str, VolumeFile]:
    files = {}
    meta = pod.get("metadata") or {}
    for item in source.get("items") or ():
        if not isinstance(item, Mapping):
            raise VolumeError(f"volume {volume!r}: every downwardAPI item must be an object")
        path = _relative(volume, "path", str(item.get("path") or ""))
        field = (item.get("fieldRef") or {}).get("fieldPath")
        if not isinstance(field, str):
            raise VolumeError(
                f"volume {volume!r}: item {path!r} needs fieldRef.fieldPath (podnet's kubelet "
                "does not serve resourceFieldRef)"
            )
        text = downward_value(meta, field)
        if text is None:
            raise VolumeError(
                f"volume {volume!r}: item {path!r}: fieldPath {field!r} is not supported in a "
                f"volume; use {', '.join(VOLUME_FIELDS)}, metadata.labels, metadata.annotations "
                "or one label or annotation"
            )
        files[path] = VolumeFile(text.encode(), _mode(volume, item.get("mode"), default_mode))
    return files


def downward_value(meta: Mapping[str, Any], field: str) -> str | None:
    """A downward API volume file's content (None: not a volume field)."""
    if field in VOLUME_FIELDS:
        return str(meta.get(field.removeprefix("metadata.")) or "")
    for whole in ("labels", "annotations"):
        values = meta.get(whole) or {}
        if field == f"metadata.{whole}":
            return format_map(values)
        prefix = f"metadata.{whole}['"
        if field.startswith(prefix) and field.endswith("']"):
            return str(values.get(field[len(prefix) : -2], ""))
    return None


def format_map(values: Mapping[str, Any]) -> str:
    """upstream `fieldpath.FormatMap`: `key="value"` lines, sorted by key, Go-quoted."""
    return "\n".join(
        f"{key}={json.dumps(str(values[key]), ensure_ascii=False)}" for key in sorted(values)
    )
