"""A small cluster as API objects, for the cluster DNS tests (unit and benchmark).

default/web            ClusterIP 10.96.0.20, ports http 80/TCP and metrics 9100/TCP
default/plain          ClusterIP 10.96.0.30, one unnamed port 8080/TCP
default/db             headless; endpoints 10.244.1.5 (hostname db-0), 10.244.2.6, and a
                       not-ready 10.244.1.7; port mysql 3306/TCP
default/portless       headless, a slice without ports: 10.244.2.9
default/ext            ExternalName www.example.com
default/alias          ExternalName web.default.svc.cluster.local (inside the zone)
default/big            headless with 40 ready endpoints (10.244.3.1 .. 10.244.3.40)
kube-system/kube-dns   ClusterIP 10.96.0.10, dns 53/UDP, dns-tcp 53/TCP, metrics 9153/TCP;
                       endpoints 10.244.1.2 and 10.244.2.3 (the DNS pods)
pods: default/db-0 10.244.1.5, default/client 10.244.2.8, a Succeeded default/job 10.244.2.4
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from podnet.dns.cluster import ClusterView

Obj = dict[str, Any]


def namespace(name: str) -> Obj:
    return {"metadata": {"name": name}}


def service(
    ns: str,
    name: str,
    cluster_ip: str | None,
    ports: Sequence[tuple[str, int, str]] = (),
    **spec: Any,
) -> Obj:
    body: Obj = {"ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
        body["clusterIPs"] = [cluster_ip]
    body.update(spec)
    return {"metadata": {"namespace": ns, "name": name}, "spec": body}


def endpoint_slice(
    ns: str,
    service_name: str,
    endpoints: Sequence[tuple[str, str | None, bool | None]],
    ports: Sequence[tuple[str, int, str]] = (),
    name: str | None = None,
) -> Obj:
    eps = []
    for ip, hostname, ready in endpoints:
        ep: Obj = {"addresses": [ip], "conditions": {}}
        if ready is not None:
            ep["conditions"]["ready"] = ready
        if hostname:
            ep["hostname"] = hostname
        eps.append(ep)
    return {
        "metadata": {
            "namespace": ns,
            "name": name or f"{service_name}-abcde",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def pod(ns: str, name: str, ip: str, phase: str = "Running") -> Obj:
    return {
        "metadata": {"namespace": ns, "name": name},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    }


SERVICES = [
    service("default", "web", "10.96.0.20", [("http", 80, "TCP"), ("metrics", 9100, "TCP")]),
    service("default", "plain", "10.96.0.30", [("", 8080, "TCP")]),
    service("default", "db", "None", [("mysql", 3306, "TCP")]),
    service("default", "portless", "None"),
    service("default", "ext", None, type="ExternalName", externalName="www.example.com"),
    service(
        "default",
        "alias",
        None,
        type="ExternalName",
        externalName="web.default.svc.cluster.local",
    ),
    service("default", "big", "None", [("http", 80, "TCP")]),
    service(
        "kube-system",
        "kube-dns",
        "10.96.0.10",
        [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
    ),
]

SLICES = [
    endpoint_slice(
        "default",
        "web",
        [("10.244.1.10", None, True)],
        [("http", 80, "TCP"), ("metrics", 9100, "TCP")],
    ),
    endpoint_slice(
        "default",
        "db",
        [("10.244.1.5", "db-0", True), ("10.244.2.6", None, None), ("10.244.1.7", None, False)],
        [("mysql", 3306, "TCP")],
    ),
    endpoint_slice("default", "portless", [("10.244.2.9", None, True)]),
    endpoint_slice(
        "default",
        "big",
        [(f"10.244.3.{i}", None, True) for i in range(1, 41)],
        [("http", 80, "TCP")],
    ),
    endpoint_slice(
        "kube-system",
        "kube-dns",
        [("10.244.1.2", None, True), ("10.244.2.3", None, True)],
        [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
    ),
]

NAMESPACES = [namespace("default"), namespace("kube-system"), namespace("team-a")]

PODS = [
    pod("default", "db-0", "10.244.1.5"),
    pod("default", "client", "10.244.2.8"),
    pod("default", "job", "10.244.2.4", phase="Succeeded"),
]

SERIAL = 1700000000


def cluster_view(*, pods: bool = False) -> ClusterView:
    view = ClusterView.of(SERVICES, SLICES, NAMESPACES, PODS if pods else None)
    view.serial = SERIAL
    return view
