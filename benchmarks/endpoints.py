"""Endpoints benchmark (not a test): pod readiness flip → Endpoints and EndpointSlice updated.

Run from the repo:
    .venv/bin/python benchmarks/endpoints.py [--services 1000] [--pods-per-service 3]
                                             [--flips 300] [--burst 20] [--store sqlite]

1. Starts a real `podnet server` in-process (store in a throwaway directory, HTTPS, controllers
   on, node lifecycle slowed down so the fake node never goes Unknown).
2. Creates one node, N Services (each `app=svc-i`) and N*P pods bound to the node, then gives
   every pod an IP and Ready=True through `pods/status` — what a kubelet does.
3. Waits until every Service has all its addresses ready in both Endpoints and slices.
4. Flips readiness of random pods, one at a time ("sequential") and then in bursts of
   `--burst` pods at once ("burst"): latency = from just before the `pods/status` PATCH until a
   watch (over HTTP, like kube-proxy) delivers an Endpoints *and* an EndpointSlice that show the
   new state for that pod. Client clock only.

Target (issue #5): p99 <= 100 ms at 1k services. Prints a table, writes
benchmarks/results/endpoints.json (benchmarks/results/endpoints-etcd.json with --store etcd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import shutil
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from podnet.api.client import HttpApi
from podnet.api.meta import rfc3339
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.config import ClusterConfig
from podnet.gcfreeze import frozen_heap

RESULTS = Path(__file__).parent / "results" / "endpoints.json"
NS = "default"

Obj = dict[str, Any]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def stamp() -> str:
    return rfc3339(datetime.now(UTC))


def pod_status(ip: str, ready: bool) -> Obj:
    return {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": stamp(),
                }
            ],
        }
    }


class FullCollections:
    """The process's full (generation 2) garbage collections while it is on: count, longest.
    Every request in flight waits for one, so a slow one shows as a whole slow burst."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.pauses_ms.append((time.monotonic() - self._started) * 1000)

    def start(self) -> None:
        gc.callbacks.append(self.on_gc)

    def stop(self) -> None:
        gc.callbacks.remove(self.on_gc)


