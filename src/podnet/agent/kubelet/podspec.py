"""A pod's containers as the kubelet reads them: the runtime's `ContainerConfig` and the probes.

Pure. What belongs here: `container_config` (command, args, env with its sources resolved,
working dir, tty/stdin, mounts: one `cri.ContainerConfig`), `env_needs` (the ConfigMaps and
Secrets a container's env reads, which the kubelet fetches into `EnvSources`), the Service
variables a pod's
containers get (`service_env`, upstream's docker-link style `<SVC>_SERVICE_HOST`,
`<SVC>_PORT_443_TCP_ADDR`, ...), and `container_probes`. Pod-level files (hosts, resolv.conf,
hostname) are `dnsconfig.py`'s; mounts are `volumes.py`'s.

Invariants:
- Env order is upstream's: the service variables first, then the container's `env` in order
  (a later entry with the same name wins).
- Env sources are upstream's (`makeEnvironmentVariables`): `envFrom` ConfigMaps and Secrets
  (with `prefix`; keys that cannot be variable names, empty or holding `=`, are skipped), then
  `env`: `value`, `valueFrom.fieldRef` from the pod as the kubelet sees it (its podIP and hostIP
  included), `resourceFieldRef` (limits fall back to the node's allocatable, rounded up in
  units of `divisor`), `configMapKeyRef`, `secretKeyRef` (values decoded from base64).
- A ConfigMap, Secret or key that is missing and not `optional` raises `EnvSourceError` with
  upstream's message (`configmap "x" not found`, `couldn't find key k in ConfigMap ns/x`):
  the container waits in `CreateContainerConfigError` until it exists. An optional one that is
  missing sets nothing.
- Errors (a bad probe, an unusable volume) raise ValueError subclasses naming the field.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from decimal import Decimal
from typing import Any

from podnet.agent.kubelet.cri import ContainerConfig
from podnet.agent.kubelet.probes import LIVENESS, READINESS, STARTUP, ProbeSpec
from podnet.agent.kubelet.volumes import container_mounts
from podnet.api.validation import quantity_value

MASTER_SERVICES = ("kubernetes",)  # default/<name>: every pod gets these, links or not


class EnvSourceError(ValueError):
    """An env source that is missing and not optional (upstream's CreateContainerConfigError)."""


@dataclass(frozen=True, slots=True)
class EnvSources:
    """What the kubelet read for a container's env: objects by name (None: not found) and the
    node's allocatable (the value of a `limits.*` resourceFieldRef the container does not set)."""

    configmaps: Mapping[str, Mapping[str, Any] | None] = dataclass_field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, Any] | None] = dataclass_field(default_factory=dict)
    allocatable: Mapping[str, str] = dataclass_field(default_factory=dict)


def env_needs(container: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The names of the ConfigMaps and of the Secrets the container's env and envFrom read."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    for item in container.get("envFrom") or ():
        if item.get("configMapRef") is not None:
            configmaps.add(str(item["configMapRef"].get("name") or ""))
        if item.get("secretRef") is not None:
            secrets.add(str(item["secretRef"].get("name") or ""))
    for item in container.get("env") or ():
        source = item.get("valueFrom") or {}
        if source.get("configMapKeyRef") is not None:
            configmaps.add(str(source["configMapKeyRef"].get("name") or ""))
        if source.get("secretKeyRef") is not None:
            secrets.add(str(source["secretKeyRef"].get("name") or ""))
    return frozenset(configmaps), frozenset(secrets)


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
    sources: EnvSources | None = None,
) -> ContainerConfig:
    """The runtime's config for one container of `pod`, its kubelet-filled volumes in
    `volumes_dir` (raises `VolumeError` for a mount the kubelet cannot serve, `EnvSourceError`
    for a missing env source)."""
    return ContainerConfig(
        name=str(container["name"]),
        image=str(container.get("image") or ""),
        command=tuple(str(a) for a in container.get("command") or ()),
        args=tuple(str(a) for a in container.get("args") or ()),
        env=container_env(container, pod, env_extra, sources or EnvSources()),
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
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    env_extra: Mapping[str, str],
    sources: EnvSources | None = None,
) -> tuple[tuple[str, str], ...]:
    """Service variables first (like upstream), then `envFrom` in order, then the container's
    env in order (a later entry with the same name wins)."""
    sources = sources or EnvSources()
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    out: dict[str, str] = dict(env_extra)
    for item in container.get("envFrom") or ():
        prefix = str(item.get("prefix") or "")
        for kind in ("configMapRef", "secretRef"):
            ref = item.get(kind)
            if ref is None:
                continue
            values = _object_values(kind, ref, namespace, sources)
            for key, value in (values or {}).items():
                if _usable_env_name(prefix + key):
                    out[prefix + key] = value
    for item in container.get("env") or ():
        name = str(item.get("name", ""))
        if "value" in item:
            out[name] = str(item.get("value") or "")
            continue
        source = item.get("valueFrom") or {}
        if source.get("fieldRef") is not None:
            out[name] = _field_ref(pod, str(source["fieldRef"].get("fieldPath") or ""))
        elif source.get("resourceFieldRef") is not None:
            out[name] = _resource_ref(container, pod, source["resourceFieldRef"], sources)
        elif source.get("configMapKeyRef") is not None or source.get("secretKeyRef") is not None:
            kind = (
                "configMapKeyRef" if source.get("configMapKeyRef") is not None else "secretKeyRef"
            )
            found = _key_ref(kind, source[kind], namespace, sources)
            if found is not None:
                out[name] = found
        else:
            out[name] = ""
    return tuple(out.items())


