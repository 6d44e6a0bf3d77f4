"""Cluster DNS benchmark (not a test): queries per second and latency of one DNS pod.

Run from the repo, as root:  .venv/bin/python benchmarks/dns.py [--services 1000] [--seconds 5]

A 1-node lab with cluster DNS scaled to one replica and N Services. From the node's namespace,
Debian's dnsperf sends, as fast as it can (100 queries outstanding):

1. cluster names, cached: `svc-i.default.svc.cluster.local A`, every name asked before;
2. uncached: names asked once each (random labels in the zone: NXDOMAIN rendered afresh);
3. search path: what a pod with ndots:5 sends for `svc-i.default.svc.cluster.local` — three
   NXDOMAIN misses (`...default.svc.cluster.local`, `...svc.cluster.local`,
   `...cluster.local` appended), then the name itself;
each against the pod IP and against the Service IP (through kube-proxy), and the same files
against Debian's dnsmasq serving the same names (a hosts file, `--local=/cluster.local/` for
the misses) from inside the DNS pod's network namespace. Then p99 latency at a fixed 20k QPS
(dnsperf's per-query verbose output), and the DNS process's memory (VmRSS).

Targets (issue #20): one replica >= 0.7 of dnsmasq's QPS on cluster names; p99 <= 2 ms at 20k
QPS; memory <= 60 MB with 10k Services. Prints tables, writes benchmarks/results/dns.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# this script is benchmarks/dns.py and Python puts its directory first on the import path,
# where `import dns` (dnspython, which podnet imports) would find the script itself
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from podnet.api.client import HttpApi
from podnet.kernel import netns
from podnet.lab import Lab, LabSpec, down_lab

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "dns.json"
DNS_IP = "10.96.0.10"
ZONE = "cluster.local"
SERVICE_LABEL = "kubernetes.io/service-name"


def kubectl(lab: Lab, *args: str) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(lab.kubeconfig), *args],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return out.stdout


async def create_services(lab: Lab, count: int) -> None:
    api = HttpApi.from_kubeconfig(lab.kubeconfig)
    try:
        pending: set[asyncio.Task[Any]] = set()
        for i in range(count):
            body = {
                "metadata": {"name": f"svc-{i}", "namespace": "default"},
                "spec": {"selector": {"app": f"svc-{i}"}, "ports": [{"name": "http", "port": 80}]},
            }
            pending.add(asyncio.create_task(api.create("services", body, "default")))
            if len(pending) >= 32:
                _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    finally:
        await api.close()


async def count_slices(lab: Lab) -> int:
    api = HttpApi.from_kubeconfig(lab.kubeconfig)
    try:
        listed = await api.list("endpointslices", "default")
        owners = (s["metadata"].get("labels", {}).get(SERVICE_LABEL, "") for s in listed["items"])
        return sum(1 for owner in owners if owner.startswith("svc-"))
    finally:
        await api.close()


def query_files(work: Path, services: int) -> dict[str, Path]:
    names = [f"svc-{i}.default.svc.{ZONE}" for i in range(services)]
    unique = (f"x{secrets.token_hex(6)}.default.svc.{ZONE}" for _ in range(200_000))
    files = {
        "cached": "".join(f"{n} A\n" for n in names),
        "uncached": "".join(f"{n} A\n" for n in unique),
        "search path": "".join(
            f"{n}.default.svc.{ZONE} A\n{n}.svc.{ZONE} A\n{n}.{ZONE} A\n{n} A\n" for n in names
        ),
    }  # fmt: skip
    paths = {}
    for kind, text in files.items():
        paths[kind] = work / f"{kind.replace(' ', '-')}.txt"
        paths[kind].write_text(text)
    return paths


def dnsperf(node: str, server: str, port: int, data: Path, seconds: float,
            qps: int | None = None, verbose: bool = False) -> dict[str, Any]:  # fmt: skip
    argv = ["dnsperf", "-s", server, "-p", str(port), "-d", str(data), "-l", str(seconds),
            "-c", "4", "-q", "100"]  # fmt: skip
    if qps:
        argv += ["-Q", str(qps)]
    if verbose:
        argv += ["-v"]
    done = netns.run(argv, node, timeout=seconds + 60)
    text = done.stdout
    result: dict[str, Any] = {}
    for key, pattern in (
        ("qps", r"Queries per second:\s+([\d.]+)"),
        ("sent", r"Queries sent:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("avg_ms", r"Average Latency \(s\):\s+([\d.]+)"),
    ):
        match = re.search(pattern, text)
        result[key] = float(match.group(1)) if match else None
    if result["avg_ms"] is not None:
        result["avg_ms"] *= 1000
    if verbose:
        latencies = sorted(float(m) for m in re.findall(r"^> \S+ .* ([\d.]+)$", text, re.M))
        if latencies:
            result["p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1000
            result["p50_ms"] = latencies[len(latencies) // 2] * 1000
    return result


def dns_pod(lab: Lab) -> tuple[str, str]:
    """(pod IP, netns name) of the one coredns pod."""
    pods = json.loads(kubectl(lab, "-n", "kube-system", "get", "pods", "-l",
                              "k8s-app=kube-dns", "-o", "json"))["items"]  # fmt: skip
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    pod = live[0]
    uid = pod["metadata"]["uid"]
    record = Path(lab["node1"].state_dir) / "kubelet" / "sandboxes" / f"{uid}.json"
    return pod["status"]["podIP"], json.loads(record.read_text())["netns"]


def dns_rss_mb(pod_netns: str) -> float:
    """VmRSS of the process serving DNS in that pod (found by its command line and netns)."""
    inode = netns.inode(pod_netns)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"podnet.cli.dns" not in cmdline:  # the coredns image's entrypoint
                continue
            if os.stat(proc / "ns" / "net").st_ino != inode:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            continue
    return float("nan")


def start_dnsmasq(pod_netns: str, work: Path, services: dict[str, str]) -> subprocess.Popen[bytes]:
    hosts = work / "hosts"
    hosts.write_text("".join(f"{ip} {name}.default.svc.{ZONE}\n" for name, ip in services.items()))
    argv = ["ip", "netns", "exec", pod_netns, "dnsmasq", "--keep-in-foreground",
            "--conf-file=/dev/null", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
            f"--local=/{ZONE}/", "--port=5353", "--pid-file=", "--user=root",
            "--cache-size=10000", "--dns-forward-max=1000"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--p99-qps", type=int, default=20000)
    args = parser.parse_args()
    name = f"bdns{secrets.token_hex(2)}"
    state_root = Path(tempfile.mkdtemp(prefix="podnet-dns-bench-"))
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "services": args.services}
    dnsmasq: subprocess.Popen[bytes] | None = None
    try:
        lab = Lab.up(LabSpec(name=name, nodes=1, state_root=state_root, dns_upstreams=()),
                     merge_kubeconfig=False, timeout=180)  # fmt: skip
        kubectl(lab, "-n", "kube-system", "scale", "deployment/coredns", "--replicas=1")
        started = time.monotonic()
        asyncio.run(create_services(lab, args.services))
        print(f"{args.services} services created in {time.monotonic() - started:.1f} s")
        # measure a settled cluster: every Service's EndpointSlice written (until then each
        # new slice changes the DNS view, which empties its answer cache)
        while asyncio.run(count_slices(lab)) < args.services:
            if time.monotonic() - started > 600:
                raise RuntimeError("the EndpointSlices of the services did not appear")
            time.sleep(1)
        print(f"their EndpointSlices written after {time.monotonic() - started:.1f} s")
        listed = json.loads(kubectl(lab, "get", "services", "-o", "json"))["items"]
        ips = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in listed}
        deadline = time.monotonic() + 60
        while len(json.loads(kubectl(lab, "-n", "kube-system", "get", "pods", "-l",
                                     "k8s-app=kube-dns", "-o", "json"))["items"]) != 1:  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("the coredns deployment did not scale to one pod")
            time.sleep(0.5)
        pod_ip, pod_netns = dns_pod(lab)
        node = lab["node1"].netns
        work = state_root / "queries"
        work.mkdir()
        files = query_files(work, args.services)
        dnsmasq = start_dnsmasq(pod_netns, work, {k: v for k, v in ips.items()})
        # warm: every name of the repeated files once, so they are answered from the cache
        dnsperf(node, pod_ip, 53, files["cached"], 2)
        dnsperf(node, pod_ip, 53, files["search path"], 3)
        rows = []
        for kind, data in files.items():
            ours_pod = dnsperf(node, pod_ip, 53, data, args.seconds)
            ours_svc = dnsperf(node, DNS_IP, 53, data, args.seconds)
            theirs = dnsperf(node, pod_ip, 5353, data, args.seconds)
            rows.append((kind, ours_pod, ours_svc, theirs))
        fixed = dnsperf(node, pod_ip, 53, files["cached"], args.seconds, args.p99_qps, True)
        fixed_dnsmasq = dnsperf(node, pod_ip, 5353, files["cached"], args.seconds,
                                args.p99_qps, True)  # fmt: skip
        rss = dns_rss_mb(pod_netns)
        print(f"\none DNS pod, {args.services} services, dnsperf from the node (4 clients, "
              f"100 outstanding), {args.seconds:.0f} s per cell\n")  # fmt: skip
        print(f"{'queries':<12} {'pod IP qps':>11} {'Service qps':>12} {'dnsmasq qps':>12} "
              f"{'ratio':>6} {'avg ms':>7} {'lost':>6}")  # fmt: skip
        for kind, pod, svc, theirs in rows:
            ratio = (pod["qps"] or 0) / (theirs["qps"] or 1)
            print(f"{kind:<12} {pod['qps'] or 0:>11.0f} {svc['qps'] or 0:>12.0f} "
                  f"{theirs['qps'] or 0:>12.0f} {ratio:>6.2f} {pod['avg_ms'] or 0:>7.2f} "
                  f"{int(pod['lost'] or 0):>6}")  # fmt: skip
            results[kind] = {"pod": pod, "service": svc, "dnsmasq": theirs, "ratio": ratio}
        nan = float("nan")
        print(f"\nat {args.p99_qps} qps (cached cluster names): podnet p50 "
              f"{fixed.get('p50_ms', nan):.2f} ms, p99 {fixed.get('p99_ms', nan):.2f} ms "
              f"(qps {fixed['qps'] or 0:.0f}); dnsmasq p99 "
              f"{fixed_dnsmasq.get('p99_ms', nan):.2f} ms")  # fmt: skip
        print(f"memory of the DNS process (VmRSS): {rss:.1f} MB with {args.services} services")
        results["fixed_rate"] = {"qps": args.p99_qps, "podnet": fixed, "dnsmasq": fixed_dnsmasq}
        results["rss_mb"] = rss
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        down_lab(name, state_root)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
