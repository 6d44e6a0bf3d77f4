"""The agent's memory report (PODNET_MEMORY_REPORT): each component's holders are named and
reach what the component keeps."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from podnet import memreport
from podnet.agent.context import AgentContext
from podnet.agent.kubelet.component import KubeletComponent
from podnet.agent.main import network_components, track_memory
from podnet.testing.api import InMemoryApi
from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.waiting import eventually


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
    before = memreport.snapshot(process="agent node-1")["holders"]
    for i in range(1000):
        kubelet.pods.services.apply("ADDED", service("web", f"api{i}", f"10.96.3.{i % 250}"))
    proxy.state.on_slice(  # type: ignore[attr-defined]
        endpoint_slice("web", "api", [f"10.244.1.{i}" for i in range(200)], port=8080)
    )
    flannel.nodes["node-2"] = {"metadata": {"name": "node-2", "labels": {"n": "y" * 100_000}}}

    line = memreport.snapshot(process="agent node-1")
    holders = line["holders"]
    # what no holder reaches, by type: the decoded objects of this test's own module are there
    assert line["unheld"] and all(mb >= 0 for mb in line["unheld"].values())
    assert {
        "proxy: rendered rules", "proxy: trackers", "proxy: objects kept", "policy: parsed",
        "policy: objects kept", "policy: view and table", "flannel: nodes", "kubelet: Services",
        "kubelet: pods", "kubelet: the rest", "flannel: the rest", "proxy: the rest",
        "policy: the rest",
    } <= set(holders)  # fmt: skip
    assert holders["kubelet: Services"]["mb"] >= 0.2
    assert holders["flannel: nodes"]["mb"] >= 0.1
    assert holders["proxy: trackers"]["objects"] > 200  # the slice's endpoints
    # counted under their own holder, not again under the component's rest (compared with
    # the rest before the Services came: what else it reaches depends on earlier tests)
    services = holders["kubelet: Services"]["objects"] - before["kubelet: Services"]["objects"]
    rest = holders["kubelet: the rest"]["objects"] - before["kubelet: the rest"]["objects"]
    assert services >= 1000
    assert rest < services / 100


@pytest.mark.asyncio
async def test_lines_name_their_process_and_trace_only_the_one_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every process of a lab appends to the one file; PODNET_MEMORY_REPORT_TRACE=agent
    traces the agents' allocations only."""
    path = tmp_path / "memory.jsonl"
    monkeypatch.setenv(memreport.ENV_PATH, str(path))
    monkeypatch.setenv(memreport.ENV_INTERVAL, "0.05")
    monkeypatch.setenv(memreport.ENV_TRACE, "agent")
    monkeypatch.setattr(memreport, "_holders", [])
    assert not tracemalloc.is_tracing()

    def lines(process: str) -> list[dict[str, Any]]:
        found = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        return [x for x in found if x["process"] == process and "holders" in x]

    try:
        for process in ("server", "agent node-1"):
            stop = asyncio.Event()
            task = asyncio.create_task(memreport.run(stop, process))
            await eventually(lambda p=process: len(lines(p)) >= 1, timeout=60, what="a line")
            stop.set()
            await task
        assert "top" not in lines("server")[0]
        assert tracemalloc.is_tracing() and "top" in lines("agent node-1")[-1]
    finally:
        tracemalloc.stop()


@pytest.mark.asyncio
async def test_only_the_processes_named_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "memory.jsonl"
    monkeypatch.setenv(memreport.ENV_PATH, str(path))
    monkeypatch.setenv(memreport.ENV_INTERVAL, "0.05")
    monkeypatch.setenv(memreport.ENV_ONLY, "agent")
    monkeypatch.setattr(memreport, "_holders", [])
    stop = asyncio.Event()
    await asyncio.wait_for(memreport.run(stop, "server"), 5)  # returns at once: not named
    assert not path.exists()
    task = asyncio.create_task(memreport.run(stop, "agent node-1"))
    await eventually(path.exists, timeout=60, what="the agent's report")
    stop.set()
    await task


def test_a_new_peak_names_what_the_worker_threads_run(tmp_path: Path) -> None:
    """The RSS grows on a worker thread (as a proxier's sync on asyncio.to_thread's executor
    does): the peak line carries that thread's stack beside the main thread's."""
    import threading
    import time

    path = tmp_path / "report.jsonl"
    stop = threading.Event()
    watcher = threading.Thread(
        target=memreport._watch_peaks,
        args=(path, threading.main_thread().ident, stop, "test"),
        daemon=True,
    )
    watcher.start()
    held: list[bytes] = []

    def grow_on_a_worker() -> None:
        # 10 MB a step (the watcher writes past 8 MB over its last line), then a pause in
        # which it looks (every 20 ms); up to 40 steps on a machine busy enough to need them
        for _ in range(40):
            held.append(b"x" * 10_000_000)
            time.sleep(0.1)
            if '"threads"' in (path.read_text() if path.exists() else ""):
                return

    worker = threading.Thread(target=grow_on_a_worker)
    worker.start()
    worker.join()
    stop.set()
    watcher.join()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    stacks = [s for line in lines for s in line.get("threads", {}).values()]
    assert any("grow_on_a_worker" in frame for stack in stacks for frame in stack), lines
    assert all(line["process"] == "test" and line["peak_rss_mb"] > 0 for line in lines)
