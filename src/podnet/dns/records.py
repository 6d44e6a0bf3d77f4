"""The cluster zone's answers: `answer(view, config, qname, qtype)`, a pure function.

It decides what CoreDNS's `kubernetes` plugin (configured as kubeadm's Corefile does:
`kubernetes cluster.local in-addr.arpa ip6.arpa { pods insecure; fallthrough in-addr.arpa
ip6.arpa; ttl 30 }`) would answer, record for record, following the Kubernetes DNS
specification (kubernetes/dns docs/specification.md). The result is a `Reply` (rcode and
sections as dnspython RRsets), or `FORWARD` when the name belongs upstream.

The rules, as the plugin has them (names compared case-insensitively):
- `<svc>.<ns>.svc.<zone>` A: the ClusterIPs; headless: one A per ready endpoint address;
  ExternalName: a CNAME to the external name (its own records come from upstream, see
  `Chase`). `<host>.<svc>.<ns>.svc.<zone>`: the endpoints whose hostname (else dashed IP)
  is `<host>`. `_<port>._<proto>.<svc>...` narrows to matching ports (any record type).
- SRV: one per matching port (headless and endpoint names: per endpoint and port), priority
  0, weight 100 split evenly, target the service (or `<host>.<svc>`) name, A records of the
  targets in the additional section; unnamed ports only answer the bare service name.
- PTR: a ClusterIP gives its Service's name; else every endpoint with that IP gives
  `<host>.<svc>.<ns>.svc.<zone>`.
- `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` A: in `insecure` mode any IP (the namespace must
  exist); in `verified` mode only a live pod's IP in that namespace.
- `dns-version.<zone>` TXT "1.1.0" (TTL 28800); every other TXT in the zone is NODATA.
- Negative answers carry the zone's SOA (TTL and minimum = the zone TTL). A name that does
  not exist (no such namespace, service, port, endpoint, a label that is not `svc`/`pod`, too
  many labels) is NXDOMAIN — or SERVFAIL while the view has not had its first full list, or
  FORWARD in a fallthrough (reverse) zone; a name that exists without the asked type is
  NOERROR with no answer (AAAA of an IPv4 Service, `<ns>.svc.<zone>`, the zone apex).
- SOA only at the apex; NS at the apex is the DNS Service itself; AXFR/IXFR are refused.

Records are one RR per RRset, in the plugin's order, so a UDP answer can be truncated RR by
RR (wire.py); owners are lower case (wire.py gives the asker's spelling back).
"""

from __future__ import annotations

import functools
import ipaddress
import math
from dataclasses import dataclass, field, replace

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

from podnet.dns.cluster import NO_PORT, ClusterView, Service

SCHEMA_VERSION = "1.1.0"  # CoreDNS's DNSSchemaVersion
SCHEMA_TTL = 28800
POD_MODES = ("insecure", "verified", "disabled")
IN = dns.rdataclass.IN
T = dns.rdatatype.RdataType
MAX_CNAME_CHAIN = 8  # CoreDNS stops following in-zone CNAMEs after 8


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """What the Corefile's `kubernetes` block says, plus the server's own addresses."""

    zone: str = "cluster.local"
    ttl: int = 30
    pods: str = "insecure"
    reverse_zones: tuple[str, ...] = ("in-addr.arpa", "ip6.arpa")
    local_ips: tuple[str, ...] = ()  # this server's pod IPs (NS answers)

    def __post_init__(self) -> None:
        if self.pods not in POD_MODES:
            raise ValueError(f"pods mode {self.pods!r} is not one of {', '.join(POD_MODES)}")
        if not 0 <= self.ttl <= 3600:
            raise ValueError(f"ttl {self.ttl} must be between 0 and 3600 seconds")
        try:
            dns.name.from_text(self.zone)
        except dns.exception.DNSException as exc:
            raise ValueError(f"zone {self.zone!r} is not a domain name: {exc}") from exc

    @property
    def origin(self) -> str:
        return fqdn(self.zone)

    @property
    def zones(self) -> tuple[str, ...]:
        """Every zone served, longest first (the plugin's `Zones.Matches`)."""
        return tuple(sorted((fqdn(z) for z in (self.zone, *self.reverse_zones)), key=len)[::-1])

    @property
    def fallthrough(self) -> tuple[str, ...]:
        """Zones whose name errors go to the next plugin (`forward`): the reverse zones."""
        return tuple(fqdn(z) for z in self.reverse_zones)


def fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True, slots=True)
class Chase:
    """An ExternalName CNAME whose target lives outside the zone: the server looks up
    `target` upstream and appends its answer after `cnames` (CoreDNS's `Upstream.Lookup`);
    when that lookup fails the CNAMEs are dropped."""

    cnames: tuple[dns.rrset.RRset, ...]
    target: str
    rdtype: int


@dataclass(frozen=True, slots=True)
class Reply:
    rcode: int
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()
    authoritative: bool = True
    truncated: bool = False
    chase: Chase | None = None
    soa: tuple[dns.rrset.RRset, ...] = field(default=(), compare=False)  # for `complete`


class _Forward:
    def __repr__(self) -> str:
        return "FORWARD"


FORWARD = _Forward()  # the name is not ours (or falls through): ask the upstream resolvers


class _NameError(Exception):
    """The plugin's errNoItems / errNsNotExposed / errInvalidRequest: the name is absent."""


@dataclass(frozen=True, slots=True)
class _Found:
    """CoreDNS's msg.Service: one candidate record before it becomes an RR."""

    host: str  # an IP address, or a domain name (ExternalName)
    port: int = NO_PORT
    domain: str = ""  # the record's own name (SRV/NS target, A in the additional section)
    text: str = ""
    ttl: int = 0

    @property
    def is_name(self) -> bool:
        return not self.text and _ip(self.host) is None


@dataclass(slots=True)
class _Request:
    kind: str = ""  # "svc" | "pod" | "" (the apex, `svc.<zone>`, `pod.<zone>`)
    namespace: str = ""
    service: str = ""
    endpoint: str = ""
    port: str = ""
    protocol: str = ""


def answer(view: ClusterView, config: DnsConfig, qname: str, qtype: int) -> Reply | _Forward:
    """The reply for one question (see the module docstring); `qname` in any case."""
    name = fqdn(qname)
    zone = next((z for z in config.zones if name == z or name.endswith("." + z)), None)
    if zone is None:
        return FORWARD
    lookup = _Lookup(view, config, zone)
    soa = (lookup.soa(),)
    records: list[dns.rrset.RRset] = []
    extra: list[dns.rrset.RRset] = []
    chase: Chase | None = None
    try:
        if qtype in (T.AXFR, T.IXFR):
            return Reply(dns.rcode.REFUSED, authoritative=False)
        if qtype in (T.A, T.AAAA):
            records, chase = lookup.address(name, qtype, ())
        elif qtype == T.TXT:
            records = lookup.txt(name)
        elif qtype == T.CNAME:
            records = lookup.cname(name)
        elif qtype == T.PTR:
            records = lookup.ptr(name)
        elif qtype == T.MX:
            lookup.services(name, qtype)  # no Service has mail exchangers: NODATA or NXDOMAIN
        elif qtype == T.SRV:
            records, extra = lookup.srv(name)
        elif qtype == T.SOA:
            records = list(soa) if name == zone else []
        elif qtype == T.NS and name == zone:
            records, extra = lookup.ns(name)
        else:  # a fake A lookup tells NODATA from NXDOMAIN
            lookup.address(name, T.A, ())
    except _NameError:
        if zone in config.fallthrough:
            return FORWARD
        rcode = dns.rcode.SERVFAIL if not view.synced else dns.rcode.NXDOMAIN
        return Reply(rcode, authority=soa)
    if chase is not None:
        return Reply(dns.rcode.NOERROR, answer=tuple(records), chase=chase, soa=soa)
    if not records:
        return Reply(dns.rcode.NOERROR, authority=soa)
    return Reply(dns.rcode.NOERROR, answer=tuple(records), additional=tuple(extra))


