"""Lab bring-up benchmark (not a test): `podnet up` of a 3-node lab, repeated, with its phases.

Run as root from the repo:
    .venv/bin/python -P benchmarks/up.py [--nodes 3] [--rounds 5]

Each round runs the command a user runs, `podnet up --name <lab> --nodes N --timings
--no-kubeconfig` (Python start-up of the command included), and reads its `--timings` lines:
when the API server was asked to start, when every node was Ready, when cluster DNS answered
(the end of `up`); then `podnet down`. Prints the median and the spread (min to max) of each over
the rounds and writes benchmarks/results/up.json.

Target (issue #17): every node Ready <= 3 s after the command starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "up.json"
TARGET_READY_S = 3.0
_STAMP = re.compile(r"\+\s*([0-9.]+)s \(\s*[0-9.]+s\) (.*)")


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # one line per --timings message
    )


def one_round(nodes: int) -> dict[str, float]:
    name = f"bup{secrets.token_hex(3)}"
    began = time.monotonic()
    up = podnet("up", "--name", name, "--nodes", str(nodes), "--timings", "--no-kubeconfig")
    total = time.monotonic() - began
    try:
        if up.returncode != 0:
            raise SystemExit(f"podnet up failed (exit {up.returncode}):\n{up.stdout}{up.stderr}")
        # (a failed round ends the run: its phases would say nothing)
        printed = up.stdout + up.stderr  # rich's console may be either
        # the command's own clock starts after its imports: add them back
        offset = total - float(re.findall(r"up in ([0-9.]+)s", printed)[-1])
        phases: dict[str, float] = {"command": total}
        for seconds, message in _STAMP.findall(printed):
            at = float(seconds) + offset
            if message.startswith("starting the API server"):
                phases["server_asked"] = at
            elif message.startswith("started ") and "agents" in message:
                phases["agents_asked"] = at
            elif message.startswith(f"{nodes}/{nodes} nodes Ready"):
                phases["ready"] = at
            elif message.startswith("cluster DNS answers"):
                phases["dns"] = at
        return phases
    finally:
        podnet("down", "--name", name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args, _ = parser.parse_known_args()  # run_all passes every script its arguments
    rounds = [one_round(args.nodes) for _ in range(args.rounds)]
    keys = ("server_asked", "agents_asked", "ready", "dns", "command")
    summary: dict[str, Any] = {}
    print(f"podnet up, {args.nodes} nodes, {args.rounds} rounds (seconds since the command began)")
    print(f"{'phase':<14}{'median':>8}{'min':>8}{'max':>8}")
    for key in keys:
        values = [r[key] for r in rounds if key in r]
        if not values:
            continue
        summary[key] = {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }
        print(f"{key:<14}{statistics.median(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")
    ready = summary.get("ready", {}).get("median", float("inf"))
    print(f"every node Ready: median {ready:.2f} s (target <= {TARGET_READY_S:g} s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"nodes": args.nodes, "rounds": rounds, "summary": summary}, indent=2) + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0 if ready <= TARGET_READY_S else 1


if __name__ == "__main__":
    sys.exit(main())
