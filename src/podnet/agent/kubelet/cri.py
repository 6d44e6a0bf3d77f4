"""The seam between the kubelet and its container runtime: a small CRI.

What belongs here: the values that cross the seam, each defined once — `Sandbox` (the pod a
container joins: its network namespace and the files it shares), `ContainerConfig` (what to
run: the one container spec, read from the pod by `podspec.py`), `ContainerState` (one run of
a container as the runtime records it) — the errors a runtime raises, and `ContainerRuntime`,
the protocol the pod loop drives. `runtime.Runtime` (containers as processes) implements it;
`podnet.testing.kubelet.FakeRuntime` is the in-memory double, type-checked against it.

Invariants:
- Values are frozen: the kubelet builds them, the runtime only reads them.
- `ImageError` is the only error `start()` raises for a bad image (its `reason` is the
  Kubernetes waiting reason, e.g. ErrImagePull); any other exception from `start()` is a
  CreateContainerError to the kubelet.
- `inspect()` of an id the runtime does not know raises `ContainerNotFound` (a `KeyError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from podnet.agent.kubelet.volumes import HostMount
from podnet.images.model import ImageError

__all__ = [
    "ContainerConfig",
    "ContainerNotFound",
    "ContainerNotRunning",
    "ContainerRuntime",
    "ContainerState",
    "ImageError",
    "Sandbox",
]


@dataclass(frozen=True, slots=True)
class Sandbox:
    pod_uid: str
    namespace: str
    name: str
    netns: str  # path, /run/netns/<name>, already created and wired by the kubelet
    hostname: str  # what `hostname` prints in the pod
    hosts: str  # content for the pod's /etc/hosts
    resolv_conf: str  # content for the pod's /etc/resolv.conf


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # in order; values already resolved
    working_dir: str | None = None
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    mounts: tuple[HostMount, ...] = ()  # hostPath volumes (volumes.py)


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    pod_uid: str
    name: str
    attempt: int  # 0 for the first run; restartCount is the current run's attempt
    pid: int | None
    running: bool
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None  # Completed / Error / StartError / ContainerCreating / Unknown
    message: str | None
    image: str = ""  # normalised image reference
    image_id: str = ""

    @property
    def terminated(self) -> bool:
        return not self.running and self.exit_code is not None

    @property
    def creating(self) -> bool:
        """The runtime made the container but its process has not started yet."""
        return not self.running and self.exit_code is None and self.reason == "ContainerCreating"


class ContainerNotFound(KeyError):
    """No container with this id on this node (never started, or removed)."""


class ContainerNotRunning(RuntimeError):
    """exec into a container that is not running."""


class ContainerRuntime(Protocol):
    """What the pod loop asks of a container runtime."""

    async def start(
        self, sandbox: Sandbox, config: ContainerConfig, attempt: int
    ) -> ContainerState: ...

    def inspect(self, container_id: str) -> ContainerState: ...

    def list(self, pod_uid: str | None = None) -> Sequence[ContainerState]: ...

    async def stop(self, container_id: str, grace_seconds: float) -> ContainerState:
        """SIGTERM, up to `grace_seconds` for it to exit, then SIGKILL."""
        ...

    def remove(self, container_id: str) -> None:
        """Forget the container (killing it if it still runs); its log stays for --previous."""
        ...

    async def exec_sync(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - the runtime's documented signature
    ) -> tuple[int, bytes]:
        """Run `command` in the container: (exit code, output); TimeoutError after `timeout`."""
        ...

    def cleanup_pod(self, pod_uid: str) -> None:
        """Everything of a deleted pod: its containers (killed), logs and pod files."""
        ...
