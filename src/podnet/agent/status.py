"""Where a node agent's components say what their kernel state is, for readers outside the
agent (`podnet status`, the demo, tests, benchmarks): one small JSON file per component under
the agent's `state_dir`, replaced atomically after every successful sync.

- `policy/status.json`: the highest resourceVersion of each watched resource NetworkPolicy
  enforces, each local pod a policy isolates with those policies per direction, drop counts;
- `proxy/status.json`: the kube-proxy mode and the highest Service and EndpointSlice
  resourceVersion whose rules are in the kernel (a reader that wrote a Service waits until
  every node's proxy is at least at that revision: the Service is programmed there).

Kept apart from the components so readers import nothing of the agent's machinery.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Component = Literal["policy", "proxy"]


def status_path(state_dir: Path, component: Component) -> Path:
    return state_dir / component / "status.json"


def read_status(state_dir: Path, component: Component) -> dict[str, Any] | None:
    """A node agent's last written status of `component` (None: none written, or unreadable)."""
    try:
        found = json.loads(status_path(state_dir, component).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def write_status(state_dir: Path, component: Component, status: Mapping[str, Any]) -> None:
    """Replace the status file atomically; a failure is logged, never raised (the sync that
    wrote it succeeded either way)."""
    path = status_path(state_dir, component)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(status, indent=1) + "\n")
        tmp.replace(path)
    except OSError as exc:
        log.debug("%s: writing %s failed: %s", component, path, exc)


def caught_up(status: Mapping[str, Any] | None, wanted: Mapping[str, int]) -> bool:
    """True when `status` reports, for every resource in `wanted`, at least that revision."""
    if status is None:
        return False
    revisions = status.get("revisions") or {}
    return all(int(revisions.get(resource) or 0) >= rv for resource, rv in wanted.items())
