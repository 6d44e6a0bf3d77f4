"""The control loops inside a real `podnet server` (in-process, HTTPS, on SQLite and on etcd),
driven through the HTTP API and, where marked, with the real kubectl: scheduling, endpoints
following readiness, deployment scale / rollout / undo, garbage collection, node lifecycle,
a server restart mid-rollout, and a settled cluster staying quiet.

No node agent runs here: the stand-in kubelet (`podnet.testing.standin_kubelet.FakeKubelet`) plays
every node's part by writing pod status through `pods/status` and finishing graceful
deletions, exactly the API calls a kubelet makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from podnet.api.client import HttpApi
from podnet.api.errors import ApiError
from podnet.api.meta import rfc3339
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.config import ClusterConfig
from podnet.testing.manifests import deployment
from podnet.testing.standin_kubelet import FakeKubelet, add_node

Obj = dict[str, Any]
NS = "default"
pytestmark = [pytest.mark.timeout(120)]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 10.0) -> None:
    """Poll until `check` holds (how fast is benchmarks/endpoints.py's to measure, not this)."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(ApiError):
            if await check():
                return
        if time.monotonic() - start > limit:
            pytest.fail(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.01)


def live_pods(pods: list[Obj], app: str) -> list[Obj]:
    return [
        p
        for p in pods
        if p["metadata"].get("labels", {}).get("app") == app
        and not p["metadata"].get("deletionTimestamp")
    ]


@pytest.mark.asyncio
async def test_nodes_get_pod_cidrs_and_pods_are_spread(api: HttpApi, kubelet: FakeKubelet) -> None:
    async def cidrs() -> bool:
        nodes = (await api.list("nodes"))["items"]
        return all(n["spec"].get("podCIDR") for n in nodes)

    await eventually(cidrs, "podCIDRs")
    nodes = {
        n["metadata"]["name"]: n["spec"]["podCIDR"] for n in (await api.list("nodes"))["items"]
    }
    assert sorted(nodes.values()) == ["10.244.0.0/24", "10.244.1.0/24"]
    for i in range(4):
        await api.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i}", "labels": {"app": "spread"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
            NS,
        )

    async def bound() -> bool:
        pods = live_pods((await api.list("pods", NS))["items"], "spread")
        return all(p["spec"].get("nodeName") for p in pods)

    await eventually(bound, "4 pods bound")
    placement = [p["spec"]["nodeName"] for p in (await api.list("pods", NS))["items"]]
    assert sorted(placement) == ["node-a", "node-a", "node-b", "node-b"]

    async def scheduled_event() -> bool:  # what `kubectl describe pod p0` lists under Events
        events = (await api.list("events", NS, field_selector="involvedObject.name=p0"))["items"]
        return any(
            e["reason"] == "Scheduled"
            and e["message"].startswith("Successfully assigned default/p0 to node-")
            for e in events
        )

    await eventually(scheduled_event, "a Scheduled event")

    await api.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "picky"},
            "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "x"}]},
        },
        NS,
    )

    async def unschedulable() -> bool:
        p = await api.get("pods", "picky", NS)
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in (p.get("status") or {}).get("conditions") or []
        )

    await eventually(unschedulable, "PodScheduled=False")
    p = await api.get("pods", "picky", NS)
    cond = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["message"].startswith(
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    )
    await add_node(api, "node-ssd", {"disk": "ssd"})

    async def picked() -> bool:
        return (await api.get("pods", "picky", NS))["spec"].get("nodeName") == "node-ssd"

    await eventually(picked, "binding once a matching node exists")


