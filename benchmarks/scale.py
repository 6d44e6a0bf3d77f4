"""Control-plane scale benchmark (not a test): hollow nodes, many pods and Services, on etcd.

Run from the repo (through /work/wt/heavy.sh on a shared machine):
    .venv/bin/python benchmarks/scale.py [--nodes 100,1000] [--pods 3000[,30000]]
                                         [--pods-per-service 30] [--etcd 3] [--watchers 0]

For each node count N (issue #15; kubemark-style, `podnet.agent.hollow`):
1. A fresh control plane: `--etcd` real etcd members and one `podnet server` (controllers on)
   on them (`podnet.testing.ha.HaControlPlane`), cluster CIDR 100.64.0.0/10 so node IPAM has
   a /24 for every node.
2. N hollow nodes in their own process (`podnet hollow`): Nodes, Leases
   renewed every 10 s, pods reported Running with IPs from their podCIDRs.
3. `--pods` pods (one count for every size, default 3,000, so what grows with the node count
   shows on its own; or one per size: issue #15's case is `--nodes 100,1000 --pods
   3000,30000`, 30,000 pods behind 1,000 Services at 1,000 nodes) in Deployments of
   pods-per-service replicas, each behind its own Service. Scheduler throughput = bound pods
   / seconds from the first bind to the last (counted on one pod watch); also the seconds
   from the first Deployment created to the last pod bound, to every pod Running and to every
   Service's EndpointSlices listing all its pods; and the CPU seconds the server and the
   hollow-node process spent from the first Deployment created to the last pod bound, per
   pod (what the scheduling rate costs, a figure a busy shared machine changes less than the
   rate).
4. With that cluster standing and the hollow heartbeats running: 300 mutating calls
   (ConfigMap create/update/delete, 4 at a time) -> p50/p99; one LIST of every pod (time and
   bytes); fan-out: W watchers (default N: one per node, as every node's kube-proxy watches
   EndpointSlices) on one namespace, 20 writes, p99 delay until the last watcher saw a write
   and the server CPU spent per write per watcher.
5. Memory: peak RSS (VmHWM) of the server and of the hollow-node process.

Targets (issue #15; Kubernetes' SLOs are the floor): mutating p99 <= 100 ms, scheduling
>= 100 pods/s, server <= 1 GB at 1,000 nodes. Prints a table of ratios to the targets and
writes benchmarks/results/scale.json. Endpoint-change-to-rules on a real node and a real
agent's memory need a lab node next to the hollow ones (`podnet up --hollow-nodes`), which
this script does not start; their rows say so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from podnet import procs
from podnet.api.client import HttpApi
from podnet.testing.ha import HaControlPlane

RESULTS = Path(__file__).parent / "results" / "scale.json"
MUTATING_P99_MS = 100.0
SCHEDULING_PODS_PER_S = 100.0
SERVER_MAX_MB = 1024.0
MUTATIONS = 300
FANOUT_WRITES = 20
CLUSTER_CIDR = "100.64.0.0/10"

Obj = dict[str, Any]


def p(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) of `values`."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def peak_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def progress(text: str) -> None:
    """A line on stderr while a long size runs (the table comes at the end)."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def deployment(name: str, replicas: int) -> Obj:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "agnhost"}]},
            },
        },
    }


def service(name: str) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


async def until(check: Any, limit: float, what: str, every: float = 1.0) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > limit:
            raise TimeoutError(f"{what}: not done after {limit:.0f}s")
        await asyncio.sleep(every)
    return time.monotonic() - start


class PodCounter:
    """One pod watch: when each pod was bound and when it was reported Running."""

    def __init__(self) -> None:
        self.bound: dict[str, float] = {}
        self.running: set[str] = set()

    async def run(self, api: HttpApi, namespace: str, version: str) -> None:
        while True:
            async for event in api.watch("pods", namespace, resource_version=version):
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if (obj.get("spec") or {}).get("nodeName") and name not in self.bound:
                    self.bound[name] = time.monotonic()
                if (obj.get("status") or {}).get("phase") == "Running":
                    self.running.add(name)


