"""The proxy component against fake kernel doors: sync ordering, full/partial, failure
recovery, 410 re-list and the /metrics endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from podnet.agent.context import AgentContext
from podnet.agent.proxy.component import ProxyComponent, _key, slim
from podnet.agent.proxy.model import service_ports, slice_endpoints, slice_service
from podnet.agent.proxy.modes import ProxyKernel
from podnet.agent.status import caught_up, read_status
from podnet.kernel.conntrack import FakeConntrack, Flow
from podnet.kernel.ipvs import FakeIpset, FakeIpvs, ServiceAddressHolder
from podnet.kernel.links import FakeNetlink
from podnet.kernel.rules import FakeIptables, FakeNft, RuleLoadError
from podnet.testing.api import InMemoryApi
from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.waiting import eventually


class Running:
    def __init__(self, mode: str = "nftables", state_dir: Path = Path("/nonexistent")) -> None:
        self.api = InMemoryApi()
        self.nft = FakeNft()
        self.iptables = FakeIptables()
        ctx = AgentContext(
            api=self.api,
            node_name="n",
            node_ip="127.0.0.1",
            state_dir=state_dir,
            run_dir=Path("/nonexistent"),
            proxy_mode=mode,
            metrics_port=0,
        )
        kernel = ProxyKernel(
            None,
            self.iptables,
            self.nft,
            FakeConntrack(),
            FakeIpvs(),
            FakeIpset(),
            ServiceAddressHolder(None, FakeNetlink),
        )
        self.comp = ProxyComponent(ctx, kernel=kernel, min_sync_period=0.01, sync_period=0.05)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def proxy_transactions(self) -> list[str]:
        """nft transactions of the proxy itself (not the start-up cleanup of other modes)."""
        return [
            t for t in self.nft.transactions if "service-ips" in t or "element" in t or "chain" in t
        ]

    async def settle(self) -> None:
        """Until every recorded change is synced (polling: the component has no such event)."""
        await asyncio.sleep(0.05)
        async with asyncio.timeout(5):
            while self.busy():  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    def busy(self) -> bool:
        c = self.comp
        return c.state.has_pending() or c.sync_in_progress or c.need_full


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    r.task = asyncio.create_task(r.comp.run(r.stop))
    try:
        yield r
    finally:
        r.stop.set()
        await r.task


@pytest.mark.asyncio
async def test_nothing_is_programmed_before_both_lists() -> None:
    r = Running()
    r.api.hold("list", "endpointslices")
    await r.api.put("services", service("ns", "a", "10.96.0.1"))
    task = asyncio.create_task(r.comp.run(r.stop))
    await asyncio.sleep(0.2)
    assert r.proxy_transactions() == []
    r.api.release("list", "endpointslices")
    await r.settle()
    (first,) = r.proxy_transactions()
    assert "delete table ip kube-proxy" in first and "10.96.0.1 . tcp . 80" in first
    r.stop.set()
    await task


@pytest.mark.asyncio
async def test_full_first_then_partial_then_full_after_a_failure(running: Running) -> None:
    r = running
    await r.settle()
    assert len(r.proxy_transactions()) == 1
    await r.api.put("services", service("ns", "a", "10.96.0.1"))
    await r.api.put("endpointslices", endpoint_slice("ns", "a", ["10.244.1.5"]))
    await r.settle()
    partial = r.proxy_transactions()[-1]
    assert "delete table" not in partial and "add element ip kube-proxy service-ips" in partial
    r.nft.fail_with = RuleLoadError("nft", 1, "Error: boom", 1, "")
    await r.api.put("endpointslices", endpoint_slice("ns", "a", ["10.244.1.6"]))
    await r.settle()
    assert r.comp.metrics.sync_failures_total.value == 1
    last = r.proxy_transactions()[-1]
    assert "delete table ip kube-proxy" in last and "10.244.1.6 . 80" in last
    assert "10.244.1.5" not in last


@pytest.mark.asyncio
async def test_status_names_the_revisions_in_the_kernel(tmp_path: Path) -> None:
    r = Running(state_dir=tmp_path)
    task = asyncio.create_task(r.comp.run(r.stop))
    try:
        svc = await r.api.put("services", service("ns", "a", "10.96.0.1"))
        eps = await r.api.put("endpointslices", endpoint_slice("ns", "a", ["10.244.1.5"]))
        wanted = {
            "services": int(svc["metadata"]["resourceVersion"]),
            "endpointslices": int(eps["metadata"]["resourceVersion"]),
        }
        await eventually(
            lambda: caught_up(read_status(tmp_path, "proxy"), wanted), what="the status"
        )
        assert read_status(tmp_path, "proxy") == {
            "node": "n",
            "mode": "nftables",
            "revisions": wanted,
        }
        assert "10.244.1.5 . 80" in r.proxy_transactions()[-1]
    finally:
        r.stop.set()
        await task


@pytest.mark.asyncio
async def test_expired_watch_relists_and_drops_vanished_objects(running: Running) -> None:
    r = running
    svc = service("ns", "gone", "10.96.0.9")
    await r.api.put("services", svc)
    await r.settle()
    assert "ns/gone" in r.comp.state.services
    # the server restarts: the DELETED event is lost with the watch, the history compacted,
    # so the resumed watch gets 410 and the component re-lists
    r.api.hold("watch", "services")
    r.api.disconnect_watches()
    await r.api.remove("services", "gone", "ns")
    await r.api.compact()
    r.api.release("watch", "services")
    await eventually(lambda: "ns/gone" not in r.comp.state.services, what="the re-list")
    await r.settle()
    # list, watch (cut), watch (410), the re-list, and the watch after it
    services = [c.verb for c in r.api.calls if c.resource == "services"]
    assert services == ["list", "watch", "watch", "list", "watch"]
    assert "delete element ip kube-proxy no-endpoint-services" in r.proxy_transactions()[-1]


@pytest.mark.asyncio
async def test_metrics_endpoint_reports_syncs_and_programming_latency(running: Running) -> None:
    r = running
    await r.settle()
    await r.api.put("services", service("ns", "a", "10.96.0.1"))
    await r.api.put(
        "endpointslices",
        endpoint_slice("ns", "a", ["10.244.1.5"], trigger_time="2099-01-01T00:00:00Z"),
    )  # clamps to 0 s
    await r.settle()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{r.comp.metrics_port}/metrics") as resp,
    ):
        assert resp.status == 200
        body = await resp.text()
    assert "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram" in body
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1" in body
    assert "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 1" in body
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="0.25"} 1' in body
    assert "kubeproxy_sync_proxy_rules_endpoint_changes_total 1" in body


@pytest.mark.asyncio
async def test_iptables_mode_writes_one_restore_per_sync_and_jumps_on_full_sync() -> None:
    r = Running("iptables")
    task = asyncio.create_task(r.comp.run(r.stop))
    await r.settle()
    await r.api.put("services", service("ns", "a", "10.96.0.1"))
    await r.api.put("endpointslices", endpoint_slice("ns", "a", ["10.244.1.5"]))
    await r.settle()
    restores = [p for p in r.iptables.payloads if "KUBE-SERVICES - [0:0]" in p]
    assert len(restores) == 2
    assert "KUBE-SVC-" not in restores[0] and ":KUBE-SVC-" in restores[1]
    # the full sync inserts the jump rules in the same restore; the partial one does not
    assert (
        '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
        in restores[0]
    )
    assert "-I PREROUTING" not in restores[1]
    r.stop.set()
    await task


def test_a_listed_object_is_cut_to_what_the_proxy_reads() -> None:
    svc = service("ns", "a", "10.96.0.1", nodePort=30080, type="NodePort",
                  externalTrafficPolicy="Local", healthCheckNodePort=32000)  # fmt: skip
    svc["metadata"].update(uid="u1", resourceVersion="7", managedFields=[{"manager": "x"}],
                           annotations={"a": "b"})  # fmt: skip
    eps = endpoint_slice("ns", "a", ["10.244.1.5", "10.244.2.6"], node="n",
                         trigger_time="2026-12-07T06:00:00Z", ready=False, serving=True,
                         terminating=True)  # fmt: skip
    eps["metadata"]["resourceVersion"] = "8"
    for ep in eps["endpoints"]:
        ref = {"kind": "Pod", "namespace": "ns", "name": "p", "uid": "u"}
        ep.update(zone="z1", hints={"forZones": [{"name": "z1"}]}, targetRef=ref)
    cut_svc, cut_eps = slim("services", svc), slim("endpointslices", eps)
    assert service_ports(cut_svc) == service_ports(svc) != ()
    assert slice_endpoints(cut_eps, "n") == slice_endpoints(eps, "n") != {}
    assert slice_service(cut_eps) == slice_service(eps) == "ns/a"
    for cut, whole in ((cut_svc, svc), (cut_eps, eps)):
        assert _key(cut) == _key(whole)
        assert cut["metadata"]["resourceVersion"] == whole["metadata"]["resourceVersion"]
    assert cut_eps["metadata"]["annotations"] == eps["metadata"]["annotations"]
    assert "targetRef" not in str(cut_eps) and "managedFields" not in str(cut_svc)


@pytest.mark.asyncio
async def test_flows_to_a_service_address_from_before_its_rules_are_deleted_once() -> None:
    """Un-NATed flows to a ClusterIP port (sent before its rules existed) are deleted when the
    address is first programmed; later endpoint changes do not look again (no conntrack dump
    per endpoint change), and translated flows are never touched."""
    r = Running()
    assert isinstance(r.comp.kernel.conntrack, FakeConntrack)
    ct = r.comp.kernel.conntrack

    def sent(sport: int, reply_src: str, reply_sport: int = 80) -> Flow:
        return Flow(6, "10.244.2.10", "10.96.0.1", sport, 80, reply_src, "172.31.1.12",
                    reply_sport, 62032)  # fmt: skip

    before_rules, translated = sent(40001, "10.96.0.1"), sent(40002, "10.244.1.5")
    ct.table = [before_rules, translated]
    r.task = asyncio.create_task(r.comp.run(r.stop))
    try:
        await r.settle()
        assert ct.table == [before_rules, translated]  # no Service yet: nothing to judge
        await r.api.put("services", service("ns", "a", "10.96.0.1"))
        await r.api.put("endpointslices", endpoint_slice("ns", "a", ["10.244.1.5"]))
        await r.settle()
        assert ct.deleted == [before_rules] and ct.table == [translated]
        assert r.comp.metrics.bypassing_flows_deleted_total.value == 1
        late = sent(40003, "10.96.0.1")  # cannot happen with the rules in; shows no 2nd look
        ct.table.append(late)
        await r.api.put("endpointslices", endpoint_slice("ns", "a", ["10.244.1.6"]))
        await r.settle()
        assert ct.table == [translated, late]
    finally:
        r.stop.set()
        await r.task