@pytest.mark.asyncio
async def test_endpoints_follow_readiness_and_replacements(
    api: HttpApi, kubelet: FakeKubelet
) -> None:
    await api.create(
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
        NS,
    )
    await api.create("deployments", deployment("web", 3), NS)

    async def endpoints(ready: int, not_ready: int) -> bool:
        ep = await api.get("endpoints", "web", NS)
        got_ready = sum(len(s.get("addresses") or []) for s in ep.get("subsets") or [])
        got_not = sum(len(s.get("notReadyAddresses") or []) for s in ep.get("subsets") or [])
        slices = (
            await api.list("endpointslices", NS, label_selector="kubernetes.io/service-name=web")
        )["items"]
        eps = [e for s in slices for e in s.get("endpoints") or []]
        slice_ready = sum(1 for e in eps if e["conditions"]["ready"])
        return (got_ready, got_not, slice_ready, len(eps)) == (
            ready,
            not_ready,
            ready,
            ready + not_ready,
        )

    await eventually(lambda: endpoints(3, 0), "3 ready endpoints")
    ep = await api.get("endpoints", "web", NS)
    assert ep["subsets"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert "endpoints.kubernetes.io/last-change-trigger-time" in ep["metadata"]["annotations"]
    slices = (
        await api.list("endpointslices", NS, label_selector="kubernetes.io/service-name=web")
    )["items"]
    assert (
        slices[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
        == "endpointslice-controller.k8s.io"
    )
    assert slices[0]["metadata"]["ownerReferences"][0]["kind"] == "Service"

    victim = live_pods((await api.list("pods", NS))["items"], "web")[0]["metadata"]["name"]
    kubelet.not_ready.add(victim)
    await eventually(lambda: endpoints(2, 1), "pod moved to notReadyAddresses")
    kubelet.not_ready.clear()
    await eventually(lambda: endpoints(3, 0), "pod ready again")

    # the pod dies: its replacement (new name, new IP) takes its place in the endpoints
    old_ip = kubelet.ips[(await api.get("pods", victim, NS))["metadata"]["uid"]]
    await api.delete("pods", victim, NS, grace_period_seconds=0)

    async def replaced() -> bool:
        ep = await api.get("endpoints", "web", NS)
        ips = {a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}
        return len(ips) == 3 and old_ip not in ips

    await eventually(replaced, "replacement pod in endpoints")

    # a Service without selector keeps endpoints written by the user
    await api.create(
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "external"},
            "spec": {"ports": [{"port": 80}]},
        },
        NS,
    )
    manual = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "external"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 80}]}],
    }
    await api.create("endpoints", manual, NS)
    await asyncio.sleep(0.3)
    ep = await api.get("endpoints", "external", NS)
    assert ep["subsets"][0]["addresses"] == [{"ip": "192.0.2.10"}]

    async def mirrored() -> bool:  # kube-proxy reads slices: the user's Endpoints are mirrored
        slices = (
            await api.list(
                "endpointslices", NS, label_selector="kubernetes.io/service-name=external"
            )
        )["items"]
        return [e["addresses"] for s in slices for e in s.get("endpoints") or []] == [
            ["192.0.2.10"]
        ]

    await eventually(mirrored, "mirrored EndpointSlice")

    # deleting the Service removes its Endpoints and slices
    await api.delete("services", "web", NS)

    async def gone() -> bool:
        try:
            await api.get("endpoints", "web", NS)
            return False
        except ApiError as e:
            if e.code != 404:
                raise
        slices = (
            await api.list("endpointslices", NS, label_selector="kubernetes.io/service-name=web")
        )["items"]
        return not slices

    await eventually(gone, "endpoints and slices of a deleted service gone")


async def rolled_out(api: HttpApi, name: str, replicas: int, image: str) -> bool:
    d = await api.get("deployments", name, NS)
    st = d.get("status") or {}
    pods = live_pods((await api.list("pods", NS))["items"], name)
    return (
        st.get("observedGeneration") == d["metadata"]["generation"]
        and st.get("updatedReplicas") == replicas
        and st.get("replicas") == replicas
        and st.get("availableReplicas") == replicas
        and len(pods) == replicas
        and all(p["spec"]["containers"][0]["image"] == image for p in pods)
    )