async def ready_nodes(api: HttpApi) -> int:
    nodes = (await api.list("nodes"))["items"]
    return sum(
        1
        for n in nodes
        if (n.get("spec") or {}).get("podCIDR")
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (n.get("status") or {}).get("conditions") or ()
        )
    )


async def endpoints_complete(api: HttpApi, namespace: str, expected: int) -> bool:
    slices = (await api.list("endpointslices", namespace))["items"]
    ready = sum(
        1
        for s in slices
        for e in s.get("endpoints") or ()
        if (e.get("conditions") or {}).get("ready")
    )
    return ready >= expected


async def mutating_latencies(api: HttpApi, namespace: str) -> list[float]:
    samples: list[float] = []

    async def one(index: int) -> None:
        name = f"m-{index}"
        body: Obj = {"metadata": {"name": name}, "data": {"v": "0"}}
        for call in ("create", "update", "delete"):
            start = time.monotonic()
            if call == "create":
                body = await api.create("configmaps", body, namespace)
            elif call == "update":
                body["data"] = {"v": "1"}
                body = await api.update("configmaps", body, namespace)
            else:
                await api.delete("configmaps", name, namespace)
            samples.append((time.monotonic() - start) * 1000)

    queue = list(range(MUTATIONS // 3))

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(4)))
    return samples


async def fanout(api: HttpApi, namespace: str, watchers: int, server_pid: int) -> Obj:
    """`watchers` watches on one namespace; per write, the delay until all of them saw it."""
    version = (await api.list("configmaps", namespace))["metadata"]["resourceVersion"]
    seen: list[dict[str, float]] = [{} for _ in range(watchers)]

    async def watch(index: int) -> None:
        async for event in api.watch("configmaps", namespace, resource_version=version):
            if event["type"] == "ADDED":
                seen[index][event["object"]["metadata"]["name"]] = time.monotonic()

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    delays: list[float] = []
    try:
        await asyncio.sleep(2.0)  # every watch open
        cpu_before = cpu_seconds(server_pid)
        for index in range(FANOUT_WRITES):
            name = f"fan-{index}"
            start = time.monotonic()
            await api.create("configmaps", {"metadata": {"name": name}}, namespace)

            async def everyone(name: str = name) -> bool:
                return all(name in s for s in seen)

            await until(everyone, 60, f"{watchers} watchers to see {name}", every=0.005)
            delays.append((max(s[name] for s in seen) - start) * 1000)
        cpu = cpu_seconds(server_pid) - cpu_before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "watchers": watchers,
        "delivery_p50_ms": p(delays, 50),
        "delivery_p99_ms": p(delays, 99),
        "server_cpu_us_per_event_per_watcher": cpu / (FANOUT_WRITES * watchers) * 1e6,
    }


