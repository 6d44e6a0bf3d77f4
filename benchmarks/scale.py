"""Control-plane scale benchmark (not a test): hollow nodes, many pods and Services, on etcd.

Run from the repo (through /work/wt/heavy.sh on a shared machine):
    .venv/bin/python benchmarks/scale.py [--nodes 100,1000] [--pods 3000[,30000]]
                                         [--pods-per-service 30] [--etcd 1] [--watchers 0]
                                         [--flips 20]

For each node count N (issue #15; kubemark-style, `podnet.agent.hollow`):
1. A fresh lab (`podnet up --nodes 1 --hollow-nodes N --etcd E --no-dns`, as root): `--etcd`
   real etcd members (default 1, see below), each in its own namespace, one `podnet server`
   (controllers on) on them, one real node (its namespace, cni0, flannel, kube-proxy in the
   lab's default iptables mode, kubelet: `podnet agent`) and N hollow nodes. A lab past 256
   nodes gets the pod network 10.244.0.0/15 or /14, so node IPAM has a /24 for every node.
   Node grace 40 s (Kubernetes'), so every node renews its Lease every 10 s. The lab rather
   than a plane of its own plus a hand-made node: the lab is what builds a real node
   (underlay, namespace, credentials, supervisor), and a node built any other way would not
   be the one users run.
2. The N hollow nodes (`podnet hollow`, one process): Nodes, Leases renewed every 10 s, pods
   reported Running with IPs from their podCIDRs. The real node is cordoned, so every pod
   lands on a hollow node and the real agent carries what a node of that cluster carries for
   the others: every Node (flannel), every Service and EndpointSlice (kube-proxy), every pod
   (NetworkPolicy). On a real cluster the node has a machine of its own; here it shares two
   cores with the control plane, so while the pods are made it runs at nice 19 (its CPU
   seconds per pod are printed) and is back at 0 for its own figures.
3. `--pods` pods (one count for every size, default 3,000, so what grows with the node count
   shows on its own; or one per size: issue #15's case is `--nodes 100,1000 --pods
   3000,30000`, 30,000 pods behind 1,000 Services at 1,000 nodes) in Deployments of
   pods-per-service replicas, each behind its own Service. Scheduler throughput = bound pods
   / seconds from the first bind to the last (counted on one pod watch); also the seconds
   from the first Deployment created to the last pod bound, to every pod Running and to every
   Service's EndpointSlices listing all its pods; and the CPU seconds the server and the
   hollow-node process spent from the first Deployment created to the last pod bound, per
   pod (what the scheduling rate costs, a figure a busy shared machine changes less than the
   rate); beside them the real agent's tree, this benchmark's own client and the rest of the
   machine, and the share of the time the server waited runnable for a CPU: the server is one
   event loop using a core at most, so others' work on the machine shows in the rate there.
4. With that cluster standing and the hollow heartbeats running: 300 mutating calls
   (ConfigMap create/update/delete, 4 at a time) -> p50/p99; one LIST of every pod (time and
   bytes); fan-out: W watchers (default N: one per node, as every node's kube-proxy watches
   EndpointSlices) on one namespace, 20 writes, p99 delay until the last watcher saw a write
   and the server CPU spent per write per watcher.
5. The real node, once its proxier has programmed every EndpointSlice: endpoint change to
   rules. `--flips` times, a pod of a different Service (on a hollow node) is made not ready
   and then ready again by a write of its status (as its kubelet does when a readiness probe
   fails and passes; the hollow node leaves such a status alone), each write 1.2 s after the
   last change was in (a change alone, as in a quiet cluster: back to back, every one waits
   for the proxier's rate limit, one sync a second as upstream's minSyncPeriod, and the
   figure is that second); from each write, the time
   until the pod's KUBE-SEP- jump left / is back in its Service's KUBE-SVC- chain in the real
   node's kernel (`iptables -t nat -S CHAIN` in the node's namespace, polled every 10 ms),
   and, as the proxier's own view beside it, until its `proxy/status.json` names a newer
   EndpointSlice revision (written after the sync that carried it). p50/p99 of both
   directions; "rules present" is the ready one.
6. Memory: peak RSS (VmHWM) of the server, of the hollow-node process, of the real agent
   and the sum over the agent's process tree (pyroute2 forks helpers; shared pages counted in
   each, so an upper bound), with tree's proportional set size (Pss) now beside it.

One etcd member by default, as Kubernetes' own scalability jobs (kubemark, the 5,000-node
tests) run a single etcd on the master: the figures are the control plane's, not raft's.
Three members on this machine's two shared cores cost every write a raft round and three
fsyncs: at 100 nodes / 3,000 pods (2026-12-07, load 2-3.5) etcd took 11.6 ms of CPU per
pod with three members against 2.7 with one, the server 14.4 against 8.9, and scheduling
fell from 97.6 to 46.5-56.3 pods/s. `--etcd 3` measures that shape; issue #15's HA tests
(tests/e2e/test_ha.py, benchmarks/ha.py) cover three members surviving the loss of one.

Targets (issue #15; Kubernetes' SLOs are the floor): mutating p99 <= 100 ms, scheduling
>= 100 pods/s, server <= 1 GB and the real agent <= 150 MB at 1,000 nodes, endpoint change to
rules p99 reported (Kubernetes' network programming SLO: p99 <= 30 s). Prints a table of ratios
to the targets and writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from podnet import procs
from podnet.agent.proxy.iptables import endpoint_chain, service_chains
from podnet.agent.proxy.model import Endpoint, ServicePortName
from podnet.agent.status import read_status
from podnet.api.client import HttpApi
from podnet.lab import Lab, LabSpec, down_lab

RESULTS = Path(__file__).parent / "results" / "scale.json"
MUTATING_P99_MS = 100.0
SCHEDULING_PODS_PER_S = 100.0
SERVER_MAX_MB = 1024.0
AGENT_MAX_MB = 150.0
PROGRAMMING_P99_S = 30.0  # Kubernetes' network programming latency SLO
MUTATIONS = 300
FANOUT_WRITES = 20
LAB = "scale-bench"  # the lab's name (--lab)
NODE = "node1"  # the real node
TARGET_PORT = 8080
SYNC_GAP_S = 1.2  # between endpoint changes: more than kube-proxy's minSyncPeriod (1 s)

Obj = dict[str, Any]


def p(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) of `values`."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def peak_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant (from /proc/*/stat's parent pids)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], ()))
    return tree


def agent_memory(pid: int) -> Obj:
    """The real agent's VmHWM, and over its process tree: summed VmHWM and Pss now (MB)."""
    tree = process_tree(pid)
    hwm = pss = 0
    for member in tree:
        with contextlib.suppress(OSError):
            hwm += status_kb(member, "VmHWM")
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return {
        "agent_peak_rss_mb": status_kb(pid, "VmHWM") / 1024,
        "agent_rss_mb": status_kb(pid, "VmRSS") / 1024,
        "agent_tree_processes": len(tree),
        "agent_tree_peak_rss_mb": hwm / 1024,
        "agent_tree_pss_mb": pss / 1024,
    }


