"""Volumes a container mounts: `hostPath`, the one volume type podnet's kubelet serves.

Pure: `host_path_mounts(container, pod)` lists the container's `volumeMounts` that name a
`hostPath` volume as (host path, path in the container, read-only) for the runtime to
bind-mount, in the order written. It is how kubeadm's static pods reach host files (a
kubeconfig, a CA) and how the lab hands the `coredns` pods their API credentials until
ServiceAccount tokens exist.

Rules (upstream's): the host path must be absolute; `type` may be "" (no check), `Directory`
or `File` (the runtime's bind fails with the path if it is missing); `readOnly` comes from
the mount; `subPath` and the create types (`DirectoryOrCreate`, `FileOrCreate`, ...) are
refused with a message naming the volume, never guessed at. Mounts of other volume types are
left out (podnet serves none of them yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUPPORTED_TYPES = ("", "Directory", "File")


class VolumeError(ValueError):
    """A volume cannot be mounted as written; the message says which and why."""


@dataclass(frozen=True, slots=True)
class HostMount:
    source: str  # absolute path on the node
    target: str  # absolute path in the container
    read_only: bool


def host_path_mounts(container: Mapping[str, Any], pod: Mapping[str, Any]) -> tuple[HostMount, ...]:
    volumes = {
        str(v.get("name")): v.get("hostPath")
        for v in (pod.get("spec") or {}).get("volumes") or ()
        if isinstance(v, Mapping)
    }
    mounts = []
    for mount in container.get("volumeMounts") or ():
        name = str(mount.get("name"))
        host_path = volumes.get(name)
        if not isinstance(host_path, Mapping):
            continue
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
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise VolumeError(f"{where}: subPath is not supported; mount the file itself")
        target = str(mount.get("mountPath") or "")
        if not target.startswith("/"):
            raise VolumeError(f"{where}: mountPath {target!r} must be absolute")
        mounts.append(HostMount(source, target, bool(mount.get("readOnly"))))
    return tuple(mounts)
