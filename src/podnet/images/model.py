"""What an image is made of: the values the image store and the built-in images share.

What belongs here: `ImageConfig` (the OCI config subset Kubernetes uses), `BindMount`,
`BuiltinImage` (an image podnet builds itself), `ImageError` and the default `PATH`. No I/O.
`store.py` caches and resolves images and imports `builtin.py`, which defines the built-in
images from these values: the dependencies point one way (store → builtin → model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(Exception):
    """An image cannot be used; `reason` is the Kubernetes waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class BindMount:
    """A host path made visible inside the container (built-in images only)."""

    source: Path
    target: str  # absolute path inside the container
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What an image says about how to run it (the OCI config subset Kubernetes uses)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = (("PATH", DEFAULT_PATH),)
    working_dir: str = "/"

    def to_json(self) -> dict[str, Any]:
        return {
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": [list(kv) for kv in self.env],
            "working_dir": self.working_dir,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageConfig:
        return cls(
            entrypoint=tuple(str(a) for a in data.get("entrypoint", [])),
            cmd=tuple(str(a) for a in data.get("cmd", [])),
            env=tuple((str(k), str(v)) for k, v in data.get("env", [])),
            working_dir=str(data.get("working_dir") or "/"),
        )


@dataclass(frozen=True, slots=True)
class BuiltinImage:
    """An image podnet builds itself; `build(rootfs)` fills an empty directory."""

    name: str
    repositories: frozenset[str]  # ImageRef.name values it answers to, any tag
    config: ImageConfig
    build: Callable[[Path], None]
    binds: Callable[[], tuple[BindMount, ...]] = field(default=lambda: ())
    version: int = 1  # bump to make existing caches rebuild
    # host facts the build bakes into the rootfs (e.g. the interpreter agnhost's entrypoint
    # runs): a different value is a different cache directory, so two checkouts with their
    # own venvs on one machine never run each other's image
    variant: Callable[[], str] = field(default=lambda: "")
