"""In-memory stand-ins for the kubelet loop tests: an Api with list/watch/status/delete
semantics, a runtime whose containers are simulated, and a sandbox manager without kernel."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from podnet.agent.kubelet.pods import RuntimeBindings
from podnet.agent.kubelet.sandbox import SandboxRecord
from podnet.api.errors import ApiError

Obj = dict[str, Any]


def _merge(target: Obj, patch: Mapping[str, Any]) -> Obj:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeApi:
    """Enough of `podnet.api.interface.Api` for pods, nodes and leases."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], Obj] = {}
        self.rv = itertools.count(1)
        self.watchers: list[asyncio.Queue[Obj]] = []
        self.status_writes: list[Obj] = []
        self.deletes: list[tuple[str, str, int | None, str | None]] = []

    def _stamp(self, obj: Obj) -> None:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self.rv))

    def _emit(self, kind: str, resource: str, obj: Obj) -> None:
        if resource == "pods":
            for q in self.watchers:
                q.put_nowait({"type": kind, "object": copy.deepcopy(obj)})

    def _key(self, resource: str, name: str, ns: str | None) -> tuple[str, str | None, str]:
        return (resource, ns, name)

    async def get(
        self, resource: str, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        obj = self.objects.get(self._key(resource, name, namespace))
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        return copy.deepcopy(obj)

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        items = [copy.deepcopy(o) for (r, _, _), o in self.objects.items() if r == resource]
        if field_selector:
            key, _, value = field_selector.partition("=")
            assert key == "spec.nodeName"
            items = [o for o in items if (o.get("spec") or {}).get("nodeName") == value]
        return {"items": items, "metadata": {"resourceVersion": str(next(self.rv))}}

    async def create(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = self._key(resource, meta["name"], namespace)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", "exists")
        meta.setdefault("uid", f"uid-{meta['name']}-{next(self.rv)}")
        if namespace:
            meta["namespace"] = namespace
        self._stamp(obj)
        self.objects[key] = obj
        self._emit("ADDED", resource, obj)
        return copy.deepcopy(obj)

    async def update(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        raise NotImplementedError

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        key = self._key(resource, name, namespace)
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        if resource == "pods" and subresource == "status":
            self.status_writes.append(copy.deepcopy(patch["status"]))
        _merge(obj, patch)
        self._stamp(obj)
        self._emit("MODIFIED", resource, obj)
        return copy.deepcopy(obj)

    async def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        key = self._key(resource, name, namespace)
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        self.deletes.append((resource, name, grace_period_seconds, uid))
        if uid is not None and obj["metadata"]["uid"] != uid:
            raise ApiError(409, "Conflict", "uid precondition")
        grace = 30 if grace_period_seconds is None else grace_period_seconds
        if resource == "pods" and grace > 0:
            obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            obj["metadata"]["deletionGracePeriodSeconds"] = grace
            self._stamp(obj)
            self._emit("MODIFIED", resource, obj)
            return copy.deepcopy(obj)
        del self.objects[key]
        self._stamp(obj)
        self._emit("DELETED", resource, obj)
        return copy.deepcopy(obj)

    async def watch(
        self,
        resource: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[Obj]:
        q: asyncio.Queue[Obj] = asyncio.Queue()
        self.watchers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self.watchers.remove(q)

    def pod(self, name: str, namespace: str = "default") -> Obj:
        return self.objects[("pods", namespace, name)]


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
def fake_api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def fake_sandboxes() -> FakeSandboxes:
    return FakeSandboxes()