@pytest.mark.asyncio
async def test_deployment_scale_rollout_undo_and_gc(api: HttpApi, kubelet: FakeKubelet) -> None:
    await api.create("deployments", deployment("app", 2), NS)
    await eventually(lambda: rolled_out(api, "app", 2, "busybox:1.36"), "first rollout")
    await api.patch("deployments", "app", {"spec": {"replicas": 4}}, NS, subresource="scale")
    await eventually(lambda: rolled_out(api, "app", 4, "busybox:1.36"), "scale to 4")
    await api.patch(
        "deployments",
        "app",
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "main", "image": "busybox:1.37"}]}}
            }
        },
        NS,
        patch_type="strategic",
    )
    await eventually(lambda: rolled_out(api, "app", 4, "busybox:1.37"), "rolling update")
    d = await api.get("deployments", "app", NS)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    events = (await api.list("events", NS, field_selector="involvedObject.name=app"))["items"]
    assert any(
        e["reason"] == "ScalingReplicaSet" and e["message"].startswith("Scaled up replica set app-")
        for e in events
    )
    conds = {c["type"]: c["reason"] for c in d["status"]["conditions"]}
    assert conds == {
        "Available": "MinimumReplicasAvailable",
        "Progressing": "NewReplicaSetAvailable",
    }
    rses = (await api.list("replicasets", NS, label_selector="app=app"))["items"]
    assert sorted(r["spec"]["replicas"] for r in rses) == [0, 4]
    hashes = {r["metadata"]["labels"]["pod-template-hash"] for r in rses}
    assert (
        all(
            r["metadata"]["name"] == f"app-{r['metadata']['labels']['pod-template-hash']}"
            for r in rses
        )
        and len(hashes) == 2
    )

    # undo, the way kubectl does it: the template of revision 1's ReplicaSet goes back
    first = next(
        r for r in rses if r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    )
    template = first["spec"]["template"]
    del template["metadata"]["labels"]["pod-template-hash"]
    await api.patch(
        "deployments",
        "app",
        [{"op": "replace", "path": "/spec/template", "value": template}],
        NS,
        patch_type="json",
    )
    await eventually(lambda: rolled_out(api, "app", 4, "busybox:1.36"), "undo")
    first = await api.get("replicasets", first["metadata"]["name"], NS)
    assert first["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert len((await api.list("replicasets", NS, label_selector="app=app"))["items"]) == 2

    # background deletion: ReplicaSets and pods are collected
    await api.delete("deployments", "app", NS)

    async def collected() -> bool:
        rs = (await api.list("replicasets", NS, label_selector="app=app"))["items"]
        pods = (await api.list("pods", NS, label_selector="app=app"))["items"]
        return not rs and not pods

    await eventually(collected, "garbage collection")


@pytest.mark.asyncio
async def test_foreground_deletion(api: HttpApi, kubelet: FakeKubelet) -> None:
    await api.create("deployments", deployment("fg", 2), NS)
    await eventually(lambda: rolled_out(api, "fg", 2, "busybox:1.36"), "rollout")
    await api.delete("deployments", "fg", NS, propagation_policy="Foreground")
    d = await api.get("deployments", "fg", NS)  # still there, waiting for its dependents
    assert "foregroundDeletion" in d["metadata"]["finalizers"]

    async def all_gone() -> bool:
        pods = (await api.list("pods", NS, label_selector="app=fg"))["items"]
        rs = (await api.list("replicasets", NS, label_selector="app=fg"))["items"]
        try:
            await api.get("deployments", "fg", NS)
            return False
        except ApiError as e:
            return e.code == 404 and not pods and not rs

    await eventually(all_gone, "foreground deletion of the whole tree")


# --- with the real kubectl -------------------------------------------------------------------


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_kubectl_scale_rollout_status_and_undo(
    api: HttpApi, kubelet: FakeKubelet, kubectl: Any
) -> None:
    await api.create("deployments", deployment("kube", 2), NS)

    async def run(*args: str) -> str:
        return (await kubectl(*args)).stdout

    out = await run("rollout", "status", "deployment/kube", "--timeout=30s")
    assert 'deployment "kube" successfully rolled out' in out
    await run("scale", "deployment/kube", "--replicas=3")
    await eventually(lambda: rolled_out(api, "kube", 3, "busybox:1.36"), "kubectl scale")
    await run("set", "image", "deployment/kube", "main=busybox:1.37")
    out = await run("rollout", "status", "deployment/kube", "--timeout=30s")
    assert 'deployment "kube" successfully rolled out' in out
    history = await run("rollout", "history", "deployment/kube")
    assert "1" in history and "2" in history
    out = await run("rollout", "undo", "deployment/kube")
    assert "rolled back" in out
    out = await run("rollout", "status", "deployment/kube", "--timeout=30s")
    assert 'deployment "kube" successfully rolled out' in out
    await eventually(lambda: rolled_out(api, "kube", 3, "busybox:1.36"), "kubectl undo")


# --- node lifecycle and server restarts ------------------------------------------------------


class LeaseKeeper:
    """The heartbeat part of a kubelet: renews `kube-node-lease/<node>` for live nodes."""

    def __init__(self, api: HttpApi, nodes: list[str]) -> None:
        self.api = api
        self.alive = set(nodes)

    async def run(self) -> None:
        while True:
            for node in sorted(self.alive):
                stamp = rfc3339(datetime.now(UTC), 6)
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": node, "namespace": "kube-node-lease"},
                    "spec": {
                        "holderIdentity": node,
                        "leaseDurationSeconds": 40,
                        "renewTime": stamp,
                    },
                }
                try:
                    await self.api.patch("leases", node, {"spec": body["spec"]}, "kube-node-lease")
                except ApiError as e:
                    if e.code == 404:
                        with contextlib.suppress(ApiError):
                            await self.api.create("leases", body, "kube-node-lease")
            await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_silent_node_goes_unknown_and_its_pods_move(tmp_path: Path) -> None:
    config = ClusterConfig(node_monitor_grace_seconds=1.0, pod_eviction_timeout_seconds=2.0)
    srv = ApiServer(
        ServerOptions(
            state_dir=tmp_path / "server", listen=parse_listen(["127.0.0.1:0"]), config=config
        )
    )
    await srv.start()
    api = HttpApi.from_kubeconfig(srv.options.state_dir / "kubeconfig")
    tasks: list[asyncio.Task[None]] = []
    try:
        await add_node(api, "node-a")
        await add_node(api, "node-b")
        leases = LeaseKeeper(api, ["node-a", "node-b"])
        kubelet = FakeKubelet(api, alive=leases.alive)
        tasks = [asyncio.create_task(leases.run()), asyncio.create_task(kubelet.run())]
        await api.create("deployments", deployment("move", 4), NS)
        await eventually(lambda: rolled_out(api, "move", 4, "busybox:1.36"), "rollout")
        on_a = [
            p["metadata"]["name"]
            for p in live_pods((await api.list("pods", NS))["items"], "move")
            if p["spec"]["nodeName"] == "node-a"
        ]
        assert on_a, "the scheduler spread the pods over both nodes"
        leases.alive.discard("node-a")  # node-a's kubelet dies

        async def unknown() -> bool:
            node = await api.get("nodes", "node-a")
            ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
            return ready["status"] == "Unknown"

        await eventually(unknown, "node-a Ready=Unknown", limit=10)

        async def tainted() -> bool:
            node = await api.get("nodes", "node-a")
            return {(t["key"], t["effect"]) for t in node["spec"].get("taints") or []} == {
                ("node.kubernetes.io/unreachable", "NoSchedule"),
                ("node.kubernetes.io/unreachable", "NoExecute"),
            }

        await eventually(tainted, "unreachable taints on node-a")

        async def moved() -> bool:
            pods = live_pods((await api.list("pods", NS))["items"], "move")
            ready = [
                p
                for p in pods
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions") or []
                )
            ]
            return len(ready) == 4 and all(p["spec"]["nodeName"] == "node-b" for p in ready)

        await eventually(moved, "pods replaced on node-b", limit=20)
        # the dead node's pods were deleted (graceful: they wait for a kubelet that is gone)
        for name in on_a:
            pod = await api.get("pods", name, NS)
            assert pod["metadata"].get("deletionTimestamp")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await srv.stop()