class Observer:
    """Watches Endpoints and EndpointSlices; records, per pod name, its last readiness seen
    in each, and wakes the waiters of the pods an event shows (only those: waking all 20
    waiters of a burst on each of its 40 events was this client's own CPU, in the figures)."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api
        self.ep_ready: dict[str, bool] = {}
        self.slice_ready: dict[str, bool] = {}
        self.waiters: dict[str, list[tuple[bool, asyncio.Future[None]]]] = {}
        self.events = 0

    def _wake(self, pods: list[str] | None = None) -> None:
        """Wake the waiters of `pods` (every pod: None) whose readiness is now shown."""
        for pod in list(self.waiters) if pods is None else pods:
            waiting = self.waiters.get(pod)
            if not waiting:
                continue
            for ready, fut in waiting:
                if not fut.done() and self.shows(pod, ready):
                    fut.set_result(None)

    async def watch(self, resource: str) -> None:
        """List, then watch from the list's resourceVersion; re-list after any failure."""
        while True:
            try:
                listed = await self.api.list(resource, NS)
                for obj in listed["items"]:
                    self._record(resource, obj)
                # a re-list may bring the very change a waiter waits for (the watch that missed
                # it ended with an error): wake them, or they wait for an unrelated next event
                self._wake()
                rv = listed["metadata"]["resourceVersion"]
                while True:
                    async for ev in self.api.watch(
                        resource, NS, resource_version=rv, timeout_seconds=3600
                    ):
                        obj = ev["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._wake(self._record(resource, obj))
                            self.events += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:
                print(f"watch {resource}: {e!r}; re-listing", file=sys.stderr)
                await asyncio.sleep(0.5)

    def _record(self, resource: str, obj: Obj) -> list[str]:
        """Record what `obj` shows; the pods it names."""
        named: list[str] = []
        if resource == "endpoints":
            for s in obj.get("subsets") or []:
                for field, ready in (("addresses", True), ("notReadyAddresses", False)):
                    for a in s.get(field) or []:
                        if "targetRef" in a:
                            self.ep_ready[a["targetRef"]["name"]] = ready
                            named.append(a["targetRef"]["name"])
        else:
            for e in obj.get("endpoints") or []:
                if "targetRef" in e:
                    self.slice_ready[e["targetRef"]["name"]] = bool(e["conditions"]["ready"])
                    named.append(e["targetRef"]["name"])
        return named

    def shows(self, pod: str, ready: bool) -> bool:
        return self.ep_ready.get(pod) is ready and self.slice_ready.get(pod) is ready

    async def wait_for(self, pod: str, ready: bool, limit: float = 30.0) -> None:
        if self.shows(pod, ready):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self.waiters.setdefault(pod, [])
        waiting.append((ready, fut))
        try:
            async with asyncio.timeout(limit):
                await fut
        except TimeoutError:
            await self.diagnose(pod, ready)
            raise
        finally:
            waiting.remove((ready, fut))
            if not waiting and self.waiters.get(pod) is waiting:
                del self.waiters[pod]

    async def diagnose(self, pod: str, ready: bool) -> None:
        """Where a change that did not arrive stopped: the store, the controllers' caches
        (found through gc: they run in this process) or this watch."""
        import gc as _gc

        from podnet.controllers.endpoints import EndpointsController
        from podnet.controllers.endpointslices import EndpointSliceController

        svc = pod.rsplit("-", 1)[0]
        key = f"{NS}/{svc}"
        out: list[str] = [
            f"STALLED waiting for {pod} ready={ready} (seen: endpoints "
            f"{self.ep_ready.get(pod)}, slices {self.slice_ready.get(pod)})"
        ]
        with contextlib.suppress(Exception):
            p = await self.api.get("pods", pod, NS)
            conds = (p.get("status") or {}).get("conditions")
            out.append(
                f"store pod rv={p['metadata']['resourceVersion']} "
                f"ip={(p.get('status') or {}).get('podIP')} conditions={conds}"
            )
        with contextlib.suppress(Exception):
            ep = await self.api.get("endpoints", svc, NS)
            out.append(
                f"store endpoints rv={ep['metadata']['resourceVersion']} "
                f"subsets={json.dumps(ep.get('subsets'))}"
            )
        with contextlib.suppress(Exception):
            sl = await self.api.list(
                "endpointslices", NS, label_selector=f"kubernetes.io/service-name={svc}"
            )
            for s in sl["items"]:
                out.append(
                    f"store slice {s['metadata']['name']} "
                    f"rv={s['metadata']['resourceVersion']} "
                    f"endpoints={json.dumps(s.get('endpoints'))}"
                )
        for obj in _gc.get_objects():
            if isinstance(obj, EndpointsController | EndpointSliceController):
                cached = obj.pods.get(f"{NS}/{pod}")
                out.append(
                    f"{obj.name}: queue={len(obj.queue)} processing={obj.queue._processing}"
                    f" dirty={obj.queue._dirty} timers={list(obj.queue._timers)[:20]}"
                    f" failures={obj.queue.failures(key)} reconciles={obj.reconciles}"
                    f" informer pod rv={(cached or {}).get('metadata', {}).get('resourceVersion')}"
                    f" ready={cached and (cached.get('status') or {}).get('conditions')}"
                    f" expectations={obj.expectations._pending.get(key)}"
                    f" waiting={key in obj.expectations._waiting}"
                    f" trigger={obj.trigger_times.get(key)}"
                )
        from podnet.apiserver.watchcache import Cacher

        for obj in _gc.get_objects():
            if isinstance(obj, Cacher) and obj.window is not None:
                foreign = [e.key for e in obj.window._events if not e.key.startswith(obj.prefix)]
                out.append(
                    f"watch cache {obj.prefix}: revision {obj.revision}, "
                    f"{len(obj.window)} events, watchers {obj.watchers}"
                    + (
                        f", FOREIGN KEYS (store watch bound to another prefix): {foreign[:3]}"
                        if foreign
                        else ""
                    )
                )
        tasks = asyncio.all_tasks()
        out.append(f"{len(tasks)} tasks")
        print("\n".join(out), file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> Obj:
    state = Path(tempfile.mkdtemp(prefix="podnet-bench-endpoints-"))
    config = ClusterConfig(node_monitor_grace_seconds=3600, pod_eviction_timeout_seconds=3600)
    server = ApiServer(
        ServerOptions(
            state_dir=state,
            store_url=args.store,
            listen=parse_listen(["127.0.0.1:0"]),
            config=config,
        )
    )
    await server.start()
    api = HttpApi.from_kubeconfig(state / "kubeconfig")
    tasks: list[asyncio.Task[None]] = []
    try:
        await api.create("nodes", {"metadata": {"name": "bench-node"}})
        await api.patch(
            "nodes",
            "bench-node",
            {
                "status": {
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": stamp()}
                    ]
                }
            },
            subresource="status",
        )
        sem = asyncio.Semaphore(32)

        async def limited(coro: Any) -> Any:
            async with sem:
                return await coro

        t0 = time.monotonic()
        await asyncio.gather(
            *(
                limited(
                    api.create(
                        "services",
                        {
                            "metadata": {"name": f"svc-{i}"},
                            "spec": {
                                "selector": {"app": f"svc-{i}"},
                                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                            },
                        },
                        NS,
                    )
                )
                for i in range(args.services)
            )
        )
        pods = [
            (f"svc-{i}-{j}", f"svc-{i}")
            for i in range(args.services)
            for j in range(args.pods_per_service)
        ]
        ips = {
            name: f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
            for k, (name, _) in enumerate(pods, start=256)
        }
        await asyncio.gather(
            *(
                limited(
                    api.create(
                        "pods",
                        {
                            "metadata": {"name": name, "labels": {"app": app}},
                            "spec": {
                                "nodeName": "bench-node",
                                "containers": [{"name": "c", "image": "busybox"}],
                            },
                        },
                        NS,
                    )
                )
                for name, app in pods
            )
        )
        observer = Observer(api)
        tasks = [
            asyncio.create_task(observer.watch("endpoints")),
            asyncio.create_task(observer.watch("endpointslices")),
        ]
        await asyncio.gather(
            *(
                limited(
                    api.patch("pods", name, pod_status(ips[name], True), NS, subresource="status")
                )
                for name, _ in pods
            )
        )
        for name, _ in pods:
            await observer.wait_for(name, True, limit=60)
        setup = time.monotonic() - t0
        print(
            f"setup: {args.services} services, {len(pods)} pods ready in endpoints in {setup:.1f}s",
            file=sys.stderr,
        )

        collections = FullCollections()
        collections.start()
        rng = random.Random(7)
        ready = {name: True for name, _ in pods}
        sequential: list[float] = []
        patch_ms: list[float] = []
        cpu_started, loop_started = time.process_time(), time.thread_time()
        for _ in range(args.flips):
            name = rng.choice(pods)[0]
            ready[name] = not ready[name]
            start = time.monotonic()
            await api.patch(
                "pods", name, pod_status(ips[name], ready[name]), NS, subresource="status"
            )
            patch_ms.append((time.monotonic() - start) * 1000)
            await observer.wait_for(name, ready[name])
            sequential.append((time.monotonic() - start) * 1000)

        sequential_cpu = time.process_time() - cpu_started
        sequential_loop = time.thread_time() - loop_started
        burst: list[float] = []
        slowest_bursts: list[float] = []  # the last change of each burst
        cpu_started, loop_started = time.process_time(), time.thread_time()
        for _ in range(max(args.flips // args.burst, 1)):
            chosen = rng.sample([n for n, _ in pods], args.burst)

            async def flip(name: str) -> float:
                ready[name] = not ready[name]
                start = time.monotonic()
                await api.patch(
                    "pods", name, pod_status(ips[name], ready[name]), NS, subresource="status"
                )
                await observer.wait_for(name, ready[name])
                return (time.monotonic() - start) * 1000

            done = await asyncio.gather(*(flip(n) for n in chosen))
            burst.extend(done)
            slowest_bursts.append(max(done))
        burst_cpu = time.process_time() - cpu_started
        burst_loop = time.thread_time() - loop_started
        collections.stop()
        return {
            "services": args.services,
            "pods": len(pods),
            "store": args.store,
            "setup_seconds": round(setup, 2),
            "sequential_ms": {
                "n": len(sequential),
                "p50": round(percentile(sequential, 50), 2),
                "p99": round(percentile(sequential, 99), 2),
                "max": round(max(sequential), 2),
            },
            "status_patch_ms": {
                "p50": round(percentile(patch_ms, 50), 2),
                "p99": round(percentile(patch_ms, 99), 2),
            },
            "burst_ms": {
                "n": len(burst),
                "burst": args.burst,
                "p50": round(percentile(burst, 50), 2),
                "p99": round(percentile(burst, 99), 2),
                "max": round(max(burst), 2),
            },
            "bursts_last_change_ms": [round(x, 1) for x in slowest_bursts],
            # the process's CPU (server, controllers and this client, every thread; not the
            # store's) per change: what a busy machine changes less than the latencies
            "cpu_ms_per_change": {
                "sequential": round(sequential_cpu / max(len(sequential), 1) * 1000, 2),
                "burst": round(burst_cpu / max(len(burst), 1) * 1000, 2),
            },
            # of which the event loop's thread (this one: server, controllers, client), the
            # one a burst's changes queue for; the rest is gRPC's threads, on the other core
            "loop_cpu_ms_per_change": {
                "sequential": round(sequential_loop / max(len(sequential), 1) * 1000, 2),
                "burst": round(burst_loop / max(len(burst), 1) * 1000, 2),
            },
            "full_collections": {
                "n": len(collections.pauses_ms),
                "max_ms": round(max(collections.pauses_ms, default=0.0), 1),
            },
            "target_p99_ms": 100,
        }
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await api.close()
        await server.stop()
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--pods-per-service", type=int, default=3)
    parser.add_argument("--flips", type=int, default=300)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default), etcd (starts a throwaway etcd) or a store URL",
    )
    parser.add_argument(
        "--gc",
        choices=("frozen", "default"),
        default="frozen",
        help="frozen: the server's policy (podnet.gcfreeze); default: CPython's own, to compare",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    uvloop.install()
    # the server process's collector policy, as `podnet server` runs it (`serve`)
    with contextlib.ExitStack() as stack:
        policy = stack.enter_context(frozen_heap()) if args.gc == "frozen" else None
        if args.store == "etcd":  # a throwaway etcd on loopback, stopped by pid afterwards
            from podnet.testing.etcd import EtcdServer

            etcd = stack.enter_context(EtcdServer())  # __enter__ starts it
            args.store = etcd.store_url
            result = asyncio.run(run(args))
            result["store"] = "etcd"
        else:
            result = asyncio.run(run(args))
        result["gc"] = args.gc
        if policy is not None:
            result["gc_full_walks"] = policy.full_walks
    print(
        f"{'pod readiness → Endpoints + EndpointSlice':<44} {'n':>5} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}"
    )
    for mode in ("sequential", "burst"):
        r = result[f"{mode}_ms"]
        print(
            f"{mode + ' (' + str(result['services']) + ' services)':<44} {r['n']:>5} "
            f"{r['p50']:>8} {r['p99']:>8} {r['max']:>8}"
        )
    print(
        f"(of which the pods/status PATCH itself: p50 {result['status_patch_ms']['p50']} ms, "
        f"p99 {result['status_patch_ms']['p99']} ms)"
    )
    ordered = sorted(result["bursts_last_change_ms"])
    print(
        f"each burst's last change: median {ordered[len(ordered) // 2]} ms,"
        f" slowest {ordered[-1]} ms;"
        f" full garbage collections while flipping: {result['full_collections']['n']},"
        f" longest {result['full_collections']['max_ms']} ms (--gc {result['gc']})"
    )
    cpu = result["cpu_ms_per_change"]
    loop_cpu = result["loop_cpu_ms_per_change"]
    print(
        f"process CPU per change (server, controllers and client): sequential"
        f" {cpu['sequential']} ms, burst {cpu['burst']} ms; of which the event loop's"
        f" thread {loop_cpu['sequential']} / {loop_cpu['burst']} ms"
    )
    print(f"target p99 <= {result['target_p99_ms']} ms")
    out = (
        RESULTS
        if result["store"] == "sqlite"
        else RESULTS.with_name(f"endpoints-{result['store']}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
