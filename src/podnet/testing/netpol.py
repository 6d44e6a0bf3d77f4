"""The upstream "Netpol" probe model: namespaces x, y, z; pods a, b, c; the cases and the
truth tables they expect. Shared by the unit packet walk (rendered rules and the verdict
against these tables) and the lab e2e (probes through each pod's ClusterIP against them).

What belongs here: the manifests (every pod serves TCP and UDP on 80 and 81 with agnhost
porter, container ports named `serve-<port>-<proto>`, each pod behind its own Service),
`Reachability` (a from x to truth table with upstream's `expect_*` helpers and a side-by-side
printout of expected, observed and the cells that differ) and `CASES` — each a list of
steps (policies to apply, labels to set, probes and the expected table). Expectations are
written by hand from the API's documented semantics, as upstream writes them, never computed
by podnet's own code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PODS = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES)
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")
IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.52"  # built in (podnet.images)


def port_name(port: int, protocol: str) -> str:
    return f"serve-{port}-{protocol.lower()}"


def namespace_manifest(name: str, labels: Mapping[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"ns": name, **(labels or {})}},
    }


def pod_manifest(namespace: str, name: str, node: str | None = None) -> Obj:
    """One porter container answering `<ns>/<pod>` on TCP and UDP 80 and 81."""
    env = [
        {
            "name": f"SERVE_{'UDP_' if proto == 'UDP' else ''}PORT_{port}",
            "value": f"{namespace}/{name}",
        }
        for port in PORTS
        for proto in PROTOCOLS
    ]
    ports = [
        {"name": port_name(port, proto), "containerPort": port, "protocol": proto}
        for port in PORTS
        for proto in PROTOCOLS
    ]
    spec: Obj = {
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {"name": "porter", "image": IMAGE, "args": ["porter"], "env": env, "ports": ports}
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"pod": name}},
        "spec": spec,
    }


def service_manifest(namespace: str, name: str) -> Obj:
    """`s-<pod>` selecting only that pod, on the four ports."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"s-{name}", "namespace": namespace},
        "spec": {
            "selector": {"pod": name},
            "ports": [
                {
                    "name": port_name(port, proto),
                    "port": port,
                    "protocol": proto,
                    "targetPort": port,
                }
                for port in PORTS
                for proto in PROTOCOLS
            ],
        },
    }


