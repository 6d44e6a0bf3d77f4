"""The lab's cluster DNS add-on: the `coredns` Deployment and the `kube-dns` Service.

What `podnet up` installs once the nodes are Ready, as kubeadm does: Deployment
`kube-system/coredns` (2 replicas, label `k8s-app=kube-dns`, the built-in coredns image,
dnsPolicy Default, liveness on :8080/health, readiness on :8181/ready) behind Service
`kube-system/kube-dns` at the tenth address of the service range (10.96.0.10), ports 53/UDP,
53/TCP and 9153/TCP. Its traffic goes through each node's kube-proxy like any Service's, and
the lab is not Ready until a query to that address from a node is answered.

Upstream resolvers: the pods have dnsPolicy Default, so they get the nodes' resolv.conf, which
the lab writes to `<state>/resolv.conf` (the agents' `--resolv-conf`): the nameservers given
to `podnet up --dns-upstream`, else the machine's own (loopback ones dropped: a pod cannot
reach the machine's loopback). The DNS pods forward names outside the zone there.

API credentials, as kubeadm's add-on has them: ServiceAccount `kube-system/coredns`, bound by
ClusterRoleBinding `system:coredns` to ClusterRole `system:coredns` (list and watch Services,
Endpoints, EndpointSlices, Namespaces and Pods, nothing else). The kubelet mounts the pods'
projected token, `ca.crt` and `namespace` at /var/run/secrets/kubernetes.io/serviceaccount and
refreshes the token; `podnet dns` in the pod reads them (`HttpApi.in_cluster`).

Unreachable upstreams: the lab does not route or NAT its pods' traffic to the machine's
network, so a DNS pod reaches an upstream only at an address of this machine, or through a
machine that forwards (and NATs) for it. When no upstream can be reached that way
(`upstream_warning`: none is local and net.ipv4.ip_forward is 0), `up` says so: names outside
the cluster answer SERVFAIL after the forwarder's timeout, which a newcomer's first
`nslookup` otherwise reports as "no servers could be reached".

Pure parts (`render_*`, `lab_resolv_conf`, `upstream_warning`, `describe_state`) are
golden-tested; `install` and `wait_until_answers` talk to the API and to the DNS Service from
a node's namespace.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from podnet.dns.resolvconf import ResolvConf, parse_resolv_conf
from podnet.private import write_private

NAMESPACE = "kube-system"
DEPLOYMENT = "coredns"
SERVICE = "kube-dns"
LABELS = {"k8s-app": "kube-dns"}
IMAGE = "registry.k8s.io/coredns/coredns:v1.11.3"
REPLICAS = 2
SERVICE_ACCOUNT = "coredns"
CLUSTER_ROLE = "system:coredns"  # also the ClusterRoleBinding's name, as kubeadm names both
RESOLV_CONF = "resolv.conf"
PROBE_NAME = "kubernetes.default.svc"  # what the lab asks to know DNS answers

Obj = dict[str, Any]


def lab_resolv_conf(host: ResolvConf, upstreams: Sequence[str] | None) -> ResolvConf:
    """The nodes' resolv.conf: the given upstreams, else the machine's non-loopback ones."""
    if upstreams is not None:
        return ResolvConf(tuple(upstreams), host.searches, host.options)
    usable = tuple(s for s in host.nameservers if not s.startswith("127.") and s != "::1")
    return ResolvConf(usable, host.searches, host.options)


def upstream_warning(
    lab: str, upstreams: Sequence[str], is_local: Callable[[str], bool], forwarding: bool
) -> str | None:
    """What `up` says when the DNS pods cannot reach any upstream; None when one may be
    reachable (an address of this machine, or the machine forwards)."""
    if not upstreams:
        return (
            "names outside the cluster have no upstream nameserver; "
            f"`podnet dns-upstream --name {lab} IP` gives the lab one"
        )
    if forwarding or any(is_local(u) for u in upstreams):
        return None
    return (
        f"names outside the cluster will answer SERVFAIL: the lab's upstream "
        f"{', '.join(upstreams)} is not an address of this machine, which does not forward "
        f"(net.ipv4.ip_forward=0), so the DNS pods cannot reach it; "
        f"`podnet dns-upstream --name {lab} IP` points them at one they reach"
    )


def is_local_address(address: str) -> bool:
    """Is `address` one of this machine's (a socket can bind it)? Sends nothing."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return False
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def host_forwards() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return True  # unknown: say nothing


def render_service(cluster_ip: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE,
            "namespace": NAMESPACE,
            "labels": {
                **LABELS,
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
        },
        "spec": {
            "selector": dict(LABELS),
            "clusterIP": cluster_ip,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
        },
    }


def render_deployment(cluster_domain: str = "cluster.local") -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": dict(LABELS)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "dnsPolicy": "Default",
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "coredns",
                            "image": IMAGE,
                            "args": ["--zone", cluster_domain, "--ttl", "30", "--pods", "insecure",
                                     "--lameduck", "5"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                            ],
                            "livenessProbe": {
                                "httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                                "initialDelaySeconds": 60,
                                "timeoutSeconds": 5,
                                "successThreshold": 1,
                                "failureThreshold": 5,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }  # fmt: skip


