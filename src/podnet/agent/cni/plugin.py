"""The CNI-spec plugin entry point: environment + stdin config in, result or error JSON out.

`run_plugin(env, stdin_text)` is the whole protocol of upstream's `pkg/skel` for one
invocation, minus the process: it returns the exit code and the text for stdout, so tests can
drive it without a subprocess and `podnet cni` stays a three-line wrapper. On failure the
error object `{"cniVersion","code","msg","details"}` goes to stdout and the exit code is 1,
as upstream's skel does.

Accepted config: `type` "podnet-bridge" (or "bridge") with upstream bridge fields and a
host-local `ipam` section; see `config.parse_netconf`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from podnet.agent.cni.bridge import cni_add, cni_check, cni_del
from podnet.agent.cni.config import parse_netconf
from podnet.agent.cni.errors import (
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    UNKNOWN,
    CniError,
)
from podnet.agent.cni.result import LATEST_VERSION, SUPPORTED_VERSIONS, version_tuple

PLUGIN_TYPES = ("podnet-bridge", "bridge")
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
}


def _decode(stdin_text: str) -> dict[str, Any]:
    try:
        conf = json.loads(stdin_text)
    except json.JSONDecodeError as exc:
        raise CniError(
            DECODING_FAILURE, "error reading network config from stdin", str(exc)
        ) from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "network config must be a JSON object", stdin_text[:80])
    return conf


def _version_of(conf: dict[str, Any]) -> str:
    version = str(conf.get("cniVersion", "0.1.0"))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f'incompatible CNI versions; config is "{version}", '
            f"plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    return version


def _dispatch(command: str, env: Mapping[str, str], stdin_text: str) -> dict[str, Any] | None:
    if command == "VERSION":
        requested = LATEST_VERSION
        if stdin_text.strip():
            requested = str(_decode(stdin_text).get("cniVersion", LATEST_VERSION))
        return {"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)}
    if command not in REQUIRED_ENV:
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command or '(unset)'}")
    missing = [k for k in REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"required env variables {missing} missing")
    raw = _decode(stdin_text)
    version = _version_of(raw)
    if raw.get("type") not in PLUGIN_TYPES:
        raise CniError(
            INVALID_NETWORK_CONFIG,
            f"this plugin handles type {' or '.join(PLUGIN_TYPES)}",
            repr(raw.get("type")),
        )
    conf = parse_netconf(raw)
    container_id, ifname = env["CNI_CONTAINERID"], env["CNI_IFNAME"]
    if command == "ADD":
        return cni_add(conf, container_id, env["CNI_NETNS"], ifname).to_json(version)
    if command == "DEL":
        cni_del(conf, container_id, env.get("CNI_NETNS") or None, ifname)
        return None
    if version_tuple(version) < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"config version {version} does not allow CHECK")
    cni_check(conf, container_id, env["CNI_NETNS"], ifname)
    return None


def run_plugin(env: Mapping[str, str], stdin_text: str) -> tuple[int, str]:
    """One CNI invocation: returns (exit code, stdout text)."""
    command = env.get("CNI_COMMAND", "")
    version = LATEST_VERSION
    try:
        if stdin_text.strip():
            try:
                candidate = str(json.loads(stdin_text).get("cniVersion", LATEST_VERSION))
                if candidate in SUPPORTED_VERSIONS:
                    version = candidate
            except (json.JSONDecodeError, AttributeError):
                pass  # reported properly by _dispatch
        output = _dispatch(command, env, stdin_text)
    except CniError as exc:
        return 1, json.dumps(exc.to_dict(version), indent=2) + "\n"
    except Exception as exc:  # a bug or an unexpected kernel error: still speak CNI
        error = CniError(UNKNOWN, f"{type(exc).__name__} during {command}", str(exc))
        return 1, json.dumps(error.to_dict(version), indent=2) + "\n"
    if output is None:
        return 0, ""
    return 0, json.dumps(output, indent=2) + "\n"