def policy(namespace: str, name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# --- the truth table -----------------------------------------------------------------------


@dataclass
class Reachability:
    """expected[from][to] for every pair of PODS (upstream `Reachability` / `TruthTable`)."""

    default: bool = True
    cells: dict[str, dict[str, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cells:
            self.cells = {f: dict.fromkeys(PODS, self.default) for f in PODS}

    @staticmethod
    def _matches(pod: str, namespace: str | None, name: str | None) -> bool:
        ns, _, pod_name = pod.partition("/")
        return (namespace is None or ns == namespace) and (name is None or pod_name == name)

    def expect(self, src: str, dst: str, allowed: bool) -> Reachability:
        self.cells[src][dst] = allowed
        return self

    def expect_peer(
        self,
        allowed: bool,
        *,
        from_ns: str | None = None,
        from_pod: str | None = None,
        to_ns: str | None = None,
        to_pod: str | None = None,
    ) -> Reachability:
        for src in PODS:
            for dst in PODS:
                if self._matches(src, from_ns, from_pod) and self._matches(dst, to_ns, to_pod):
                    self.cells[src][dst] = allowed
        return self

    def expect_all_ingress(self, pod: str, allowed: bool) -> Reachability:
        for src in PODS:
            self.cells[src][pod] = allowed
        return self

    def expect_all_egress(self, pod: str, allowed: bool) -> Reachability:
        for dst in PODS:
            self.cells[pod][dst] = allowed
        return self

    def mismatches(self, observed: Mapping[str, Mapping[str, bool]]) -> list[tuple[str, str]]:
        return [(s, d) for s in PODS for d in PODS if observed[s][d] != self.cells[s][d]]

    def side_by_side(self, observed: Mapping[str, Mapping[str, bool]]) -> str:
        """Expected | observed | differences, rows = from, columns = to (`.` connected,
        `X` blocked, `!` a cell where they differ)."""
        head = "      " + " ".join(f"{p:>3}" for p in PODS)
        blocks = []
        marks: tuple[tuple[str, Callable[[str, str], str]], ...] = (
            ("expected", lambda s, d: "." if self.cells[s][d] else "X"),
            ("observed", lambda s, d: "." if observed[s][d] else "X"),
            ("differ", lambda s, d: "!" if observed[s][d] != self.cells[s][d] else " "),
        )
        for title, cell in marks:
            rows = [title.ljust(len(head)), head]
            rows += [f"{s:>5} " + " ".join(f"{cell(s, d):>3}" for d in PODS) for s in PODS]
            blocks.append(rows)
        return "\n".join("   |   ".join(parts) for parts in zip(*blocks, strict=True))


# --- the cases -----------------------------------------------------------------------------

PodIps = Mapping[str, str]  # "ns/pod" -> pod IP


@dataclass(frozen=True)
class Probe:
    port: int = 80
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Step:
    """What to change, then what to probe and expect (changes of earlier steps stay)."""

    policies: Callable[[PodIps], list[Obj]] = lambda ips: []
    pod_labels: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    namespace_labels: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    expected: Mapping[Probe, Callable[[], Reachability]] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]


TCP80, TCP81, UDP80, UDP81 = Probe(80, "TCP"), Probe(81, "TCP"), Probe(80, "UDP"), Probe(81, "UDP")


def _deny_ingress_x() -> Reachability:
    r = Reachability()
    for pod in POD_NAMES:
        r.expect_all_ingress(f"x/{pod}", False)
    return r


def _deny_egress_x() -> Reachability:
    r = Reachability()
    for pod in POD_NAMES:
        r.expect_all_egress(f"x/{pod}", False)
    return r


def _deny_all_x() -> Reachability:
    r = _deny_ingress_x()
    for pod in POD_NAMES:
        r.expect_all_egress(f"x/{pod}", False)
    return r


def _only_into_xa(allowed_from: Callable[[str], bool]) -> Reachability:
    r = Reachability().expect_all_ingress("x/a", False)
    for src in PODS:
        if allowed_from(src):
            r.expect(src, "x/a", True)
    return r


def _x_a_egress_except(blocked: str) -> Reachability:
    return Reachability().expect("x/a", blocked, False)


def _ipblock_policy(ips: PodIps) -> list[Obj]:
    octets = ips["y/b"].split(".")
    return [
        policy(
            "x",
            "egress-cidr-except",
            podSelector={"matchLabels": {"pod": "a"}},
            policyTypes=["Egress"],
            egress=[
                {
                    "to": [
                        {
                            "ipBlock": {
                                "cidr": f"{octets[0]}.{octets[1]}.0.0/16",
                                "except": [f"{ips['y/b']}/32"],
                            }
                        }
                    ]
                }
            ],
        )
    ]


CASES: tuple[Case, ...] = (
    Case(
        "default-deny-ingress",
        (
            Step(
                lambda ips: [policy("x", "deny-ingress", podSelector={}, policyTypes=["Ingress"])],
                expected={TCP80: _deny_ingress_x},
            ),
        ),
    ),
    Case(
        "default-deny-egress",
        (
            Step(
                lambda ips: [policy("x", "deny-egress", podSelector={}, policyTypes=["Egress"])],
                expected={UDP80: _deny_egress_x},
            ),
        ),
    ),
    Case(
        "deny-all",
        (
            Step(
                lambda ips: [
                    policy("x", "deny-all", podSelector={}, policyTypes=["Ingress", "Egress"])
                ],
                expected={TCP80: _deny_all_x},
            ),
        ),
    ),
    Case(
        "allow-from-namespace",
        (
            Step(
                lambda ips: [
                    policy(
                        "x",
                        "allow-from-y",
                        podSelector={"matchLabels": {"pod": "a"}},
                        ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
                    )
                ],
                expected={TCP80: lambda: _only_into_xa(lambda src: src.startswith("y/"))},
            ),
        ),
    ),
    Case(
        "pod-and-namespace-selectors",
        (
            Step(
                lambda ips: [
                    policy(
                        "x",
                        "allow-b-of-other-namespaces",
                        podSelector={"matchLabels": {"pod": "a"}},
                        ingress=[
                            {
                                "from": [
                                    {
                                        "namespaceSelector": {
                                            "matchExpressions": [
                                                {"key": "ns", "operator": "NotIn", "values": ["x"]}
                                            ]
                                        },
                                        "podSelector": {"matchLabels": {"pod": "b"}},
                                    }
                                ]
                            }
                        ],
                    )
                ],
                expected={TCP80: lambda: _only_into_xa(lambda src: src in ("y/b", "z/b"))},
            ),
        ),
    ),
    Case(
        "named-port",
        (
            Step(
                lambda ips: [
                    policy(
                        "x",
                        "allow-serve-81-tcp",
                        podSelector={"matchLabels": {"pod": "a"}},
                        ingress=[{"ports": [{"port": "serve-81-tcp"}]}],
                    )
                ],
                expected={
                    TCP81: Reachability,
                    TCP80: lambda: Reachability().expect_all_ingress("x/a", False),
                },
            ),
        ),
    ),
    Case(
        "end-port",
        (
            Step(
                lambda ips: [
                    policy(
                        "x",
                        "allow-81-to-90",
                        podSelector={"matchLabels": {"pod": "a"}},
                        ingress=[
                            {
                                "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                "ports": [{"protocol": "TCP", "port": 81, "endPort": 90}],
                            }
                        ],
                    )
                ],
                expected={
                    TCP80: lambda: Reachability().expect_all_ingress("x/a", False),
                    TCP81: lambda: _only_into_xa(lambda src: src.startswith("y/")),
                    UDP81: lambda: Reachability().expect_all_ingress("x/a", False),
                },
            ),
        ),
    ),
    Case(
        "ipblock-except",
        (Step(_ipblock_policy, expected={TCP80: lambda: _x_a_egress_except("y/b")}),),
    ),
    Case(
        "egress-to-service",
        (
            Step(
                lambda ips: [
                    policy(
                        "x",
                        "egress-to-y-b",
                        podSelector={"matchLabels": {"pod": "a"}},
                        policyTypes=["Egress"],
                        egress=[
                            {
                                "to": [
                                    {
                                        "namespaceSelector": {"matchLabels": {"ns": "y"}},
                                        "podSelector": {"matchLabels": {"pod": "b"}},
                                    }
                                ],
                                "ports": [{"port": 80}],
                            }
                        ],
                    )
                ],
                expected={
                    TCP80: lambda: Reachability()
                    .expect_all_egress("x/a", False)
                    .expect("x/a", "y/b", True)
                },
            ),
        ),
    ),
    Case(
        "label-change",
        (
            Step(
                lambda ips: [
                    policy(
                        "x",
                        "allow-trusted-clients",
                        podSelector={"matchLabels": {"pod": "a"}},
                        ingress=[
                            {
                                "from": [
                                    {
                                        "namespaceSelector": {"matchLabels": {"trusted": "yes"}},
                                        "podSelector": {"matchLabels": {"role": "client"}},
                                    }
                                ]
                            }
                        ],
                    )
                ],
                pod_labels={"z/c": {"role": "client"}},
                expected={TCP80: lambda: _only_into_xa(lambda src: False)},
            ),
            # the namespace gains the label: z/c is let in
            Step(
                namespace_labels={"z": {"trusted": "yes"}},
                expected={TCP80: lambda: _only_into_xa(lambda src: src == "z/c")},
            ),
            # the pod loses its label: shut out again
            Step(
                pod_labels={"z/c": {"role": None}},
                expected={TCP80: lambda: _only_into_xa(lambda src: False)},
            ),
        ),
    ),
)


# --- the model without a cluster (unit tests) ----------------------------------------------


def relabel(obj: Obj, changes: Mapping[str, str | None]) -> Obj:
    """`obj` with labels set (a value) or removed (None), as `kubectl label` does."""
    labels = dict(obj["metadata"].get("labels") or {})
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    return {**obj, "metadata": {**obj["metadata"], "labels": labels}}


@dataclass
class World:
    """The API objects of the model on `nodes` with made-up pod IPs, stepped through a case
    without any cluster: what the unit packet walk renders tables from."""

    nodes: tuple[str, ...] = ("node-1", "node-2")
    pods: dict[str, Obj] = field(default_factory=dict)
    namespaces: dict[str, Obj] = field(default_factory=dict)
    policies: list[Obj] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, key in enumerate(PODS):
            ns, name = key.split("/")
            node_index = i % len(self.nodes)
            pod = pod_manifest(ns, name, self.nodes[node_index])
            pod["status"] = {"phase": "Running", "podIP": f"10.244.{node_index + 1}.{10 + i}"}
            self.pods[key] = pod
        self.namespaces = {ns: namespace_manifest(ns) for ns in NAMESPACES}

    @property
    def ips(self) -> dict[str, str]:
        return {key: pod["status"]["podIP"] for key, pod in self.pods.items()}

    def node_of(self, pod: str) -> str:
        return str(self.pods[pod]["spec"]["nodeName"])

    def step(self, step: Step) -> None:
        self.policies += step.policies(self.ips)
        for key, changes in step.pod_labels.items():
            self.pods[key] = relabel(self.pods[key], changes)
        for ns, changes in step.namespace_labels.items():
            self.namespaces[ns] = relabel(self.namespaces[ns], changes)

    @property
    def cluster_ips(self) -> dict[str, str]:
        """Made-up ClusterIPs of the pods' Services (`s-<pod>` in the pod's namespace)."""
        return {key: f"10.96.0.{10 + i}" for i, key in enumerate(PODS)}

    def service_backends(self) -> dict[tuple[str, str, int], tuple[tuple[str, int], ...]]:
        """(ClusterIP, protocol, port) -> the one endpoint behind it, for every Service."""
        ips = self.ips
        return {
            (vip, proto.lower(), port): ((ips[key], port),)
            for key, vip in self.cluster_ips.items()
            for port in PORTS
            for proto in PROTOCOLS
        }
