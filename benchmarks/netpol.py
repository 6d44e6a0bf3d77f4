"""NetworkPolicy benchmark (not a test): new-connection rate under policies, and how long a
policy change takes to be enforced on every node.

Run from the repo, as root:  .venv/bin/python benchmarks/netpol.py [--scales 0,100,1000]
                                 [--seconds 2] [--rounds 3] [--changes 40] [--nodes 3]

1. Connection rate. On the hand-built node of the proxy kernel tests
   (podnet.testing.proxy_lab) with the NetworkPolicy component running: a client pod opens
   new TCP connections to a server pod that accepts and closes at once (one client process,
   sequential, so each connection's first packets cross the table). With N policies selecting
   the server, each admitting its own peer identity (N peer pods exist, with their own
   labels) on its own port, the client is admitted only by the last one. Phases run
   0, N1, N2, ..., 0 to catch drift; the rate of each scale is divided by the mean of the two
   0-policy phases. Target: >= 0.95 at 1,000 policies.
2. Change → enforced. A lab of `--nodes` nodes (podnet up), a server and a client pod on
   every node, 1,000 policies selecting every server. Then `--changes` times, one after
   another: create (or delete) one more policy and time from the API call until every
   node's agent reports the change enforced (its status.json, written once `nft -f`
   returned, carries the change's resourceVersion). Target: p99 <= 200 ms.
Prints tables, writes benchmarks/results/netpol.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podnet.agent.status import caught_up, read_status
from podnet.api.client import HttpApi
from podnet.kernel import netns
from podnet.lab import Lab
from podnet.testing.netpol import IMAGE, namespace_manifest, policy
from podnet.testing.proxy_lab import CLIENT_IP, ENDPOINT_IPS, ProxyNode, topology

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "netpol.json"
ACCEPT_PORT = 9000
CHANGE_TARGET_P99 = 0.200
RATE_TARGET = 0.95

# a server that accepts and closes at once, and a sequential client: the connection's own
# cost stays small, so what the table adds per new connection is not drowned
SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {ACCEPT_PORT}))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
"""
CLIENT = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
done, start = 0, time.monotonic()
deadline = start + seconds
while time.monotonic() < deadline:
    with socket.create_connection((host, port), timeout=2) as s:
        s.recv(1)
    done += 1
print(done / (time.monotonic() - start))
"""


def _pod(ns: str, name: str, ip: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": IMAGE}]},
        "status": {"phase": "Running", "podIP": ip},
    }


def _scale_policy(i: int) -> dict[str, Any]:
    return policy(
        "x",
        f"allow-{i}",
        podSelector={"matchLabels": {"i": "0"}},
        ingress=[
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": {"ns": "y"}},
                        "podSelector": {"matchLabels": {"peer": f"p{i}"}},
                    }
                ],
                "ports": [{"port": ACCEPT_PORT}, {"port": 20000 + 2 * i}],
            }
        ],
    )


def _rate(ns: str, seconds: float) -> float:
    argv = [sys.executable, "-c", CLIENT, ENDPOINT_IPS[0], str(ACCEPT_PORT), str(seconds)]
    done = netns.call_in(
        ns,
        lambda: subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        ),
    )
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr.strip()}")
    return float(done.stdout.strip())


def _set_scale(node: ProxyNode, n: int, loaded: int) -> None:
    """Policies allow-0..allow-(n-1) exist; the client's label is admitted by the last."""
    for i in range(loaded, n):
        node.put("networkpolicies", _scale_policy(i))
    for i in range(n, loaded):
        node.delete("networkpolicies", _scale_policy(i))
    client = _pod("y", "client", CLIENT_IP, "test-node", {"peer": f"p{n - 1}" if n else "none"})
    node.delete("pods", client)  # a pod's spec is immutable: replace it to relabel
    node.put("pods", client)
    node.wait_programmed(timeout=300)


