"""The launch spec: everything the launcher needs to start one container, resolved, as plain data.

Not the container's configuration (that is `cri.ContainerConfig`, what the kubelet asks for):
the runtime resolves a config against its image and the pod's sandbox into a `LaunchSpec`
(pure functions below: argv, env, `$(VAR)` expansion as Kubernetes does them, host paths) and
writes it to `<container dir>/spec.json`; the launcher
(`launcher.py`, a separate short-lived process and then the container's shim) reads it back.
This module imports only the standard library because the launcher imports it on every
container start and exec.

Invariants:
- `argv` is final: command/args/entrypoint/cmd resolved and `$(VAR)` references expanded;
  the launcher never interprets a user string (no shell).
- Paths in the spec are absolute host paths, except `working_dir`, bind targets and the keys
  of `etc_files`, which are paths inside the container.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPEC_FILE = "spec.json"
STARTED_FILE = "started.json"
EXIT_FILE = "exit.json"

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True, slots=True)
class SpecBind:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    id: str
    pod_uid: str
    namespace: str
    pod_name: str
    name: str
    attempt: int
    image_ref: str
    image_id: str
    netns: str  # /run/netns/<name>
    hostname: str
    rootfs: str  # the image's root filesystem: the overlay's read-only lower layer
    upper_dir: str
    work_dir: str
    merged_dir: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str
    log_path: str
    pids_dir: str  # where the shim records itself and the container (podnet.procs)
    log_max_bytes: int = 10 * 1024 * 1024  # rotate the log at this size (see logformat.py)
    binds: tuple[SpecBind, ...] = ()
    etc_files: tuple[tuple[str, str], ...] = ()  # (path inside container, host file)
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LaunchSpec:
        data: dict[str, Any] = json.loads(text)
        data["argv"] = tuple(data["argv"])
        data["env"] = tuple((str(k), str(v)) for k, v in data["env"])
        data["binds"] = tuple(SpecBind(**b) for b in data.get("binds", []))
        data["etc_files"] = tuple((str(a), str(b)) for a, b in data.get("etc_files", []))
        return cls(**data)

    @classmethod
    def load(cls, container_dir: Path) -> LaunchSpec:
        return cls.from_json((container_dir / SPEC_FILE).read_text())


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined references are replaced, `$$` is a literal `$`,
    undefined references stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def merge_env(
    image_env: Iterable[tuple[str, str]],
    container_env: Iterable[tuple[str, str]],
    hostname: str,
) -> tuple[tuple[str, str], ...]:
    """Image env, then HOSTNAME, then the container's env (later wins; container values may
    reference earlier variables with `$(VAR)`), keeping first-seen order."""
    merged: dict[str, str] = {}
    for key, value in image_env:
        merged[key] = value
    merged["HOSTNAME"] = hostname
    for key, value in container_env:
        merged[key] = expand_references(value, merged)
    return tuple(merged.items())


def resolve_argv(
    command: Sequence[str],
    args: Sequence[str],
    entrypoint: Sequence[str],
    cmd: Sequence[str],
    env: Mapping[str, str],
) -> tuple[str, ...]:
    """Kubernetes semantics: `command` replaces the entrypoint (and drops the image cmd),
    `args` replaces the image cmd; `$(VAR)` references are expanded in both."""
    if command:
        argv = [*command, *args]
    elif args:
        argv = [*entrypoint, *args]
    else:
        argv = [*entrypoint, *cmd]
    return tuple(expand_references(a, env) for a in argv)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