def start_hollow(kubeconfig: Path, nodes: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "podnet.cli.main", "hollow",
             "--kubeconfig", str(kubeconfig), "--count", str(nodes)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


async def one_size(nodes: int, pods: int, args: argparse.Namespace, base: Path) -> Obj:
    services = max(1, pods // int(args.pods_per_service))
    plane = HaControlPlane(
        base / f"n{nodes}",
        servers=1,
        etcd=args.etcd,
        extra_args=("--cluster-cidr", CLUSTER_CIDR, "--node-monitor-grace-period", "60"),
    )
    await asyncio.to_thread(plane.start)
    hollow: subprocess.Popen[bytes] | None = None
    record: procs.Recorded | None = None
    result: Obj = {"nodes": nodes, "pods": pods, "services": services}
    try:
        server_pid = plane.servers[0].pid
        assert server_pid is not None
        hollow = start_hollow(plane.kubeconfig, nodes, base / f"hollow-{nodes}.log")
        record = procs.record(base / "pids", f"hollow-{nodes}", hollow.pid)
        async with plane.api() as api:

            async def all_ready() -> bool:
                return await ready_nodes(api) >= nodes

            result["nodes_ready_s"] = await until(all_ready, 600, f"{nodes} hollow nodes Ready")
            progress(f"{nodes} nodes Ready in {result['nodes_ready_s']:.1f}s")
            namespace = "scale"
            await api.create("namespaces", {"metadata": {"name": namespace}})
            listed = await api.list("pods", namespace)
            counter = PodCounter()
            counting = asyncio.create_task(
                counter.run(api, namespace, listed["metadata"]["resourceVersion"])
            )
            started = time.monotonic()
            cpu_started = (cpu_seconds(server_pid), cpu_seconds(hollow.pid))
            per_service = pods // services
            sem = asyncio.Semaphore(8)

            async def make(index: int) -> None:
                async with sem:
                    await api.create("services", service(f"svc-{index}"), namespace)
                    await api.create(
                        "deployments", deployment(f"svc-{index}", per_service), namespace
                    )

            await asyncio.gather(*(make(i) for i in range(services)))
            total = per_service * services
            result["pods"] = total

            async def all_bound() -> bool:
                return len(counter.bound) >= total

            await until(all_bound, 3600, f"{total} pods bound", every=0.2)
            result["server_cpu_ms_per_pod"] = (
                (cpu_seconds(server_pid) - cpu_started[0]) / total * 1e3
            )
            result["hollow_cpu_ms_per_pod"] = (
                (cpu_seconds(hollow.pid) - cpu_started[1]) / total * 1e3
            )
            first, last = min(counter.bound.values()), max(counter.bound.values())
            # the scheduler's own rate: first bind to last (the ReplicaSets create pods
            # meanwhile, as they do in a real rollout); create-to-bound is printed too
            result["scheduling_pods_per_s"] = total / max(last - first, 1e-3)
            result["all_bound_s"] = last - started
            progress(f"{total} pods bound, {result['scheduling_pods_per_s']:.1f} pods/s")

            async def all_running() -> bool:
                return len(counter.running) >= total

            await until(all_running, 3600, f"{total} pods Running", every=0.5)
            result["all_running_s"] = time.monotonic() - started

            async def endpoints() -> bool:
                return await endpoints_complete(api, namespace, total)

            await until(endpoints, 3600, "every pod in its Service's endpoints", every=2.0)
            result["endpoints_complete_s"] = time.monotonic() - started
            progress(
                f"every pod Running and in its endpoints: {result['endpoints_complete_s']:.1f}s"
            )
            counting.cancel()
            await asyncio.gather(counting, return_exceptions=True)

            await api.create("namespaces", {"metadata": {"name": "bench"}})
            latencies = await mutating_latencies(api, "bench")
            result["mutating_p50_ms"] = p(latencies, 50)
            result["mutating_p99_ms"] = p(latencies, 99)
            start = time.monotonic()
            raw = await api.request("GET", api.server + "/api/v1/pods")
            result["list_all_pods_s"] = time.monotonic() - start
            result["list_all_pods_items"] = len(raw["items"])
            result["list_all_pods_mb"] = len(json.dumps(raw)) / 1e6
            del raw
            watchers = args.watchers or nodes
            await api.create("namespaces", {"metadata": {"name": "fanout"}})
            result["fanout"] = await fanout(api, "fanout", watchers, server_pid)
        result["server_peak_rss_mb"] = peak_rss_mb(server_pid)
        result["hollow_peak_rss_mb"] = peak_rss_mb(hollow.pid)
    finally:
        if record is not None:
            procs.stop(record)
            procs.forget(record)
        if hollow is not None:
            hollow.wait(10)
        await asyncio.to_thread(plane.stop)
    return result


def print_table(sizes: list[Obj]) -> None:
    print("\ncontrol plane at scale (hollow nodes, etcd store, one server)\n")
    header = f"{'figure':<44} {'target':>10}" + "".join(
        f" {str(s['nodes']) + ' nodes':>12} {'ratio':>6}" for s in sizes
    )
    print(header)

    def row(label: str, key: str, target: float | None, higher_better: bool, fmt: str) -> None:
        line = f"{label:<44} {'' if target is None else format(target, 'g'):>10}"
        for size in sizes:
            value = size.get(key)
            if isinstance(value, dict) or value is None:
                line += f" {'-':>12} {'':>6}"
                continue
            ratio = ""
            if target is not None:
                ratio = f"{(value / target if higher_better else target / value):.2f}"
            line += f" {format(value, fmt):>12} {ratio:>6}"
        print(line)

    for size in sizes:
        size.update({f"fanout_{k}": v for k, v in (size.get("fanout") or {}).items()})
    row("pods", "pods", None, True, "d")
    row("hollow nodes Ready (s)", "nodes_ready_s", None, False, ".1f")
    row(
        "scheduling throughput (pods/s)",
        "scheduling_pods_per_s",
        SCHEDULING_PODS_PER_S,
        True,
        ".1f",
    )
    row("first Deployment created -> last pod bound (s)", "all_bound_s", None, False, ".1f")
    row("server CPU per pod until bound (ms)", "server_cpu_ms_per_pod", None, False, ".2f")
    row("hollow-node CPU per pod until bound (ms)", "hollow_cpu_ms_per_pod", None, False, ".2f")
    row("all pods Running (s)", "all_running_s", None, False, ".1f")
    row("all endpoints published (s)", "endpoints_complete_s", None, False, ".1f")
    row("mutating p50 (ms)", "mutating_p50_ms", None, False, ".1f")
    row("mutating p99 (ms)", "mutating_p99_ms", MUTATING_P99_MS, False, ".1f")
    row("LIST every pod (s)", "list_all_pods_s", None, False, ".2f")
    row("LIST every pod (MB)", "list_all_pods_mb", None, False, ".1f")
    row("watchers for fan-out", "fanout_watchers", None, True, "d")
    row("fan-out: last watcher p99 (ms)", "fanout_delivery_p99_ms", None, False, ".1f")
    row("fan-out: server CPU per event per watcher (us)",
        "fanout_server_cpu_us_per_event_per_watcher", None, False, ".0f")  # fmt: skip
    row("server peak RSS (MB)", "server_peak_rss_mb", SERVER_MAX_MB, False, ".0f")
    row("hollow-node process peak RSS (MB)", "hollow_peak_rss_mb", None, False, ".0f")
    print("endpoint change -> rules p99 on a real node, real agent memory: not measured here")
    print("ratio: figure vs target, >= 1.00 meets it")


async def run(args: argparse.Namespace) -> list[Obj]:
    base = Path(tempfile.mkdtemp(prefix="podnet-bench-scale-"))
    sizes: list[Obj] = []
    try:
        counts = args.pods if len(args.pods) > 1 else args.pods * len(args.nodes)
        if len(counts) != len(args.nodes):
            raise SystemExit("--pods: one count for every size, or one per --nodes size")
        for nodes, pods in zip(args.nodes, counts, strict=True):
            sizes.append(await one_size(nodes, pods, args, base))
            print(json.dumps(sizes[-1]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000]
    )
    parser.add_argument(
        "--pods",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[3000],
        help="pods at every size, or one count per size (3000,30000)",
    )
    parser.add_argument("--pods-per-service", type=int, default=30)
    parser.add_argument("--etcd", type=int, default=3, help="etcd members (default 3)")
    parser.add_argument("--watchers", type=int, default=0, help="fan-out watchers (0: N)")
    args = parser.parse_args()
    sizes = uvloop.run(run(args))
    print_table(sizes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"sizes": sizes}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
