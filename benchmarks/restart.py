"""API server restart benchmark (not a test): how soon the cluster works again after a restart.

Run as root from the repo:
    .venv/bin/python benchmarks/restart.py [--nodes 2] [--rounds 5] [--down 12]

1. `podnet up --name <lab> --nodes N`.
2. Two scenarios of `--rounds` rounds each: a plain restart, and an outage of `--down` seconds
   (12 s by default: longer than the agents' 10 s Lease and status period, so their writes
   fail meanwhile). Each round: `Lab.restart_server(down_for=...)` (SIGTERM, wait, start
   again, return once the API answers a list), then at once create a pod (busybox `sleep`, no
   nodeName: the scheduler places it) and watch it. Measured: restart -> API answers (minus
   the outage); API answers -> pod Running; API answers -> pod Ready; and the warning lines
   the agents logged from the SIGTERM until the pod was Ready (a retry loop without back-off
   writes thousands; issue #19 saw 2,000-2,800 a second per agent).
3. `podnet down --name <lab>` always, even after a failure.

Target (issue #19): a new pod is Running within 3 s of the API answering after a restart.
Prints a table and writes benchmarks/results/restart.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from podnet.api.client import HttpApi
from podnet.lab.lab import Lab

RESULTS = Path(__file__).parent / "results" / "restart.json"
TARGET_RUNNING_S = 3.0


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args], capture_output=True, text=True
    )


def pod_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "restart"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    }


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def pod_times(kubeconfig: Path, name: str, since: float) -> tuple[float, float]:
    """Create the pod; (seconds until Running, seconds until Ready) from `since` (monotonic)."""
    running = ready = 0.0
    async with HttpApi.from_kubeconfig(kubeconfig) as api:
        created = await api.create("pods", pod_body(name), "default")
        version = str(created["metadata"]["resourceVersion"])
        async with asyncio.timeout(60):
            async for event in api.watch(
                "pods",
                "default",
                resource_version=version,
                field_selector=f"metadata.name={name}",
            ):
                obj = event.get("object") or {}
                phase = (obj.get("status") or {}).get("phase")
                if not running and phase == "Running":
                    running = time.monotonic() - since
                if running and is_ready(obj):
                    ready = time.monotonic() - since
                    break
        await api.delete("pods", name, "default", grace_period_seconds=0)
    return running, ready


def log_sizes(lab: Lab) -> dict[Path, int]:
    logs = [Path(lab[node].log) for node in lab]
    return {p: p.stat().st_size if p.exists() else 0 for p in logs}


def warnings_since(sizes: dict[Path, int]) -> int:
    count = 0
    for path, offset in sizes.items():
        with path.open("rb") as fh:
            fh.seek(offset)
            count += sum(1 for line in fh if b" WARNING " in line or b" ERROR " in line)
    return count


def run_rounds(lab: Lab, rounds: int, down: float) -> list[dict[str, float]]:
    out = []
    for i in range(rounds):
        sizes = log_sizes(lab)
        stopped = time.monotonic()
        lab.restart_server(down_for=down)
        answered = time.monotonic()
        name = f"after-restart-{int(down)}-{i}"
        running, ready = asyncio.run(pod_times(lab.kubeconfig, name, answered))
        out.append(
            {
                "restart_to_answer_s": round(answered - stopped - down, 3),
                "answer_to_running_s": round(running, 3),
                "answer_to_ready_s": round(ready, 3),
                "agent_warning_lines": warnings_since(sizes),
            }
        )
        print(f"down {down:g} s, round {i + 1}/{rounds}: {out[-1]}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="benchrs")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--down", type=float, default=12.0)
    args = parser.parse_args()
    scenarios = {"restart": 0.0, "outage": args.down}
    results: dict[str, list[dict[str, float]]] = {}
    up = podnet("up", "--name", args.name, "--nodes", str(args.nodes))
    try:
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            print(f"podnet up failed (exit {up.returncode})", file=sys.stderr)
            return 1
        lab = Lab.load(args.name)
        for scenario, down in scenarios.items():
            results[scenario] = run_rounds(lab, args.rounds, down)
    finally:
        down = podnet("down", "--name", args.name)
        if down.returncode != 0:
            print(down.stdout + down.stderr, file=sys.stderr)
    summary: dict[str, Any] = {"nodes": args.nodes, "down_s": args.down, "rounds": results}
    print(f"{'scenario':<10}{'measure':<24}{'median':>10}{'max':>10}{'target':>10}")
    for scenario, rounds in results.items():
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            median, worst = statistics.median(values), max(values)
            summary[f"{scenario}_{key}_median"] = median
            summary[f"{scenario}_{key}_max"] = worst
            target = f"<= {TARGET_RUNNING_S:g}" if key == "answer_to_running_s" else ""
            print(f"{scenario:<10}{key:<24}{median:>10g}{worst:>10g}{target:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