def progress(text: str) -> None:
    """A line on stderr while a long size runs (the table comes at the end)."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid`, of its children it has waited for, and of its live descendants."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds `pid`'s threads have waited runnable for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def own_cpu_seconds() -> float:
    """This benchmark's own CPU seconds (its client: Deployments, Services, the pod watch)."""
    times = os.times()
    return times.user + times.system


def machine_seconds() -> tuple[float, float]:
    """The machine's busy and idle (idle + iowait) CPU seconds so far, over every core."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


def deployment(name: str, replicas: int) -> Obj:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "agnhost"}]},
            },
        },
    }


def service(name: str) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


async def until(check: Any, limit: float, what: str, every: float = 1.0) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > limit:
            raise TimeoutError(f"{what}: not done after {limit:.0f}s")
        await asyncio.sleep(every)
    return time.monotonic() - start


class PodCounter:
    """One pod watch: when each pod was bound and when it was reported Running."""

    def __init__(self) -> None:
        self.bound: dict[str, float] = {}
        self.running: set[str] = set()

    async def run(self, api: HttpApi, namespace: str, version: str) -> None:
        while True:
            async for event in api.watch("pods", namespace, resource_version=version):
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if (obj.get("spec") or {}).get("nodeName") and name not in self.bound:
                    self.bound[name] = time.monotonic()
                if (obj.get("status") or {}).get("phase") == "Running":
                    self.running.add(name)


async def ready_nodes(api: HttpApi) -> int:
    nodes = (await api.list("nodes"))["items"]
    return sum(
        1
        for n in nodes
        if (n.get("spec") or {}).get("podCIDR")
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (n.get("status") or {}).get("conditions") or ()
        )
    )


async def endpoints_complete(api: HttpApi, namespace: str, expected: int) -> bool:
    slices = (await api.list("endpointslices", namespace))["items"]
    ready = sum(
        1
        for s in slices
        for e in s.get("endpoints") or ()
        if (e.get("conditions") or {}).get("ready")
    )
    return ready >= expected


async def mutating_latencies(api: HttpApi, namespace: str) -> list[float]:
    samples: list[float] = []

    async def one(index: int) -> None:
        name = f"m-{index}"
        body: Obj = {"metadata": {"name": name}, "data": {"v": "0"}}
        for call in ("create", "update", "delete"):
            start = time.monotonic()
            if call == "create":
                body = await api.create("configmaps", body, namespace)
            elif call == "update":
                body["data"] = {"v": "1"}
                body = await api.update("configmaps", body, namespace)
            else:
                await api.delete("configmaps", name, namespace)
            samples.append((time.monotonic() - start) * 1000)

    queue = list(range(MUTATIONS // 3))

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(4)))
    return samples


async def fanout(api: HttpApi, namespace: str, watchers: int, server_pid: int) -> Obj:
    """`watchers` watches on one namespace; per write, the delay until all of them saw it."""
    version = (await api.list("configmaps", namespace))["metadata"]["resourceVersion"]
    seen: list[dict[str, float]] = [{} for _ in range(watchers)]

    async def watch(index: int) -> None:
        async for event in api.watch("configmaps", namespace, resource_version=version):
            if event["type"] == "ADDED":
                seen[index][event["object"]["metadata"]["name"]] = time.monotonic()

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    delays: list[float] = []
    try:
        await asyncio.sleep(2.0)  # every watch open
        cpu_before = cpu_seconds(server_pid)
        for index in range(FANOUT_WRITES):
            name = f"fan-{index}"
            start = time.monotonic()
            await api.create("configmaps", {"metadata": {"name": name}}, namespace)

            async def everyone(name: str = name) -> bool:
                return all(name in s for s in seen)

            await until(everyone, 60, f"{watchers} watchers to see {name}", every=0.005)
            delays.append((max(s[name] for s in seen) - start) * 1000)
        cpu = cpu_seconds(server_pid) - cpu_before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "watchers": watchers,
        "delivery_p50_ms": p(delays, 50),
        "delivery_p99_ms": p(delays, 99),
        "server_cpu_us_per_event_per_watcher": cpu / (FANOUT_WRITES * watchers) * 1e6,
    }


class RealNode:
    """The lab's real node as scale.py reads it: its kernel's Service rules and its proxier's
    own status file."""

    def __init__(self, lab: Lab) -> None:
        node = lab.plan.node(NODE)
        self.netns = node.netns
        self.state_dir = Path(node.state_dir)
        self.poll_s: list[float] = []  # what one look at the kernel cost

    async def chain(self, chain: str) -> str:
        """`iptables -t nat -S CHAIN` in the node's namespace (one chain, not the table)."""
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net=/run/netns/{self.netns}", "iptables", "-w", "-t", "nat", "-S", chain,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        self.poll_s.append(time.monotonic() - start)
        return out.decode()

    def revision(self) -> int:
        """The highest EndpointSlice revision the proxier says is in the kernel."""
        status = read_status(self.state_dir, "proxy") or {}
        return int((status.get("revisions") or {}).get("endpointslices") or 0)

    async def until_programmed(self, revision: int, limit: float) -> float:
        async def programmed() -> bool:
            return self.revision() >= revision

        return await until(programmed, limit, f"{NODE}'s proxier at revision {revision}", 0.5)

    async def wait(
        self, svc_chain: str, jump: str, present: bool, before: int, start: float
    ) -> tuple[float, float]:
        """From `start`: seconds until `jump` is (or is no longer) in `svc_chain` in the kernel,
        and until the proxier's status names an EndpointSlice revision newer than `before`."""
        kernel = own = None
        while kernel is None or own is None:
            if time.monotonic() - start > 60:
                raise TimeoutError(f"{jump} {'into' if present else 'out of'} {svc_chain}: 60 s")
            if own is None and self.revision() > before:
                own = time.monotonic() - start
            if kernel is None and (f"-j {jump}" in await self.chain(svc_chain)) == present:
                kernel = time.monotonic() - start
            await asyncio.sleep(0.01)
        return kernel, own