def connection_rates(scales: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    largest = max(scales)
    with topology("pnt8") as topo:
        server = netns.call_in(
            topo.endpoints[0],
            functools.partial(
                subprocess.Popen,
                [sys.executable, "-c", SERVER],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        )
        try:
            with ProxyNode(topo, "nftables", policy=True) as node:
                for ns in ("x", "y"):
                    node.put("namespaces", namespace_manifest(ns))
                node.put(
                    "nodes",
                    {"metadata": {"name": "test-node"}, "spec": {"podCIDR": "10.244.1.0/24"}},
                )
                node.put("pods", _pod("x", "server", ENDPOINT_IPS[0], "test-node", {"i": "0"}))
                for i in range(largest):  # the peers the policies admit: one identity each
                    ip = f"10.250.{i // 250}.{i % 250 + 1}"
                    node.put("pods", _pod("y", f"peer-{i}", ip, "other-node", {"peer": f"p{i}"}))
                node.wait_programmed(timeout=300)
                _rate(topo.client, 1.0)  # warm up (ARP, caches)
                loaded = 0
                phases: list[tuple[int, list[float]]] = []
                for n in [*scales, scales[0]]:
                    _set_scale(node, n, loaded)
                    loaded = n
                    phases.append((n, [_rate(topo.client, seconds) for _ in range(rounds)]))
                    print(f"  {n:>5} policies: {statistics.mean(phases[-1][1]):8.0f} conn/s")
        finally:
            server.terminate()
            server.wait(5)
    base = statistics.mean([statistics.mean(phases[0][1]), statistics.mean(phases[-1][1])])
    rows = {}
    for n, rates in phases[1:-1]:
        rows[str(n)] = {
            "conn_per_s": round(statistics.mean(rates)),
            "ratio": statistics.mean(rates) / base,
        }
    return {"baseline_conn_per_s": round(base), "by_policies": rows, "samples": phases}


async def _changes(lab: Lab, policies: int, changes: int) -> dict[str, Any]:
    nodes = lab.plan.nodes
    async with HttpApi.from_kubeconfig(lab.kubeconfig) as api:
        await api.create("namespaces", namespace_manifest("bench"))
        for i, node in enumerate(nodes):
            for role in ("server", "client"):
                pod = {
                    "metadata": {
                        "name": f"{role}-{i}",
                        "namespace": "bench",
                        "labels": {"role": role},
                    },
                    "spec": {
                        "nodeName": node.name,
                        "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "c", "image": IMAGE, "args": ["pause"]}],
                    },
                }
                await api.create("pods", pod, "bench")
        deadline = time.monotonic() + 120
        while True:
            listed = (await api.list("pods", namespace="bench"))["items"]
            if len(listed) == 2 * len(nodes) and all(p["status"].get("podIP") for p in listed):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("benchmark pods did not get addresses")
            await asyncio.sleep(0.5)
        rv = 0
        for i in range(policies):
            created = await api.create(
                "networkpolicies",
                policy(
                    "bench",
                    f"p{i}",
                    podSelector={"matchLabels": {"role": "server"}},
                    ingress=[
                        {
                            "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                            "ports": [{"port": 10000 + 2 * i}],
                        }
                    ],
                ),
                "bench",
            )
            rv = int(created["metadata"]["resourceVersion"])
        await _enforced(nodes, rv, within=300)
        toggle = policy(
            "bench",
            "toggle",
            podSelector={"matchLabels": {"role": "server"}},
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": 7000}],
                }
            ],
        )
        latencies = []
        for n in range(changes):
            started = time.perf_counter()
            if n % 2 == 0:
                written = await api.create("networkpolicies", toggle, "bench")
            else:
                written = await api.delete("networkpolicies", "toggle", "bench")
            await _enforced(nodes, int(written["metadata"]["resourceVersion"]), within=30)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)
    agents = {n.name: _agent_times(n.netns) for n in nodes}
    ordered = sorted(latencies)
    return {
        "nodes": len(nodes),
        "policies": policies,
        "changes": changes,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max_s": ordered[-1],
        "agents": agents,
        "samples_s": latencies,
    }


