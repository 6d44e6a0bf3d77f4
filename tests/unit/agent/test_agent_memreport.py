"""The agent's memory report (PODNET_MEMORY_REPORT): each component's holders are named and
reach what the component keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet import memreport
from podnet.agent.context import AgentContext
from podnet.agent.kubelet.component import KubeletComponent
from podnet.agent.main import network_components, track_memory
from podnet.testing.api import InMemoryApi
from podnet.testing.proxy import endpoint_slice, service


def test_each_component_names_its_holders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(memreport.ENV_PATH, str(tmp_path / "memory.jsonl"))
    monkeypatch.setattr(memreport, "_holders", [])
    ctx = AgentContext(
        api=InMemoryApi(),
        node_name="node-1",
        node_ip="172.31.9.11",
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        proxy_mode="iptables",
        metrics_port=0,
    )
    network = network_components(ctx)
    kubelet = KubeletComponent(ctx, network_required=True, serve=False)
    components = [kubelet, *network]
    track_memory(components)
    proxy = next(c for c in network if c.name == "proxy")
    flannel = next(c for c in network if c.name == "flannel")
    big = "x" * 200_000  # a Service the kubelet keeps whole, with a large annotation
    svc = service("web", "api", "10.96.0.10", port=80, port_name="http")
    svc["metadata"]["annotations"] = {"note": big}
    kubelet.pods.services.apply("ADDED", svc)
    proxy.state.on_slice(  # type: ignore[attr-defined]
        endpoint_slice("web", "api", [f"10.244.1.{i}" for i in range(200)], port=8080)
    )
    flannel.nodes["node-2"] = {"metadata": {"name": "node-2", "labels": {"n": "y" * 100_000}}}

    holders = memreport.snapshot(process="agent node-1")["holders"]
    assert {
        "proxy: rendered rules", "proxy: trackers", "proxy: objects kept", "policy: parsed",
        "policy: objects kept", "policy: view and table", "flannel: nodes", "kubelet: Services",
        "kubelet: pods", "kubelet: the rest", "flannel: the rest", "proxy: the rest",
        "policy: the rest",
    } <= set(holders)  # fmt: skip
    assert holders["kubelet: Services"]["mb"] >= 0.2
    assert holders["flannel: nodes"]["mb"] >= 0.1
    assert holders["proxy: trackers"]["objects"] > 200  # the slice's endpoints
    # counted under their own holder, not again under the component's rest
    assert holders["kubelet: the rest"]["mb"] < 0.2
