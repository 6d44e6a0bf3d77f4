"""What the DNS server knows of the cluster: compact, indexed copies of API objects.

`ClusterView` holds only what answers need — per Service its type, ClusterIPs, ports and
ExternalName; per EndpointSlice its Service, ports and *ready* addresses (with hostnames);
the names of Namespaces; in `pods verified` mode the IPs of live Pods — plus the reverse
indexes PTR and NS answers need. It is fed by the reflector's `replace_entries(entries)` (a
full list, each object converted by `entry` as its page arrives) and `apply(type, obj)` (one
pair per resource), and `records.answer` reads it; nothing here does I/O, so tests build a
view from plain objects with `ClusterView.of(...)`. Records share what repeats (interned
names, one tuple per distinct port list): 10k Services and their slices take about 8 MB.

Conversions follow CoreDNS's kubernetes plugin (`object/service.go`, `object/endpoint.go`,
`object/pod.go`):
- a Service is headless when `spec.clusterIP` is "None"; its ClusterIPs are `clusterIPs`
  (else `clusterIP`);
- an EndpointSlice counts only endpoints whose `conditions.ready` is true or unset, every
  address of each; a slice with no ports gets the port sentinel -1 (it still gives A records,
  never SRV); slices without the `kubernetes.io/service-name` label are ignored, and so are
  slices with no ready address (answers only ever read addresses: 10k Services without
  ready pods keep no slice records);
- a Pod counts while it has an IP, is not being deleted and is not Succeeded/Failed/Unknown.

Invariants: every index is updated together with the map it indexes (so a deleted object
leaves no reverse entry behind); `generation` increases on every change, so a cache of
answers keyed by it is never stale; `synced` is true only once every watched resource has
delivered its first full list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from sys import intern
from typing import Any, cast

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NO_PORT = -1  # CoreDNS's sentinel for a slice that lists no ports
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Unknown"})
RESOURCES = ("services", "endpointslices", "namespaces")  # + "pods" in verified mode

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    protocol: str  # TCP | UDP | SCTP ("" for the sentinel)
    port: int


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ips: tuple[str, ...]  # empty when headless or ExternalName
    headless: bool
    external_name: str
    ports: tuple[Port, ...]


@dataclass(frozen=True, slots=True)
class Address:
    ip: str
    hostname: str  # the endpoint's `hostname`, "" when unset

    @property
    def dns_label(self) -> str:
        """CoreDNS's `endpointHostname`: the hostname, else the IP with dashes."""
        if self.hostname:
            return self.hostname
        return self.ip.replace(".", "-").replace(":", "-")


@dataclass(frozen=True, slots=True)
class Slice:
    namespace: str
    name: str
    service: str
    addresses: tuple[Address, ...]  # ready endpoints only
    ports: tuple[Port, ...]  # (Port("", "", NO_PORT),) when the slice lists none


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


def _key(obj: Mapping[str, Any]) -> Key:
    meta = _meta(obj)
    return intern(str(meta.get("namespace") or "")), intern(str(meta.get("name") or ""))


# 10k Services mostly share a handful of port lists: one copy of each (JSON gives every
# object its own strings, so names are interned too: a Service and its slices share theirs)
_PORTS: dict[tuple[tuple[str, str, int], ...], tuple[Port, ...]] = {}


def _ports(items: Iterable[Mapping[str, Any]]) -> tuple[Port, ...]:
    key = tuple(
        (intern(str(p.get("name") or "")), intern(str(p.get("protocol") or "TCP")),
         int(p.get("port") or 0))
        for p in items
    )  # fmt: skip
    found = _PORTS.get(key)
    if found is None:
        found = _PORTS[key] = tuple(Port(*fields) for fields in key)
    return found


def service_of(obj: Mapping[str, Any]) -> Service:
    spec = obj.get("spec") or {}
    namespace, name = _key(obj)
    cluster_ip = str(spec.get("clusterIP") or "")
    headless = cluster_ip == "None"
    ips = [str(ip) for ip in spec.get("clusterIPs") or ([cluster_ip] if cluster_ip else [])]
    return Service(
        namespace=namespace,
        name=name,
        type=intern(str(spec.get("type") or "ClusterIP")),
        cluster_ips=() if headless else tuple(ip for ip in ips if ip and ip != "None"),
        headless=headless,
        external_name=str(spec.get("externalName") or ""),
        ports=_ports(spec.get("ports") or ()),
    )


