"""FROM and TO as a user writes them, turned into a `Probe` the planner can walk.

What belongs here: `resolve_probe(snapshot, source, target, port, proto)`. FROM is a pod
(`ns/pod`, or `pod` in namespace default) or a node (`node1`); TO is a pod, a Service
(`svc/NAME` or `svc/NS/NAME`), a node (with `--port`: one of its NodePorts), an IPv4 address
or a DNS name, which is answered from the snapshot's Services exactly as the cluster DNS
would (`podnet.dns.records.answer`, the source pod's search path, ndots 5).

Invariants: pure; every failure is a `ResolveError` whose message says what was not found and
what would be (the existing pods, the Service's ports, ...); nothing unresolved reaches the
planner.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.rdatatype

from podnet.dns.cluster import ClusterView
from podnet.dns.records import DnsConfig, Reply, answer
from podnet.trace.plan import Header, Probe
from podnet.trace.snapshot import Obj, Snapshot

PROTOCOLS = ("tcp", "udp", "icmp")
NDOTS = 5


class ResolveError(Exception):
    """FROM or TO does not name anything in the cluster (the message says what does)."""


@dataclass(frozen=True, slots=True)
class _Target:
    ip: str
    port: int | None
    what: str
    notes: tuple[str, ...] = ()


def _meta(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _split(name: str, default_ns: str = "default") -> tuple[str, str]:
    ns, _, rest = name.rpartition("/")
    return (ns or default_ns), rest


def find_pod(snap: Snapshot, name: str) -> Obj | None:
    ns, pod = _split(name)
    return next((p for p in snap.objects("pods") if _meta(p) == (ns, pod)), None)


def _pod_names(snap: Snapshot) -> str:
    names = sorted(f"{ns}/{n}" for ns, n in map(_meta, snap.objects("pods")))
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return shown or "none"


def _pod_ip(pod: Obj) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip else None


def resolve_source(snap: Snapshot, source: str) -> tuple[str, str, str]:
    """(netns, source address or "" for the route's, description)."""
    node = snap.node(source)
    if node is not None:
        return node.netns, "", f"node {node.name} ({node.ip})"
    pod = find_pod(snap, source)
    if pod is None:
        raise ResolveError(
            f"FROM {source!r} is neither a node ({', '.join(n.name for n in snap.nodes)}) "
            f"nor a pod (pods: {_pod_names(snap)})"
        )
    ns, name = _meta(pod)
    ip = _pod_ip(pod)
    where = (pod.get("spec") or {}).get("nodeName") or "no node"
    if ip is None:
        raise ResolveError(
            f"pod {ns}/{name} has no IP yet (phase {_phase(pod)}); wait until it runs"
        )
    if (pod.get("spec") or {}).get("hostNetwork"):
        found = snap.node(str(where))
        if found is None:
            raise ResolveError(f"pod {ns}/{name} runs on {where}, which is not a node of this lab")
        return found.netns, ip, f"pod {ns}/{name} ({ip}, host network of {where})"
    netns = snap.pod_netns(pod)
    if netns is None:
        raise ResolveError(f"pod {ns}/{name} runs on {where}, which is not a node of this lab")
    return netns, ip, f"pod {ns}/{name} ({ip} on {where})"


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _service_port(svc: Obj, port: str | int | None, proto: str) -> dict[str, object]:
    ns, name = _meta(svc)
    ports = (svc.get("spec") or {}).get("ports") or []
    listed = ", ".join(
        f"{p.get('name') or '-'}={p.get('port')}/{str(p.get('protocol') or 'TCP').lower()}"
        for p in ports
    )
    if port is None:
        matching = [p for p in ports if str(p.get("protocol") or "TCP").lower() == proto]
        if len(matching) == 1:
            return dict(matching[0])
        raise ResolveError(
            f"service {ns}/{name} has ports {listed or 'none'}: choose one with --port"
        )
    for p in ports:
        if str(port) in (str(p.get("port")), str(p.get("name"))) and (
            str(p.get("protocol") or "TCP").lower() == proto or proto == "icmp"
        ):
            return dict(p)
    raise ResolveError(
        f"service {ns}/{name} has no {proto} port {port}; its ports: {listed or 'none'}"
    )


def _service_target(svc: Obj, port: str | int | None, proto: str) -> _Target:
    ns, name = _meta(svc)
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        external = str(spec.get("externalName") or "").rstrip(".")
        raise ResolveError(
            f"service {ns}/{name} is an ExternalName Service: it has no ClusterIP and "
            f"kube-proxy writes no rule for it; the cluster DNS answers its name with a CNAME "
            f"to {external}, and a client connects to whatever address that name has. "
            f"Trace that address (podnet trace FROM ADDRESS --port P)"
        )
    ip = spec.get("clusterIP")
    if not ip or ip == "None":
        raise ResolveError(
            f"service {ns}/{name} is headless (no ClusterIP): trace one of its pods, or its DNS "
            f"name, which answers with the pods' addresses"
        )
    if proto == "icmp":
        return _Target(str(ip), None, f"service {ns}/{name} (ClusterIP {ip})")
    chosen = _service_port(svc, port, proto)
    label = f" {chosen['name']}" if chosen.get("name") else ""
    return _Target(
        str(ip),
        int(str(chosen["port"])),
        f"service {ns}/{name} port{label} {chosen['port']}/{proto} (ClusterIP {ip})",
    )


def _numeric_port(port: str | int | None, what: str) -> int:
    if port is None:
        raise ResolveError(f"{what}: give the port with --port")
    try:
        value = int(port)
    except ValueError:
        raise ResolveError(f"{what}: --port must be a number here, not {port!r}") from None
    if not 0 < value < 65536:
        raise ResolveError(f"--port {value} is not between 1 and 65535")
    return value


def _service_addresses(svc: Obj) -> set[str]:
    """The addresses kube-proxy answers for the Service besides its NodePorts: its ClusterIPs,
    its spec.externalIPs and its load balancer's ingress IPs."""
    spec = svc.get("spec") or {}
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    found = {spec.get("clusterIP"), *(spec.get("clusterIPs") or [])}
    found.update(spec.get("externalIPs") or [])
    found.update(i.get("ip") for i in ingress if isinstance(i, dict))
    return {str(a) for a in found if a and a != "None"}


def _describe_ip(snap: Snapshot, ip: str) -> str:
    for node in snap.nodes:
        if node.ip == ip:
            return f"node {node.name}"
    for pod in snap.objects("pods"):
        if _pod_ip(pod) == ip and not (pod.get("spec") or {}).get("hostNetwork"):
            ns, name = _meta(pod)
            return f"pod {ns}/{name}"
    for svc in snap.objects("services"):
        if ip in _service_addresses(svc):
            ns, name = _meta(svc)
            if (svc.get("spec") or {}).get("clusterIP") == ip:
                return f"ClusterIP of service {ns}/{name}"
            if ip in ((svc.get("spec") or {}).get("externalIPs") or []):
                return f"an external IP of service {ns}/{name}"
            return f"a load balancer IP of service {ns}/{name}"
    return "an address outside the cluster's objects"


def _node_port_owner(snap: Snapshot, port: int) -> str | None:
    for svc in snap.objects("services"):
        for p in (svc.get("spec") or {}).get("ports") or []:
            if p.get("nodePort") == port:
                ns, name = _meta(svc)
                return f"NodePort {port} of service {ns}/{name}"
    return None


def _lookup_dns(snap: Snapshot, name: str, namespace: str | None) -> tuple[str, str]:
    """The first A record of `name` as a pod in `namespace` would get it; (ip, fqdn)."""
    view = ClusterView.of(
        snap.objects("services"), snap.objects("endpointslices"), snap.objects("namespaces")
    )
    config = DnsConfig(zone=snap.cluster_domain)
    tried: list[str] = []
    absolute = name.endswith(".")
    searches = [] if absolute or namespace is None else [
        f"{namespace}.svc.{snap.cluster_domain}",
        f"svc.{snap.cluster_domain}",
        snap.cluster_domain,
    ]  # fmt: skip
    bare = name.rstrip(".")
    candidates = [f"{bare}.{s}" for s in searches] if bare.count(".") < NDOTS else []
    candidates.append(bare)
    for qname in candidates:
        tried.append(qname)
        reply = answer(view, config, qname, dns.rdatatype.A)
        if not isinstance(reply, Reply):
            continue  # outside the cluster zone: the cluster DNS would ask upstream
        if reply.chase is not None:  # an ExternalName Service's CNAME out of the cluster
            cnames = " → ".join(str(rrset[0].target).rstrip(".") for rrset in reply.chase.cnames)
            raise ResolveError(
                f"TO {name!r}: the cluster DNS answers {qname} with a CNAME to {cnames} (an "
                f"ExternalName Service), a name outside the cluster whose address comes from "
                f"the DNS's upstream servers; kube-proxy writes no rule for it. Trace the "
                f"address it resolves to (podnet trace FROM ADDRESS --port P)"
            )
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.A:
                return rrset[0].address, qname
    raise ResolveError(
        f"TO {name!r} is not a pod, a node, an address or a name the cluster DNS knows "
        f"(asked {', '.join(tried)})"
    )


def resolve_target(
    snap: Snapshot, target: str, port: str | int | None, proto: str, namespace: str | None
) -> _Target:
    if target.startswith(("svc/", "service/", "services/")):
        ns, name = _split(target.split("/", 1)[1])
        svc = next((s for s in snap.objects("services") if _meta(s) == (ns, name)), None)
        if svc is None:
            names = sorted(f"{a}/{b}" for a, b in map(_meta, snap.objects("services")))
            raise ResolveError(f"there is no service {ns}/{name} (services: {', '.join(names)})")
        return _service_target(svc, port, proto)
    node = snap.node(target)
    if node is not None:
        if proto == "icmp":
            return _Target(node.ip, None, f"node {node.name} ({node.ip})")
        value = _numeric_port(port, f"TO node {node.name}")
        owner = _node_port_owner(snap, value)
        what = (
            f"{owner} on node {node.name} ({node.ip})"
            if owner
            else f"node {node.name} ({node.ip}) port {value}"
        )
        return _Target(node.ip, value, what)
    pod = find_pod(snap, target)
    if pod is not None:
        ns, name = _meta(pod)
        ip = _pod_ip(pod)
        if ip is None:
            raise ResolveError(f"pod {ns}/{name} has no IP yet (phase {_phase(pod)})")
        if proto == "icmp":
            return _Target(ip, None, f"pod {ns}/{name} ({ip})")
        if port is None:
            ports = [
                p
                for c in (pod.get("spec") or {}).get("containers") or []
                for p in c.get("ports") or []
            ]
            if len(ports) != 1:
                raise ResolveError(f"pod {ns}/{name}: give the port with --port")
            port = ports[0].get("containerPort")
        if port is not None and not str(port).isdigit():
            named = [
                p.get("containerPort")
                for c in (pod.get("spec") or {}).get("containers") or []
                for p in c.get("ports") or []
                if p.get("name") == port
            ]
            if not named:
                raise ResolveError(f"pod {ns}/{name} has no container port named {port!r}")
            port = named[0]
        value = _numeric_port(port, f"TO pod {ns}/{name}")
        return _Target(ip, value, f"pod {ns}/{name} ({ip}) port {value}/{proto}")
    try:
        address = str(ipaddress.IPv4Address(target))
    except ValueError:
        address = ""
    if address:
        svc = next(
            (
                s
                for s in snap.objects("services")
                if (s.get("spec") or {}).get("clusterIP") == address
            ),
            None,
        )
        if svc is not None:
            return _service_target(svc, port, proto)
        if proto == "icmp":
            return _Target(address, None, f"{address} ({_describe_ip(snap, address)})")
        value = _numeric_port(port, f"TO {address}")
        owner = (
            _node_port_owner(snap, value)
            if _describe_ip(snap, address).startswith("node")
            else None
        )
        what = owner or _describe_ip(snap, address)
        return _Target(address, value, f"{address} port {value}/{proto} ({what})")
    ip, fqdn = _lookup_dns(snap, target, namespace)
    note = f"DNS: {target} → {fqdn} → {ip} (the cluster DNS's answer from the snapshot's Services)"
    found = resolve_target(snap, ip, port, proto, namespace)
    return _Target(found.ip, found.port, f"{target} = {found.what}", (note, *found.notes))


def resolve_probe(
    snap: Snapshot,
    source: str,
    target: str,
    port: str | int | None = None,
    proto: str = "tcp",
    sport: int | None = None,
) -> Probe:
    if proto not in PROTOCOLS:
        raise ResolveError(f"--proto must be one of {', '.join(PROTOCOLS)}, not {proto!r}")
    netns, src, source_text = resolve_source(snap, source)
    pod = find_pod(snap, source) if snap.node(source) is None else None
    namespace = _meta(pod)[0] if pod is not None else None
    found = resolve_target(snap, target, port, proto, namespace)
    header = Header(proto, src, found.ip, sport if proto != "icmp" else None, found.port)
    return Probe(netns, header, source_text, found.what, found.notes)


def pods_involved(snap: Snapshot, source: str, probe: Probe) -> set[str]:
    """ "ns/name" of the pods a probe may reach: the source, the pod with the destination
    address, and every endpoint of a Service on that address (ClusterIP, external or load
    balancer IP) or NodePort."""
    wanted = {f"{ns}/{name}" for ns, name in [_split(source)] if find_pod(snap, source)}
    addresses = {probe.header.dst}
    for svc in snap.objects("services"):
        spec = svc.get("spec") or {}
        node_ports = {p.get("nodePort") for p in spec.get("ports") or []}
        node_ips = {n.ip for n in snap.nodes}
        if probe.header.dst in _service_addresses(svc) or (
            probe.header.dport in node_ports and probe.header.dst in node_ips
        ):
            addresses.update(ip for ip, _, _ in snap.ready_endpoints(*_meta(svc)))
    for pod in snap.objects("pods"):
        if _pod_ip(pod) in addresses:
            ns, name = _meta(pod)
            wanted.add(f"{ns}/{name}")
    return wanted