def _agent_times(node_netns: str) -> dict[str, float]:
    """Mean sync and programming (change seen -> enforced) time of one node's agent (its
    /metrics listens on the node's loopback, like kube-proxy's)."""

    def scrape() -> str:
        with urllib.request.urlopen("http://127.0.0.1:10249/metrics", timeout=10) as r:
            return str(r.read().decode())

    text = netns.call_in(node_netns, scrape)
    values = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("podnet_networkpolicy")
    )
    out = {}
    for name in ("sync_duration_seconds", "programming_duration_seconds"):
        total = float(values.get(f"podnet_networkpolicy_{name}_sum", 0))
        count = float(values.get(f"podnet_networkpolicy_{name}_count", 0)) or 1
        out[f"{name[: -len('_seconds')]}_mean_s"] = total / count
    return out


async def _enforced(nodes: Any, rv: int, within: float) -> None:
    """Until every node's agent reports NetworkPolicies enforced up to `rv` (poll 2 ms)."""
    deadline = time.monotonic() + within
    while True:
        statuses = [read_status(Path(n.state_dir), "policy") for n in nodes]
        if all(caught_up(s, {"networkpolicies": rv}) for s in statuses):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not enforced on every node within {within}s: {statuses}")
        await asyncio.sleep(0.002)


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def change_latency(nodes: int, policies: int, changes: int) -> dict[str, Any]:
    # `podnet up` in its own process, as a user runs it (and as benchmarks/pods.py does)
    name = f"bnp{secrets.token_hex(2)}"
    up = podnet("up", "--name", name, "--nodes", str(nodes))
    try:
        if up.returncode != 0:
            raise RuntimeError(f"podnet up failed:\n{up.stdout}{up.stderr}")
        return asyncio.run(_changes(Lab.load(name), policies, changes))
    finally:
        podnet("down", "--name", name)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def rate_table(scales: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    rates = connection_rates(scales, seconds, rounds)
    table(
        "new connections/s vs the same with no policy (target >= 0.95 at 1,000)",
        ["policies", "conn/s", "ratio"],
        [["0", str(rates["baseline_conn_per_s"]), "1.00"]]
        + [[n, str(r["conn_per_s"]), f"{r['ratio']:.2f}"] for n, r in rates["by_policies"].items()],
    )
    return rates


def change_table(nodes: int, policies: int, count: int) -> dict[str, Any]:
    changes = change_latency(nodes, policies, count)
    for node, times in changes["agents"].items():
        print(
            f"  {node}: sync {times['sync_duration_mean_s'] * 1000:.0f} ms, change seen -> "
            f"enforced {times['programming_duration_mean_s'] * 1000:.0f} ms (means)"
        )
    table(
        "policy change -> enforced on every node (target p99 <= 200 ms)",
        ["nodes", "policies", "changes", "p50 ms", "p99 ms", "max ms"],
        [
            [
                str(changes["nodes"]),
                str(changes["policies"]),
                str(changes["changes"]),
                f"{changes['p50_s'] * 1000:.0f}",
                f"{changes['p99_s'] * 1000:.0f}",
                f"{changes['max_s'] * 1000:.0f}",
            ]
        ],
    )
    return changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="0,100,1000")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=("rate", "change"), help="run one of the two parts")
    args, _unknown = parser.parse_known_args()  # run_all passes its arguments to everyone
    scales = [int(s) for s in args.scales.split(",")]
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds")}
    if args.only != "change":
        print("connection rate, policies selecting the server:")
        results["connection_rate"] = rate_table(scales, args.seconds, args.rounds)
    if args.only != "rate":
        print(f"\nchange -> enforced on every node ({args.nodes} nodes, {args.policies} policies)")
        results["change_latency"] = change_table(args.nodes, args.policies, args.changes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