def _usable_env_name(name: str) -> bool:
    """Upstream 1.32's relaxed rule: printable ASCII but `=`, not empty."""
    return bool(name) and all(" " <= c <= "~" and c != "=" for c in name)


def _object_values(
    kind: str, ref: Mapping[str, Any], namespace: str, sources: EnvSources
) -> dict[str, str] | None:
    """The string values of the ConfigMap (`data`) or Secret (`data`, decoded) `ref` names;
    None when it is missing and optional."""
    name = str(ref.get("name") or "")
    secret = kind in ("secretRef", "secretKeyRef")
    obj = (sources.secrets if secret else sources.configmaps).get(name)
    if obj is None:
        if ref.get("optional"):
            return None
        raise EnvSourceError(f'{"secret" if secret else "configmap"} "{name}" not found')
    data = obj.get("data") or {}
    if not secret:
        return {str(k): str(v) for k, v in data.items()}
    values = {}
    for key, encoded in data.items():
        try:
            raw = base64.b64decode(str(encoded), validate=True)
        except (binascii.Error, ValueError):
            raise EnvSourceError(
                f"secret {namespace}/{name}: key {key} is not valid base64"
            ) from None
        values[str(key)] = raw.decode("utf-8", "surrogateescape")
    return values


def _key_ref(kind: str, ref: Mapping[str, Any], namespace: str, sources: EnvSources) -> str | None:
    values = _object_values(kind, ref, namespace, sources)
    if values is None:
        return None
    key = str(ref.get("key") or "")
    if key in values:
        return values[key]
    if ref.get("optional"):
        return None
    noun = "Secret" if kind == "secretKeyRef" else "ConfigMap"
    raise EnvSourceError(f"couldn't find key {key} in {noun} {namespace}/{ref.get('name')}")


def _resource_ref(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    ref: Mapping[str, Any],
    sources: EnvSources,
) -> str:
    """Upstream `ExtractContainerResourceValue`: the quantity in units of `divisor`, rounded
    up; an unset limit is the node's allocatable, an unset request 0."""
    target = container
    wanted = ref.get("containerName")
    if wanted:
        spec = pod.get("spec") or {}
        for other in (*(spec.get("initContainers") or ()), *(spec.get("containers") or ())):
            if other.get("name") == wanted:
                target = other
    group, _, resource = str(ref.get("resource") or "").partition(".")
    quantity = quantity_value(((target.get("resources") or {}).get(group) or {}).get(resource))
    if quantity is None and group == "limits":
        quantity = quantity_value(sources.allocatable.get(resource))
    divisor = quantity_value(ref.get("divisor") or "1") or Decimal(1)
    if quantity is None:
        return "0"
    if resource == "cpu":  # in milli-units, as upstream's MilliValue
        quantity = Decimal(math.ceil(quantity * 1000))
        divisor = Decimal(math.ceil(divisor * 1000))
    else:
        quantity, divisor = Decimal(math.ceil(quantity)), Decimal(math.ceil(divisor))
    return str(math.ceil(quantity / divisor))


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    if not path:
        return ""
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
