"""ClusterIP and NodePort allocation for Services, done synchronously while the API call runs
(the Service strategy, `apiserver.strategies.services`, decides when).

What belongs here: choosing, reserving and releasing service IPs (from
`ClusterConfig.service_cidr`) and node ports (from `ClusterConfig.node_port_range`), and the
plan of what a Service create/update/delete must allocate or release.

Invariants:
- One owner per IP and per port, ever: a reservation is the store key
  `/registry/allocations/serviceips/<ip>` (or `.../nodeports/<port>`) created with the store's
  create-if-absent, whose value names the owning Service's uid. That is correct under
  concurrent creates, with several servers on one etcd, and across restarts, with no in-memory
  bitmap to get out of date.
- A reservation is only released by its owner (the uid must match), so a late release can never
  free an address that was re-allocated to somebody else.
- The network address, the broadcast address and the first address (the `kubernetes`
  Service's, requested explicitly by the bootstrap) are never handed out at random.
- Callers allocate before the Service is written and roll back (`release`) if the write fails;
  they release what a Service no longer uses only after the write succeeded. A rollback releases
  only what its own attempt created: a value the same Service already held (the stored
  Service's, when the attempt started from a stale copy of it) is not the attempt's to free.
  A reservation orphaned by a crash in between is freed by `repair` once it is a minute old.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from podnet.api.errors import ApiError, Cause, invalid
from podnet.config import ClusterConfig
from podnet.store.base import KeyExists, KeyNotFound, RevisionConflict, Store

IP_PREFIX = "/registry/allocations/serviceips/"
PORT_PREFIX = "/registry/allocations/nodeports/"

_RANDOM_TRIES = 24
_IN_FLIGHT = 64  # store writes in flight per Service (a batch, not one round trip each)
_RANDOM = random.SystemRandom()

Obj = dict[str, Any]


class Reserved(enum.Enum):
    """What asking for one IP or port found."""

    NEW = "new"  # created now: the asker's to release if its write fails
    OURS = "ours"  # the same Service (uid) held it already: kept whatever the asker's write does
    TAKEN = "taken"  # another Service holds it


@dataclass(slots=True)
class Reservations:
    """What one operation reserved (created); released again if the operation fails."""

    ips: list[str] = field(default_factory=list)
    node_ports: list[int] = field(default_factory=list)


def needs_cluster_ip(svc: Obj) -> bool:
    return bool(svc.get("spec", {}).get("type", "ClusterIP") != "ExternalName")


def needs_node_ports(svc: Obj) -> bool:
    return svc.get("spec", {}).get("type") in ("NodePort", "LoadBalancer")


def _is_headless(ip: object) -> bool:
    return ip == "None"


class ServiceAllocator:
    """Reserves service IPs and node ports as store keys (see the module docstring)."""

    def __init__(self, store: Store, config: ClusterConfig) -> None:
        self._store = store
        self._network = ipaddress.ip_network(config.service_cidr)
        self._reserved_ip = ipaddress.ip_address(config.kubernetes_service_ip)
        self._port_lo, self._port_hi = config.node_port_range

    # -- single values -------------------------------------------------------------------

    async def _reserve(self, key: str, owner_uid: str, owner: str) -> Reserved:
        value = json.dumps({"uid": owner_uid, "owner": owner, "at": time.time()}).encode()
        try:
            await self._store.create(key, value)
        except KeyExists:
            current = await self._store.get(key)
            # the same Service asking again already owns it: e.g. an update computed on a stale
            # copy of the Service asks for a port the stored Service holds
            ours = current is not None and json.loads(current.value).get("uid") == owner_uid
            return Reserved.OURS if ours else Reserved.TAKEN
        return Reserved.NEW

    async def release_key(self, key: str, owner_uid: str) -> None:
        current = await self._store.get(key)
        if current is None or json.loads(current.value).get("uid") != owner_uid:
            return
        with contextlib.suppress(KeyNotFound, RevisionConflict):
            await self._store.delete(key, current.mod_revision)

    async def allocate_ip(
        self,
        requested: str | None,
        owner_uid: str,
        owner: str,
        kind_name: tuple[str, str],
        reserved: Reservations,
    ) -> str:
        """The requested IP or one chosen at random, reserved for `owner_uid`; appended to
        `reserved` if this call created the reservation."""
        kind, name = kind_name
        if requested:
            try:
                ip = ipaddress.ip_address(requested)
            except ValueError:
                raise _invalid(
                    kind,
                    name,
                    "spec.clusterIPs",
                    requested,
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ) from None
            if ip not in self._network or ip in (
                self._network.network_address,
                self._network.broadcast_address,
            ):
                raise _invalid(
                    kind,
                    name,
                    "spec.clusterIPs",
                    requested,
                    f"failed to allocate IP {requested}: the provided IP "
                    f"({requested}) is not in the valid range. The range of valid "
                    f"IPs is {self._network}",
                )
            got = await self._reserve(IP_PREFIX + str(ip), owner_uid, owner)
            if got is Reserved.TAKEN:
                raise _invalid(
                    kind,
                    name,
                    "spec.clusterIPs",
                    requested,
                    f"failed to allocate IP {requested}: provided IP is already allocated",
                )
            return self._note_ip(str(ip), got, reserved)
        size = self._network.num_addresses
        for _ in range(_RANDOM_TRIES):
            candidate = self._network[1 + secrets.randbelow(max(size - 2, 1))]
            if candidate == self._reserved_ip:
                continue
            got = await self._reserve(IP_PREFIX + str(candidate), owner_uid, owner)
            if got is not Reserved.TAKEN:
                return self._note_ip(str(candidate), got, reserved)
        # the range is nearly full: walk it once in order
        taken = {kv.key.removeprefix(IP_PREFIX) for kv in (await self._store.list(IP_PREFIX)).items}
        for host in self._network.hosts():
            if host == self._reserved_ip or str(host) in taken:
                continue
            got = await self._reserve(IP_PREFIX + str(host), owner_uid, owner)
            if got is not Reserved.TAKEN:
                return self._note_ip(str(host), got, reserved)
        raise _invalid(
            kind,
            name,
            "spec.clusterIPs",
            "",
            f"failed to allocate a serviceIP: range is full ({self._network})",
        )

    @staticmethod
    def _note_ip(ip: str, got: Reserved, reserved: Reservations) -> str:
        if got is Reserved.NEW:
            reserved.ips.append(ip)
        return ip

    async def _reserve_many(self, keys: list[str], owner_uid: str, owner: str) -> list[Any]:
        """`_reserve` for every key, `_IN_FLIGHT` at a time (the SQLite store commits writes
        that queue up together in one transaction; etcd pipelines them): a Service with
        thousands of node ports costs a few store round trips, not thousands. Each result is
        a `Reserved` or the exception that reservation raised."""
        gate = asyncio.Semaphore(_IN_FLIGHT)

        async def one(key: str) -> Reserved:
            async with gate:
                return await self._reserve(key, owner_uid, owner)

        return await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)

    async def allocate_node_ports(
        self,
        requests: list[tuple[str, int | None]],
        avoid: set[int],
        owner_uid: str,
        owner: str,
        kind_name: tuple[str, str],
        reserved: Reservations,
    ) -> list[int]:
        """The node port of each (field, requested port or None): requested ports are reserved
        as asked, the others chosen at random among the free ones (never one in `avoid`, the
        ports the Service already holds). Every reservation made (created) is appended to
        `reserved` at once, so the caller can roll back whatever happened before an error."""
        kind, name = kind_name
        chosen: list[int] = [0] * len(requests)
        explicit = [(i, fld, port) for i, (fld, port) in enumerate(requests) if port is not None]
        for _, fld, port in explicit:
            if not self._port_lo <= port <= self._port_hi:
                raise _invalid(
                    kind,
                    name,
                    fld,
                    port,
                    f"provided port is not in the valid range. The range of valid "
                    f"ports is {self._port_lo}-{self._port_hi}",
                )
        results = await self._reserve_many(
            [PORT_PREFIX + str(port) for _, _, port in explicit], owner_uid, owner
        )
        for (i, _, port), ok in zip(explicit, results, strict=True):
            if ok is Reserved.NEW:
                reserved.node_ports.append(port)
            if ok in (Reserved.NEW, Reserved.OURS):
                chosen[i] = port
        for (_, fld, port), ok in zip(explicit, results, strict=True):
            if isinstance(ok, BaseException):
                raise ok
            if ok is Reserved.TAKEN:
                raise _invalid(kind, name, fld, port, "provided port is already allocated")

        todo = [i for i, (_, port) in enumerate(requests) if port is None]
        listed = False
        while todo:
            taken = avoid | set(chosen)
            if listed or len(todo) > 1:  # a single port: try at random before listing
                keys = (await self._store.list(PORT_PREFIX)).items
                taken |= {int(kv.key.removeprefix(PORT_PREFIX)) for kv in keys}
                listed = True
            free = [p for p in range(self._port_lo, self._port_hi + 1) if p not in taken]
            if len(free) < len(todo):
                if not listed:
                    listed = True
                    continue
                raise _invalid(
                    kind, name, requests[todo[0]][0], 0, "range is full: no free node port"
                )
            picks = _RANDOM.sample(free, len(todo))
            results = await self._reserve_many(
                [PORT_PREFIX + str(port) for port in picks], owner_uid, owner
            )
            lost = []  # taken by another Service meanwhile: pick again from a fresh list
            for i, port, ok in zip(todo, picks, results, strict=True):
                if ok is Reserved.NEW:
                    reserved.node_ports.append(port)
                if ok in (Reserved.NEW, Reserved.OURS):
                    chosen[i] = port
                elif ok is Reserved.TAKEN:
                    lost.append(i)
            for ok in results:
                if isinstance(ok, BaseException):
                    raise ok
            todo, listed = lost, True
        return chosen

    async def repair(self, services: list[Obj], min_age_seconds: float = 60.0) -> int:
        """Release reservations no Service holds (a server died between reserving and
        writing the Service). Only reservations older than `min_age_seconds` are touched, so
        a create in flight on another server is never robbed. Returns how many were freed."""
        owned = {str(s.get("metadata", {}).get("uid", "")) for s in services}
        freed = 0
        now = time.time()
        for prefix in (IP_PREFIX, PORT_PREFIX):
            for kv in (await self._store.list(prefix)).items:
                try:
                    record = json.loads(kv.value)
                except ValueError:
                    continue
                if (
                    record.get("uid") in owned
                    or now - float(record.get("at", now)) < min_age_seconds
                ):
                    continue
                with contextlib.suppress(KeyNotFound, RevisionConflict):
                    await self._store.delete(kv.key, kv.mod_revision)
                    freed += 1
        return freed

    # -- whole Services ------------------------------------------------------------------

    async def release(self, reserved: Reservations, owner_uid: str) -> None:
        keys = [IP_PREFIX + ip for ip in reserved.ips]
        keys += [PORT_PREFIX + str(port) for port in reserved.node_ports]
        gate = asyncio.Semaphore(_IN_FLIGHT)

        async def one(key: str) -> None:
            async with gate:
                await self.release_key(key, owner_uid)

        results = await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def roll_back(self, reserved: Reservations, owner_uid: str, stored: Obj | None) -> None:
        """After a failed write of a Service: release what the attempt reserved, except what
        the stored Service (`stored`, the same uid) holds now: a concurrent update of the same
        Service that won may have taken the value this attempt created."""
        if stored is not None and str(stored.get("metadata", {}).get("uid", "")) == owner_uid:
            held = self.held_by(stored)
            reserved = Reservations(
                [ip for ip in reserved.ips if ip not in held.ips],
                [p for p in reserved.node_ports if p not in held.node_ports],
            )
        await self.release(reserved, owner_uid)

    async def assign(self, svc: Obj, old: Obj | None) -> Reservations:
        """Fill in `svc`'s clusterIP(s) and nodePorts in place, reserving what is new.

        `old` is the stored Service on update (None on create). Values the user did not set
        on update are carried over from `old` (upstream's patchAllocatedValues). Returns what
        was newly reserved; on any error everything reserved so far is released again.
        """
        meta = svc["metadata"]
        uid = str(meta.get("uid", ""))
        owner = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        kind_name = ("Service", str(meta.get("name", "")))
        spec = svc.setdefault("spec", {})
        old_spec = (old or {}).get("spec", {})
        reserved = Reservations()
        try:
            if needs_cluster_ip(svc):
                wanted = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
                old_ip = old_spec.get("clusterIP") if old and needs_cluster_ip(old) else None
                if not wanted and old_ip:
                    wanted = old_ip
                if _is_headless(wanted):
                    spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
                elif wanted and wanted == old_ip:
                    spec["clusterIP"], spec["clusterIPs"] = old_ip, [old_ip]
                else:
                    ip = await self.allocate_ip(wanted, uid, owner, kind_name, reserved)
                    spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
            else:
                spec.pop("clusterIP", None)
                spec.pop("clusterIPs", None)

            ports = spec.get("ports") or []
            if needs_node_ports(svc):
                old_ports = {
                    (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                    for p in old_spec.get("ports") or []
                    if isinstance(p, dict) and old is not None and needs_node_ports(old)
                }
                held = {int(n) for n in old_ports.values() if isinstance(n, int)}
                asking: list[Obj] = []
                requests: list[tuple[str, int | None]] = []
                for i, port in enumerate(ports):
                    if not isinstance(port, dict):
                        continue
                    node_port = port.get("nodePort") or old_ports.get(
                        (port.get("port"), port.get("protocol", "TCP"))
                    )
                    if isinstance(node_port, int) and node_port in held:
                        port["nodePort"] = node_port
                        continue
                    asking.append(port)
                    requests.append(
                        (
                            f"spec.ports[{i}].nodePort",
                            node_port if isinstance(node_port, int) else None,
                        )
                    )
                got = await self.allocate_node_ports(
                    requests, held, uid, owner, kind_name, reserved
                )
                for port, node_port in zip(asking, got, strict=True):
                    port["nodePort"] = node_port
            else:
                for port in ports:
                    if isinstance(port, dict):
                        port.pop("nodePort", None)
        except BaseException:
            await self.release(reserved, uid)
            raise
        return reserved

    @staticmethod
    def held_by(svc: Obj | None) -> Reservations:
        """What a stored Service holds (its clusterIP and node ports)."""
        held = Reservations()
        if not svc:
            return held
        spec = svc.get("spec", {})
        ip = spec.get("clusterIP")
        if ip and not _is_headless(ip) and needs_cluster_ip(svc):
            held.ips.append(str(ip))
        if needs_node_ports(svc):
            for port in spec.get("ports") or []:
                if isinstance(port, dict) and isinstance(port.get("nodePort"), int):
                    held.node_ports.append(port["nodePort"])
        return held

    async def release_unused(self, old: Obj, new: Obj | None) -> None:
        """After a successful write: release what `old` held and `new` does not."""
        before, after = self.held_by(old), self.held_by(new)
        dropped = Reservations(
            [ip for ip in before.ips if ip not in after.ips],
            [p for p in before.node_ports if p not in after.node_ports],
        )
        await self.release(dropped, str(old.get("metadata", {}).get("uid", "")))


def _invalid(kind: str, name: str, fld: str, value: object, detail: str) -> ApiError:
    shown = json.dumps(value) if isinstance(value, str) else str(value)
    return invalid(
        kind, name, [Cause(fld, "FieldValueInvalid", f"Invalid value: {shown}: {detail}")]
    )
