"""The control loops running together against `InMemoryApi` (the real registry, in memory)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from podnet.api.errors import ApiError
from podnet.api.meta import rfc3339
from podnet.config import ClusterConfig
from podnet.controllers.manager import ControllerManager
from podnet.testing.api import Call, InMemoryApi
from podnet.testing.waiting import eventually

Obj = dict[str, Any]
pytestmark = pytest.mark.timeout(30)


def ts() -> str:
    return rfc3339(datetime.now(UTC))


def node(name: str, ready: bool = True, labels: dict[str, str] | None = None) -> Obj:
    return {
        "metadata": {"name": name, "labels": labels or {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}
            ]
        },
    }


def pod_template(labels: dict[str, str], image: str = "busybox") -> Obj:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                }
            ]
        },
    }


def deployment(name: str, replicas: int, image: str = "busybox", **spec: Any) -> Obj:
    labels = {"app": name}
    body: Obj = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": pod_template(labels, image),
        "progressDeadlineSeconds": 600,
        "revisionHistoryLimit": 10,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
        },
    }
    body.update(spec)
    return {"metadata": {"name": name, "namespace": "default"}, "spec": body}


def service(name: str, selector: dict[str, str] | None, **spec: Any) -> Obj:
    body: Obj = {
        "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        "clusterIP": "10.96.0.10",
    }
    if selector is not None:
        body["selector"] = selector
    body.update(spec)
    return {"metadata": {"name": name, "namespace": "default"}, "spec": body}


class Kubelet:
    """Plays every node's kubelet: pods bound to a node become Running/Ready with an IP."""

    def __init__(self, api: InMemoryApi) -> None:
        self.api = api
        self.next_ip = 10
        self.not_ready: set[str] = set()
        self.ips: dict[str, str] = {}

    async def run(self) -> None:
        while True:
            for p in self.api.peek_list("pods"):
                ns, name = p["metadata"]["namespace"], p["metadata"]["name"]
                if not p["spec"].get("nodeName"):
                    continue
                if p["metadata"].get("deletionTimestamp"):
                    await self._finish_delete(ns, name)
                    continue
                want_ready = name not in self.not_ready
                status = p.get("status") or {}
                if name not in self.ips:
                    self.ips[name] = f"10.244.0.{self.next_ip}"
                    self.next_ip += 1
                ready = any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in status.get("conditions") or []
                )
                if status.get("podIP") and ready == want_ready:
                    continue
                new_status = {
                    "phase": "Running",
                    "podIP": self.ips[name],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if want_ready else "False",
                            "lastTransitionTime": ts(),
                        }
                    ],
                }
                with contextlib.suppress(ApiError):
                    await self.api.patch(
                        "pods", name, {"status": new_status}, ns, subresource="status"
                    )
            await asyncio.sleep(0.01)

    async def _finish_delete(self, ns: str, name: str) -> None:
        with contextlib.suppress(ApiError):
            await self.api.delete("pods", name, ns, grace_period_seconds=0)


@pytest_asyncio.fixture
async def cluster(memory_api: InMemoryApi) -> AsyncIterator[tuple[InMemoryApi, Kubelet]]:
    await memory_api.put("nodes", node("n1"))
    await memory_api.put("nodes", node("n2"))
    config = ClusterConfig(node_monitor_grace_seconds=60, pod_eviction_timeout_seconds=60)
    manager = ControllerManager(memory_api, config)
    stop = asyncio.Event()
    kubelet = Kubelet(memory_api)
    tasks = [asyncio.create_task(manager.run(stop)), asyncio.create_task(kubelet.run())]
    try:
        yield memory_api, kubelet
    finally:
        stop.set()
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_nodes_get_distinct_pod_cidrs(cluster: Any) -> None:
    api, _ = cluster

    async def assigned() -> bool:
        return all(n["spec"].get("podCIDR") for n in api.peek_list("nodes"))

    await eventually(assigned, what="podCIDRs")
    cidrs = sorted(n["spec"]["podCIDR"] for n in api.peek_list("nodes"))
    assert cidrs == ["10.244.0.0/24", "10.244.1.0/24"]
    assert all(n["spec"]["podCIDRs"] == [n["spec"]["podCIDR"]] for n in api.peek_list("nodes"))


