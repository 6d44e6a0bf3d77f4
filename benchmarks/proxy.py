"""kube-proxy benchmark (not a test): sync times, change latency and data-plane rates per mode.

Run from the repo, as root:  .venv/bin/python benchmarks/proxy.py [--scales 1000,10000]
                                 [--modes iptables,nftables,userspace] [--seconds 2]
                                 [--rounds 5]

On a throwaway node built like the proxy kernel tests (podnet.testing.proxy_lab: a node
namespace, three endpoint pods running busybox httpd, a client pod on its own subnet):

1. Full sync at each scale (N services x 3 endpoints) through podnet's proxier, next to the
   bare `iptables-restore --noflush` / `nft -f -` of the very same text in a fresh namespace.
2. Latency of one endpoint change at the largest scale: apply the change and run one partial
   sync (render + kernel call), as the sync loop does.
3. Connection rate (new TCP connection + HTTP GET each) to the first vs the last of N services;
   only those two have the real pods as endpoints.
4. Request rate and bulk download (32 MiB, best of 3 per sample) through the ClusterIP vs
   straight to a pod, per mode: `--rounds` (5) pairs, the side going first alternating, so
   load drifting on a shared machine hits both sides alike; the ratio is the median of the
   pairs' ratios, printed with its spread (lowest-highest pair).

Targets (issue #6): nftables last/first >= 0.95; nftables full sync <= 2 s and one change
<= 100 ms at 10k; iptables full sync <= 1.25 x bare restore, and <= 5 s at 10k (issue #17);
userspace 32 MiB download >= 0.8 of direct as the median of 5 (issue #17).
userspace mode keeps one socket per service port, so it runs at `--userspace-services` only;
its relay runs as the agent runs it, a process in a session of its own (`relay_dir`).
Prints ratio tables, writes benchmarks/results/proxy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.modes import IptablesProxier, NftablesProxier, ProxyKernel
from podnet.agent.proxy.tracker import ProxyState
from podnet.api.meta import rfc3339
from podnet.kernel import netns
from podnet.kernel.rules import IptablesRunner, NftRunner
from podnet.procs import stop_all

# the hand-built test node is shared with the kernel tests rather than duplicated here
from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.proxy_lab import ENDPOINT_IPS, HTTP_PORT, NODE_IP, ProxyNode, Topology, topology

HERE = Path(__file__).resolve().parent

RESULTS = HERE / "results" / "proxy.json"
CFG = ProxyConfig(cluster_cidr="10.244.0.0/16", service_cidr="10.96.0.0/12", node_ips=(NODE_IP,))
BULK_BYTES = 32 * 1024 * 1024
BULK_TRIES = 3  # downloads per bulk sample (one client process); the sample is the best
ROUNDS = 5  # alternated direct / ClusterIP pairs per data-plane figure


def build_state(n: int) -> ProxyState:
    """N services x 3 endpoints; the first and last use the real pods, the rest fake IPs."""
    state = ProxyState(node_name="test-node")
    for i in range(n):
        ip = f"10.{97 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        state.on_service(service("bench", f"svc{i}", ip, port=80, port_name="http"))
        if i in (0, n - 1):
            eps = list(ENDPOINT_IPS)
        else:
            eps = [
                f"10.{245 + (3 * i + k) // 65536}.{((3 * i + k) // 256) % 256}.{(3 * i + k) % 256}"
                for k in range(3)
            ]
        state.on_slice(
            endpoint_slice(
                "bench", f"svc{i}", eps, port=HTTP_PORT, port_name="http", node="test-node"
            )
        )
    state.apply()
    return state


def cluster_ip(state: ProxyState, i: int) -> str:
    return state.services[f"bench/svc{i}"][0].cluster_ip


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fresh_namespace(tag: str) -> str:
    name = f"pnt3-bench-{tag}"
    if netns.exists(name):
        netns.delete(name)
    netns.create(name)
    return name


def bare_load(mode: str, text: str, tag: str) -> float:
    """Seconds for the bare tool to load `text` into an empty namespace."""
    ns = fresh_namespace(tag)
    try:
        if mode == "iptables":
            return timed(lambda: IptablesRunner(ns).restore(text))
        return timed(lambda: NftRunner(ns).apply(text))
    finally:
        netns.delete(ns)


# load generator, run as separate processes inside the client namespace, each in a session of
# its own (`run_clients`), as the kubelet starts a pod's processes
CLIENT = r"""
import socket, sys, time
kind, seconds, targets = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
addrs = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in targets]
if kind == "bulk":
    best = 0.0
    view = memoryview(bytearray(1 << 20))  # one buffer: no allocation nor page faults per read
    for _ in range(BULK_TRIES):
        start, got = time.perf_counter(), 0
        with socket.create_connection(addrs[0], timeout=10) as s:
            s.sendall(b"GET /bulk.bin HTTP/1.0\r\n\r\n")
            while n := s.recv_into(view):
                got += n
        best = max(best, got / (time.perf_counter() - start) / 1e6)
    print(best)
