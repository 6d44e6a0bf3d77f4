"""VM node benchmark (not a test): how long a node that boots its own kernel takes to be Ready.

Run as root from the repo:
    .venv/bin/python benchmarks/vm.py [--rounds 2]

1. `podnet up` of a one-node lab (a namespace node, no cluster DNS).
2. `--rounds` times: `Lab.add_node(vm_node=True)` (one more VM node: qemu boots Debian's
   kernel, the guest's supervisor starts the agent, the Node registers and turns Ready),
   timed from the call to the Ready Node, and split with the logs: qemu's start (the lab
   supervisor's log) -> the agent's first log line (boot + the agent's Python imports under
   emulation) -> the agent starting its components -> Ready.
3. `podnet down` always.

The accelerator is what `podnet up` chose (KVM when a probe guest boots under it, else TCG);
the table says which. Prints a table and writes benchmarks/results/vm.json.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from podnet.lab.lab import Lab, down_lab
from podnet.lab.spec import LabSpec

RESULTS = Path(__file__).parent / "results" / "vm.json"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> float | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _first(path: Path, needle: str) -> float | None:
    """The timestamp of the first log line of `path` containing `needle`."""
    for line in path.read_text(errors="replace").splitlines():
        if needle in line and (when := _stamp(line)) is not None:
            return when
    return None


def one_round(lab: Lab) -> dict[str, Any]:
    started = time.time()
    node = lab.add_node(vm_node=True, timeout=600)
    ready = time.time()
    qemu = _first(lab.state_dir / "supervisor.log", f"started agent-{node.name} ")
    agent_log = Path(node.log)
    first_line = _first(agent_log, " podnet.agent: ")
    components = _first(agent_log, "starting: kubelet")
    return {
        "node": node.name,
        "accel": lab.plan.vm_accel,
        "to_ready_s": round(ready - started, 1),
        "qemu_to_agent_log_s": round(first_line - qemu, 1) if qemu and first_line else None,
        "agent_log_to_components_s": (
            round(components - first_line, 1) if components and first_line else None
        ),
        "components_to_ready_s": round(ready - components, 1) if components else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    name = f"bvm{secrets.token_hex(2)}"
    lab = Lab.up(LabSpec(name=name, nodes=1, dns=False), merge_kubeconfig=False)
    rounds = []
    try:
        for _ in range(args.rounds):
            rounds.append(one_round(lab))
    finally:
        down_lab(name)
    print(f"VM node boot to Ready ({rounds[0]['accel'] if rounds else '?'}), {len(rounds)} rounds")
    print(f"{'node':<7} {'to Ready':>9} {'qemu->agent':>12} {'->components':>13} {'->Ready':>8}")
    for r in rounds:
        print(
            f"{r['node']:<7} {r['to_ready_s']:>8}s {r['qemu_to_agent_log_s']!s:>11}s "
            f"{r['agent_log_to_components_s']!s:>12}s {r['components_to_ready_s']!s:>7}s"
        )
    median = statistics.median(r["to_ready_s"] for r in rounds)
    print(f"median boot to Ready: {median:.1f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rounds": rounds, "median_to_ready_s": median}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