@pytest.mark.asyncio
async def test_deployment_service_and_endpoints_follow_pods(cluster: Any) -> None:
    api, kubelet = cluster
    await api.create("services", service("web", {"app": "web"}), "default")
    await api.create("deployments", deployment("web", 3), "default")

    async def three_ready() -> bool:
        try:
            ep = await api.get("endpoints", "web", "default")
        except ApiError:
            return False
        subsets = ep.get("subsets") or []
        # the endpoints and endpointslices controllers converge independently: wait for both
        slices = api.peek_list("endpointslices")
        return (
            len(subsets) == 1
            and len(subsets[0].get("addresses") or []) == 3
            and len(slices) == 1
            and len(slices[0].get("endpoints") or []) == 3
        )

    await eventually(three_ready, what="3 ready endpoints in Endpoints and the EndpointSlice")
    pods = api.peek_list("pods")
    assert len(pods) == 3
    assert {p["spec"]["nodeName"] for p in pods} == {"n1", "n2"}  # spread
    ep = await api.get("endpoints", "web", "default")
    assert ep["subsets"][0]["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP"}]
    slices = api.peek_list("endpointslices")
    assert len(slices) == 1
    assert len(slices[0]["endpoints"]) == 3
    assert slices[0]["metadata"]["labels"]["kubernetes.io/service-name"] == "web"

    async def rolled_out() -> bool:
        d = await api.get("deployments", "web", "default")
        st = d.get("status") or {}
        return (
            st.get("availableReplicas") == 3
            and st.get("updatedReplicas") == 3
            and st.get("observedGeneration") == d["metadata"]["generation"]
        )

    await eventually(rolled_out, what="deployment available")
    d = await api.get("deployments", "web", "default")
    conds = {c["type"]: c["reason"] for c in d["status"]["conditions"]}
    assert conds == {
        "Available": "MinimumReplicasAvailable",
        "Progressing": "NewReplicaSetAvailable",
    }
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"

    # a pod goes unready: it moves to notReadyAddresses and its slice endpoint to ready=false
    victim = pods[0]["metadata"]["name"]
    kubelet.not_ready.add(victim)

    async def moved() -> bool:
        ep = await api.get("endpoints", "web", "default")
        return len(ep["subsets"][0].get("notReadyAddresses") or []) == 1

    await eventually(moved, what="notReadyAddresses")
    sl = api.peek_list("endpointslices")[0]
    by_name = {e["targetRef"]["name"]: e["conditions"] for e in sl["endpoints"]}
    assert by_name[victim] == {"ready": False, "serving": False, "terminating": False}

    # the pod is deleted: a replacement with a new name and IP appears, endpoints follow
    await api.delete("pods", victim, "default")

    async def replaced() -> bool:
        live = [p for p in api.peek_list("pods") if not p["metadata"].get("deletionTimestamp")]
        ep = await api.get("endpoints", "web", "default")
        names = {a["targetRef"]["name"] for a in ep["subsets"][0].get("addresses") or []}
        return len(live) == 3 and len(names) == 3 and victim not in names

    await eventually(replaced, what="replacement pod in endpoints")