else:
    done, i = 0, 0
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        with socket.create_connection(addrs[i % len(addrs)], timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while s.recv(65536):
                pass
        done += 1
        i += 1
    print(done / (time.monotonic() - start))
""".replace("BULK_TRIES", str(BULK_TRIES))


def run_clients(ns: str, kind: str, targets: list[str], seconds: float, procs: int) -> float:
    """Sum of what `procs` concurrent client processes in `ns` report.

    Each client runs in a session of its own, as a pod's processes do (the kubelet starts
    them so): with the kernel's autogroups (CONFIG_SCHED_AUTOGROUP, on by default) a session
    is a scheduling group, and a client left in this process's session shared one CPU share
    with whatever else runs here."""
    argv = [sys.executable, "-c", CLIENT, kind, str(seconds), *targets]
    started = [
        netns.call_in(
            ns,
            lambda: subprocess.Popen(
                argv, stdout=subprocess.PIPE, text=True, start_new_session=True
            ),
        )
        for _ in range(procs)
    ]
    total = 0.0
    for proc in started:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"load client failed ({proc.returncode}) against {targets}")
        total += float(out.strip())
    return total


def connection_rate(ns: str, ip: str, port: int, seconds: float) -> float:
    """Sequential new connections (HTTP GET each) per second from one client."""
    return run_clients(ns, "conn", [f"{ip}:{port}"], seconds, 1)


def request_rate(ns: str, targets: list[str], seconds: float) -> float:
    """HTTP GETs (new connection each) per second from two concurrent client processes."""
    return run_clients(ns, "conn", targets, seconds, 2)


def bulk_rate(ns: str, target: str) -> float:
    """Best MB/s of BULK_TRIES downloads of the 32 MiB file."""
    return run_clients(ns, "bulk", [target], 0, 1)


def alternated(
    direct: Callable[[], float], via: Callable[[], float], rounds: int
) -> dict[str, Any]:
    """`rounds` pairs of one direct and one ClusterIP sample, the side going first alternating
    (direct first, then ClusterIP first, ...), so load drifting on a shared machine hits both
    sides of each ratio alike. The ratio is the median of the pairs' ratios; its spread is the
    lowest and highest pair."""
    direct_runs: list[float] = []
    via_runs: list[float] = []
    ratios: list[float] = []
    for round_ in range(rounds):
        pair: dict[str, float] = {}
        sides = [("direct", direct), ("clusterip", via)]
        for side, measure in sides if round_ % 2 == 0 else sides[::-1]:
            pair[side] = measure()
        direct_runs.append(pair["direct"])
        via_runs.append(pair["clusterip"])
        ratios.append(pair["clusterip"] / pair["direct"])
    return {
        "direct": statistics.median(direct_runs),
        "clusterip": statistics.median(via_runs),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "direct_runs": direct_runs,
        "clusterip_runs": via_runs,
        "ratios": ratios,
    }


def first_vs_last(
    topo: Topology, state: ProxyState, n: int, seconds: float, rounds: int = 4
) -> tuple[float, float]:
    """Alternating rounds (first, last, first, ...) so drift hits both alike; mean rates."""
    first: list[float] = []
    last: list[float] = []
    for _ in range(rounds):
        first.append(connection_rate(topo.client, cluster_ip(state, 0), 80, seconds / rounds))
        last.append(connection_rate(topo.client, cluster_ip(state, n - 1), 80, seconds / rounds))
    return sum(first) / rounds, sum(last) / rounds


DIRECT = [f"{ip}:{HTTP_PORT}" for ip in ENDPOINT_IPS]


def dataplane(
    topo: Topology, state: ProxyState, n: int, seconds: float, rounds: int
) -> dict[str, Any]:
    first, last = first_vs_last(topo, state, n, seconds)
    via = f"{cluster_ip(state, 0)}:80"
    return {
        "first_vs_last": {"n": n, "first_per_s": first, "last_per_s": last, "ratio": last / first},
        "requests": alternated(
            lambda: request_rate(topo.client, DIRECT, seconds / 2),
            lambda: request_rate(topo.client, [via], seconds / 2),
            rounds,
        ),
        "bulk_mb_s": alternated(
            lambda: bulk_rate(topo.client, DIRECT[0]),
            lambda: bulk_rate(topo.client, via),
            rounds,
        ),
    }


def kernel_mode(
    topo: Topology, mode: str, scales: list[int], seconds: float, rounds: int
) -> dict[str, Any]:
    kernel = ProxyKernel.in_namespace(topo.node)
    result: dict[str, Any] = {"full_sync": {}}
    proxier: IptablesProxier | NftablesProxier | None = None
    for n in scales:
        state = build_state(n)
        # the same restore varies run to run here (nf_tables backend, a shared machine):
        # alternate ours / bare three times and keep medians
        reps = 3
        ours_runs: list[float] = []
        bare_runs: list[float] = []
        text = ""
        for _ in range(reps):
            if proxier is not None:
                proxier.cleanup_now()
            proxier = (
                IptablesProxier(CFG, kernel) if mode == "iptables" else NftablesProxier(CFG, kernel)
            )
            ours_runs.append(timed(lambda s=state, p=proxier: p.sync_now(s, None)))
            if mode == "iptables":
                from podnet.agent.proxy.iptables import render_iptables

                # the proxier keeps no rule text between syncs: the same input, rendered again
                text = render_iptables(state.service_port_map(), state.endpoints_map(), CFG)
            else:
                from podnet.agent.proxy.nftables import NftablesPlanner

                text = NftablesPlanner(CFG).full(proxier.fragments)  # type: ignore[arg-type]
            bare_runs.append(bare_load(mode, text, f"{mode}-{n}"))
        ours = sorted(ours_runs)[reps // 2]
        bare = sorted(bare_runs)[reps // 2]
        result["full_sync"][n] = {
            "podnet_s": ours,
            "bare_s": bare,
            "ratio": ours / bare,
            "payload_bytes": len(text),
            "podnet_runs": ours_runs,
            "bare_runs": bare_runs,
        }
        print(f"  {mode} full sync {n}: podnet {ours:.3f}s  bare {bare:.3f}s", flush=True)
    assert proxier is not None
    n = scales[-1]
    changes = []
    for k in range(5):  # one endpoint of a middle service moves, five times
        mid = n // 2
        state.on_slice(
            endpoint_slice(
                "bench",
                f"svc{mid}",
                [f"10.250.0.{k + 1}", "10.250.1.1", "10.250.1.2"],
                port=HTTP_PORT,
                port_name="http",
                node="test-node",
            )
        )

        def one_change(s: ProxyState = state, p: Any = proxier) -> None:
            p.sync_now(s, s.apply().updated_services)

        changes.append(timed(one_change))
    result["one_change_s"] = {
        "n": n,
        "median": sorted(changes)[len(changes) // 2],
        "max": max(changes),
    }
    result.update(dataplane(topo, state, n, seconds, rounds))
    proxier.cleanup_now()
    return result


def userspace_mode(topo: Topology, n: int, seconds: float, rounds: int) -> dict[str, Any]:
    """The relay runs as the agent runs it: a process of its own (`relay_dir`), not inside
    this one, where it shared a scheduling group (the session's autogroup) and a GIL with
    the benchmark."""
    with tempfile.TemporaryDirectory(prefix=f"{topo.marker}-relay") as relay_dir:
        try:
            return _userspace_mode(topo, Path(relay_dir), n, seconds, rounds)
        finally:
            stop_all(Path(relay_dir), grace_seconds=1)  # the relay, if a step failed


def _userspace_mode(
    topo: Topology, relay_dir: Path, n: int, seconds: float, rounds: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    node = ProxyNode(topo, "userspace", relay_dir=relay_dir)
    node.hold_lists()  # the clock starts once the API holds every object (writes not timed)
    with node:
        state = build_state(n)
        for key in state.services:
            ns, name = key.split("/")
            sp = state.services[key][0]
            node.put("services", service(ns, name, sp.cluster_ip, port=80, port_name="http"))
            eps = [e.ip for e in next(iter(state.endpoints_of(key).values()))]
            node.put(
                "endpointslices",
                endpoint_slice(ns, name, eps, port=HTTP_PORT, port_name="http", node="test-node"),
            )
        start = time.perf_counter()
        node.release_lists()
        node.wait_programmed(timeout=600)
        result["full_sync"] = {n: {"podnet_s": time.perf_counter() - start}}
        result.update(dataplane(topo, state, n, seconds, rounds))
        node.cleanup_rules()
    return result


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def rate_tables(modes: dict[str, Any], rounds: int) -> None:
    """The data-plane rates: medians of the alternated pairs, the ratio's spread beside it."""
    for key, title in (
        ("requests", "requests through the ClusterIP vs straight to the pods (req/s, 2 clients)"),
        ("bulk_mb_s", f"bulk download, 32 MiB, best of {BULK_TRIES} per sample (MB/s)"),
    ):
        table(
            f"{title}; medians of {rounds} alternated pairs",
            ["mode", "direct", "clusterIP", "ratio", "ratio min-max"],
            [
                [
                    m,
                    f"{r[key]['direct']:.0f}",
                    f"{r[key]['clusterip']:.0f}",
                    f"{r[key]['ratio']:.2f}",
                    f"{r[key]['ratio_min']:.2f}-{r[key]['ratio_max']:.2f}",
                ]
                for m, r in modes.items()
            ],
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1000,10000")
    parser.add_argument("--modes", default="nftables,iptables,userspace")
    parser.add_argument("--userspace-services", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="alternated direct/ClusterIP pairs per rate"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args, _unknown = parser.parse_known_args()  # run_all passes its arguments to everyone
    scales = [int(s) for s in args.scales.split(",")]
    results: dict[str, Any] = {
        "when": rfc3339(datetime.now(UTC)),
        "scales": scales,
        "load_average_start": os.getloadavg(),
        "modes": {},
    }
    with topology() as topo:
        for d in topo.dirs:
            Path(d.name, "bulk.bin").write_bytes(b"\0" * BULK_BYTES)
        for mode in args.modes.split(","):
            print(f"== {mode}", flush=True)
            if mode == "userspace":
                results["modes"][mode] = userspace_mode(
                    topo, args.userspace_services, args.seconds, args.rounds
                )
            else:
                results["modes"][mode] = kernel_mode(topo, mode, scales, args.seconds, args.rounds)
    modes = results["modes"]
    rows = []
    for mode, r in modes.items():
        for n, fs in r["full_sync"].items():
            bare = fs.get("bare_s")
            rows.append(
                [
                    mode,
                    str(n),
                    f"{fs['podnet_s']:.3f}",
                    f"{bare:.3f}" if bare else "-",
                    f"{fs['podnet_s'] / bare:.2f}" if bare else "-",
                ]
            )
    table(
        "full sync (s): podnet vs the bare tool on the same text",
        ["mode", "services", "podnet", "bare", "ratio"],
        rows,
    )
    table(
        "one endpoint change (partial sync, s)",
        ["mode", "services", "median", "max"],
        [
            [
                m,
                str(r["one_change_s"]["n"]),
                f"{r['one_change_s']['median']:.3f}",
                f"{r['one_change_s']['max']:.3f}",
            ]
            for m, r in modes.items()
            if "one_change_s" in r
        ],
    )
    table(
        "connection rate to the first vs the last service (conn/s)",
        ["mode", "services", "first", "last", "last/first"],
        [
            [
                m,
                str(r["first_vs_last"]["n"]),
                f"{r['first_vs_last']['first_per_s']:.0f}",
                f"{r['first_vs_last']['last_per_s']:.0f}",
                f"{r['first_vs_last']['ratio']:.2f}",
            ]
            for m, r in modes.items()
        ],
    )
    rate_tables(modes, args.rounds)
    results["load_average_end"] = os.getloadavg()
    print(
        "\nload average (1 min) at the start / end: "
        f"{results['load_average_start'][0]:.2f} / {results['load_average_end'][0]:.2f}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
