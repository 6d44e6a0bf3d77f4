"""Leader election over a Lease, so several servers on one etcd run one set of controllers.

What belongs here: `LeaderElector` (upstream client-go `leaderelection` with a `Lease` lock:
`kube-system/podnet-controller-manager`) and the pure decision `may_take_lease`.

Invariants:
- Every change to the Lease is a compare-and-swap on its resourceVersion: of two servers
  racing for it, exactly one wins.
- A Lease held by someone else is taken over only when it has expired: its `renewTime` is
  older than `leaseDurationSeconds` by our clock *and* we have not seen it change for that long
  (the second guard protects against clock skew between hosts, as upstream does). A holder on
  this same host (a crashed predecessor) shares our clock, so the first test suffices: a
  restarted lab server leads again within one lease duration.
- The leader renews every `retry_period`; if it cannot renew for `renew_deadline` it reports
  the loss and stops its controllers before anybody else may take over (deadline < duration).
  A candidate tries every `retry_period` stretched by up to 1.2 of it at random (upstream's
  JitterUntil), so standby servers do not ask in step.
- A clean shutdown releases the Lease (empty holder), so a restarted server leads at once.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.retry import Backoff, ThrottledLog, sleep_or_stop

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-system"
LEASE_NAME = "podnet-controller-manager"


def host_of(identity: str) -> str:
    """Identities are `<hostname>_<pid>_<random>`."""
    return identity.rsplit("_", 2)[0] if identity.count("_") >= 2 else ""


def pid_of(identity: str) -> int | None:
    """The pid in an identity `<hostname>_<pid>_<random>` (None: not such an identity)."""
    parts = identity.rsplit("_", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def may_take_lease(lease: Obj, identity: str, now: datetime, unchanged_for: float) -> bool:
    """Whether `identity` may write itself as holder of `lease` now."""
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if not holder or holder == identity:
        return True
    duration = float(spec.get("leaseDurationSeconds") or 15)
    renewed = parse_rfc3339(spec.get("renewTime"))
    expired_by_clock = renewed is None or (now - renewed).total_seconds() > duration
    if expired_by_clock and host_of(holder) and host_of(holder) == host_of(identity):
        return True  # a crashed predecessor on this machine: same clock, no skew to fear
    return expired_by_clock and unchanged_for > duration


class LeaderElector:
    def __init__(
        self,
        api: Api,
        identity: str | None = None,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.api = api
        self.identity = identity or f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._observed: tuple[str, float] = ("", time.monotonic())  # (renewTime, seen at)
        self._lease: Obj | None = None
        self._candidate = Backoff(retry_period, retry_period, factor=1.0, jitter=1.2)
        self._rand = rand
        self._errors = ThrottledLog(log)

    def _new_spec(self, now: datetime, previous: Obj | None) -> Obj:
        prev_spec = (previous or {}).get("spec") or {}
        same_holder = prev_spec.get("holderIdentity") == self.identity
        transitions = int(prev_spec.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": prev_spec.get("acquireTime") if same_holder else rfc3339(now, 6),
            "renewTime": rfc3339(now, 6),
            "leaseTransitions": transitions if same_holder or previous is None else transitions + 1,
        }

    async def try_acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await self.api.get("leases", LEASE_NAME, LEASE_NAMESPACE)
        except ApiError as e:
            if e.code != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": LEASE_NAME, "namespace": LEASE_NAMESPACE},
                "spec": self._new_spec(now, None),
            }
            try:
                self._lease = await self.api.create("leases", body, LEASE_NAMESPACE)
            except ApiError as e2:
                if e2.code in (404, 409):  # namespace not there yet / somebody else won
                    return False
                raise
            return True
        renew_time = str((lease.get("spec") or {}).get("renewTime") or "")
        if renew_time != self._observed[0]:
            self._observed = (renew_time, time.monotonic())
        unchanged_for = time.monotonic() - self._observed[1]
        if not may_take_lease(lease, self.identity, now, unchanged_for):
            return False
        updated = copy.deepcopy(lease)
        updated["spec"] = self._new_spec(now, lease)
        try:
            self._lease = await self.api.update("leases", updated, LEASE_NAMESPACE)
        except ApiError as e:
            if e.code in (404, 409):
                return False
            raise
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Block until this process leads (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    self._errors.forget("acquire")
                    log.info("controllers: %s is the leader", self.identity)
                    return True
            except Exception as e:
                self._errors.failed("acquire", "controllers: leader election: %s", e)
            if not announced:
                log.info("controllers: another server leads; standing by")
                announced = True
            await sleep_or_stop(stop, self._candidate.delay(1, self._rand()))
        return False

    async def keep(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Renew until `stop`; set `lost` if renewing fails for longer than the deadline."""
        last_ok = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.retry_period)
                return
            except TimeoutError:
                pass
            try:
                if await self.try_acquire_or_renew():
                    last_ok = time.monotonic()
                    self._errors.recovered(
                        "renew", "controllers: the leader lease is renewed again"
                    )
                    continue
                lost.set()  # someone else holds it now
                return
            except Exception as e:
                self._errors.failed("renew", "controllers: renewing the leader lease failed: %s", e)
            if time.monotonic() - last_ok > self.renew_deadline:
                lost.set()
                return

    async def release(self) -> None:
        lease = self._lease
        if lease is None:
            return
        try:
            current = await self.api.get("leases", LEASE_NAME, LEASE_NAMESPACE)
            if (current.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            released = copy.deepcopy(current)
            released["spec"]["holderIdentity"] = ""
            await self.api.update("leases", released, LEASE_NAMESPACE)
        except Exception as e:
            log.debug("controllers: releasing the leader lease: %s", e)
