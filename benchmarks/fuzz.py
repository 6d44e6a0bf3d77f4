"""Fuzz the API server at length (run by hand; not a test): many more cases than the suite's.

Starts a real `podnet server` (no controllers; SQLite, and etcd with `--stores sqlite,etcd`)
per seed, sends `--cases` seeded hostile requests from `podnet.testing.fuzz` (typed mutations
of valid objects, hostile strings, deep nesting, bad query parameters, every patch type,
subresources, protobuf, malformed HTTP) and prints, per category, how the server answered:
2xx / 4xx / 5xx / no answer, requests whose answer broke the rules (a 5xx, an error that is
not a Status, a broken watch stream), and p50/p99 latency; then the server's resident memory
(start, peak, end) and how long SIGTERM took. Targets (issue #19): 0 server errors, 0 rule
breaks, memory bounded. Writes benchmarks/results/fuzz.json. Exit status 1 if a rule broke.

Usage: `.venv/bin/python benchmarks/fuzz.py [--cases 20000] [--seeds 1,2,3]
[--stores sqlite] [--concurrency 4]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from podnet.testing import fuzz
from podnet.testing.server import ServerProcess

RESULTS = Path(__file__).parent / "results" / "fuzz.json"
MB = 1024 * 1024


def one_run(
    store: str, seed: int, cases: int, concurrency: int, stack: ExitStack
) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix=f"podnet-fuzz-{store}-"))
    stack.callback(shutil.rmtree, state, True)
    url = "sqlite"
    if store == "etcd":
        from podnet.testing.etcd import EtcdServer

        url = f"{stack.enter_context(EtcdServer()).store_url}/fuzz{seed}"
    server = ServerProcess(state, store=url)
    server.start()
    try:
        report = asyncio.run(fuzz.campaign(server, seed, cases, concurrency=concurrency))
        started = time.monotonic()
        exit_code = server.stop()
        exit_seconds = time.monotonic() - started
    finally:
        server.stop()
    tracebacks = server.log_path.read_text(errors="replace").count("Traceback")
    return {
        "store": store,
        "seed": seed,
        "cases": report.cases,
        "seconds": round(report.seconds, 1),
        "by_category": {c: dict(counts) for c, counts in sorted(report.by_category.items())},
        "latency_ms": {
            c: {"p50": report.median(c) * 1000, "p99": report.latency(c, 0.99) * 1000}
            for c in sorted(report.latencies)
        },
        "problems": report.problem_count,
        "problem_samples": [fuzz.describe(p)[:500] for p in report.problems[:20]],
        "rss_mb": [round(r / MB, 1) for r in report.rss_samples],
        "server_tracebacks": tracebacks,
        "sigterm_seconds": round(exit_seconds, 2),
        "exit_code": exit_code,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20000, help="cases per seed")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--stores", default="sqlite")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    console = Console()
    runs = []
    for store in args.stores.split(","):
        if store == "etcd" and shutil.which("etcd") is None:
            console.print("[yellow]etcd not installed: skipping the etcd runs")
            continue
        for seed in (int(s) for s in args.seeds.split(",")):
            console.print(f"[bold]{store}[/] seed {seed}: {args.cases} cases ...")
            with ExitStack() as stack:
                runs.append(one_run(store, seed, args.cases, args.concurrency, stack))

    table = Table(title="podnet API fuzzing: answers per category (all runs)")
    for column in ("category", "cases", "2xx", "4xx", "5xx", "no answer", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    totals: dict[str, Counter[str]] = {}
    for run in runs:
        for category, counts in run["by_category"].items():
            totals.setdefault(category, Counter()).update(counts)
    for category, counts in sorted(totals.items()):
        p50 = max(r["latency_ms"].get(category, {}).get("p50", 0) for r in runs)
        p99 = max(r["latency_ms"].get(category, {}).get("p99", 0) for r in runs)
        table.add_row(
            category,
            str(sum(counts.values())),
            str(counts["2xx"]),
            str(counts["4xx"]),
            str(counts["5xx"]),
            str(counts["none"]),
            f"{p50:.1f}",
            f"{p99:.0f}",
        )
    console.print(table)

    summary = Table(title="per run: rule breaks, server memory, exit")
    for column in (
        "store",
        "seed",
        "cases",
        "seconds",
        "rule breaks",
        "tracebacks",
        "RSS start / peak / end MB",
        "SIGTERM s",
    ):
        summary.add_column(column, justify="right")
    for run in runs:
        rss = run["rss_mb"] or [0.0]
        summary.add_row(
            run["store"],
            str(run["seed"]),
            str(run["cases"]),
            str(run["seconds"]),
            str(run["problems"]),
            str(run["server_tracebacks"]),
            f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f}",
            f"{run['sigterm_seconds']:.2f}",
        )
    console.print(summary)
    for run in runs:
        for sample in run["problem_samples"]:
            console.print(f"{run['store']} seed {run['seed']}: {sample}", style="red", markup=False)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return 1 if any(r["problems"] or r["server_tracebacks"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
