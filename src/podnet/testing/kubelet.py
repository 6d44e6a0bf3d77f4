"""In-memory doubles of what the kubelet's pod loop drives: a container runtime and sandboxes.

What belongs here: `FakeRuntime` (containers are records; a test makes them exit with
`exit(name, code)`, fails image pulls by naming an image `missing...`, and sets probe answers in
`exec_results`) and `FakeSandboxes` (addresses from the pod CIDR, no kernel). Both record what
they were asked to do, for assertions.

Invariant: mypy proves each double implements the real seam (`cri.ContainerRuntime`,
`sandbox.Sandboxes`) — see `_conforms` — so a change of the seam breaks the double too, and
the pod loop under test receives exactly the values it receives in production
(`cri.Sandbox`, `cri.ContainerConfig`, `cri.ContainerState`, `cri.ImageError`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from podnet.agent.kubelet.cri import (
    ContainerConfig,
    ContainerNotFound,
    ContainerState,
    ImageError,
    Sandbox,
)
from podnet.agent.kubelet.sandbox import SandboxRecord

KILLED_EXIT_CODE = 137


def container_state(
    name: str = "app",
    attempt: int = 0,
    *,
    running: bool = False,
    exit_code: int | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    reason: str | None = None,
    message: str | None = None,
    pod_uid: str = "u1",
    container_id: str | None = None,
) -> ContainerState:
    """One run of a container as a runtime reports it (id `<name><attempt>` unless given)."""
    return ContainerState(
        id=container_id or f"{name}{attempt}",
        pod_uid=pod_uid,
        name=name,
        attempt=attempt,
        pid=100 if running else None,
        running=running,
        exit_code=exit_code,
        started_at=started_at,
        finished_at=finished_at,
        reason=reason,
        message=message,
    )


class FakeRuntime:
    """Containers as records (see the module docstring)."""

    def __init__(self) -> None:
        self.states: dict[str, ContainerState] = {}
        self.started: list[tuple[str, int]] = []  # (container name, attempt)
        self.configs: list[ContainerConfig] = []
        self.sandboxes: list[Sandbox] = []
        self.stopped: list[tuple[str, float]] = []  # (container id, grace seconds)
        self.removed: list[str] = []
        self.cleaned: list[str] = []  # pod uids
        self.exec_results: dict[str, int] = {}  # last word of an exec command -> exit code
        self._ids = itertools.count(1)

    async def start(
        self, sandbox: Sandbox, config: ContainerConfig, attempt: int
    ) -> ContainerState:
        if config.image.startswith("missing"):
            raise ImageError("ErrImagePull", f'image "{config.image}" is not available')
        self.sandboxes.append(sandbox)
        self.configs.append(config)
        state = replace(
            container_state(
                config.name,
                attempt,
                running=True,
                started_at=datetime.now(UTC),
                pod_uid=sandbox.pod_uid,
                container_id=f"cid{next(self._ids):04d}",
            ),
            image=config.image,
        )
        self.states[state.id] = state
        self.started.append((config.name, attempt))
        return state

    def inspect(self, container_id: str) -> ContainerState:
        try:
            return self.states[container_id]
        except KeyError:
            raise ContainerNotFound(container_id) from None

    def list(self, pod_uid: str | None = None) -> list[ContainerState]:
        return [s for s in self.states.values() if pod_uid is None or s.pod_uid == pod_uid]

    def exit(self, name: str, code: int) -> None:
        """The running container(s) called `name` exit with `code`."""
        for cid, state in self.states.items():
            if state.name == name and state.running:
                self.states[cid] = self._ended(state, code)

    async def stop(self, container_id: str, grace_seconds: float) -> ContainerState:
        self.stopped.append((container_id, grace_seconds))
        state = self.inspect(container_id)
        if state.running:
            state = self.states[container_id] = self._ended(state, KILLED_EXIT_CODE)
        return state

    @staticmethod
    def _ended(state: ContainerState, code: int) -> ContainerState:
        reason = "Completed" if code == 0 else "Error"
        return replace(
            state,
            running=False,
            pid=None,
            exit_code=code,
            finished_at=datetime.now(UTC),
            reason=reason,
        )

    def remove(self, container_id: str) -> None:
        self.removed.append(container_id)
        self.states.pop(container_id, None)

    async def exec_sync(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - the runtime's signature
    ) -> tuple[int, bytes]:
        return self.exec_results.get(command[-1], 0), b""

    def cleanup_pod(self, pod_uid: str) -> None:
        self.cleaned.append(pod_uid)
        for cid in [c for c, s in self.states.items() if s.pod_uid == pod_uid]:
            del self.states[cid]


class FakeSandboxes:
    """Sandboxes without a kernel: each pod gets the next address of its node's pod CIDR."""

    def __init__(self, netns_prefix: str = "fake-") -> None:
        self.netns_prefix = netns_prefix
        self.live: dict[str, SandboxRecord] = {}
        self.torn_down: list[str] = []
        self.orphans: list[str] = []  # netns names `orphan_netns` reports
        self.deleted_netns: list[str] = []
        self._hosts = itertools.count(2)

    def ensure(self, pod_uid: str, namespace: str, name: str, pod_cidr: str) -> SandboxRecord:
        if pod_uid not in self.live:
            prefix = pod_cidr.rsplit(".", 1)[0]
            self.live[pod_uid] = SandboxRecord(
                pod_uid,
                namespace,
                name,
                f"{self.netns_prefix}pod-{pod_uid}",
                f"{prefix}.{next(self._hosts)}",
                pod_cidr,
                1500,
            )
        return self.live[pod_uid]

    def teardown(self, pod_uid: str) -> None:
        if self.live.pop(pod_uid, None) is not None:
            self.torn_down.append(pod_uid)

    def records(self) -> dict[str, SandboxRecord]:
        return dict(self.live)

    def orphan_netns(self, known_uids: Mapping[str, object]) -> list[str]:
        return list(self.orphans)

    def delete_netns(self, ns_name: str) -> None:
        self.deleted_netns.append(ns_name)
        self.orphans.remove(ns_name)


if TYPE_CHECKING:  # mypy proves the doubles implement the seams; nothing runs here
    from podnet.agent.kubelet.cri import ContainerRuntime
    from podnet.agent.kubelet.runtime import Runtime
    from podnet.agent.kubelet.sandbox import Sandboxes, SandboxManager

    def _conforms(
        runtime: Runtime, fake_runtime: FakeRuntime, manager: SandboxManager, fake: FakeSandboxes
    ) -> tuple[ContainerRuntime, ContainerRuntime, Sandboxes, Sandboxes]:
        return runtime, fake_runtime, manager, fake
