"""The `kubernetes` Service's endpoints follow the live API servers: upstream's lease endpoint
reconciler (`--endpoint-reconciler-type=lease`, kube-apiserver's default).

What belongs here: `EndpointReconciler`, which every server runs, and the pure steps it is made
of (`live_addresses`, `with_addresses`, `slice_with_addresses`). Each server holds a Lease
`kube-system/apiserver-<address>-<port>` (label `apiserver.kubernetes.io/identity=kube-apiserver`,
upstream's identity-lease label; its advertise address in `podnet.io/advertise-address`),
renewed every `renew_seconds`; on every renewal it writes `default/kubernetes`'s Endpoints and
EndpointSlice so they list exactly the addresses whose Lease is live (renewed within its
duration), its own always among them. A crashed server's address is gone one lease duration
after its last renewal; a server stopping cleanly deletes its Lease and takes its address out
at once (upstream's RemoveEndpoints on shutdown).

Upstream keeps these leases as etcd keys with a TTL (`/masterleases/<ip>`); podnet's store has
no TTLs, so they are Lease objects, and expiry is judged by the reader's clock as for the
controllers' Lease (control hosts keep their clocks in sync: NTP).

Invariants:
- Only the address list (and the port, the writing server's secure port: every server of a
  cluster serves on the same port, as upstream requires) is written, and only when the list
  changes; every other field of the Endpoints and the slice is kept (bootstrap sets the port
  at every server start).
- Every write is a compare-and-swap on the resourceVersion; a conflict (another server wrote
  first) is retried on the next renewal, when it reads the other's result.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.retry import ThrottledLog, sleep_or_stop

log = logging.getLogger(__name__)

SERVICE_NAME = "kubernetes"
SERVICE_NAMESPACE = "default"
LEASE_NAMESPACE = "kube-system"
IDENTITY_LABEL = "apiserver.kubernetes.io/identity"
IDENTITY = "kube-apiserver"
ADDRESS_ANNOTATION = "podnet.io/advertise-address"
LEASE_SECONDS = 15  # upstream's master lease TTL
RENEW_SECONDS = 5.0


def lease_name(address: str, port: int) -> str:
    """`apiserver-172-31-4-2-6443` for 172.31.4.2:6443 (a DNS subdomain also for IPv6); the
    port keeps apart servers sharing an address (a test's servers on loopback)."""
    return f"apiserver-{re.sub(r'[^0-9a-z]', '-', address.lower())}-{port}"


def live_addresses(leases: Iterable[Obj], now: datetime) -> list[str]:
    """The advertise addresses of the Leases renewed within their duration, sorted."""
    live = set()
    for lease in leases:
        address = ((lease.get("metadata") or {}).get("annotations") or {}).get(ADDRESS_ANNOTATION)
        spec = lease.get("spec") or {}
        renewed = parse_rfc3339(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or LEASE_SECONDS)
        if address and renewed is not None and (now - renewed).total_seconds() <= duration:
            live.add(str(address))
    return sorted(live)


def endpoint_addresses(endpoints: Obj | None) -> list[str]:
    subsets = (endpoints or {}).get("subsets") or []
    return [str(a.get("ip")) for s in subsets for a in s.get("addresses") or [] if a.get("ip")]


def with_addresses(current: Obj | None, addresses: Iterable[str], port: int) -> Obj:
    """The `kubernetes` Endpoints listing `addresses` on `port` (the rest of `current` kept)."""
    obj: Obj = copy.deepcopy(current) if current else {
        "metadata": {
            "name": SERVICE_NAME,
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
        },
    }  # fmt: skip
    obj["subsets"] = [
        {
            "addresses": [{"ip": ip} for ip in addresses],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }
    ]
    return obj


def slice_with_addresses(current: Obj | None, addresses: Iterable[str], port: int) -> Obj:
    """The `kubernetes` EndpointSlice listing `addresses` on `port` (the rest kept)."""
    obj: Obj = copy.deepcopy(current) if current else {
        "metadata": {
            "name": SERVICE_NAME,
            "labels": {"kubernetes.io/service-name": SERVICE_NAME},
        },
        "addressType": "IPv4",
    }  # fmt: skip
    obj["endpoints"] = [{"addresses": [ip], "conditions": {"ready": True}} for ip in addresses]
    obj["ports"] = [{"name": "https", "port": port, "protocol": "TCP"}]
    return obj


def slice_addresses(endpoint_slice: Obj | None) -> list[str]:
    return [
        str(a)
        for e in (endpoint_slice or {}).get("endpoints") or []
        for a in e.get("addresses") or []
    ]


class EndpointReconciler:
    """This server's Lease and the `kubernetes` endpoints; `run` until the stop event."""

    def __init__(
        self,
        api: Api,
        address: str,
        port: int,
        *,
        lease_seconds: int = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.address = address
        self.port = port
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.clock = clock
        self.name = lease_name(address, port)
        self._errors = ThrottledLog(log)

    def _lease(self, now: datetime) -> Obj:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": LEASE_NAMESPACE,
                "labels": {IDENTITY_LABEL: IDENTITY},
                "annotations": {ADDRESS_ANNOTATION: self.address},
            },
            "spec": {
                "holderIdentity": self.address,
                "leaseDurationSeconds": self.lease_seconds,
                "renewTime": rfc3339(now, 6),
            },
        }

    async def renew(self) -> None:
        wanted = self._lease(self.clock())
        try:
            current = await self.api.get("leases", self.name, LEASE_NAMESPACE)
        except ApiError as exc:
            if exc.code != 404:
                raise
            await self.api.create("leases", wanted, LEASE_NAMESPACE)
            return
        current["metadata"].setdefault("labels", {}).update(wanted["metadata"]["labels"])
        current["metadata"].setdefault("annotations", {}).update(wanted["metadata"]["annotations"])
        current["spec"] = {**(current.get("spec") or {}), **wanted["spec"]}
        await self.api.update("leases", current, LEASE_NAMESPACE)

    async def reconcile(self, *, leaving: bool = False) -> list[str]:
        """Write the live servers' addresses (this one's unless `leaving`); returns them."""
        listed = await self.api.list(
            "leases", LEASE_NAMESPACE, label_selector=f"{IDENTITY_LABEL}={IDENTITY}"
        )
        live = set(live_addresses(listed.get("items") or [], self.clock()))
        live.discard(self.address)
        if not leaving:
            live.add(self.address)
        addresses = sorted(live)
        for plural, read, build in (
            ("endpoints", endpoint_addresses, with_addresses),
            ("endpointslices", slice_addresses, slice_with_addresses),
        ):
            current: Obj | None
            try:
                current = await self.api.get(plural, SERVICE_NAME, SERVICE_NAMESPACE)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                current = None
            if current is not None and read(current) == addresses:
                continue
            wanted = build(current, addresses, self.port)
            if current is None:
                await self.api.create(plural, wanted, SERVICE_NAMESPACE)
            else:
                await self.api.update(plural, wanted, SERVICE_NAMESPACE)
        return addresses

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.renew()
                await self.reconcile()
                self._errors.recovered("pass", "kubernetes endpoints: reconciled again")
            except ApiError as exc:
                if exc.code != 409:  # a conflict: another server wrote first; next pass
                    self._errors.failed("pass", "kubernetes endpoints: %s", exc)
            except Exception as exc:
                self._errors.failed("pass", "kubernetes endpoints: %s", exc)
            await sleep_or_stop(stop, self.renew_seconds)
        await self.leave()

    async def leave(self) -> None:
        """A clean shutdown: this server's address out of the endpoints, its Lease deleted."""
        try:
            await self.reconcile(leaving=True)
            await self.api.delete("leases", self.name, LEASE_NAMESPACE)
        except Exception as exc:
            log.warning("kubernetes endpoints: could not take this server out: %s", exc)