def render_rbac() -> list[tuple[str, Obj]]:
    """The ServiceAccount the DNS pods run as and what it may read (kubeadm's manifests)."""
    rbac = "rbac.authorization.k8s.io"
    return [
        ("serviceaccounts",
         {"apiVersion": "v1", "kind": "ServiceAccount",
          "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}}),
        ("clusterroles",
         {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole",
          "metadata": {"name": CLUSTER_ROLE,
                       "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
          "rules": [
              {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
               "verbs": ["list", "watch"]},
              {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
               "verbs": ["list", "watch"]},
          ]}),
        ("clusterrolebindings",
         {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
          "metadata": {"name": CLUSTER_ROLE,
                       "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
                       "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
          "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": CLUSTER_ROLE},
          "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                        "namespace": NAMESPACE}]}),
    ]  # fmt: skip


def write_resolv_conf(state_dir: Path, upstreams: Sequence[str] | None) -> Path:
    host = parse_resolv_conf(_read(Path("/etc/resolv.conf")))
    path = state_dir / RESOLV_CONF
    text = (
        "# the lab's nodes' resolv.conf (podnet up --dns-upstream): pods with dnsPolicy "
        "Default, the DNS pods among them, get it\n" + lab_resolv_conf(host, upstreams).render()
    )
    write_private(path, text.encode())  # like every file of the state dir (#19)
    return path


def read_upstreams(state_dir: Path) -> tuple[str, ...]:
    """The nameservers `write_resolv_conf` gave the lab."""
    return parse_resolv_conf(_read(state_dir / RESOLV_CONF)).nameservers


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


async def install(api: Any, cluster_ip: str, cluster_domain: str) -> None:
    """Create (or leave in place) the ServiceAccount and its RBAC, the Service and the
    Deployment."""
    from podnet.api.errors import ApiError
    from podnet.api.resources import BY_PLURAL

    for resource, obj in (
        *render_rbac(),
        ("services", render_service(cluster_ip)),
        ("deployments", render_deployment(cluster_domain)),
    ):
        namespace = NAMESPACE if BY_PLURAL[resource].namespaced else None
        try:
            await api.create(resource, obj, namespace)
        except ApiError as exc:
            if exc.code != 409:
                raise


async def restart(api: Any) -> int:
    """`kubectl rollout restart deployment/coredns`; returns the generation to wait for."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    patch = {
        "spec": {
            "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}
        }
    }
    updated = await api.patch("deployments", DEPLOYMENT, patch, NAMESPACE, "strategic")
    return int((updated.get("metadata") or {}).get("generation") or 0)


def rolled_out(deployment: Obj, generation: int) -> bool:
    """Whether every replica runs the current template and is available (`rollout status`)."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    return (
        int(status.get("observedGeneration") or 0) >= generation
        and int(status.get("updatedReplicas") or 0) == replicas
        and int(status.get("replicas") or 0) == replicas
        and int(status.get("availableReplicas") or 0) == replicas
    )


def describe_state(pods: Sequence[Obj], slices: Sequence[Obj]) -> str:
    """Where the chain to a DNS answer stopped, from the API: each coredns pod (node, phase,
    Ready, restarts, why a container waits) and the kube-dns endpoints the proxies program.

    What `up` adds when DNS did not answer in time, so a failure in CI says which step
    stalled (a pod not scheduled, a container in back-off, a pod never Ready, no ready
    endpoint, or every link in place and the node's proxy behind)."""
    parts = []
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        status = pod.get("status") or {}
        ready = next(
            (c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"),
            "False",
        )
        words = [
            f"{meta.get('name')} on {spec.get('nodeName') or 'no node'}",
            str(status.get("phase") or "Pending"),
            "Ready" if ready == "True" else "not Ready",
        ]
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                words.append(f"{cs.get('name')} waiting: {waiting['reason']}")
            if cs.get("restartCount"):
                words.append(f"{cs['restartCount']} restarts")
        if meta.get("deletionTimestamp"):
            words.append("terminating")
        parts.append(", ".join(words))
    pods_text = "; ".join(parts) if parts else "none"
    addresses = sorted(
        {
            address
            for s in slices
            for endpoint in s.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False
            for address in endpoint.get("addresses") or []
        }
    )
    endpoints = ", ".join(addresses) if addresses else "none"
    return f"coredns pods: {pods_text}; {SERVICE} ready endpoints: {endpoints}"


def answers(netns: str, server: str, zone: str, expected: str, timeout: float = 1.0) -> str | None:
    """Ask `server` (from inside `netns`) for `kubernetes.default.svc.<zone>`; None when the
    answer is `expected` (the kubernetes Service's IP), else what went wrong."""
    import dns.exception
    import dns.message
    import dns.query

    from podnet.kernel import netns as netns_mod

    def ask() -> str | None:
        request = dns.message.make_query(f"{PROBE_NAME}.{zone}.", "A")
        try:
            reply = dns.query.udp(request, server, timeout=timeout)
        except (dns.exception.DNSException, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        found = [r.to_text() for rrset in reply.answer for r in rrset]
        return None if found == [expected] else f"answer {found or reply.rcode()}"

    return netns_mod.call_in(netns, ask)


def wait_until_answers(netns: str, server: str, zone: str, expected: str, deadline: float) -> None:
    problem = answers(netns, server, zone, expected)
    while problem is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster DNS {server} did not answer {PROBE_NAME}: {problem}")
        time.sleep(0.2)
        problem = answers(netns, server, zone, expected)