@pytest.mark.asyncio
async def test_rollout_completes_across_a_server_restart(tmp_path: Path) -> None:
    config = ClusterConfig(node_monitor_grace_seconds=300, pod_eviction_timeout_seconds=300)
    options = ServerOptions(
        state_dir=tmp_path / "server", listen=parse_listen(["127.0.0.1:0"]), config=config
    )
    srv = ApiServer(options)
    await srv.start()
    api = HttpApi.from_kubeconfig(options.state_dir / "kubeconfig")
    kubelet_task: asyncio.Task[None] | None = None
    try:
        await add_node(api, "node-a")
        kubelet_task = asyncio.create_task(FakeKubelet(api).run())
        await api.create("deployments", deployment("phoenix", 3), NS)
        await eventually(lambda: rolled_out(api, "phoenix", 3, "busybox:1.36"), "rollout")
        await api.patch(
            "deployments",
            "phoenix",
            {
                "spec": {
                    "template": {
                        "spec": {"containers": [{"name": "main", "image": "busybox:1.37"}]}
                    }
                }
            },
            NS,
            patch_type="strategic",
        )
        await asyncio.sleep(0.05)  # somewhere in the middle of the rolling update
        kubelet_task.cancel()
        await asyncio.gather(kubelet_task, return_exceptions=True)
        await api.close()
        await srv.stop()
        options.listen = parse_listen([f"127.0.0.1:{srv.ports[0]}"])
        srv = ApiServer(options)
        await srv.start()
        api = HttpApi.from_kubeconfig(options.state_dir / "kubeconfig")
        kubelet_task = asyncio.create_task(FakeKubelet(api).run())
        await eventually(
            lambda: rolled_out(api, "phoenix", 3, "busybox:1.37"),
            "rollout after the restart",
            limit=30,
        )
        rses = (await api.list("replicasets", NS, label_selector="app=phoenix"))["items"]
        assert sorted(r["spec"]["replicas"] for r in rses) == [0, 3]
    finally:
        if kubelet_task is not None:
            kubelet_task.cancel()
            await asyncio.gather(kubelet_task, return_exceptions=True)
        await api.close()
        await srv.stop()


@pytest.mark.asyncio
async def test_settled_cluster_is_quiet(api: HttpApi, kubelet: FakeKubelet) -> None:
    """Idempotence on the real server: once settled, nothing is written any more (except the
    controllers' leader lease, renewed every 2 s by design)."""
    await api.create(
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "quiet"},
            "spec": {"selector": {"app": "quiet"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        NS,
    )
    await api.create("deployments", deployment("quiet", 2), NS)
    await eventually(lambda: rolled_out(api, "quiet", 2, "busybox:1.36"), "rollout")

    async def revision() -> int:
        newest = 0
        for res in (
            "pods",
            "replicasets",
            "deployments",
            "endpoints",
            "endpointslices",
            "events",
            "services",
            "nodes",
        ):
            for obj in (await api.list(res))["items"]:
                newest = max(newest, int(obj["metadata"]["resourceVersion"]))
        return newest

    async def quiet_for_a_moment() -> bool:  # the last events/status writes land
        before = await revision()
        await asyncio.sleep(0.3)
        return await revision() == before

    await eventually(quiet_for_a_moment, "writes to stop")
    start = await revision()
    await asyncio.sleep(1.5)
    assert await revision() == start
