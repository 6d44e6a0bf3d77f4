"""A pod's containers as the kubelet reads them: the runtime's `ContainerConfig` and the probes.

Pure. What belongs here: `container_config` (command, args, env with `fieldRef`s resolved,
working dir, tty/stdin, mounts: one `cri.ContainerConfig`), the Service variables a pod's
containers get (`service_env`, upstream's docker-link style `<SVC>_SERVICE_HOST`,
`<SVC>_PORT_443_TCP_ADDR`, ...), and `container_probes`. Pod-level files (hosts, resolv.conf,
hostname) are `dnsconfig.py`'s; mounts are `volumes.py`'s.

Invariants:
- Env order is upstream's: the service variables first, then the container's `env` in order
  (a later entry with the same name wins).
- `valueFrom.fieldRef` resolves from the pod as the kubelet sees it (its podIP and hostIP
  included); other sources (secrets, config maps, resources) are not served by podnet and
  resolve to an empty string.
- Errors (a bad probe, an unusable volume) raise ValueError subclasses naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from podnet.agent.kubelet.cri import ContainerConfig
from podnet.agent.kubelet.probes import LIVENESS, READINESS, STARTUP, ProbeSpec
from podnet.agent.kubelet.volumes import container_mounts

MASTER_SERVICES = ("kubernetes",)  # default/<name>: every pod gets these, links or not


def service_env(
    services: Iterable[Mapping[str, Any]], namespace: str, enable_service_links: bool = True
) -> dict[str, str]:
    """The Service variables of a pod in `namespace` (upstream `getServiceEnvVarMap` +
    `envvars.FromServices`): the `kubernetes` Service of `default` always; with service links
    every Service of the pod's own namespace (one of its own named `kubernetes` wins). Only
    Services with a cluster IP count."""
    chosen: dict[str, Mapping[str, Any]] = {}
    for svc in services:
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        name = str(meta.get("name") or "")
        if spec.get("clusterIP") in (None, "", "None") or not spec.get("ports"):
            continue
        if meta.get("namespace") == "default" and name in MASTER_SERVICES:
            chosen.setdefault(name, svc)
        elif meta.get("namespace") == namespace and enable_service_links:
            chosen[name] = svc
    env: dict[str, str] = {}
    for name in sorted(chosen):
        env.update(_service_variables(name, chosen[name]["spec"]))
    return env


def _env_name(text: str) -> str:
    return text.upper().replace("-", "_")


def _service_variables(name: str, spec: Mapping[str, Any]) -> dict[str, str]:
    ip = str(spec["clusterIP"])
    prefix = _env_name(name)
    ports = [p for p in spec.get("ports") or () if isinstance(p, Mapping)]
    out = {f"{prefix}_SERVICE_HOST": ip, f"{prefix}_SERVICE_PORT": str(ports[0].get("port"))}
    for port in ports:
        if port.get("name"):
            out[f"{prefix}_SERVICE_PORT_{_env_name(str(port['name']))}"] = str(port.get("port"))
    host = f"[{ip}]" if ":" in ip else ip
    for index, port in enumerate(ports):  # docker links
        protocol = str(port.get("protocol") or "TCP")
        number = str(port.get("port"))
        url = f"{protocol.lower()}://{host}:{number}"
        if index == 0:
            out[f"{prefix}_PORT"] = url
        link = f"{prefix}_PORT_{number}_{protocol.upper()}"
        out[link] = url
        out[f"{link}_PROTO"] = protocol.lower()
        out[f"{link}_PORT"] = number
        out[f"{link}_ADDR"] = ip
    return out


def container_config(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    env_extra: Mapping[str, str],
    volumes_dir: str = "",
) -> ContainerConfig:
    """The runtime's config for one container of `pod`, its kubelet-filled volumes in
    `volumes_dir` (raises `VolumeError` for a mount the kubelet cannot serve)."""
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
        mounts=container_mounts(container, pod, volumes_dir),
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
