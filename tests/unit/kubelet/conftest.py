"""In-memory stand-ins for the kubelet loop tests: a runtime whose containers are simulated and
a sandbox manager without kernel (the API is the suite's `memory_api`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from podnet.agent.kubelet.pods import RuntimeBindings
from podnet.agent.kubelet.sandbox import SandboxRecord

Obj = dict[str, Any]


@dataclass(frozen=True)
class FakeState:
    id: str
    pod_uid: str
    name: str
    attempt: int
    pid: int | None
    running: bool
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None = None
    message: str | None = None


class FakeImageError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class FakeRuntime:
    """Containers are records; tests make them exit with `exit(...)`."""

    def __init__(self) -> None:
        self.bindings = fake_bindings()  # how the pod manager builds this runtime's values
        self.states: dict[str, FakeState] = {}
        self.started: list[tuple[str, int]] = []  # (name, attempt)
        self.stopped: list[tuple[str, float]] = []
        self.removed: list[str] = []
        self.cleaned: list[str] = []
        self.sandboxes: list[Any] = []
        self.ids = itertools.count(1)
        self.exec_results: dict[str, int] = {}

    async def start(self, sandbox: Any, cfg: Any, attempt: int) -> FakeState:
        if cfg.image.startswith("missing"):
            raise FakeImageError("ErrImagePull", f'image "{cfg.image}" is not available')
        self.sandboxes.append(sandbox)
        cid = f"cid{next(self.ids):04d}"
        state = FakeState(
            cid, sandbox["pod_uid"], cfg.name, attempt, 100, True, None, datetime.now(UTC), None
        )
        self.states[cid] = state
        self.started.append((cfg.name, attempt))
        return state

    def inspect(self, container_id: str) -> FakeState:
        return self.states[container_id]

    def list(self, pod_uid: str | None = None) -> list[FakeState]:
        return [s for s in self.states.values() if pod_uid is None or s.pod_uid == pod_uid]

    def exit(self, name: str, code: int) -> None:
        for cid, s in self.states.items():
            if s.name == name and s.running:
                self.states[cid] = replace(
                    s, running=False, exit_code=code, finished_at=datetime.now(UTC), pid=None
                )

    async def stop(self, container_id: str, grace_seconds: float) -> FakeState:
        self.stopped.append((container_id, grace_seconds))
        s = self.states[container_id]
        if s.running:
            s = replace(s, running=False, exit_code=137, finished_at=datetime.now(UTC))
            self.states[container_id] = s
        return s

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
    def __init__(self) -> None:
        self.live: dict[str, SandboxRecord] = {}
        self.torn_down: list[str] = []
        self.ips = itertools.count(2)
        self.orphans: list[str] = []
        self.deleted_netns: list[str] = []

    def ensure(self, pod_uid: str, namespace: str, name: str, pod_cidr: str) -> SandboxRecord:
        if pod_uid not in self.live:
            prefix = pod_cidr.rsplit(".", 1)[0]
            self.live[pod_uid] = SandboxRecord(
                pod_uid,
                namespace,
                name,
                f"pnt5-pod-{pod_uid}",
                f"{prefix}.{next(self.ips)}",
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


def fake_bindings() -> RuntimeBindings:
    return RuntimeBindings(
        make_sandbox=lambda **kw: kw,
        make_config=lambda **kw: SimpleNamespace(**kw),
        image_error=FakeImageError,
    )


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def fake_sandboxes() -> FakeSandboxes:
    return FakeSandboxes()
