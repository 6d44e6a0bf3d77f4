"""The NetworkPolicy component on the real in-memory API and fake kernel doors: when it
programs, full vs element-diff transactions, recovery after a refused one, the status file,
revoking established flows, drop counters into metrics, the userspace proxy's gate, the
denied-connection log line, and pods kept only while a policy exists."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from podnet.agent.context import AgentContext
from podnet.agent.policy.component import PolicyComponent
from podnet.agent.policy.model import PolicyView, pod_info
from podnet.agent.policy.nftables import PROXIED_COUNTER, render_policy_table
from podnet.kernel.conntrack import FakeConntrack, Flow
from podnet.kernel.nflog import LoggedPacket
from podnet.kernel.rules import FakeNft, RuleLoadError
from podnet.testing.api import InMemoryApi
from podnet.testing.netpol import namespace_manifest, pod_manifest, policy, service_manifest
from podnet.testing.waiting import eventually

NODE = "node-1"
DENY_X = policy("x", "deny-all", podSelector={}, policyTypes=["Ingress", "Egress"])


def node(name: str, cidr: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": cidr},
    }


def running_pod(ns: str, name: str, node_name: str, ip: str) -> dict[str, Any]:
    obj = pod_manifest(ns, name, node_name)
    obj["status"] = {"phase": "Running", "podIP": ip}
    return obj


class Running:
    def __init__(self, tmp: Path, mode: str = "nftables") -> None:
        self.api = InMemoryApi()
        self.nft = FakeNft()
        self.conntrack = FakeConntrack()
        ctx = AgentContext(
            api=self.api,
            node_name=NODE,
            node_ip="172.31.9.11",
            state_dir=tmp,
            run_dir=tmp,
            proxy_mode=mode,
            metrics_port=0,
        )
        self.comp = PolicyComponent(
            ctx, nft=self.nft, conntrack=self.conntrack, min_sync_period=0.01, sync_period=0.05
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def seed(self) -> None:
        for ns in ("x", "y"):
            await self.api.put("namespaces", namespace_manifest(ns))
        await self.api.put("nodes", node(NODE, "10.244.1.0/24"))
        await self.api.put("nodes", node("node-2", "10.244.2.0/24"))
        await self.api.put("pods", running_pod("x", "a", NODE, "10.244.1.10"))
        await self.api.put("pods", running_pod("y", "b", "node-2", "10.244.2.11"))

    def start(self) -> None:
        self.task = asyncio.create_task(self.comp.run(self.stop))

    async def settle(self) -> None:
        """Until the kernel enforces everything written so far."""
        await asyncio.sleep(0.05)
        await eventually(
            lambda: self.comp.applied_revision >= self.comp.revision
            and not self.comp.runner.in_progress
            and not self.comp.runner.need_full,
            what="the policy table to be synced",
        )

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    r = Running(tmp_path)
    await r.seed()
    r.start()
    try:
        await r.settle()
        yield r
    finally:
        await r.close()


@pytest.mark.asyncio
async def test_nothing_is_programmed_before_every_list(tmp_path: Path) -> None:
    r = Running(tmp_path)
    await r.seed()
    r.api.hold("list", "networkpolicies")
    r.start()
    await asyncio.sleep(0.2)
    assert r.nft.transactions == []
    r.api.release("list", "networkpolicies")
    await r.settle()
    (first,) = r.nft.transactions
    assert "delete table inet podnet-policy" in first
    await r.close()


@pytest.mark.asyncio
async def test_full_first_then_element_diffs_then_full_after_a_refused_one(
    running: Running,
) -> None:
    r = running
    await r.api.put("networkpolicies", DENY_X)
    await r.settle()
    diff = r.nft.transactions[-1]
    assert "delete table" not in diff
    assert "add element inet podnet-policy ingress-isolated {\n\t10.244.1.10\n}" in diff
    r.nft.fail_with = RuleLoadError("nft", 1, "Error: boom", 1, "")
    await r.api.remove("networkpolicies", "deny-all", "x")
    await r.settle()
    assert r.comp.metrics.sync_failures.value == 1
    last = r.nft.transactions[-1]
    assert "delete table inet podnet-policy" in last and "10.244.1.10" not in last


@pytest.mark.asyncio
async def test_changes_the_table_cannot_see_wake_nothing(running: Running) -> None:
    r = running
    before = len(r.nft.transactions)
    pod = r.api.peek("pods", "a", "x")
    assert pod is not None
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    await r.api.put("pods", pod)
    await asyncio.sleep(0.2)
    assert len(r.nft.transactions) == before


@pytest.mark.asyncio
async def test_status_file_says_which_policies_isolate_which_local_pods(running: Running) -> None:
    r = running
    written = await r.api.put("networkpolicies", DENY_X)
    await r.settle()
    status = json.loads(r.comp.status_path.read_text())
    assert status["revision"] >= int(written["metadata"]["resourceVersion"])
    assert status["selected"] == [
        {
            "pod": "x/a",
            "ip": "10.244.1.10",
            "ingress": ["x/deny-all"],
            "egress": ["x/deny-all"],
            "drops": {"ingress": 0, "egress": 0},
        }
    ]


def flow(src: str, dst: str, dport: int, *, nat_to: str | None = None) -> Flow:
    reply = nat_to or dst
    return Flow(6, src, dst, 40000, dport, reply, src, dport, 40000)


@pytest.mark.asyncio
async def test_a_revocation_cuts_the_established_flows_it_denies(running: Running) -> None:
    r = running
    r.conntrack.table = [
        flow("10.244.2.11", "10.244.1.10", 80),  # y/b -> x/a: x/a becomes isolated
        flow("10.244.2.11", "10.96.0.10", 80, nat_to="10.244.1.10"),  # the same via a Service
        flow("172.31.9.11", "10.244.1.10", 80),  # the node itself (probes): stays
        flow("10.244.2.11", "10.244.2.12", 80),  # neither side on this node: not judged here
    ]
    await r.api.put("networkpolicies", DENY_X)
    await r.settle()
    assert [(f.src, f.dst) for f in r.conntrack.deleted] == [
        ("10.244.2.11", "10.244.1.10"),
        ("10.244.2.11", "10.96.0.10"),
    ]
    assert r.comp.metrics.revoked.value == 2
    deleted = len(r.conntrack.deleted)
    grant = policy("x", "allow-y", ingress=[{"from": [{"namespaceSelector": {}}]}])
    await r.api.put("networkpolicies", grant)  # only grants: nothing to look at
    await r.settle()
    assert len(r.conntrack.deleted) == deleted


@pytest.mark.asyncio
async def test_drops_are_counted_per_pod_and_per_isolating_policy(running: Running) -> None:
    r = running
    await r.api.put("networkpolicies", DENY_X)
    await r.api.put("networkpolicies", policy("x", "web", ingress=[{"ports": [{"port": 8080}]}]))
    await r.settle()
    table = r.comp.table
    assert table is not None
    names = {owner: name for name, owner in table.counters.items()}
    values = {names[("x/a", "ingress")]: 3, names[("x/a", "egress")]: 1}
    r.nft.counter_values[("inet", "podnet-policy")] = values
    await r.comp._read_counters()
    values[names[("x/a", "ingress")]] = 5
    await r.comp._read_counters()
    text = r.comp.metrics.render()
    assert (
        'podnet_networkpolicy_pod_drops_total{namespace="x",pod="a",direction="ingress"} 5' in text
    )
    for name in ("deny-all", "web"):
        labels = f'namespace="x",policy="{name}",direction="ingress"'
        assert f"podnet_networkpolicy_drops_total{{{labels}}} 5" in text
    assert 'policy="web",direction="egress"' not in text  # web has no Egress type
    assert 'policy="deny-all",direction="egress"} 1' in text


@pytest.mark.asyncio
async def test_gate_and_log_line_name_pods_and_policies(running: Running) -> None:
    r = running
    await r.api.put("networkpolicies", DENY_X)
    await r.settle()
    gate = r.comp.gate
    assert not gate.allows("10.244.2.11", "10.244.1.10", 80, "tcp")
    assert gate.allows("10.244.1.1", "10.244.1.10", 80, "tcp")  # this node's pod gateway
    assert gate.allows("10.244.2.11", "10.244.2.12", 80, "tcp")  # no policy there
    line = r.comp.describe_denied(
        LoggedPacket("podnet-policy ingress ", "10.244.2.11", "10.244.1.10", "tcp", 40000, 80)
    )
    assert line == (
        "policy: denied ingress y/b (10.244.2.11:40000) -> x/a (10.244.1.10) tcp/80; "
        "isolated for ingress by x/deny-all"
    )


@pytest.mark.asyncio
async def test_logging_follows_the_node_annotation(running: Running) -> None:
    r = running
    await r.api.put("networkpolicies", DENY_X)
    await r.api.put(
        "nodes", node(NODE, "10.244.1.0/24", **{"podnet.io/network-policy-log": "true"})
    )
    await r.settle()
    assert 'log prefix "podnet-policy ingress " group 7' in r.nft.transactions[-1]
    await r.api.put("nodes", node(NODE, "10.244.1.0/24"))
    await r.settle()
    assert "log prefix" not in r.nft.transactions[-1] and "flush chain" in r.nft.transactions[-1]


@pytest.mark.asyncio
async def test_userspace_mode_renders_what_no_endpoint_admits(tmp_path: Path) -> None:
    r = Running(tmp_path, mode="userspace")
    await r.seed()
    svc = service_manifest("x", "a")
    svc["spec"]["clusterIP"] = "10.96.0.10"
    await r.api.put("services", svc)
    await r.api.put(
        "endpointslices",
        {
            "metadata": {
                "name": "s-a-1",
                "namespace": "x",
                "labels": {"kubernetes.io/service-name": "s-a"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.10"], "conditions": {"ready": True}}],
            "ports": [{"name": "serve-80-tcp", "port": 80, "protocol": "TCP"}],
        },
    )
    await r.api.put("networkpolicies", DENY_X)
    r.start()
    await r.settle()
    text = r.nft.transactions[-1]
    # x/a may not even reach itself through its Service: dropped before the proxy
    assert "10.244.1.10 . 10.96.0.10 . tcp . 80" in text
    assert "snat ip to 10.244.1.1" in text and "10.244.2.1" in text  # dial source, peer proxy
    assert r.comp.table is not None and PROXIED_COUNTER in r.comp.table.counters
    await r.close()


def _pod_lists(r: Running) -> int:
    return sum(1 for c in r.api.calls if c.verb == "list" and c.resource == "pods")


async def _fresh_table(tmp: Path, api: InMemoryApi) -> Any:
    """The table a component started now, on the same API, renders."""
    fresh = Running(tmp)
    fresh.api = api
    fresh.comp.ctx.api = api
    fresh.start()
    await fresh.settle()
    table = fresh.comp.table
    await fresh.close()
    return table


@pytest.mark.asyncio
async def test_without_policies_no_pod_is_kept_and_pod_writes_still_reach_the_status(
    running: Running,
) -> None:
    r = running
    assert r.comp.parsed["pods"] == {} and r.comp.objects["pods"] == {}
    written = await r.api.put("pods", running_pod("y", "c", "node-2", "10.244.2.12"))
    await r.settle()
    assert r.comp.parsed["pods"] == {} and r.comp.objects["pods"] == {}
    status = json.loads(r.comp.status_path.read_text())
    assert status["revisions"]["pods"] >= int(written["metadata"]["resourceVersion"])
    # the same table as when every pod is parsed: without a policy no pod counts
    view = PolicyView(
        tuple(p for p in (pod_info(o) for o in r.api.peek_list("pods")) if p is not None),
        {ns: {"kubernetes.io/metadata.name": ns} for ns in ("x", "y")},
        (),
    )
    assert len(view.pods) == 3
    assert r.comp.table == render_policy_table(view, NODE, r.comp.config(), r.comp._proxy_sources())


@pytest.mark.asyncio
async def test_a_first_policy_relists_the_pods_and_renders_what_a_fresh_agent_does(
    running: Running, tmp_path: Path
) -> None:
    r = running
    await r.api.put("pods", running_pod("y", "c", "node-2", "10.244.2.12"))
    await r.settle()
    lists = _pod_lists(r)
    # the pods list is slow: nothing about the policy is rendered before it is in
    r.api.hold("list", "pods")
    await r.api.put(
        "networkpolicies",
        policy("x", "from-c", ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]),
    )
    await asyncio.sleep(0.2)
    assert r.comp.table is not None and r.comp.table.selected == ()
    r.api.release("list", "pods")
    await r.settle()
    assert _pod_lists(r) == lists + 1
    assert set(r.comp.parsed["pods"]) == {"x/a", "y/b", "y/c"}
    table = r.comp.table
    assert table is not None and [s.pod for s in table.selected] == ["x/a"]
    assert table == await _fresh_table(tmp_path / "fresh", r.api)

    # the last policy gone: the pods are dropped; a policy again lists them again
    lists = _pod_lists(r)  # the fresh component's list counted too
    await r.api.remove("networkpolicies", "from-c", "x")
    await r.settle()
    assert r.comp.parsed["pods"] == {} and r.comp.objects["pods"] == {}
    assert r.comp.table is not None and r.comp.table.selected == ()
    await r.api.put("pods", running_pod("y", "d", "node-2", "10.244.2.13"))
    await r.api.put("networkpolicies", DENY_X)
    await r.settle()
    assert _pod_lists(r) == lists + 1
    assert set(r.comp.parsed["pods"]) == {"x/a", "y/b", "y/c", "y/d"}
    assert r.comp.table == await _fresh_table(tmp_path / "fresh2", r.api)
