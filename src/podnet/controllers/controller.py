"""The shape every control loop shares: informers in, keys on a queue, one reconcile per key.

What belongs here: `Controller`, the base class, and `OwnerController`, the base of the loops
whose objects create dependents they own (ReplicaSet, Deployment, DaemonSet, StatefulSet, Job):
one place for the owner/dependent routing and the expectations gate. A subclass registers
informer handlers that only enqueue keys (`self.queue.add(key)`), and implements
`reconcile(key)`, which reads the informer caches, calls a pure `plan_*` function, and makes the
planned writes through `Api`.

Invariants:
- Level-triggered: reconcile looks at the whole current state of its key, never at the event
  that caused it, so a missed or duplicated event cannot leave the cluster wrong.
- Idempotent: running reconcile twice on the same state writes nothing the second time.
- Any exception re-queues the key with exponential back-off; a success resets it. A key that
  keeps failing is logged once per 30 s with a count, not once per retry.
- All state lives in the API; what a controller keeps in memory is a cache or an expectation
  that is rebuilt (or expires) after a restart.
- Wall-clock time (what plans compare timestamps with) comes from `self.clock`, so tests can
  move time without sleeping; queue delays stay on the event loop's monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.config import ClusterConfig
from podnet.controllers.events import EventRecorder
from podnet.controllers.expectations import Expectations
from podnet.controllers.informer import EventType, Informer, InformerFactory
from podnet.controllers.objects import (
    controller_ref,
    labels_of,
    namespace_of,
    object_key,
    selector_matches,
)
from podnet.controllers.workqueue import WorkQueue
from podnet.retry import ThrottledLog

log = logging.getLogger(__name__)

EXPECTATIONS_TIMEOUT_S = 300.0  # how long an owner loop waits to see its own writes


def utc_now() -> datetime:
    return datetime.now(UTC)


def spec_selector(owner: Obj) -> Obj | None:
    selector = (owner.get("spec") or {}).get("selector")
    return selector if isinstance(selector, dict) else None


def owner_keys(
    owners: Informer,
    kind: str,
    dependents: tuple[Obj | None, ...],
    selector_of: Callable[[Obj], Obj | None] | None = spec_selector,
) -> set[str]:
    """The keys of the `kind` owners a changed dependent (its old and new versions) concerns:
    its controller, or — for an orphan, which may be adopted — every owner in its namespace
    whose selector matches it (none when `selector_of` is None: that kind never adopts)."""
    keys: set[str] = set()
    for obj in dependents:
        if obj is None:
            continue
        ref = controller_ref(obj)
        if ref is not None:
            if ref.get("kind") == kind:
                keys.add(f"{namespace_of(obj)}/{ref.get('name')}")
            continue
        if selector_of is None:
            continue
        for owner in owners.in_namespace(namespace_of(obj)):
            if selector_matches(selector_of(owner), labels_of(obj)):
                keys.add(object_key(owner))
    return keys


class Controller(ABC):
    name = "controller"
    component = ""  # `source.component` of the Events it records (upstream's controller name)
    workers = 1
    resync_seconds: float | None = None  # periodic re-enqueue of every key, when set

    def __init__(
        self,
        api: Api,
        config: ClusterConfig,
        informers: InformerFactory,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.api = api
        self.config = config
        self.informers = informers
        self.clock = clock  # wall time for the plans; tests inject a fake one
        self.queue = WorkQueue()
        self.reconciles = 0
        self._errors = ThrottledLog(log)  # a key failing again and again: one line per 30 s
        self.events = EventRecorder(api, self.component or f"{self.name}-controller")

    @abstractmethod
    async def reconcile(self, key: str) -> None:
        """Make the world match the desired state for `key`; raise to retry."""

    def all_keys(self) -> list[str]:
        """Keys to enqueue at start and on resync; subclasses with a primary informer return
        its keys."""
        return []

    async def run(self, stop: asyncio.Event) -> None:
        await self.informers.wait_synced()
        for key in self.all_keys():
            self.queue.add(key)
        tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self.workers)
        ]
        if self.resync_seconds:
            tasks.append(asyncio.create_task(self._resync(self.resync_seconds)))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.queue.close()
            await self.events.close()

    async def _resync(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            for key in self.all_keys():
                self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.monotonic()
            try:
                await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                delay = self.queue.retry(key)
                if e.code in (404, 409):  # a stale cache: expected now and then
                    log.debug("%s: %s: %s (retry in %.2fs)", self.name, key, e, delay)
                else:
                    self._errors.failed(key, "%s: %s: %s (retry in %.2fs)", self.name, key, e,
                                        delay)  # fmt: skip
            except Exception as e:
                delay = self.queue.retry(key)
                self._errors.failed(key, "%s: reconcile %s failed (retry in %.2fs)", self.name,
                                    key, delay, level=logging.ERROR, exc_info=e)  # fmt: skip
            else:
                self.queue.forget(key)
                self._errors.forget(key)
            finally:
                self.reconciles += 1
                self.queue.done(key)
                elapsed = time.monotonic() - started
                if elapsed > 1.0:
                    log.info("%s: reconcile %s took %.2fs", self.name, key, elapsed)


class OwnerController(Controller):
    """A loop over `owner_resource` objects of `owner_kind` that create and own objects of
    `dependent_resource`. It routes a dependent's change to its controller (or, for an orphan,
    to the owners whose selector may adopt it — none when `adopts` is false) and gates each
    reconcile on `expectations`: the caches must have seen the loop's own earlier creates and
    deletes, or a plan would count from stale state."""

    owner_resource = ""
    owner_kind = ""
    dependent_resource = "pods"
    adopts = True

    def __init__(
        self,
        api: Api,
        config: ClusterConfig,
        informers: InformerFactory,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(api, config, informers, clock)
        self.owners = self.informers.informer(self.owner_resource)
        self.dependents = self.informers.informer(self.dependent_resource)
        self.owners.add_handler(self._on_owner)
        self.dependents.add_handler(self._on_dependent)
        # upstream's ExpectationsTimeout (5 min): a control plane running behind may take more
        # than a few seconds to show a loop its own creates, and a loop that stops waiting
        # then creates them again (at 10 s, 1,000 hollow nodes and 6,000 pods: 6,285 created)
        self.expectations = Expectations(self.dependents.get, timeout=EXPECTATIONS_TIMEOUT_S)

    def all_keys(self) -> list[str]:
        return list(self.owners.keys())

    def owner_selector(self, owner: Obj) -> Obj | None:
        """The label selector by which `owner` adopts orphans (used only when `adopts`)."""
        return spec_selector(owner)

    def owner_gone(self, owner: Obj) -> None:
        """`owner` was deleted: forget what was expected of it."""
        self.expectations.forget(object_key(owner))

    def _on_owner(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if new is None:
            self.owner_gone(obj)
        self.queue.add(object_key(obj))

    def _on_dependent(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        woken = self.expectations.observe(object_key(obj))
        if woken is not None:
            self.queue.add(woken)
        selector_of = self.owner_selector if self.adopts else None
        for key in owner_keys(self.owners, self.owner_kind, (old, new), selector_of):
            self.queue.add(key)

    def on_owned(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        """A handler for another kind the owners control but never adopt (ControllerRevisions):
        its change wakes its controller."""
        for key in owner_keys(self.owners, self.owner_kind, (old, new), selector_of=None):
            self.queue.add(key)

    def owner_to_sync(self, key: str) -> Obj | None:
        """The owner `key` names when a reconcile may plan for it now; None when it is gone
        (its expectations forgotten) or while the caches lag behind this loop's own writes
        (the key is re-queued for when they are due)."""
        owner = self.owners.get(key)
        if owner is None:
            self.expectations.forget(key)
            return None
        if not self.expectations.satisfied(key):
            self.queue.add_after(key, self.expectations.remaining_seconds(key) + 0.01)
            return None
        return owner
