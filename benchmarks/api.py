"""API server latency benchmark (run by hand; not a test).

Starts a real `podnet server` (no controllers) on SQLite and on a throwaway etcd, fills it with
pods through the HTTPS API, and at each size (default 1k and 10k pods) measures, one call at a
time through `podnet.api.client.HttpApi`:

- create / update (merge patch) / delete latency of pods, p50 and p99 over --samples calls;
- list latency of all pods in the namespace (p50 of 5 lists).

Prints a table and writes benchmarks/results/api.json. Target (issue #2): mutating p99 <= 50 ms
at 10k objects on SQLite. Usage: `.venv/bin/python benchmarks/api.py [--sizes 1000,10000]
[--stores sqlite,etcd] [--samples 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from podnet.api.client import HttpApi
from podnet.testing.server import ServerProcess

RESULTS = Path(__file__).parent / "results" / "api.json"
FILL_CONCURRENCY = 16


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "n": name.rsplit("-", 1)[-1]}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def timed(call: Any) -> float:
    started = time.perf_counter()
    await call
    return (time.perf_counter() - started) * 1000


async def fill(api: HttpApi, names: list[str]) -> None:
    queue = list(names)

    async def worker() -> None:
        while queue:
            await api.create("pods", pod(queue.pop()), "default")

    await asyncio.gather(*(worker() for _ in range(FILL_CONCURRENCY)))


async def measure(kubeconfig: Path, sizes: list[int], samples: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with HttpApi.from_kubeconfig(kubeconfig) as api:
        count = 0
        for size in sizes:
            await fill(api, [f"pod-{i}" for i in range(count, size - samples)])
            creates = [
                await timed(api.create("pods", pod(f"pod-{i}"), "default"))
                for i in range(size - samples, size)
            ]
            count = size
            updates = [
                await timed(
                    api.patch(
                        "pods",
                        f"pod-{i}",
                        {"metadata": {"annotations": {"bench": str(i)}}},
                        "default",
                    )
                )
                for i in range(size - samples, size)
            ]
            deletes = [
                await timed(api.delete("pods", f"pod-{i}", "default"))
                for i in range(size - samples, size)
            ]
            await fill(api, [f"pod-{i}" for i in range(size - samples, size)])
            lists = []
            for _ in range(5):
                started = time.perf_counter()
                listed = await api.list("pods", "default")
                lists.append((time.perf_counter() - started) * 1000)
                assert len(listed["items"]) == size, len(listed["items"])
            mutating = creates + updates + deletes
            results[str(size)] = {
                "create_p50_ms": percentile(creates, 0.5),
                "create_p99_ms": percentile(creates, 0.99),
                "update_p50_ms": percentile(updates, 0.5),
                "update_p99_ms": percentile(updates, 0.99),
                "delete_p50_ms": percentile(deletes, 0.5),
                "delete_p99_ms": percentile(deletes, 0.99),
                "mutating_p50_ms": percentile(mutating, 0.5),
                "mutating_p99_ms": percentile(mutating, 0.99),
                "list_p50_ms": statistics.median(lists),
                "list_max_ms": max(lists),
            }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--stores", default="sqlite,etcd")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict[str, Any] = {"sizes": sizes, "samples": args.samples, "stores": {}}
    console = Console()
    for store in args.stores.split(","):
        with ExitStack() as stack:
            state = Path(tempfile.mkdtemp(prefix=f"podnet-bench-{store}-"))
            stack.callback(shutil.rmtree, state, True)
            if store == "etcd":
                if shutil.which("etcd") is None:
                    console.print("[yellow]etcd not installed: skipping the etcd run")
                    continue
                from podnet.testing.etcd import EtcdServer

                etcd = stack.enter_context(EtcdServer())
                url = f"{etcd.store_url}/bench"
            else:
                url = "sqlite"
            server = stack.enter_context(ServerProcess(state, store=url))
            console.print(f"[bold]{store}[/]: filling to {', '.join(map(str, sizes))} pods ...")
            report["stores"][store] = asyncio.run(measure(server.kubeconfig, sizes, args.samples))

    table = Table(title=f"podnet API latency (ms; {args.samples} sequential calls per cell)")
    for column in (
        "store",
        "pods",
        "create p50/p99",
        "update p50/p99",
        "delete p50/p99",
        "mutating p99",
        "list p50",
    ):
        table.add_column(column, justify="right")
    for store, by_size in report["stores"].items():
        for size, r in by_size.items():
            table.add_row(
                store,
                size,
                f"{r['create_p50_ms']:.1f} / {r['create_p99_ms']:.1f}",
                f"{r['update_p50_ms']:.1f} / {r['update_p99_ms']:.1f}",
                f"{r['delete_p50_ms']:.1f} / {r['delete_p99_ms']:.1f}",
                f"{r['mutating_p99_ms']:.1f}",
                f"{r['list_p50_ms']:.0f}",
            )
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
