"""Workload kinds and the kinds around them inside a real `podnet server` (HTTPS, on SQLite and
on etcd), driven through the HTTP API and the real kubectl, with the stand-in kubelet
(`podnet.testing.standin_kubelet.FakeKubelet`) playing two nodes: `kubectl drain` honouring a
PodDisruptionBudget, a claim explaining why it stays Pending."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from podnet.api.client import HttpApi
from podnet.testing.manifests import deployment
from podnet.testing.standin_kubelet import FakeKubelet, add_node
from podnet.testing.waiting import eventually

Obj = dict[str, Any]
NS = "default"
pytestmark = [pytest.mark.timeout(120)]


def ready(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


async def ready_pods(api: HttpApi, app: str) -> list[Obj]:
    pods = (await api.list("pods", NS, label_selector=f"app={app}"))["items"]
    return [p for p in pods if ready(p)]


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_drain_evicts_within_the_disruption_budget(
    api: HttpApi, kubelet: FakeKubelet, kubectl: Any
) -> None:
    await api.create("deployments", deployment("shop", 2), NS)

    async def spread() -> bool:
        pods = await ready_pods(api, "shop")
        return sorted(p["spec"]["nodeName"] for p in pods) == ["node-a", "node-b"]

    await eventually(spread, timeout=15, what="one shop pod on each node")
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "shop", "namespace": NS},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "shop"}}},
    }
    await api.create("poddisruptionbudgets", budget, NS)

    async def allows(n: int) -> bool:
        status = (await api.get("poddisruptionbudgets", "shop", NS)).get("status") or {}
        return status.get("disruptionsAllowed") == n and status.get("currentHealthy") == 2

    await eventually(lambda: allows(1), timeout=10, what="the budget allows one disruption")
    table = (await kubectl("get", "pdb", "shop")).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "MIN",
        "AVAILABLE",
        "MAX",
        "UNAVAILABLE",
        "ALLOWED",
        "DISRUPTIONS",
        "AGE",
    ]
    assert row.split()[:4] == ["shop", "1", "N/A", "1"]

    out = await kubectl("drain", "node-a", "--ignore-daemonsets", "--timeout=60s")
    assert "node/node-a drained" in out.stdout
    assert "evicting pod default/shop-" in out.stderr + out.stdout
    node = await api.get("nodes", "node-a")
    assert node["spec"]["unschedulable"] is True

    async def both_on_b() -> bool:
        pods = await ready_pods(api, "shop")
        return [p["spec"]["nodeName"] for p in pods] == ["node-b", "node-b"]

    await eventually(both_on_b, timeout=15, what="the evicted pod replaced on node-b")

    # no disruption may be spent now: the eviction answers 429 and drain gives up
    await api.patch(
        "poddisruptionbudgets",
        "shop",
        {"spec": {"minAvailable": None, "maxUnavailable": 0}},
        NS,
    )
    await eventually(lambda: allows(0), timeout=10, what="the budget allows nothing")
    blocked = await kubectl("drain", "node-b", "--timeout=3s", check=False)
    assert blocked.returncode != 0
    assert "Cannot evict pod as it would violate the pod's disruption budget" in blocked.stderr
    assert len(await ready_pods(api, "shop")) == 2
    await kubectl("uncordon", "node-a")


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_claims_stay_pending_and_say_why(api: HttpApi, kubectl: Any) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    created = await api.create("persistentvolumeclaims", claim, NS)
    assert created["status"] == {"phase": "Pending"}

    async def told() -> bool:
        described = (await kubectl("describe", "pvc", "data")).stdout
        return "FailedBinding" in described and "podnet provisions no volumes" in described

    await eventually(told, timeout=10, what="the FailedBinding event on the claim")
    row = (await kubectl("get", "pvc", "data", "--no-headers")).stdout.split()
    assert row[:2] == ["data", "Pending"]


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_parallel_and_indexed_jobs_complete(
    api: HttpApi, kubelet: FakeKubelet, kubectl: Any
) -> None:
    kubelet.run_seconds = 0.3  # each pod "runs" this long, then exits 0
    for name, extra in (("crunch", {}), ("shards", {"completionMode": "Indexed"})):
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "parallelism": 3,
                "completions": 3,
                **extra,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "work", "image": "busybox:1.36"}],
                    }
                },
            },
        }
        await api.create("jobs", job, NS)
    for name in ("crunch", "shards"):
        out = await kubectl("wait", "--for=condition=complete", f"job/{name}", "--timeout=60s")
        assert "condition met" in out.stdout
        row = (await kubectl("get", "job", name, "--no-headers")).stdout.split()
        assert row[:3] == [name, "Complete", "3/3"]
    pods = (await api.list("pods", NS, label_selector="batch.kubernetes.io/job-name=crunch"))[
        "items"
    ]
    assert len(pods) == 3 and {p["spec"]["nodeName"] for p in pods} == {"node-a", "node-b"}
    assert all(
        p["status"]["phase"] == "Succeeded" and not p["metadata"].get("finalizers") for p in pods
    )
    shards = (await api.get("jobs", "shards", NS))["status"]
    assert shards["completedIndexes"] == "0-2"
    indexes = sorted(
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        for p in (await api.list("pods", NS, label_selector="job-name=shards"))["items"]
    )
    assert indexes == ["0", "1", "2"]


def daemonset(name: str, image: str) -> Obj:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    }


async def images_by_node(api: HttpApi, app: str) -> dict[str, str]:
    pods = await ready_pods(api, app)
    return {p["spec"]["nodeName"]: p["spec"]["containers"][0]["image"] for p in pods}


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_daemonset_follows_nodes_rolls_out_and_undoes(
    api: HttpApi, kubelet: FakeKubelet, kubectl: Any
) -> None:
    await api.create("daemonsets", daemonset("agent", "busybox:1.36"), NS)
    out = await kubectl("rollout", "status", "daemonset/agent", "--timeout=60s")
    assert 'daemon set "agent" successfully rolled out' in out.stdout
    assert await images_by_node(api, "agent") == {
        "node-a": "busybox:1.36",
        "node-b": "busybox:1.36",
    }

    await add_node(api, "node-c")  # a node joins: it gets its daemon

    async def on_three() -> bool:
        return len(await images_by_node(api, "agent")) == 3

    await eventually(on_three, timeout=15, what="the daemon on the new node")
    await kubectl("set", "image", "daemonset/agent", "main=busybox:1.37")
    out = await kubectl("rollout", "status", "daemonset/agent", "--timeout=60s")
    assert 'daemon set "agent" successfully rolled out' in out.stdout
    assert set((await images_by_node(api, "agent")).values()) == {"busybox:1.37"}
    history = (await kubectl("rollout", "history", "daemonset/agent")).stdout.split()
    assert history[:2] == ["daemonset.apps/agent", "REVISION"] and "2" in history
    out = await kubectl("rollout", "undo", "daemonset/agent")
    assert "rolled back" in out.stdout
    await kubectl("rollout", "status", "daemonset/agent", "--timeout=60s")

    async def undone() -> bool:
        images = await images_by_node(api, "agent")
        return len(images) == 3 and set(images.values()) == {"busybox:1.36"}

    await eventually(undone, timeout=20, what="the undo rolled out")
    row = (await kubectl("get", "ds", "agent", "--no-headers")).stdout.split()
    assert row[:7] == ["agent", "3", "3", "3", "3", "3", "<none>"]
    revisions = (await api.list("controllerrevisions", NS))["items"]
    assert sorted(r["revision"] for r in revisions) == [2, 3]  # revision 1 came back as 3

    # orphaning keeps the pods, without an owner
    await kubectl("delete", "daemonset", "agent", "--cascade=orphan")

    async def orphaned() -> bool:
        pods = await ready_pods(api, "agent")
        return len(pods) == 3 and not any(p["metadata"].get("ownerReferences") for p in pods)

    await eventually(orphaned, timeout=15, what="three orphaned daemon pods")


def statefulset(name: str, replicas: int, image: str) -> Obj:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    }


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_statefulset_scales_in_order_and_rolls_with_a_partition(
    api: HttpApi, kubelet: FakeKubelet, kubectl: Any
) -> None:
    listed = await api.list("pods", NS)
    created_order: list[str] = []

    async def record() -> None:
        events = api.watch(
            "pods",
            NS,
            resource_version=listed["metadata"]["resourceVersion"],
            label_selector="app=web",
        )
        async for event in events:
            if event["type"] == "ADDED":
                created_order.append(event["object"]["metadata"]["name"])

    watcher = asyncio.create_task(record())
    try:
        await api.create("statefulsets", statefulset("web", 1, "busybox:1.36"), NS)
        await kubectl("rollout", "status", "statefulset/web", "--timeout=60s")
        await kubectl("scale", "statefulset/web", "--replicas=3")
        out = await kubectl("rollout", "status", "statefulset/web", "--timeout=60s")
        # the defaulted partition (0) makes kubectl report a partitioned roll out, as upstream
        assert "partitioned roll out complete: 3 new pods have been updated" in out.stdout
        await eventually(lambda: len(created_order) == 3, timeout=5, what="three ADDED events")
        assert created_order == ["web-0", "web-1", "web-2"]  # each after its predecessor was ready
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    pod = await api.get("pods", "web-1", NS)
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("web-1", "web")
    row = (await kubectl("get", "sts", "web", "--no-headers")).stdout.split()
    assert row[:2] == ["web", "3/3"]

    # update all but web-0 (partition 1), highest ordinal first
    await api.patch(
        "statefulsets",
        "web",
        {
            "spec": {
                "updateStrategy": {"rollingUpdate": {"partition": 1}},
                "template": {"spec": {"containers": [{"name": "main", "image": "busybox:1.37"}]}},
            }
        },
        NS,
        patch_type="strategic",
    )
    out = await kubectl("rollout", "status", "statefulset/web", "--timeout=60s")
    assert "partitioned roll out complete: 2 new pods have been updated" in out.stdout

    async def images() -> dict[str, str]:
        pods = await ready_pods(api, "web")
        return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods}

    assert await images() == {
        "web-0": "busybox:1.36",
        "web-1": "busybox:1.37",
        "web-2": "busybox:1.37",
    }
    out = await kubectl("rollout", "undo", "statefulset/web")
    assert "rolled back" in out.stdout
    await kubectl("rollout", "status", "statefulset/web", "--timeout=60s")

    async def undone() -> bool:
        return set((await images()).values()) == {"busybox:1.36"} and len(await images()) == 3

    await eventually(undone, timeout=20, what="kubectl rollout undo of the StatefulSet")
    # foreground deletion: the pods go first, then the StatefulSet and its revisions
    await kubectl("delete", "statefulset", "web", "--cascade=foreground", "--timeout=30s")

    async def gone() -> bool:
        pods = (await api.list("pods", NS, label_selector="app=web"))["items"]
        revisions = (await api.list("controllerrevisions", NS))["items"]
        return not pods and not revisions

    await eventually(gone, timeout=15, what="the pods and revisions collected")


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_replication_controller_scales_and_cascades(
    api: HttpApi, kubelet: FakeKubelet, kubectl: Any
) -> None:
    rc = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "legacy", "namespace": NS},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "legacy"}},
                "spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]},
            },
        },
    }
    created = await api.create("replicationcontrollers", rc, NS)
    assert created["spec"]["selector"] == {"app": "legacy"}
    await kubectl("scale", "rc/legacy", "--replicas=3")

    async def three() -> bool:
        status = (await api.get("replicationcontrollers", "legacy", NS))["status"]
        return status.get("readyReplicas") == 3 and len(await ready_pods(api, "legacy")) == 3

    await eventually(three, timeout=15, what="three ready pods of the RC")
    row = (await kubectl("get", "rc", "legacy", "-o", "wide", "--no-headers")).stdout.split()
    assert row[:4] == ["legacy", "3", "3", "3"] and row[-1] == "app=legacy"
    await kubectl("delete", "rc", "legacy", "--cascade=foreground", "--timeout=30s")

    async def gone() -> bool:
        return not (await api.list("pods", NS, label_selector="app=legacy"))["items"]

    await eventually(gone, timeout=15, what="the RC's pods collected first")


@pytest.mark.kubectl
@pytest.mark.asyncio
async def test_quota_reports_what_the_namespace_uses(api: HttpApi, kubectl: Any) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "compute", "namespace": NS},
        "spec": {"hard": {"pods": "10", "requests.cpu": "2", "configmaps": "20"}},
    }
    await api.create("resourcequotas", quota, NS)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "counted", "namespace": NS},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "250m"}}}
            ]
        },
    }
    await api.create("pods", pod, NS)

    async def counted() -> bool:
        used = ((await api.get("resourcequotas", "compute", NS)).get("status") or {}).get("used")
        return used == {"pods": "1", "requests.cpu": "250m", "configmaps": "1"}

    await eventually(counted, timeout=10, what="the quota's usage")  # kube-root-ca.crt counts
    row = (await kubectl("get", "quota", "compute", "--no-headers")).stdout
    assert "pods: 1/10" in row and "requests.cpu: 250m/2" in row