@pytest.mark.asyncio
async def test_rollout_and_undo(cluster: Any) -> None:
    api, _ = cluster
    await api.create("deployments", deployment("app", 4), "default")

    async def done(image: str, revision: str) -> bool:
        d = await api.get("deployments", "app", "default")
        st = d.get("status") or {}
        pods = [p for p in api.peek_list("pods") if not p["metadata"].get("deletionTimestamp")]
        return (
            st.get("updatedReplicas") == 4
            and st.get("availableReplicas") == 4
            and st.get("replicas") == 4
            and d["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
            == revision
            and len(pods) == 4
            and all(p["spec"]["containers"][0]["image"] == image for p in pods)
        )

    await eventually(lambda: done("busybox", "1"), what="first rollout")
    await api.patch(
        "deployments",
        "app",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "c",
                                "image": "nginx",
                                "ports": [
                                    {"name": "http", "containerPort": 8080, "protocol": "TCP"}
                                ],
                            }
                        ]
                    }
                }
            }
        },
        "default",
    )
    await eventually(lambda: done("nginx", "2"), timeout=10, what="second rollout")
    rses = api.peek_list("replicasets")
    assert len(rses) == 2
    # undo: the template goes back to revision 1's; that ReplicaSet is reused as revision 3
    old = next(
        r for r in rses if r["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox"
    )
    template = {k: v for k, v in old["spec"]["template"].items()}
    template["metadata"] = {"labels": {"app": "app"}}
    await api.patch("deployments", "app", {"spec": {"template": template}}, "default")
    await eventually(lambda: done("busybox", "3"), timeout=10, what="undo")
    rses = api.peek_list("replicasets")
    assert len(rses) == 2
    reused = next(r for r in rses if r["metadata"]["name"] == old["metadata"]["name"])
    assert reused["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert reused["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"


class InformerFirstApi(InMemoryApi):
    """Answers a ReplicaSet update only once the controllers' informer shows it, as a busy
    server often does: the watch event overtakes the response to the write."""

    informer: Any = None

    async def update(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        result = await super().update(resource, obj, namespace, subresource)
        if resource == "replicasets" and self.informer is not None:
            key, rv = (
                f"{namespace}/{result['metadata']['name']}",
                result["metadata"]["resourceVersion"],
            )

            async def seen() -> bool:
                cached = self.informer.get(key)
                return cached is not None and int(cached["metadata"]["resourceVersion"]) >= int(rv)

            await eventually(seen, what=f"the informer shows {key} at {rv}")
        return result


def scaled(events: list[Obj], rs: str) -> list[tuple[int, int]]:
    """The (from, to) of every "Scaled up/down replica set `rs` from A to B" event."""
    out = []
    for e in events:
        words = e["message"].split()
        if e["reason"] == "ScalingReplicaSet" and words[4] == rs:
            out.extend([(int(words[6]), int(words[8]))] * e.get("count", 1))
    return out


def chain(steps: list[tuple[int, int]], start: int) -> int:
    """Where the scaling steps lead from `start`, each taken once; fails on a step from
    anywhere else (a lost or garbled event)."""
    todo, at = list(steps), start
    while todo:
        step = next((s for s in todo if s[0] == at), None)
        assert step is not None, f"no step from {at} in {steps}"
        todo.remove(step)
        at = step[1]
    return at


@pytest.mark.asyncio
async def test_scaling_events_tell_every_step_of_a_rollout() -> None:
    """Each ScalingReplicaSet event starts where the one before ended, also when the informer
    shows the controller's own write before the write returns (it said "from 1 to 2" and then
    nothing for 2 to 3: the informer already showed 3, so the step looked like no change)."""
    api = InformerFirstApi()
    await api.put("nodes", node("n1"))
    config = ClusterConfig(node_monitor_grace_seconds=60, pod_eviction_timeout_seconds=60)
    manager = ControllerManager(api, config)
    api.informer = manager.informers.informer("replicasets")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(manager.run(stop)), asyncio.create_task(Kubelet(api).run())]
    try:
        await api.create("deployments", deployment("app", 3), "default")

        async def rolled(image: str) -> bool:
            d = await api.get("deployments", "app", "default")
            st = d.get("status") or {}
            pods = [p for p in api.peek_list("pods") if not p["metadata"].get("deletionTimestamp")]
            return (
                st.get("updatedReplicas") == st.get("availableReplicas") == st.get("replicas") == 3
                and len(pods) == 3
                and all(p["spec"]["containers"][0]["image"] == image for p in pods)
            )

        await eventually(lambda: rolled("busybox"), what="first rollout")
        first = api.peek_list("replicasets")[0]["metadata"]["name"]
        await api.patch(
            "deployments",
            "app",
            {"spec": {"template": pod_template({"app": "app"}, "nginx")}},
            "default",
        )
        await eventually(lambda: rolled("nginx"), timeout=10, what="second rollout")
        second = next(
            r["metadata"]["name"]
            for r in api.peek_list("replicasets")
            if r["metadata"]["name"] != first
        )
        events = api.peek_list("events", "default")
        assert chain(scaled(events, first), 0) == 0  # 0 to 3, then down to 0
        assert chain(scaled(events, second), 0) == 3
        assert max(to for _, to in scaled(events, first)) == 3
    finally:
        stop.set()
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_scale_down_and_gc(cluster: Any) -> None:
    api, _ = cluster
    await api.create("deployments", deployment("s", 3), "default")

    async def pods_count(n: int) -> bool:
        live = [p for p in api.peek_list("pods") if not p["metadata"].get("deletionTimestamp")]
        return len(live) == n

    await eventually(lambda: pods_count(3), what="3 pods")
    await api.patch("deployments", "s", {"spec": {"replicas": 1}}, "default")
    await eventually(lambda: pods_count(1), what="scale to 1")
    # background deletion of the deployment: the ReplicaSet and its pods go
    await api.delete("deployments", "s", "default")

    async def all_gone() -> bool:
        return not api.peek_list("replicasets") and not api.peek_list("pods")

    await eventually(all_gone, what="garbage collection")


@pytest.mark.asyncio
async def test_foreground_and_orphan_deletion(cluster: Any) -> None:
    api, _ = cluster
    await api.create("deployments", deployment("f", 2), "default")

    async def pods_count(n: int) -> bool:
        return len(api.peek_list("pods")) == n

    await eventually(lambda: pods_count(2), what="2 pods")
    await api.delete("deployments", "f", "default", propagation_policy="Foreground")

    async def tree_gone() -> bool:
        return (
            not api.peek_list("deployments")
            and not api.peek_list("replicasets")
            and not api.peek_list("pods")
        )

    await eventually(tree_gone, what="foreground deletion")

    await api.create("deployments", deployment("o", 2), "default")
    await eventually(lambda: pods_count(2), what="2 pods")
    await api.delete("deployments", "o", "default", propagation_policy="Orphan")

    async def orphaned() -> bool:
        rses = api.peek_list("replicasets")
        return (
            not api.peek_list("deployments")
            and len(rses) == 1
            and not rses[0]["metadata"].get("ownerReferences")
        )

    await eventually(orphaned, what="orphan deletion")
    await asyncio.sleep(0.2)
    assert len(api.peek_list("pods")) == 2


@pytest.mark.asyncio
async def test_unschedulable_pod_is_retried_when_a_node_appears(cluster: Any) -> None:
    api, _ = cluster
    await api.create(
        "pods",
        {
            "metadata": {"name": "picky", "namespace": "default"},
            "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "x"}]},
        },
        "default",
    )

    async def unschedulable() -> bool:
        p = await api.get("pods", "picky", "default")
        conds = (p.get("status") or {}).get("conditions") or []
        return any(c["type"] == "PodScheduled" and c["reason"] == "Unschedulable" for c in conds)

    await eventually(unschedulable, what="PodScheduled=False")
    p = await api.get("pods", "picky", "default")
    cond = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["message"] == (
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. "
        "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    )
    await api.create("nodes", node("n3", labels={"disk": "ssd"}))

    async def bound() -> bool:
        p = await api.get("pods", "picky", "default")
        return p["spec"].get("nodeName") == "n3"

    await eventually(bound, what="binding to n3")


@pytest.mark.asyncio
async def test_informer_survives_compaction_and_disconnects(cluster: Any) -> None:
    api, _ = cluster
    await api.create("services", service("svc", {"app": "x"}), "default")
    await api.create(
        "pods",
        {
            "metadata": {"name": "x1", "namespace": "default", "labels": {"app": "x"}},
            "spec": {
                "containers": [
                    {"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}
                ]
            },
        },
        "default",
    )

    async def has(n: int) -> bool:
        try:
            ep = await api.get("endpoints", "svc", "default")
        except ApiError:
            return False
        return sum(len(s.get("addresses") or []) for s in ep.get("subsets") or []) == n

    await eventually(lambda: has(1), what="1 endpoint")
    # the server "restarts": history is compacted and every watch is cut
    api.disconnect_watches()
    await api.compact()
    await api.create(
        "pods",
        {
            "metadata": {"name": "x2", "namespace": "default", "labels": {"app": "x"}},
            "spec": {
                "containers": [
                    {"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}
                ]
            },
        },
        "default",
    )
    await eventually(lambda: has(2), what="2 endpoints after re-list")


@pytest.mark.asyncio
async def test_silent_node_is_marked_unknown_and_its_pods_replaced() -> None:
    # the API's config too: its admission gives pods the tolerationSeconds that evict them
    config = ClusterConfig(node_monitor_grace_seconds=0.4, pod_eviction_timeout_seconds=0.8)
    api = InMemoryApi(config)
    await api.put("nodes", node("n1"))
    await api.put("nodes", node("n2"))
    for name in ("n1", "n2"):
        await api.put(
            "leases",
            {
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "renewTime": ts()},
            },
        )
    manager = ControllerManager(api, config)
    stop = asyncio.Event()
    kubelet = Kubelet(api)

    async def heartbeat() -> None:  # only n2's kubelet is alive
        while True:
            lease = await api.get("leases", "n2", "kube-node-lease")
            lease["spec"]["renewTime"] = rfc3339(datetime.now(UTC), 6)
            await api.update("leases", lease, "kube-node-lease")
            await asyncio.sleep(0.05)

    tasks = [
        asyncio.create_task(manager.run(stop)),
        asyncio.create_task(kubelet.run()),
        asyncio.create_task(heartbeat()),
    ]
    try:
        await api.create("deployments", deployment("w", 2), "default")

        async def on_n1_then_moved() -> bool:
            pods = [p for p in api.peek_list("pods") if not p["metadata"].get("deletionTimestamp")]
            return len(pods) == 2 and all(p["spec"].get("nodeName") == "n2" for p in pods)

        await eventually(on_n1_then_moved, timeout=10, what="pods replaced on n2")
        n1 = await api.get("nodes", "n1")
        ready = next(c for c in n1["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", "NodeStatusUnknown")
        assert {(t["key"], t["effect"]) for t in n1["spec"]["taints"]} == {
            ("node.kubernetes.io/unreachable", "NoSchedule"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
        }
        n2 = await api.get("nodes", "n2")
        assert not n2["spec"].get("taints")
    finally:
        stop.set()
        for t in tasks[1:]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_only_one_of_two_managers_leads(memory_api: InMemoryApi) -> None:
    from podnet.controllers.manager import run_controllers

    api = memory_api
    await api.put("nodes", node("n1"))
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    config = ClusterConfig()
    a = asyncio.create_task(run_controllers(api, config, stop_a))
    b = asyncio.create_task(run_controllers(api, config, stop_b))
    try:

        async def assigned() -> bool:
            return bool((await api.get("nodes", "n1"))["spec"].get("podCIDR"))

        await eventually(assigned, what="a leader assigning podCIDRs")
        lease = await api.get("leases", "podnet-controller-manager", "kube-system")
        assert lease["spec"]["holderIdentity"]
        # exactly one manager wrote the node: one update from nodeipam
        assert len([c for c in api.writes("nodes") if c.verb in ("update", "patch")]) == 1
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(a, b, return_exceptions=True)


@pytest.mark.asyncio
async def test_leader_lease_is_exclusive_and_released(memory_api: InMemoryApi) -> None:
    from podnet.controllers.leaderelection import LeaderElector

    first, second = LeaderElector(memory_api, "first"), LeaderElector(memory_api, "second")
    assert await first.try_acquire_or_renew()
    assert not await second.try_acquire_or_renew()
    assert await first.try_acquire_or_renew()  # renewing our own lease
    await first.release()
    assert await second.try_acquire_or_renew()
    lease = await memory_api.get("leases", "podnet-controller-manager", "kube-system")
    assert lease["spec"]["holderIdentity"] == "second"
    assert lease["spec"]["leaseTransitions"] == 1


@pytest.mark.asyncio
async def test_a_settled_cluster_writes_nothing(cluster: Any) -> None:
    """Idempotence: once everything matches, no loop keeps writing (no hot loops)."""
    api, _ = cluster
    await api.create("services", service("web", {"app": "web"}), "default")
    await api.create("deployments", deployment("web", 3), "default")

    async def settled() -> bool:
        d = await api.get("deployments", "web", "default")
        conds = {c["type"]: c["reason"] for c in (d.get("status") or {}).get("conditions", [])}
        return conds.get("Progressing") == "NewReplicaSetAvailable"

    await eventually(settled, what="a settled deployment")

    def writes() -> list[Call]:
        return api.writes()

    async def quiet_for_a_moment() -> bool:  # the last events/status writes land
        before = len(writes())
        await asyncio.sleep(0.3)
        return len(writes()) == before

    await eventually(quiet_for_a_moment, timeout=5, what="writes to stop")
    before = writes()
    await asyncio.sleep(1.5)  # > one node-lifecycle resync period
    assert writes() == before, writes()[len(before) :]
