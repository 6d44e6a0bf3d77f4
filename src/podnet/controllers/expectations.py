"""Expectations: "I just wrote these objects; do not re-plan until my cache has seen them".

What belongs here: `Expectations`, the guard every controller that creates objects uses
(upstream `ControllerExpectations`). Without it, a reconcile that runs between a create and
the informer's ADDED event would see too few objects and create them again.

Invariants:
- Per owner key, a set of (object key, expected resourceVersion | ABSENT). The owner is
  `satisfied` when the cache holds every expected object at that resourceVersion or newer and
  none of the ABSENT ones (an object being deleted counts as absent).
- Expectations are memory only: they expire after `timeout` seconds, so a lost event or a
  controller restart can delay a reconcile but never block it. An expected object counts as
  seen once the cache held it (checked when any of the owner's objects changes), even if it
  is gone again by the time the last one arrives.
- `observe(obj_key)` is called from informer handlers and returns the owner to wake when the
  change completes that owner's expectations and a reconcile was deferred.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from podnet.api.interface import Obj
from podnet.controllers.objects import is_deleting

ABSENT = ""


def rv_at_least(have: str, want: str) -> bool:
    if have.isdigit() and want.isdigit():
        return int(have) >= int(want)
    return have == want


class Expectations:
    def __init__(self, lookup: Callable[[str], Obj | None], timeout: float = 10.0) -> None:
        self._lookup = lookup
        self.timeout = timeout
        self._pending: dict[str, dict[str, str]] = {}
        self._deadline: dict[str, float] = {}
        self._owner_of: dict[str, str] = {}
        self._waiting: set[str] = set()

    def expect_present(self, owner: str, obj_key: str, resource_version: str) -> None:
        self._add(owner, obj_key, resource_version or "0")

    def expect_absent(self, owner: str, obj_key: str) -> None:
        self._add(owner, obj_key, ABSENT)

    def _add(self, owner: str, obj_key: str, want: str) -> None:
        self._pending.setdefault(owner, {})[obj_key] = want
        self._owner_of[obj_key] = owner
        self._deadline[owner] = time.monotonic() + self.timeout

    def _met(self, obj_key: str, want: str) -> bool:
        obj = self._lookup(obj_key)
        if want == ABSENT:
            return obj is None or is_deleting(obj)
        if obj is None:
            return False
        have = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        return rv_at_least(have, want)

    def satisfied(self, owner: str) -> bool:
        pending = self._pending.get(owner)
        if not pending:
            return True
        for obj_key, want in list(pending.items()):
            if self._met(obj_key, want):
                del pending[obj_key]
                self._owner_of.pop(obj_key, None)
        if not pending or time.monotonic() > self._deadline.get(owner, 0.0):
            self.forget(owner)
            return True
        self._waiting.add(owner)
        return False

    def remaining_seconds(self, owner: str) -> float:
        return max(self._deadline.get(owner, 0.0) - time.monotonic(), 0.0)

    def observe(self, obj_key: str) -> str | None:
        """An informer saw `obj_key` change; the owner to wake, if it was waiting and is done."""
        owner = self._owner_of.get(obj_key)
        if owner is None:
            return None
        pending = self._pending.get(owner, {})
        # what is met now stays met: an object seen at its version and deleted before the
        # owner's other objects arrived must not keep the owner waiting until the deadline
        want = pending.get(obj_key)
        if want is not None and self._met(obj_key, want):
            del pending[obj_key]
            self._owner_of.pop(obj_key, None)
        if owner not in self._waiting:
            return None
        for key, want in list(pending.items()):
            if self._met(key, want):
                del pending[key]
                self._owner_of.pop(key, None)
        return None if pending else owner

    def forget(self, owner: str) -> None:
        for obj_key in self._pending.pop(owner, {}):
            self._owner_of.pop(obj_key, None)
        self._deadline.pop(owner, None)
        self._waiting.discard(owner)
