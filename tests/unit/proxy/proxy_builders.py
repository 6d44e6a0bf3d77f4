"""Builders for Service and EndpointSlice dicts (like upstream's makeTestService), and the
service set of upstream's TestOverallIPTablesRules fixture restricted to podnet's features."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.tracker import ProxyState

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
    from podnet.agent.proxy.trace_iptables import consistency_errors, sort_restore

    errors = consistency_errors(result)
    assert not errors, "inconsistent rules:\n" + "\n".join(errors) + "\nfull result:\n" + result
    want = sort_restore(expected.strip() + "\n")
    got = sort_restore(result)
    if want != got:
        import difflib

        diff = "\n".join(
            difflib.unified_diff(
                want.splitlines(), got.splitlines(), "expected", "result", lineterm=""
            )
        )
        raise AssertionError(f"rules do not match:\n{diff}\nfull result:\n```\n{result}```")


GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"


def assert_nftables_golden(name: str, transactions: list[str]) -> None:
    """Apply the transactions to a model (checking every reference), then compare the
    concatenated text with golden/<name>; prints the whole output on failure."""
    from podnet.agent.proxy.trace_nftables import NftModel, consistency_errors

    model = NftModel()
    for tx in transactions:
        model.apply(tx)
    result = "".join(transactions)
    errors = consistency_errors(model)
    assert not errors, "inconsistent table:\n" + "\n".join(errors) + "\nfull result:\n" + result
    path = GOLDEN / name
    want = path.read_text()
    if want != result:
        import difflib

        diff = "\n".join(
            difflib.unified_diff(
                want.splitlines(), result.splitlines(), str(path), "result", lineterm=""
            )
        )
        raise AssertionError(
            f"transaction differs from {path}:\n{diff}\nfull result:\n```\n{result}```"
        )


class MemoryApi:
    """Just enough of `podnet.api.interface.Api` for the proxy: list and watch, in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Obj]] = {"services": {}, "endpointslices": {}}
        self.rv = 1
        self.loop: asyncio.AbstractEventLoop | None = None
        self.watchers: dict[str, list[asyncio.Queue[Obj]]] = {"services": [], "endpointslices": []}
        self.lock = threading.Lock()

    held: set[str] = set()  # resources whose list waits for `release` (same-loop tests only)

    async def list(self, resource: str, **_: Any) -> Obj:
        self.loop = asyncio.get_running_loop()
        while resource in self.held:  # noqa: ASYNC110 - tests flip a plain set
            await asyncio.sleep(0.01)
        self.lists = getattr(self, "lists", 0) + 1
        with self.lock:
            return {
                "items": list(self.objects[resource].values()),
                "metadata": {"resourceVersion": str(self.rv)},
            }

    async def watch(self, resource: str, **_: Any) -> AsyncIterator[Obj]:
        queue: asyncio.Queue[Obj] = asyncio.Queue()
        self.watchers[resource].append(queue)
        try:
            while True:
                event = await queue.get()
                if event.get("type") == "EXPIRE":
                    from podnet.api.errors import ApiError

                    raise ApiError(410, "Expired", "too old resource version")
                yield event
        finally:
            self.watchers[resource].remove(queue)

    def _emit(self, resource: str, event: Obj) -> None:
        for queue in self.watchers[resource]:
            queue.put_nowait(event)

    def put(self, resource: str, obj: Obj) -> None:
        """Create or update (called from the test thread)."""
        key = f"{obj['metadata'].get('namespace', 'default')}/{obj['metadata']['name']}"
        with self.lock:
            kind = "MODIFIED" if key in self.objects[resource] else "ADDED"
            self.objects[resource][key] = obj
            self.rv += 1
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._emit, resource, {"type": kind, "object": obj})

    def expire(self, resource: str) -> None:
        """Make current watches fail with 410 Gone (the watcher must re-list)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._emit, resource, {"type": "EXPIRE"})

    def forget(self, resource: str, obj: Obj) -> None:
        """Remove without a DELETED event (as if the event was lost during a 410)."""
        key = f"{obj['metadata'].get('namespace', 'default')}/{obj['metadata']['name']}"
        with self.lock:
            self.objects[resource].pop(key, None)

    def delete(self, resource: str, obj: Obj) -> None:
        key = f"{obj['metadata'].get('namespace', 'default')}/{obj['metadata']['name']}"
        with self.lock:
            self.objects[resource].pop(key, None)
            self.rv += 1
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._emit, resource, {"type": "DELETED", "object": obj})