async def set_ready(api: HttpApi, pod: Obj, ready: bool) -> None:
    """Report the pod's readiness as its kubelet does when a readiness probe fails or passes."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {**c, "status": str(ready), "lastTransitionTime": now}
        if c.get("type") in ("Ready", "ContainersReady")
        else c
        for c in pod["status"].get("conditions") or ()
    ]
    meta = pod["metadata"]
    await api.patch(
        "pods", meta["name"], {"status": {"conditions": conditions}}, meta["namespace"],
        subresource="status",
    )  # fmt: skip


async def endpoint_flips(
    api: HttpApi, node: RealNode, namespace: str, services: int, flips: int
) -> Obj:
    """`flips` pods of as many Services made not ready and ready again; see the docstring."""
    kernel: dict[bool, list[float]] = {False: [], True: []}
    own: dict[bool, list[float]] = {False: [], True: []}
    for index in range(flips):
        svc = f"svc-{index * services // flips}"
        pod = (await api.list("pods", namespace, label_selector=f"app={svc}"))["items"][0]
        name = ServicePortName(namespace, svc, "", "tcp")
        svc_chain = service_chains(name)[0]
        jump = endpoint_chain(name, Endpoint(pod["status"]["podIP"], TARGET_PORT))
        if f"-j {jump}" not in await node.chain(svc_chain):
            raise RuntimeError(f"{NODE}: {svc_chain} has no {jump} before the change")
        for ready in (False, True):
            # a change alone, as in a quiet cluster: the proxier's rate limit (one sync a
            # second, minSyncPeriod) has a sync to spare again
            await asyncio.sleep(SYNC_GAP_S)
            before = node.revision()
            start = time.monotonic()
            await set_ready(api, pod, ready)
            took = await node.wait(svc_chain, jump, ready, before, start)
            kernel[ready].append(took[0])
            own[ready].append(took[1])
            pod = await api.get("pods", pod["metadata"]["name"], namespace)
    return {
        "changes": flips,
        "mode": "iptables",
        "ready_p50_s": p(kernel[True], 50),
        "ready_p99_s": p(kernel[True], 99),
        "not_ready_p50_s": p(kernel[False], 50),
        "not_ready_p99_s": p(kernel[False], 99),
        "proxier_ready_p50_s": p(own[True], 50),
        "proxier_ready_p99_s": p(own[True], 99),
        "proxier_not_ready_p99_s": p(own[False], 99),
        "kernel_poll_ms": statistics.median(node.poll_s) * 1e3,
        "ready_s": kernel[True],
        "not_ready_s": kernel[False],
    }


def set_nice(pid: int, nice: int) -> None:
    """The nice value of every thread of `pid` and of its descendants."""
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{member}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def unit_pid(lab: Lab, label: str) -> int:
    for rec in procs.recorded(Path(lab.plan.pids_dir)):
        if rec.label == label:
            return rec.pid
    raise RuntimeError(f"lab {lab.plan.name}: no process recorded for {label}")


async def one_size(nodes: int, pods: int, args: argparse.Namespace, base: Path) -> Obj:
    services = max(1, pods // int(args.pods_per_service))
    spec = LabSpec(
        name=args.lab, nodes=1, hollow_nodes=nodes, etcd=args.etcd, dns=False,
        node_grace_seconds=40, eviction_seconds=300, state_root=base / f"n{nodes}",
    )  # fmt: skip
    result: Obj = {"nodes": nodes, "pods": pods, "services": services}
    started = time.monotonic()
    try:
        lab = await asyncio.to_thread(
            Lab.up, spec, merge_kubeconfig=False, timeout=1200, progress=progress
        )
        result["cluster_cidr"] = lab.plan.cluster_cidr
        progress(f"lab up, {nodes} hollow nodes Ready in {time.monotonic() - started:.1f}s")
        server_pid = unit_pid(lab, "server")
        hollow_pid = unit_pid(lab, "hollow")
        agent_pid = unit_pid(lab, f"agent-{NODE}")
        etcd_pids = [unit_pid(lab, f"etcd-{i}") for i in range(1, args.etcd + 1)]
        real = RealNode(lab)
        # on a real cluster the node has a machine of its own; here it shares two cores with
        # the control plane, so while the control plane works it runs at nice 19
        set_nice(agent_pid, 19)
        async with HttpApi.from_kubeconfig(lab.kubeconfig) as api:
            # `up` waits for Ready nodes; node IPAM may still be handing out podCIDRs, and
            # pods made meanwhile would compete with it (every node Ready with a podCIDR)
            async def all_ready() -> bool:
                return await ready_nodes(api) >= nodes + 1

            await until(all_ready, 900, f"{nodes + 1} nodes Ready with a podCIDR")
            result["nodes_ready_s"] = time.monotonic() - started
            progress(f"every node has a podCIDR at {result['nodes_ready_s']:.1f}s")
            # every pod on a hollow node; the real agent watches the cluster
            await api.patch("nodes", NODE, {"spec": {"unschedulable": True}})
            namespace = "scale"
            await api.create("namespaces", {"metadata": {"name": namespace}})
            listed = await api.list("pods", namespace)
            counter = PodCounter()
            counting = asyncio.create_task(
                counter.run(api, namespace, listed["metadata"]["resourceVersion"])
            )
            started = time.monotonic()
            cpu_started = (cpu_seconds(server_pid), cpu_seconds(hollow_pid), cpu_seconds(agent_pid))
            tree_started = (tree_cpu_seconds(agent_pid), own_cpu_seconds())
            waited_started = runqueue_wait_seconds(server_pid)
            etcd_started = sum(cpu_seconds(pid) for pid in etcd_pids)
            machine_started = machine_seconds()
            per_service = pods // services
            sem = asyncio.Semaphore(8)

            async def make(index: int) -> None:
                async with sem:
                    body = service(f"svc-{index}")
                    await api.create("services", body, namespace)
                    await api.create(
                        "deployments", deployment(f"svc-{index}", per_service), namespace
                    )

            await asyncio.gather(*(make(i) for i in range(services)))
            total = per_service * services
            result["pods"] = total

            async def all_bound() -> bool:
                return len(counter.bound) >= total

            await until(all_bound, 3600, f"{total} pods bound", every=0.2)
            result["server_cpu_ms_per_pod"] = (
                (cpu_seconds(server_pid) - cpu_started[0]) / total * 1e3
            )
            result["hollow_cpu_ms_per_pod"] = (
                (cpu_seconds(hollow_pid) - cpu_started[1]) / total * 1e3
            )
            result["etcd_cpu_ms_per_pod"] = (
                (sum(cpu_seconds(pid) for pid in etcd_pids) - etcd_started) / total * 1e3
            )
            result["agent_tree_cpu_ms_per_pod_bound"] = (
                (tree_cpu_seconds(agent_pid) - tree_started[0]) / total * 1e3
            )
            result["client_cpu_ms_per_pod"] = (own_cpu_seconds() - tree_started[1]) / total * 1e3
            busy, idle = (
                now - then for now, then in zip(machine_seconds(), machine_started, strict=True)
            )
            result["machine_busy_cores"] = busy / max(busy + idle, 1e-3) * (os.cpu_count() or 1)
            # what the machine spent per pod beyond the processes above: the lab's supervisor,
            # the kernel's softirqs, and anything else running on the machine meanwhile
            result["machine_cpu_ms_per_pod"] = busy / total * 1e3
            result["other_cpu_ms_per_pod"] = result["machine_cpu_ms_per_pod"] - sum(
                result[key]
                for key in (
                    "server_cpu_ms_per_pod",
                    "hollow_cpu_ms_per_pod",
                    "etcd_cpu_ms_per_pod",
                    "agent_tree_cpu_ms_per_pod_bound",
                    "client_cpu_ms_per_pod",
                )
            )
            # the server is one event loop: runnable all along, it schedules as fast as its
            # CPU allows, and what it waits here for a core (others' work) it loses
            result["server_cpu_wait_share"] = (
                runqueue_wait_seconds(server_pid) - waited_started
            ) / max(time.monotonic() - started, 1e-3)
            first, last = min(counter.bound.values()), max(counter.bound.values())
            # the scheduler's own rate: first bind to last (the ReplicaSets create pods
            # meanwhile, as they do in a real rollout); create-to-bound is printed too
            result["scheduling_pods_per_s"] = total / max(last - first, 1e-3)
            result["all_bound_s"] = last - started
            times = sorted(counter.bound.values())
            tenth = max(1, len(times) // 10)
            # the rate over each tenth of the binds: a phase that slows shows as a dip
            result["scheduling_pods_per_s_by_tenth"] = [
                round(tenth / max(times[i + tenth - 1] - times[i], 1e-3), 1)
                for i in range(0, len(times) - tenth + 1, tenth)
            ]
            progress(f"{total} pods bound, {result['scheduling_pods_per_s']:.1f} pods/s")
            if args.until_bound:
                return result

            async def all_running() -> bool:
                return len(counter.running) >= total

            await until(all_running, 3600, f"{total} pods Running", every=0.5)
            result["all_running_s"] = time.monotonic() - started

            async def endpoints() -> bool:
                return await endpoints_complete(api, namespace, total)

            await until(endpoints, 3600, "every pod in its Service's endpoints", every=2.0)
            result["endpoints_complete_s"] = time.monotonic() - started
            progress(
                f"every pod Running and in its endpoints: {result['endpoints_complete_s']:.1f}s"
            )
            counting.cancel()
            await asyncio.gather(counting, return_exceptions=True)

            slices = (await api.list("endpointslices", namespace))["items"]
            newest = max(int(s["metadata"]["resourceVersion"]) for s in slices)
            await real.until_programmed(newest, 600)
            result["real_node_programmed_s"] = time.monotonic() - started
            result["agent_cpu_ms_per_pod"] = (cpu_seconds(agent_pid) - cpu_started[2]) / total * 1e3
            set_nice(agent_pid, 0)
            result.update(agent_memory(agent_pid))
            progress(
                f"{NODE} programmed every EndpointSlice at "
                f"{result['real_node_programmed_s']:.1f}s; agent peak "
                f"{result['agent_peak_rss_mb']:.0f} MB"
            )
            result["endpoint_flips"] = await endpoint_flips(
                api, real, namespace, services, args.flips
            )
            progress(
                f"endpoint change -> rules: {result['endpoint_flips']['ready_p99_s']:.3f}s p99"
            )

            await api.create("namespaces", {"metadata": {"name": "bench"}})
            latencies = await mutating_latencies(api, "bench")
            result["mutating_p50_ms"] = p(latencies, 50)
            result["mutating_p99_ms"] = p(latencies, 99)
            start = time.monotonic()
            raw = await api.request("GET", api.server + "/api/v1/pods")
            result["list_all_pods_s"] = time.monotonic() - start
            result["list_all_pods_items"] = len(raw["items"])
            result["list_all_pods_mb"] = len(json.dumps(raw)) / 1e6
            del raw
            watchers = args.watchers or nodes
            await api.create("namespaces", {"metadata": {"name": "fanout"}})
            result["fanout"] = await fanout(api, "fanout", watchers, server_pid)
        result["server_peak_rss_mb"] = peak_rss_mb(server_pid)
        result["hollow_peak_rss_mb"] = peak_rss_mb(hollow_pid)
        result["agent_peak_rss_end_mb"] = peak_rss_mb(agent_pid)
    finally:
        await asyncio.to_thread(down_lab, args.lab, spec.state_root)
    return result


def print_table(sizes: list[Obj]) -> None:
    print("\ncontrol plane at scale (hollow nodes, etcd store, one server)\n")
    header = f"{'figure':<44} {'target':>10}" + "".join(
        f" {str(s['nodes']) + ' nodes':>12} {'ratio':>6}" for s in sizes
    )
    print(header)

    def row(label: str, key: str, target: float | None, higher_better: bool, fmt: str) -> None:
        line = f"{label:<44} {'' if target is None else format(target, 'g'):>10}"
        for size in sizes:
            value = size.get(key)
            if isinstance(value, dict) or value is None:
                line += f" {'-':>12} {'':>6}"
                continue
            ratio = ""
            if target is not None:
                ratio = f"{(value / target if higher_better else target / value):.2f}"
            line += f" {format(value, fmt):>12} {ratio:>6}"
        print(line)

    for size in sizes:
        size.update({f"fanout_{k}": v for k, v in (size.get("fanout") or {}).items()})
        size.update({f"flips_{k}": v for k, v in (size.get("endpoint_flips") or {}).items()})
    row("pods", "pods", None, True, "d")
    row("lab up, every node Ready with a podCIDR (s)", "nodes_ready_s", None, False, ".1f")
    row(
        "scheduling throughput (pods/s)",
        "scheduling_pods_per_s",
        SCHEDULING_PODS_PER_S,
        True,
        ".1f",
    )
    row("first Deployment created -> last pod bound (s)", "all_bound_s", None, False, ".1f")
    row("server CPU per pod until bound (ms)", "server_cpu_ms_per_pod", None, False, ".2f")
    row("hollow-node CPU per pod until bound (ms)", "hollow_cpu_ms_per_pod", None, False, ".2f")
    row("etcd CPU per pod until bound (ms, all members)", "etcd_cpu_ms_per_pod", None, False,
        ".2f")  # fmt: skip
    row("real agent tree CPU/pod until bound (ms)",
        "agent_tree_cpu_ms_per_pod_bound", None, False, ".2f")  # fmt: skip
    row("benchmark client CPU/pod until bound (ms)", "client_cpu_ms_per_pod", None, False,
        ".2f")  # fmt: skip
    row("rest of the machine CPU/pod until bound (ms)", "other_cpu_ms_per_pod", None, False,
        ".2f")  # fmt: skip
    row("machine CPU per pod until bound (ms)", "machine_cpu_ms_per_pod", None, False, ".2f")
    row("machine busy until bound (cores)", "machine_busy_cores", None, False, ".2f")
    row("server waiting for a CPU until bound (share)", "server_cpu_wait_share", None, False,
        ".2f")  # fmt: skip
    row("all pods Running (s)", "all_running_s", None, False, ".1f")
    row("all endpoints published (s)", "endpoints_complete_s", None, False, ".1f")
    row("mutating p50 (ms)", "mutating_p50_ms", None, False, ".1f")
    row("mutating p99 (ms)", "mutating_p99_ms", MUTATING_P99_MS, False, ".1f")
    row("LIST every pod (s)", "list_all_pods_s", None, False, ".2f")
    row("LIST every pod (MB)", "list_all_pods_mb", None, False, ".1f")
    row("watchers for fan-out", "fanout_watchers", None, True, "d")
    row("fan-out: last watcher p99 (ms)", "fanout_delivery_p99_ms", None, False, ".1f")
    row("fan-out: server CPU per event per watcher (us)",
        "fanout_server_cpu_us_per_event_per_watcher", None, False, ".0f")  # fmt: skip
    row("real node: every EndpointSlice programmed (s)", "real_node_programmed_s", None, False,
        ".1f")  # fmt: skip
    row("real agent CPU per pod, until programmed (ms)", "agent_cpu_ms_per_pod", None, False,
        ".2f")  # fmt: skip
    row("endpoint changes (iptables mode, real node)", "flips_changes", None, True, "d")
    row("endpoint ready -> rule in kernel p50 (s)", "flips_ready_p50_s", None, False, ".3f")
    row("endpoint ready -> rule in kernel p99 (s)", "flips_ready_p99_s", PROGRAMMING_P99_S, False,
        ".3f")  # fmt: skip
    row("endpoint not ready -> rule gone p50 (s)", "flips_not_ready_p50_s", None, False, ".3f")
    row("endpoint not ready -> rule gone p99 (s)", "flips_not_ready_p99_s", None, False, ".3f")
    row("  proxier's status: ready p99 (s)", "flips_proxier_ready_p99_s", None, False, ".3f")
    row("  one look at the kernel's chain (ms)", "flips_kernel_poll_ms", None, False, ".1f")
    row("server peak RSS (MB)", "server_peak_rss_mb", SERVER_MAX_MB, False, ".0f")
    row("hollow-node process peak RSS (MB)", "hollow_peak_rss_mb", None, False, ".0f")
    row("real agent peak RSS, pods settled (MB)", "agent_peak_rss_mb", AGENT_MAX_MB, False, ".0f")
    row("real agent tree: processes", "agent_tree_processes", None, True, "d")
    row("real agent tree: summed peak RSS (MB)", "agent_tree_peak_rss_mb", None, False, ".0f")
    row("real agent tree: Pss now (MB)", "agent_tree_pss_mb", None, False, ".0f")
    row("real agent peak RSS at the end (MB)", "agent_peak_rss_end_mb", None, False, ".0f")
    print("ratio: figure vs target, >= 1.00 meets it")


async def run(args: argparse.Namespace) -> list[Obj]:
    if os.geteuid() != 0:
        raise SystemExit("scale.py builds a lab (a real node next to the hollow ones): run as root")
    base = Path(tempfile.mkdtemp(prefix="podnet-bench-scale-"))
    sizes: list[Obj] = []
    try:
        counts = args.pods if len(args.pods) > 1 else args.pods * len(args.nodes)
        if len(counts) != len(args.nodes):
            raise SystemExit("--pods: one count for every size, or one per --nodes size")
        for nodes, pods in zip(args.nodes, counts, strict=True):
            sizes.append(await one_size(nodes, pods, args, base))
            print(json.dumps(sizes[-1]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000]
    )
    parser.add_argument(
        "--pods",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[3000],
        help="pods at every size, or one count per size (3000,30000)",
    )
    parser.add_argument("--pods-per-service", type=int, default=30)
    parser.add_argument("--etcd", type=int, default=1, help="etcd members (default 1)")
    parser.add_argument("--watchers", type=int, default=0, help="fan-out watchers (0: N)")
    parser.add_argument("--flips", type=int, default=20, help="endpoint changes on the real node")
    parser.add_argument(
        "--until-bound",
        action="store_true",
        help="stop each size once every pod is bound (the scheduling figures only)",
    )
    parser.add_argument("--lab", default=LAB, help=f"the lab's name (default {LAB})")
    args = parser.parse_args()
    sizes = uvloop.run(run(args))
    print_table(sizes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"sizes": sizes}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
