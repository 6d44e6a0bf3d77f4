"""The kube-proxy test kit: Service and EndpointSlice builders (like upstream's
makeTestService), the service set of upstream's TestOverallIPTablesRules fixture restricted to
podnet's features, and the golden-text assertions of the renderer tests.

What belongs here: what the proxy's unit tests, its kernel tests (`podnet.testing.proxy_lab`)
and `benchmarks/proxy.py` share. The golden files themselves stay beside the tests
(`tests/unit/proxy/golden/`), which pass their paths in.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.trace_iptables import consistency_errors as iptables_consistency_errors
from podnet.agent.proxy.trace_iptables import sort_restore
from podnet.agent.proxy.tracker import ProxyState
from podnet.testing.golden import assert_nft_golden

Obj = dict[str, Any]

FIXTURE_CONFIG = ProxyConfig(
    cluster_cidr="10.0.0.0/8",
    service_cidr="172.30.0.0/16",
    node_ips=("192.168.0.2",),
    random_fully=False,
)


def service(
    ns: str,
    name: str,
    cluster_ip: str,
    port: int = 80,
    port_name: str = "p80",
    protocol: str = "TCP",
    **spec: Any,
) -> Obj:
    p: Obj = {"name": port_name, "port": port, "protocol": protocol}
    if "nodePort" in spec:
        p["nodePort"] = spec.pop("nodePort")
    body: Obj = {"clusterIP": cluster_ip, "type": "ClusterIP", "ports": [p]}
    body.update(spec)
    return {"metadata": {"namespace": ns, "name": name}, "spec": body}


def endpoint_slice(
    ns: str,
    svc: str,
    ips: list[str],
    port: int = 80,
    port_name: str = "p80",
    protocol: str = "TCP",
    node: str = "other-node",
    suffix: str = "abcde",
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    trigger_time: str | None = None,
) -> Obj:
    meta: Obj = {
        "namespace": ns,
        "name": f"{svc}-{suffix}",
        "labels": {"kubernetes.io/service-name": svc},
    }
    if trigger_time:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger_time}
    cond: Obj = {"ready": ready, "terminating": terminating}
    if serving is not None:
        cond["serving"] = serving
    return {
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": protocol}],
        "endpoints": [
            {"addresses": [ip], "conditions": dict(cond), "nodeName": node} for ip in ips
        ],
    }


def upstream_fixture() -> ProxyState:
    """svc1..svc6 of TestOverallIPTablesRules without LoadBalancer IPs (podnet has none)."""
    state = ProxyState(node_name="test-node")
    state.on_service(service("ns1", "svc1", "172.30.0.41"))
    state.on_slice(endpoint_slice("ns1", "svc1", ["10.180.0.1"]))
    state.on_service(
        service(
            "ns2",
            "svc2",
            "172.30.0.42",
            type="NodePort",
            nodePort=3001,
            externalIPs=["192.168.99.22"],
            externalTrafficPolicy="Local",
            healthCheckNodePort=30000,
        )
    )
    state.on_slice(endpoint_slice("ns2", "svc2", ["10.180.0.2"]))
    state.on_service(service("ns3", "svc3", "172.30.0.43", type="NodePort", nodePort=3003))
    state.on_slice(endpoint_slice("ns3", "svc3", ["10.180.0.3"]))
    state.on_service(service("ns4", "svc4", "172.30.0.44", externalIPs=["192.168.99.33"]))
    state.on_slice(endpoint_slice("ns4", "svc4", ["10.180.0.4", "10.180.0.5"]))
    state.on_service(
        service(
            "ns5",
            "svc5",
            "172.30.0.45",
            type="NodePort",
            nodePort=3002,
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}},
        )
    )
    state.on_slice(endpoint_slice("ns5", "svc5", ["10.180.0.3"]))
    state.on_service(service("ns6", "svc6", "172.30.0.46"))
    state.apply()
    return state


def assert_iptables_equal(expected: str, result: str) -> None:
    """Golden comparison: consistency first, then both sides sorted; full output on failure."""
    errors = iptables_consistency_errors(result)
    assert not errors, "inconsistent rules:\n" + "\n".join(errors) + "\nfull result:\n" + result
    want = sort_restore(expected.strip() + "\n")
    got = sort_restore(result)
    if want != got:
        diff = "\n".join(
            difflib.unified_diff(
                want.splitlines(), got.splitlines(), "expected", "result", lineterm=""
            )
        )
        raise AssertionError(f"rules do not match:\n{diff}\nfull result:\n```\n{result}```")


def assert_nftables_golden(path: Path, transactions: list[str]) -> None:
    """Apply the transactions to a model (checking every reference), then compare the
    concatenated text with the golden file at `path`; prints the whole output on failure."""
    assert_nft_golden(path, transactions)
