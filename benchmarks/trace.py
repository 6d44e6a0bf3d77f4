"""`podnet trace` benchmark (not a test): how long a prediction and a `--verify` take on a
3-node lab with 1,000 Services.

Run as root from the repo:
    .venv/bin/python -P benchmarks/trace.py [--services 1000] [--rounds 5]
        [--modes iptables,nftables,userspace]
(-P keeps benchmarks/ off the import path: benchmarks/dns.py would hide dnspython, which
`--verify` imports.)

1. `Lab.up` a 3-node vxlan lab (no cluster DNS: it is not on the measured path); a `client`
   pod on node1 and a `server` pod (agnhost netexec) on node3; `--services` Services, each
   selecting the server (so each has one endpoint, on the other node, and kube-proxy programs
   all of them).
2. For each kube-proxy mode: switch (`Lab.restart_agents`), wait until the last Service is
   served and every node's proxy has programmed every Service and EndpointSlice
   (`proxy/status.json`), then `--rounds` rounds of
   - prediction: everything `podnet trace client svc/<last>` does after Python started — read
     the API, resolve FROM/TO, read the namespaces on the way (nodes with iptables-save and
     the nft listing, the two pods), plan, render the text;
   - verify: the same plus `--verify` (probe tables in 5 namespaces, a real TCP probe, events,
     comparison), which must agree;
   and once each, the whole command as a user runs it (`podnet trace ...`, Python start-up
   included).
3. `Lab.down` always.

Targets (issue #14): prediction <= 1 s, verify <= 3 s (median, in-process). Prints a table and
writes benchmarks/results/trace.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from podnet.agent.status import caught_up, read_status
from podnet.api.client import HttpApi
from podnet.demo.manifests import AGNHOST
from podnet.lab import Lab, LabSpec
from podnet.trace.plan import plan_trace
from podnet.trace.render import render_trace
from podnet.trace.resolve import pods_involved, resolve_probe
from podnet.trace.snapshot import capture_snapshot, cluster_snapshot
from podnet.trace.verify import verify_trace

RESULTS = Path(__file__).parent / "results" / "trace.json"
TARGET_PREDICT_S = 1.0
TARGET_VERIFY_S = 3.0


def pod(name: str, node: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "c", "image": AGNHOST, "args": ["netexec", "--http-port=8080"]}
            ],
        },
    }


def service(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"s{index:04d}"},
        "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


async def populate(lab: Lab, services: int) -> None:
    api = HttpApi.from_kubeconfig(lab.kubeconfig)
    try:
        await api.create("pods", pod("client", "node1", "client"), "default")
        await api.create("pods", pod("server", "node3", "server"), "default")
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with gate:
                await api.create("services", service(i), "default")

        await asyncio.gather(*(one(i) for i in range(services)))
    finally:
        await api.close()


def predict(lab: Lab, target: str) -> tuple[float, str]:
    start = time.perf_counter()
    snap = cluster_snapshot(lab.plan)
    probe = resolve_probe(snap, "client", target)
    snap = capture_snapshot(snap, pods_involved(snap, "client", probe))
    trace = plan_trace(snap, probe)
    render_trace(trace, Console(file=io.StringIO(), width=80))
    return time.perf_counter() - start, trace.outcome


def verify(lab: Lab, target: str) -> tuple[float, bool]:
    start = time.perf_counter()
    snap = cluster_snapshot(lab.plan)
    probe = resolve_probe(snap, "client", target)
    snap = capture_snapshot(snap, pods_involved(snap, "client", probe))
    verification = verify_trace(snap, probe)
    return time.perf_counter() - start, verification.agree


def command(lab: Lab, target: str, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", "trace", "--name", lab.name, "client", target,
         *extra],
        capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    return time.perf_counter() - start


class NotServed(Exception):
    """A mode never got ready: its row says so, and the other modes are still measured."""


def wait_served(lab: Lab, target: str, mode: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _, outcome = predict(lab, target)
        snap = cluster_snapshot(lab.plan)
        if outcome == "delivered" and snap.proxy_mode == mode:
            return
        if time.monotonic() > deadline:
            raise NotServed(f"{mode}: {target} was not served within {timeout:.0f} s")
        time.sleep(1)


def wait_programmed(lab: Lab, mode: str, timeout: float = 600) -> None:
    """Until every node's kube-proxy runs in `mode` with every Service and EndpointSlice in
    its kernel (`proxy/status.json`, agent/status.py): a sync during a verify rewrites the
    iptables chains the probe crosses, and the kernel then runs rules the snapshot lacks."""
    deadline = time.monotonic() + timeout
    while True:
        found = asyncio.run(latest_revisions(lab))
        statuses = [read_status(Path(n.state_dir), "proxy") for n in lab.plan.nodes]
        if all(s is not None and s.get("mode") == mode and caught_up(s, found) for s in statuses):
            return
        if time.monotonic() > deadline:
            raise NotServed(f"{mode}: the proxies did not program {found} in {timeout:.0f} s")
        time.sleep(0.5)


async def latest_revisions(lab: Lab) -> dict[str, int]:
    api = HttpApi.from_kubeconfig(lab.kubeconfig)
    try:
        listed = {r: await api.list(r, "default") for r in ("services", "endpointslices")}
    finally:
        await api.close()
    return {
        r: max(int(o["metadata"]["resourceVersion"]) for o in found.get("items") or [])
        for r, found in listed.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="iptables,nftables,userspace")
    args = parser.parse_args()
    spec = LabSpec(name=f"btr{secrets.token_hex(2)}", nodes=3, dns=False)
    print(f"bringing up lab {spec.name} (3 nodes) with {args.services} Services ...", flush=True)
    lab = Lab.up(spec, merge_kubeconfig=False, timeout=180)
    rows: list[dict[str, Any]] = []
    try:
        asyncio.run(populate(lab, args.services))
        target = f"svc/s{args.services - 1:04d}"
        for mode in args.modes.split(","):
            if lab.plan.proxy_mode != mode:
                lab.restart_agents(proxy_mode=mode, timeout=300)
            try:
                wait_served(lab, target, mode)
                wait_programmed(lab, mode)
            except NotServed as exc:
                print(exc, flush=True)
                rows.append({"mode": mode, "services": args.services, "failed": str(exc)})
                continue
            predictions = [predict(lab, target)[0] for _ in range(args.rounds)]
            verifies = [verify(lab, target) for _ in range(args.rounds)]
            rows.append(
                {
                    "mode": mode,
                    "services": args.services,
                    "predict_median_s": statistics.median(predictions),
                    "predict_max_s": max(predictions),
                    "verify_median_s": statistics.median(v[0] for v in verifies),
                    "verify_max_s": max(v[0] for v in verifies),
                    "verify_agreed": sum(v[1] for v in verifies),
                    "rounds": args.rounds,
                    "command_predict_s": command(lab, target),
                    "command_verify_s": command(lab, target, "--verify"),
                }
            )
            print(f"{mode}: done", flush=True)
    finally:
        lab.down()
    print(f"\npodnet trace client {target} on 3 nodes, {args.services} Services (seconds)")
    header = f"{'mode':<10} {'predict':>8} {'/target':>8} {'verify':>8} {'/target':>8} {'agreed':>7} {'cmd':>6} {'cmd -v':>7}"  # noqa: E501
    print(header)
    for r in rows:
        if "failed" in r:
            print(f"{r['mode']:<10} {r['failed']}")
            continue
        print(
            f"{r['mode']:<10} {r['predict_median_s']:>8.2f} "
            f"{r['predict_median_s'] / TARGET_PREDICT_S:>8.2f} {r['verify_median_s']:>8.2f} "
            f"{r['verify_median_s'] / TARGET_VERIFY_S:>8.2f} "
            f"{r['verify_agreed']:>3}/{r['rounds']:<3} "
            f"{r['command_predict_s']:>6.2f} {r['command_verify_s']:>7.2f}"
        )
    print("(/target: the median over the target; <= 1 meets it. cmd: the whole command)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"targets": {"predict_s": TARGET_PREDICT_S, "verify_s": TARGET_VERIFY_S}, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    ok = all(
        "failed" not in r
        and r["predict_median_s"] <= TARGET_PREDICT_S
        and r["verify_median_s"] <= TARGET_VERIFY_S
        for r in rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
