"""Pod start-up benchmark (not a test): lab bring-up, 100 pods to Running+Ready, startup p50/p99.

Run as root from the repo:  .venv/bin/python benchmarks/pods.py [--nodes 3] [--pods 100]

1. `podnet up --name <lab> --nodes N` (returns when every node is Ready) — bring-up time.
2. Burst: create the pods at once (busybox `sleep`, no nodeName: the scheduler spreads them)
   and watch them; a pod's startup time = first time the client sees it Running with
   Ready=True minus the time its create call returned (client clock, so second-resolution API
   timestamps do not blur it). Time until all are Running and Ready, and startup p50/p99 under
   that load (a throughput figure: 100 pods queue on a 2-core machine).
3. One at a time: create a pod, wait until it is Running and Ready, repeat (`--sequential`
   pods); startup p50/p99 of an unloaded cluster, which is what the 1 s target is about.
4. `podnet down --name <lab>` always, even after a failure.

Targets (issue #3): bring-up <= 3 s, 100 pods <= 10 s, pod startup p99 <= 1 s (Kubernetes'
SLO is 5 s). Prints a table and writes benchmarks/results/pods.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from podnet.api.client import HttpApi
from podnet.api.errors import ApiError

RESULTS = Path(__file__).parent / "results" / "pods.json"


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args], capture_output=True, text=True
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def pod_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    }


async def run_sequential(kubeconfig: Path, count: int) -> dict[str, Any]:
    api = HttpApi.from_kubeconfig(kubeconfig)
    startups: list[float] = []
    try:
        for i in range(count):
            name = f"seq-{i:03d}"
            begin = time.monotonic()
            created = await api.create("pods", pod_body(name), "default")
            version = str(created["metadata"]["resourceVersion"])
            async for event in api.watch(
                "pods",
                "default",
                resource_version=version,
                field_selector=f"metadata.name={name}",
            ):
                if is_ready(event.get("object") or {}):
                    startups.append(time.monotonic() - begin)
                    break
            await api.delete("pods", name, "default", grace_period_seconds=0)
        return {
            "sequential_pods": count,
            "sequential_startup_p50_s": round(percentile(startups, 50), 3),
            "sequential_startup_p99_s": round(percentile(startups, 99), 3),
        }
    finally:
        await api.close()


async def run_pods(kubeconfig: Path, count: int) -> dict[str, Any]:
    api = HttpApi.from_kubeconfig(kubeconfig)
    namespace = "default"
    created: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    all_ready = asyncio.Event()
    try:
        listed = await api.list("pods", namespace, label_selector="bench=pods")
        version = str(listed["metadata"]["resourceVersion"])

        async def watch() -> None:
            async for event in api.watch(
                "pods", namespace, resource_version=version, label_selector="bench=pods"
            ):
                obj = event.get("object") or {}
                name = (obj.get("metadata") or {}).get("name")
                if name and name not in ready_at and is_ready(obj):
                    ready_at[name] = time.monotonic()
                    if len(ready_at) == count:
                        all_ready.set()
                        return

        watcher = asyncio.create_task(watch())
        begin = time.monotonic()

        async def create(i: int) -> None:
            name = f"bench-{i:03d}"
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"bench": "pods"}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
                },
            }
            await api.create("pods", body, namespace)
            created[name] = time.monotonic()

        await asyncio.gather(*(create(i) for i in range(count)))
        try:
            await asyncio.wait_for(all_ready.wait(), timeout=120)
        finally:
            watcher.cancel()
        total = time.monotonic() - begin
        startups = [ready_at[n] - created[n] for n in created if n in ready_at]
        return {
            "pods": count,
            "all_running_ready_s": round(total, 3),
            "startup_p50_s": round(percentile(startups, 50), 3),
            "startup_p99_s": round(percentile(startups, 99), 3),
            "startup_max_s": round(max(startups), 3),
            "startup_mean_s": round(statistics.fmean(startups), 3),
        }
    finally:
        for i in range(count):
            with contextlib.suppress(ApiError):
                await api.delete("pods", f"bench-{i:03d}", namespace, grace_period_seconds=0)
        await api.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="bench5")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=20)
    args = parser.parse_args()
    results: dict[str, Any] = {"nodes": args.nodes}
    started = time.monotonic()
    up = podnet("up", "--name", args.name, "--nodes", str(args.nodes))
    results["bring_up_s"] = round(time.monotonic() - started, 3)
    try:
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            print(f"podnet up failed (exit {up.returncode})", file=sys.stderr)
            return 1
        kubeconfig = Path(f"/var/lib/podnet/{args.name}/kubeconfig")
        results.update(asyncio.run(run_sequential(kubeconfig, args.sequential)))
        results.update(asyncio.run(run_pods(kubeconfig, args.pods)))
    finally:
        down = podnet("down", "--name", args.name)
        if down.returncode != 0:
            print(down.stdout + down.stderr, file=sys.stderr)
    targets = {"bring_up_s": 3.0, "all_running_ready_s": 10.0, "sequential_startup_p99_s": 1.0}
    print(f"{'measure':<24}{'value':>10}{'target':>10}")
    for key, value in results.items():
        target = targets.get(key)
        mark = "" if target is None else f"{'<=' if value <= target else '> '}{target:g}"
        print(f"{key:<24}{value!s:>10}{mark:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
