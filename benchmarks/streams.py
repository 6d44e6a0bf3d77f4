"""Streams benchmark (not a test): port-forward and exec throughput against the same transfer
straight to the pod, and the round trip of an interactive `kubectl exec -i`.

Run as root from the repo:
    .venv/bin/python benchmarks/streams.py [--mib 100] [--rounds 3] [--echoes 300]

1. A one-node lab (`podnet.testing.kubectl_lab.KubectlLab`) and one busybox pod serving a
   file of `--mib` MiB with httpd on port 80.
2. Throughput, best of `--rounds` each (curl and kubectl write to /dev/null):
   - direct: curl from the node (the only place that routes to pod IPs) to the pod IP;
   - `kubectl port-forward` + curl through it: kubectl 1.30 (SPDY/3.1) and the kubectl on
     PATH (1.32: SPDY inside a WebSocket);
   - `kubectl exec POD -- cat FILE`: kubectl 1.27 (SPDY) and 1.32 (WebSocket v5).
3. Round trip: one `kubectl exec -i POD -- cat` per kubectl; write a line, wait for it to come
   back, `--echoes` times; p50 and p99.
4. Where the CPU goes, per GiB moved on each path: the API server's and the node agent's CPU
   seconds (/proc) and the clients' (kubectl and curl, as waited-for children). On this 2-core
   machine their sum bounds the throughput: 2 / (sum) GiB/s at best.

Targets (issue #11): port-forward >= 0.5 of direct; exec round trip p99 <= 20 ms.
Prints a table and writes benchmarks/results/streams.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's directory first on the import path, where benchmarks/dns.py would
# shadow dnspython (which starting a lab imports)
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import os
import re
import resource
import select
import statistics
import subprocess
import tempfile
import time
from typing import Any

from podnet import procs
from podnet.kernel import netns
from podnet.testing.kubectl_lab import KubectlLab

RESULTS = Path(__file__).parent / "results" / "streams.json"
TARGET_PORT_FORWARD_RATIO = 0.5
TARGET_RTT_P99_MS = 20.0
SPDY_EXEC, SPDY_PORT_FORWARD, CURRENT = "1.27", "1.30", None


def pod_manifest(mib: int) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bench", "labels": {"bench": "streams"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "busybox",
                        "command": [
                            "sh",
                            "-c",
                            f"mkdir -p /w && head -c {mib * 1024 * 1024} /dev/urandom > "
                            "/w/big.bin && echo ok > /w/ok && exec httpd -f -p 80 -h /w",
                        ],
                        "readinessProbe": {"httpGet": {"path": "/ok", "port": 80}},
                    }
                ]
            },
        }
    )


def curl_seconds(url: str, expected: int, node_netns: str | None = None) -> float:
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
    result = netns.run(argv, netns=node_netns, timeout=300)
    size, seconds = result.stdout.split()
    if int(float(size)) != expected:
        raise RuntimeError(f"curl {url} got {size} bytes, not {expected}: {result.stderr}")
    return float(seconds)


def port_forward_seconds(lab: KubectlLab, version: str | None, expected: int) -> float:
    proc = lab.popen("port-forward", "pod/bench", ":80", version=version)
    try:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("kubectl port-forward ended before forwarding")
            found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if found:
                break
        return curl_seconds(f"http://127.0.0.1:{found.group(1)}/big.bin", expected)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def exec_cat_seconds(lab: KubectlLab, version: str | None, expected: int) -> float:
    with tempfile.TemporaryFile() as sink:
        started = time.monotonic()
        subprocess.run(
            lab.argv("exec", "bench", "--", "cat", "/w/big.bin", version=version),
            env=lab.env(version),
            stdout=sink,
            check=True,
            timeout=300,
        )
        elapsed = time.monotonic() - started
        if sink.tell() != expected:
            raise RuntimeError(f"exec cat gave {sink.tell()} bytes, not {expected}")
    return elapsed


def echo_round_trips(lab: KubectlLab, version: str | None, count: int) -> list[float]:
    """Seconds from writing a line to `kubectl exec -i ... cat` until it comes back."""
    proc = subprocess.Popen(
        lab.argv("exec", "-i", "bench", "--", "cat", version=version),
        env=lab.env(version),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout.fileno()
    samples: list[float] = []
    try:
        for i in range(count + 5):  # the first few warm the connection up
            line = f"echo {i}\n".encode()
            started = time.perf_counter()
            proc.stdin.write(line)
            proc.stdin.flush()
            got = b""
            while not got.endswith(b"\n"):
                ready, _, _ = select.select([out], [], [], 10)
                if not ready:
                    raise RuntimeError(f"no echo of line {i} within 10 s")
                got += os.read(out, 4096)
            if got != line:
                raise RuntimeError(f"echo mismatch: {got!r} for {line!r}")
            if i >= 5:
                samples.append(time.perf_counter() - started)
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()
    return samples


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every child this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the transfer (MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="transfers per path (best kept)")
    parser.add_argument("--echoes", type=int, default=300, help="round trips per kubectl")
    args = parser.parse_args()
    expected = args.mib * 1024 * 1024
    results: dict[str, Any] = {"mib": args.mib, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as work, KubectlLab(Path(work), prefix="bs") as lab:
        lab.apply(pod_manifest(args.mib))
        lab.wait_ready("bench=streams", timeout=180)
        pod_ip = lab.get("pod", "bench")["status"]["podIP"]
        assert lab.lab is not None
        node_netns = lab.lab["node1"].netns

        paths: dict[str, Any] = {
            "direct (node -> pod IP)": lambda: curl_seconds(
                f"http://{pod_ip}/big.bin", expected, node_netns
            ),
            "port-forward, kubectl 1.30 (SPDY)": lambda: port_forward_seconds(
                lab, SPDY_PORT_FORWARD, expected
            ),
            "port-forward, kubectl 1.32 (SPDY in WebSocket)": lambda: port_forward_seconds(
                lab, CURRENT, expected
            ),
            "exec cat, kubectl 1.27 (SPDY)": lambda: exec_cat_seconds(lab, SPDY_EXEC, expected),
            "exec cat, kubectl 1.32 (WebSocket v5)": lambda: exec_cat_seconds(
                lab, CURRENT, expected
            ),
        }
        recorded = {r.label: r.pid for r in procs.recorded(Path(lab.lab.plan.pids_dir))}
        daemons = {"server": recorded["server"], "agent": recorded["agent-node1"]}
        throughput: dict[str, dict[str, Any]] = {}
        for name, measure in paths.items():
            before = {who: cpu_seconds(pid) for who, pid in daemons.items()}
            clients_before = children_cpu_seconds()
            seconds = [measure() for _ in range(args.rounds)]
            gib = args.rounds * args.mib / 1024
            cpu = {who: (cpu_seconds(pid) - before[who]) / gib for who, pid in daemons.items()}
            cpu["clients"] = (children_cpu_seconds() - clients_before) / gib
            throughput[name] = {
                "seconds": seconds,
                "mib_s": args.mib / min(seconds),
                "cpu_s_per_gib": cpu,
            }
        direct = throughput["direct (node -> pod IP)"]["mib_s"]
        for row in throughput.values():
            row["ratio"] = row["mib_s"] / direct
        results["throughput"] = throughput

        round_trips: dict[str, dict[str, Any]] = {}
        for label, version in (("kubectl 1.27 (SPDY)", SPDY_EXEC), ("kubectl 1.32", CURRENT)):
            samples = echo_round_trips(lab, version, args.echoes)
            round_trips[label] = {
                "p50_ms": percentile(samples, 0.5) * 1000,
                "p99_ms": percentile(samples, 0.99) * 1000,
                "mean_ms": statistics.fmean(samples) * 1000,
                "samples_ms": [s * 1000 for s in samples],
            }
        results["exec_round_trip"] = round_trips

    print(f"\n{args.mib} MiB transfers, best of {args.rounds}:")
    print(f"{'path':<48} {'MiB/s':>9} {'/ direct':>9}   CPU s/GiB: server agent clients")
    for name, row in throughput.items():
        mark = ""
        if name.startswith("port-forward"):
            mark = " ✓" if row["ratio"] >= TARGET_PORT_FORWARD_RATIO else " ✗ (target 0.5)"
        cpu = row["cpu_s_per_gib"]
        shares = f"{cpu['server']:>6.2f} {cpu['agent']:>6.2f} {cpu['clients']:>7.2f}"
        print(f"{name:<48} {row['mib_s']:>9.1f} {row['ratio']:>9.2f}   {shares}{mark}")
    print(f"\nkubectl exec -i round trip ({args.echoes} echoes):")
    print(f"{'client':<24} {'p50 ms':>8} {'p99 ms':>8}")
    for label, row in round_trips.items():
        mark = " ✓" if row["p99_ms"] <= TARGET_RTT_P99_MS else " ✗ (target 20 ms)"
        print(f"{label:<24} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}{mark}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
