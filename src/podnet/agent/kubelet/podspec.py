"""A pod's containers as the kubelet reads them: the runtime's `ContainerConfig` and the probes.

Pure. What belongs here: `container_config` (command, args, env with `fieldRef`s resolved,
working dir, tty/stdin, hostPath mounts: one `cri.ContainerConfig`), the service variables
every container gets (`service_env`), and `container_probes`. Pod-level files (hosts,
resolv.conf, hostname) are `dnsconfig.py`'s; mounts are `volumes.py`'s.

Invariants:
- Env order is upstream's: the service variables first, then the container's `env` in order
  (a later entry with the same name wins).
- `valueFrom.fieldRef` resolves from the pod as the kubelet sees it (its podIP and hostIP
  included); other sources (secrets, config maps, resources) are not served by podnet and
  resolve to an empty string.
- Errors (a bad probe, an unusable volume) raise ValueError subclasses naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet.agent.kubelet.cri import ContainerConfig
from podnet.agent.kubelet.probes import LIVENESS, READINESS, STARTUP, ProbeSpec
from podnet.agent.kubelet.volumes import host_path_mounts
from podnet.config import ClusterConfig


def service_env(cluster: ClusterConfig) -> dict[str, str]:
    """The `kubernetes` Service's variables, as every container gets them."""
    ip = cluster.kubernetes_service_ip
    return {
        "KUBERNETES_SERVICE_HOST": ip,
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        "KUBERNETES_PORT": f"tcp://{ip}:443",
    }


def container_config(
    container: Mapping[str, Any], pod: Mapping[str, Any], env_extra: Mapping[str, str]
) -> ContainerConfig:
    """The runtime's config for one container of `pod` (raises `VolumeError` for a mount the
    kubelet cannot serve)."""
    return ContainerConfig(
        name=str(container["name"]),
        image=str(container.get("image") or ""),
        command=tuple(str(a) for a in container.get("command") or ()),
        args=tuple(str(a) for a in container.get("args") or ()),
        env=container_env(container, pod, env_extra),
        working_dir=container.get("workingDir") or None,
        tty=bool(container.get("tty")),
        stdin=bool(container.get("stdin")),
        stdin_once=bool(container.get("stdinOnce")),
        mounts=host_path_mounts(container, pod),
    )


PROBE_FIELDS = {READINESS: "readinessProbe", LIVENESS: "livenessProbe", STARTUP: "startupProbe"}


def container_probes(container: Mapping[str, Any]) -> dict[str, ProbeSpec | None]:
    """The container's readiness, liveness and startup probes (None where absent); a probe
    that cannot run raises ValueError naming the container and the field."""
    probes: dict[str, ProbeSpec | None] = {}
    for kind, field in PROBE_FIELDS.items():
        try:
            probes[kind] = ProbeSpec.from_spec(container.get(field))
        except ValueError as exc:
            raise ValueError(f"container {container.get('name')!r}: {field}: {exc}") from None
    return probes


def container_env(
    container: Mapping[str, Any], pod: Mapping[str, Any], env_extra: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """Service variables first (like upstream), then the container's env in order."""
    out: dict[str, str] = dict(env_extra)
    for item in container.get("env") or ():
        name = str(item.get("name", ""))
        if "value" in item:
            out[name] = str(item.get("value") or "")
        else:
            ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            out[name] = _field_ref(pod, ref) if ref else ""
    return tuple(out.items())


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(source) or {}).get(path[len(prefix) + 2 : -2], ""))
    return ""