def slice_of(obj: Mapping[str, Any]) -> Slice | None:
    """The slice's ready addresses, or None for a slice that belongs to no Service."""
    namespace, name = _key(obj)
    service = (_meta(obj).get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        return None
    ports = _ports(obj.get("ports") or ()) or (Port("", "", NO_PORT),)
    addresses = []
    for endpoint in obj.get("endpoints") or ():
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        hostname = str(endpoint.get("hostname") or "")
        addresses += [Address(str(ip), hostname) for ip in endpoint.get("addresses") or ()]
    return Slice(namespace, name, intern(str(service)), tuple(addresses), ports)


def pod_ips(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """The IPs a `pods verified` answer may give for this pod (none once it is going away)."""
    status = obj.get("status") or {}
    if _meta(obj).get("deletionTimestamp") or status.get("phase") in TERMINAL_PHASES:
        return ()
    ips = [str(p.get("ip")) for p in status.get("podIPs") or () if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return tuple(ips)


# what the view keeps of one object: its key and its record (see `entry`)
Entry = tuple[Key, Service | Slice | tuple[str, ...] | None]


def entry(resource: str, obj: Mapping[str, Any]) -> Entry:
    """One listed object as the view keeps it: a Service, a Slice (None: no Service's), a
    Pod's IPs, or nothing but the key (a Namespace)."""
    key = _key(obj)
    if resource == "services":
        return key, service_of(obj)
    if resource == "endpointslices":
        return key, slice_of(obj)
    if resource == "pods":
        return key, pod_ips(obj)
    if resource == "namespaces":
        return key, None
    raise ValueError(f"ClusterView does not keep {resource!r}")


class ClusterView:
    """The indexed copy; see the module docstring. Mutated only by `replace` and `apply`."""

    def __init__(self, resources: Iterable[str] = RESOURCES) -> None:
        self.resources = tuple(resources)
        self.listed: set[str] = set()
        self.generation = 0
        self.serial = 0  # the SOA serial: the server sets it to the time of the last change
        self.services: dict[Key, Service] = {}
        self.slices: dict[Key, Slice] = {}
        self.namespaces: set[str] = set()
        self.pods: dict[Key, tuple[str, ...]] = {}
        # indexes
        self.slices_by_service: dict[Key, tuple[Slice, ...]] = {}  # by slice name
        # by IP: the keys of what has it (tuples: almost always one key, a set is 4x larger)
        self.services_by_ip: dict[str, tuple[Key, ...]] = {}
        self.slices_by_ip: dict[str, tuple[Key, ...]] = {}
        self.pods_by_ip: dict[str, tuple[Key, ...]] = {}

    @classmethod
    def of(
        cls,
        services: Iterable[Mapping[str, Any]] = (),
        endpointslices: Iterable[Mapping[str, Any]] = (),
        namespaces: Iterable[Mapping[str, Any]] = (),
        pods: Iterable[Mapping[str, Any]] | None = None,
    ) -> ClusterView:
        """A fully listed view of these objects (pods only when given)."""
        view = cls((*RESOURCES, "pods") if pods is not None else RESOURCES)
        view.replace("services", services)
        view.replace("endpointslices", endpointslices)
        view.replace("namespaces", namespaces)
        if pods is not None:
            view.replace("pods", pods)
        return view

    @property
    def synced(self) -> bool:
        return self.listed.issuperset(self.resources)

    # -- feeding ---------------------------------------------------------------------------

    def replace(self, resource: str, items: Iterable[Mapping[str, Any]]) -> None:
        """The full list of one resource (first list or re-list)."""
        self.replace_entries(resource, [entry(resource, obj) for obj in items])

    def replace_entries(self, resource: str, entries: Iterable[Entry]) -> None:
        """`replace` with the objects already converted by `entry` (as the server's
        reflectors do, page by page)."""
        if resource == "services":
            for key in list(self.services):
                self._drop_service(key)
            for _, value in entries:
                self._put_service(cast(Service, value))
        elif resource == "endpointslices":
            for key in list(self.slices):
                self._drop_slice(key)
            for key, value in entries:
                self._put_slice(key, cast(Slice | None, value))
        elif resource == "namespaces":
            self.namespaces = {name for (_namespace, name), _value in entries}
        elif resource == "pods":
            for key in list(self.pods):
                self._drop_pod(key)
            for key, value in entries:
                self._put_pod(key, cast(tuple[str, ...], value))
        else:
            raise ValueError(f"ClusterView does not keep {resource!r}")
        self.listed.add(resource)
        self.generation += 1

    def apply(self, resource: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED or DELETED) of one resource."""
        key = _key(obj)
        deleted = event == "DELETED"
        if resource == "services":
            self._drop_service(key)
            if not deleted:
                self._put_service(service_of(obj))
        elif resource == "endpointslices":
            self._drop_slice(key)
            if not deleted:
                self._put_slice(key, slice_of(obj))
        elif resource == "namespaces":
            if deleted:
                self.namespaces.discard(key[1])
            else:
                self.namespaces.add(key[1])
        elif resource == "pods":
            self._drop_pod(key)
            if not deleted:
                self._put_pod(key, pod_ips(obj))
        else:
            raise ValueError(f"ClusterView does not keep {resource!r}")
        self.generation += 1

    # -- reading ---------------------------------------------------------------------------

    def slices_of(self, namespace: str, service: str) -> list[Slice]:
        """The Service's slices, by slice name (a stable order for answers)."""
        return list(self.slices_by_service.get((namespace, service), ()))

    def services_with_ip(self, ip: str) -> list[Service]:
        return [self.services[k] for k in sorted(self.services_by_ip.get(ip, ()))]

    def slices_with_ip(self, ip: str) -> list[Slice]:
        return [self.slices[k] for k in sorted(self.slices_by_ip.get(ip, ()))]

    def pod_namespaces_with_ip(self, ip: str) -> set[str]:
        return {namespace for namespace, _ in self.pods_by_ip.get(ip, ())}

    # -- index upkeep ----------------------------------------------------------------------

    def _put_service(self, service: Service) -> None:
        key = (service.namespace, service.name)
        self.services[key] = service
        for ip in service.cluster_ips:
            _index(self.services_by_ip, ip, key)

    def _drop_service(self, key: Key) -> None:
        service = self.services.pop(key, None)
        if service is not None:
            for ip in service.cluster_ips:
                _unindex(self.services_by_ip, ip, key)

    def _put_slice(self, key: Key, found: Slice | None) -> None:
        if found is None or not found.addresses:  # no ready address: it answers nothing
            return
        self.slices[key] = found
        owner = (found.namespace, found.service)
        siblings = (*self.slices_by_service.get(owner, ()), found)
        self.slices_by_service[owner] = tuple(sorted(siblings, key=lambda s: s.name))
        for address in found.addresses:
            _index(self.slices_by_ip, address.ip, key)

    def _drop_slice(self, key: Key) -> None:
        found = self.slices.pop(key, None)
        if found is None:
            return
        owner = (found.namespace, found.service)
        siblings = tuple(s for s in self.slices_by_service.get(owner, ()) if s is not found)
        if siblings:
            self.slices_by_service[owner] = siblings
        else:
            self.slices_by_service.pop(owner, None)
        for address in found.addresses:
            _unindex(self.slices_by_ip, address.ip, key)

    def _put_pod(self, key: Key, ips: tuple[str, ...]) -> None:
        if not ips:
            return
        self.pods[key] = ips
        for ip in ips:
            _index(self.pods_by_ip, ip, key)

    def _drop_pod(self, key: Key) -> None:
        for ip in self.pods.pop(key, ()):
            _unindex(self.pods_by_ip, ip, key)


def _index(index: dict[str, tuple[Key, ...]], ip: str, key: Key) -> None:
    keys = index.get(ip, ())
    if key not in keys:
        index[ip] = (*keys, key)


def _unindex(index: dict[str, tuple[Key, ...]], ip: str, key: Key) -> None:
    keys = tuple(k for k in index.get(ip, ()) if k != key)
    if keys:
        index[ip] = keys
    else:
        index.pop(ip, None)
