"""Workload controllers benchmark (not a test): a DaemonSet across many nodes, a large Job.

Run from the repo:
    .venv/bin/python benchmarks/controllers.py [--nodes 50] [--completions 100]
                                               [--parallelism 10] [--pod-seconds 1.0]
                                               [--store sqlite]

1. Starts a real `podnet server` in-process (HTTPS, controllers on, store in a throwaway
   directory) and registers `--nodes` Ready nodes (Node objects only).
2. A stand-in kubelet (`podnet.testing.standin_kubelet.FakeKubelet`, polling the API over
   HTTPS like a kubelet) reports every bound pod Running and Ready, and makes Job pods exit 0
   after `--pod-seconds`.
3. DaemonSet: from create until every node runs an available pod (`numberAvailable` = nodes);
   then a new image until every node runs the new revision, with maxUnavailable 1 (node by
   node, the default) and with maxUnavailable 20%.
4. Job: `--completions` completions, `--parallelism` at a time, each pod running
   `--pod-seconds`: from create until the Complete condition. The pods' own run time is
   completions / parallelism x pod-seconds; target (issue #12): the Job finishes within 2x that.
5. RBAC authorization cost per request is measured by `benchmarks/auth.py` (the auth work of
   issue #12); its row here points there.

Prints a table of ratios and writes benchmarks/results/controllers.json. Client clock only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from podnet.api.client import HttpApi
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.config import ClusterConfig
from podnet.testing.standin_kubelet import FakeKubelet, add_node

RESULTS = Path(__file__).parent / "results" / "controllers.json"
NS = "default"
JOB_TARGET_RATIO = 2.0

Obj = dict[str, Any]


def daemonset(image: str, max_unavailable: int | str) -> Obj:
    labels = {"app": "bench-agent"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "bench-agent", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": max_unavailable},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "agent", "image": image}]},
            },
        },
    }


async def until(check: Any, limit: float) -> float:
    """Seconds until `await check()` holds (polled every 20 ms); raises after `limit`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > limit:
            raise TimeoutError(f"not done after {limit}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def daemonset_rows(api: HttpApi, nodes: int) -> list[Obj]:
    async def rolled(image: str) -> bool:
        ds = await api.get("daemonsets", "bench-agent", NS)
        status = ds.get("status") or {}
        if status.get("observedGeneration", 0) < ds["metadata"]["generation"]:
            return False
        if status.get("updatedNumberScheduled") != nodes or status.get("numberAvailable") != nodes:
            return False
        pods = (await api.list("pods", NS, label_selector="app=bench-agent"))["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return len(live) == nodes and all(
            p["spec"]["containers"][0]["image"] == image for p in live
        )

    rows: list[Obj] = []
    await api.create("daemonsets", daemonset("agent:1", 1), NS)
    took = await until(lambda: rolled("agent:1"), 300)
    rows.append({"case": f"DaemonSet created on {nodes} nodes", "seconds": took})
    for image, budget in (("agent:2", 1), ("agent:3", "20%")):
        await api.patch(
            "daemonsets",
            "bench-agent",
            {
                "spec": {
                    "updateStrategy": {"rollingUpdate": {"maxUnavailable": budget}},
                    "template": {"spec": {"containers": [{"name": "agent", "image": image}]}},
                }
            },
            NS,
            patch_type="strategic",
        )
        took = await until(lambda image=image: rolled(image), 600)
        rows.append(
            {
                "case": f"DaemonSet rolling update, maxUnavailable {budget}",
                "seconds": took,
                "per_node_ms": took / nodes * 1000,
            }
        )
    return rows


async def job_row(api: HttpApi, completions: int, parallelism: int, pod_seconds: float) -> Obj:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "bench-job", "namespace": NS},
        "spec": {
            "completions": completions,
            "parallelism": parallelism,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "work", "image": "busybox:1.36"}],
                }
            },
        },
    }

    async def complete() -> bool:
        status = (await api.get("jobs", "bench-job", NS)).get("status") or {}
        return any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in status.get("conditions") or []
        )

    await api.create("jobs", job, NS)
    took = await until(complete, 600)
    ideal = completions / parallelism * pod_seconds
    return {
        "case": f"Job {completions} completions, parallelism {parallelism}, {pod_seconds:g} s pods",
        "seconds": took,
        "ideal_seconds": ideal,
        "ratio": took / ideal,
        "target_ratio": JOB_TARGET_RATIO,
    }


async def run(args: argparse.Namespace) -> Obj:
    state = Path(tempfile.mkdtemp(prefix="podnet-bench-controllers-"))
    config = ClusterConfig(node_monitor_grace_seconds=3600, pod_eviction_timeout_seconds=3600)
    server = ApiServer(
        ServerOptions(
            state_dir=state,
            store_url=args.store,
            listen=parse_listen(["127.0.0.1:0"]),
            config=config,
        )
    )
    await server.start()
    api = HttpApi.from_kubeconfig(state / "kubeconfig")
    kubelet = FakeKubelet(api, namespace=NS, run_seconds=args.pod_seconds, interval=0.02)
    task = asyncio.create_task(kubelet.run())
    try:
        await asyncio.gather(*(add_node(api, f"bench-{i:03d}") for i in range(args.nodes)))
        rows = await daemonset_rows(api, args.nodes)
        await api.delete("daemonsets", "bench-agent", NS)
        rows.append(await job_row(api, args.completions, args.parallelism, args.pod_seconds))
        rows.append(
            {
                "case": "RBAC authorization per request, p99 with 1k RoleBindings",
                "seconds": None,
                "note": "see benchmarks/auth.py",
            }
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()
        await server.stop()
        shutil.rmtree(state, ignore_errors=True)
    return {"store": args.store, "nodes": args.nodes, "rows": rows}


def print_table(result: Obj) -> None:
    print(f"\nworkload controllers ({result['store']}, {result['nodes']} simulated nodes)\n")
    print(f"{'case':<62} {'time':>9} {'per node':>9} {'vs ideal':>9}")
    for row in result["rows"]:
        if row["seconds"] is None:
            print(f"{row['case']:<62} {row['note']:>29}")
            continue
        per_node = f"{row['per_node_ms']:.0f} ms" if "per_node_ms" in row else ""
        ratio = ""
        if "ratio" in row:
            mark = "✓" if row["ratio"] <= row["target_ratio"] else "✗"
            ratio = f"{row['ratio']:.2f}x {mark}"
        print(f"{row['case']:<62} {row['seconds']:>8.2f}s {per_node:>9} {ratio:>9}")
    print(f"\ntarget: the Job within {JOB_TARGET_RATIO:g}x its pods' own run time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--completions", type=int, default=100)
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--pod-seconds", type=float, default=1.0)
    parser.add_argument("--store", default="sqlite")
    args = parser.parse_args()
    result = uvloop.run(run(args))
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