def complete(reply: Reply, looked_up: list[dns.rrset.RRset] | None, truncated: bool) -> Reply:
    """The reply once the server has looked up `reply.chase` upstream (None: it failed)."""
    if reply.chase is None:
        return reply
    answer = list(reply.answer)
    if looked_up is not None:
        answer += [*reply.chase.cnames, *looked_up]
    if not answer:
        return Reply(reply.rcode, authority=reply.soa)
    return replace(reply, answer=tuple(answer), chase=None, truncated=reply.truncated or truncated)


# -- the lookups -----------------------------------------------------------------------------


class _Lookup:
    """One question's lookups against the view; methods mirror CoreDNS's backend functions."""

    def __init__(self, view: ClusterView, config: DnsConfig, zone: str) -> None:
        self.view = view
        self.config = config
        self.zone = zone
        self.ttl = config.ttl

    # plugin.A / plugin.AAAA
    def address(
        self, name: str, qtype: int, previous: tuple[dns.rrset.RRset, ...]
    ) -> tuple[list[dns.rrset.RRset], Chase | None]:
        records: list[dns.rrset.RRset] = []
        chase: Chase | None = None
        seen: set[str] = set()
        for found in self.services(name, qtype):
            if found.is_name:
                target = fqdn(found.host)
                if target == name or len(previous) >= MAX_CNAME_CHAIN:
                    continue
                cname = _rr(name, self.ttl, dns.rdtypes.ANY.CNAME.CNAME(IN, T.CNAME, _n(target)))
                if any(c == cname for c in previous):
                    continue
                if target.endswith("." + self.zone):
                    try:
                        more, deeper = self.address(target, qtype, (*previous, cname))
                    except _NameError:
                        continue
                    if deeper is not None:
                        chase = Chase((cname, *deeper.cnames), deeper.target, qtype)
                    elif more:
                        records += [cname, *more]
                    continue
                chase = Chase((cname,), target, qtype)
                continue
            ip = _ip(found.host)
            if ip is None or found.host in seen:
                continue
            if qtype == T.A and ip.version == 4:
                seen.add(found.host)
                records.append(_rr(name, found.ttl, dns.rdtypes.IN.A.A(IN, T.A, found.host)))
            elif qtype == T.AAAA and ip.version == 6:
                seen.add(found.host)
                records.append(
                    _rr(name, found.ttl, dns.rdtypes.IN.AAAA.AAAA(IN, T.AAAA, found.host))
                )
        return records, chase

    # plugin.SRV
    def srv(self, name: str) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        found_all = self.services(name, T.SRV)
        weight = max(1, math.floor(100.0 / (100 * len(found_all) or 1) * 100))
        records: list[dns.rrset.RRset] = []
        extra: list[dns.rrset.RRset] = []
        seen_srv: set[tuple[str, int]] = set()
        seen_addr: set[tuple[str, str]] = set()
        for found in found_all:
            if found.port == NO_PORT:
                continue
            ip = _ip(found.host)
            if ip is None:
                continue
            target = found.domain
            if (target, found.port) not in seen_srv:
                seen_srv.add((target, found.port))
                rdata = dns.rdtypes.IN.SRV.SRV(IN, T.SRV, 0, weight, found.port, _n(target))
                records.append(_rr(name, found.ttl, rdata))
            if (target, found.host) not in seen_addr:
                seen_addr.add((target, found.host))
                extra.append(_address_rr(target, found.ttl, found.host, ip.version))
        return records, extra

    # plugin.TXT
    def txt(self, name: str) -> list[dns.rrset.RRset]:
        return [
            _rr(name, found.ttl, dns.rdtypes.ANY.TXT.TXT(IN, T.TXT, [found.text.encode()]))
            for found in self.services(name, T.TXT)
            if found.text
        ]

    # plugin.CNAME
    def cname(self, name: str) -> list[dns.rrset.RRset]:
        found = self.services(name, T.CNAME)
        if found and found[0].is_name:
            target = _n(fqdn(found[0].host))
            return [_rr(name, found[0].ttl, dns.rdtypes.ANY.CNAME.CNAME(IN, T.CNAME, target))]
        return []

    # plugin.PTR + Kubernetes.Reverse
    def ptr(self, name: str) -> list[dns.rrset.RRset]:
        ip = address_from_reverse(name)
        if ip is None:
            self.records(name)
            return []
        targets = self.reverse(ip)
        if not targets:
            raise _NameError
        return [
            _rr(name, self.ttl, dns.rdtypes.ANY.PTR.PTR(IN, T.PTR, _n(target)))
            for target in dict.fromkeys(targets)
        ]

    # plugin.NS at the apex
    def ns(self, name: str) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        records: list[dns.rrset.RRset] = []
        extra: list[dns.rrset.RRset] = []
        seen: set[str] = set()
        for server, ip in self.ns_addresses():
            parsed = _ip(ip)
            if parsed is None:
                continue
            extra.append(_address_rr(server, self.ttl, ip, parsed.version))
            if server not in seen:
                seen.add(server)
                records.append(_rr(name, self.ttl, dns.rdtypes.ANY.NS.NS(IN, T.NS, _n(server))))
        return records, extra

    def soa(self) -> dns.rrset.RRset:
        return _soa(self.zone, self.view.serial & 0xFFFFFFFF, self.ttl)

    # Kubernetes.Services
    def services(self, name: str, qtype: int) -> list[_Found]:
        if qtype == T.TXT:
            if name == "dns-version." + self.zone:
                return [_Found(host="", text=SCHEMA_VERSION, ttl=SCHEMA_TTL)]
            return []
        if name == "ns.dns." + self.zone:
            return [_Found(host=ip, ttl=self.ttl) for _, ip in self.ns_addresses()]
        found = self.records(name)
        if qtype == T.SRV:
            found = [f for f in found if not f.is_name]
        return found

    # Kubernetes.Records
    def records(self, name: str) -> list[_Found]:
        request = self.parse(name)
        if not request.kind:
            return []
        if address_from_reverse(name) is not None or name.endswith(".arpa."):
            raise _NameError
        if request.namespace not in self.view.namespaces:
            raise _NameError
        if request.kind == "pod":
            return self.pods(request)
        return self.find_services(request)

    # parseRequest
    def parse(self, name: str) -> _Request:
        base = name[: -len(self.zone)].rstrip(".")
        request = _Request()
        if base in ("", "svc", "pod"):
            return request
        labels = base.split(".")
        request.kind = labels.pop()
        if request.kind not in ("svc", "pod"):
            raise _NameError
        for attr in ("namespace", "service"):
            if not labels:
                return request
            setattr(request, attr, labels.pop())
        if len(labels) == 1:
            request.endpoint = labels[0]
        elif len(labels) == 2:
            request.port, request.protocol = (label.removeprefix("_") for label in labels)
        elif labels:
            raise _NameError  # too long
        return request

    # findPods
    def pods(self, request: _Request) -> list[_Found]:
        if self.config.pods == "disabled":
            raise _NameError
        label = request.service
        if not label:
            return []
        dashed = label.count("-") == 3 and "--" not in label
        text = label.replace("-", ".") if dashed else label.replace("-", ":")
        ip = _ip(text)
        if ip is None:
            raise _NameError
        if self.config.pods == "insecure":
            return [_Found(host=str(ip), ttl=self.ttl)]
        if request.namespace in self.view.pod_namespaces_with_ip(text):
            return [_Found(host=text, ttl=self.ttl)]
        raise _NameError

    # findServices
    def find_services(self, request: _Request) -> list[_Found]:
        if not request.service:
            return []
        service = self.view.services.get((request.namespace, request.service))
        if service is None:
            raise _NameError
        if service.type == "ExternalName":
            target = service.external_name
            if request.endpoint or not target or _ip(target) is not None:
                raise _NameError
            return [_Found(host=target, ttl=self.ttl)]
        if service.headless or request.endpoint:
            return self.endpoints(service, request)
        out: list[_Found] = []
        matched = False
        domain = self.service_domain(service)
        for port in service.ports:
            if not _port_matches(request, port.name, port.protocol):
                continue
            matched = True
            out += [_Found(ip, port.port, domain, ttl=self.ttl) for ip in service.cluster_ips]
        if not matched:
            raise _NameError
        return out

    def endpoints(self, service: Service, request: _Request) -> list[_Found]:
        out: list[_Found] = []
        domain = self.service_domain(service)
        for found in self.view.slices_of(service.namespace, service.name):
            for address in found.addresses:
                label = address.dns_label
                if request.endpoint and request.endpoint != label.lower():
                    continue
                for port in found.ports:
                    if _port_matches(request, port.name, port.protocol):
                        out.append(_Found(address.ip, port.port, f"{label}.{domain}", ttl=self.ttl))
        if not out:
            raise _NameError
        return out

    def service_domain(self, service: Service) -> str:
        return f"{service.name}.{service.namespace}.svc.{self.config.origin}"

    # serviceRecordForIP
    def reverse(self, ip: str) -> list[str]:
        for service in self.view.services_with_ip(ip):
            return [self.service_domain(service)]
        targets = []
        for found in self.view.slices_with_ip(ip):
            owner = Service(found.namespace, found.service, "", (), False, "", ())
            domain = self.service_domain(owner)
            targets += [f"{a.dns_label}.{domain}" for a in found.addresses if a.ip == ip]
        return targets

    # nsAddrs: the Services whose endpoints are this server, else its own addresses
    def ns_addresses(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for local in self.config.local_ips:
            for found in self.view.slices_with_ip(local):
                service = self.view.services.get((found.namespace, found.service))
                if service is None:
                    continue
                domain = self.service_domain(service)
                if service.headless:
                    out += [(f"{a.dns_label}.{domain}", a.ip) for a in found.addresses]
                else:
                    out += [(domain, ip) for ip in service.cluster_ips[:1]]
        if not out:
            out = [("ns.dns." + self.zone, ip) for ip in self.config.local_ips]
        unique: dict[str, str] = {}
        for server, ip in out:
            unique.setdefault(ip, server)
        return [(server, ip) for ip, server in unique.items()]


def _port_matches(request: _Request, name: str, protocol: str) -> bool:
    """matchPortAndProtocol: an empty request field matches anything."""
    return (not request.port or request.port == name.lower()) and (
        not request.protocol or request.protocol == protocol.lower()
    )


def address_from_reverse(name: str) -> str | None:
    """The IP a full `in-addr.arpa.` / `ip6.arpa.` name stands for, else None."""
    name = fqdn(name)
    if name.endswith(".in-addr.arpa."):
        labels = name[: -len(".in-addr.arpa.")].split(".")
        text = ".".join(reversed(labels))
    elif name.endswith(".ip6.arpa."):
        nibbles = name[: -len(".ip6.arpa.")].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
            return None
        digits = "".join(reversed(nibbles))
        text = ":".join(digits[i : i + 4] for i in range(0, 32, 4))
    else:
        return None
    ip = _ip(text)
    return None if ip is None else str(ip)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=8)
def _soa(zone: str, serial: int, ttl: int) -> dns.rrset.RRset:
    """The zone's SOA (in every negative answer): built once per serial, as it is a third of
    rendering an NXDOMAIN. Shared, so never modified."""
    rdata = dns.rdtypes.ANY.SOA.SOA(
        IN, T.SOA, _n("ns.dns." + zone), _n("hostmaster." + zone), serial, 7200, 1800, 86400, ttl
    )
    return _rr(zone, min(300, ttl), rdata)


def _n(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def _rr(owner: str, ttl: int, rdata: dns.rdata.Rdata) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(_n(owner), IN, rdata.rdtype)
    rrset.add(rdata, ttl)
    return rrset


def _address_rr(owner: str, ttl: int, ip: str, version: int) -> dns.rrset.RRset:
    if version == 4:
        return _rr(owner, ttl, dns.rdtypes.IN.A.A(IN, T.A, ip))
    return _rr(owner, ttl, dns.rdtypes.IN.AAAA.AAAA(IN, T.AAAA, ip))
