"""Discovery documents: /version, /api, /apis, /api/v1 and /apis/<group>/<version>.

What belongs here: pure functions that render the legacy (unaggregated) discovery documents
kubectl 1.32 and the Python client read, from the one resource table
(`podnet.api.resources.RESOURCES`). No I/O.

Invariants: every resource and subresource the server routes appears here with the verbs the
server implements; `/apis` is always served (a 404 there is fatal for kubectl); the scale
subresource names its own group/version/kind (autoscaling/v1 Scale) so `kubectl scale` finds it.
Aggregated discovery (apidiscovery.k8s.io/v2) is not offered: clients fall back to these
documents when the response Content-Type is plain application/json.
"""

from __future__ import annotations

import base64
import hashlib
import platform
import sys
from typing import Any

from podnet.api.resources import RESOURCES, Resource, for_group_version

Obj = dict[str, Any]

KUBERNETES_MAJOR = "1"
KUBERNETES_MINOR = "32"
GIT_VERSION = "v1.32.0-podnet"


def version_info() -> Obj:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return {
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": "podnet",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": f"python{sys.version_info.major}.{sys.version_info.minor}",
        "compiler": "cpython",
        "platform": f"linux/{arch}",
    }


def api_versions(server_address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _groups() -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for res in RESOURCES:
        if res.group:
            seen[(res.group, res.version)] = None
    return list(seen)


def api_group_list() -> Obj:
    groups = []
    for group, version in _groups():
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> Obj | None:
    versions = [v for g, v in _groups() if g == group]
    if not versions:
        return None
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": gvs,
        "preferredVersion": gvs[0],
    }


def _storage_version_hash(res: Resource) -> str:
    digest = hashlib.sha256(f"{res.group}/{res.version}/{res.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _resource_entries(res: Resource) -> list[Obj]:
    main: Obj = {
        "name": res.plural,
        "singularName": res.singular,
        "namespaced": res.namespaced,
        "kind": res.kind,
        "verbs": sorted(res.verbs),
        "storageVersionHash": _storage_version_hash(res),
    }
    if res.short_names:
        main["shortNames"] = list(res.short_names)
    if res.categories:
        main["categories"] = list(res.categories)
    entries = [main]
    for sub in res.subresources:
        entry: Obj = {
            "name": f"{res.plural}/{sub.name}",
            "singularName": "",
            "namespaced": res.namespaced,
            "kind": sub.kind,
            "verbs": sorted(sub.verbs),
        }
        if sub.group:
            entry["group"] = sub.group
            entry["version"] = sub.version
        entries.append(entry)
    return entries


def api_resource_list(group_version: str) -> Obj | None:
    resources = for_group_version(group_version)
    if not resources:
        return None
    entries: list[Obj] = []
    for res in resources:
        entries.extend(_resource_entries(res))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }
