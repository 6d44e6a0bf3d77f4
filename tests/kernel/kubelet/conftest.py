"""A real `podnet server` (the suite's `podnet_server`, no controllers) and an in-process
kubelet whose kernel work happens inside a throwaway node namespace; everything is removed even
when a test fails.

The kubelet runs in the test's event loop: its API traffic goes to the server on loopback,
its sandboxes (netns + CNI) are made from inside the node namespace (`NodeScopedSandboxes`),
and its containers run in the pod namespaces through the real runtime. The test plays the
controllers: it assigns the node's podCIDR and binds pods by setting spec.nodeName.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio

from podnet import procs
from podnet.agent.context import AgentContext
from podnet.agent.kubelet.authn import server_tls
from podnet.agent.kubelet.component import KubeletComponent
from podnet.agent.kubelet.sandbox import SandboxManager, SandboxRecord
from podnet.api.client import HttpApi
from podnet.api.errors import ApiError
from podnet.kernel import netns
from podnet.testing.ports import free_port
from podnet.testing.server import ServerProcess
from podnet.testing.waiting import eventually

NODE = "pnt5-node"
POD_CIDR = "10.244.9.0/24"


class NodeScopedSandboxes:
    """A SandboxManager whose kernel work runs inside the node namespace."""

    def __init__(self, inner: SandboxManager, node_ns: str) -> None:
        self.inner = inner
        self.node_ns = node_ns

    def ensure(self, pod_uid: str, namespace: str, name: str, pod_cidr: str) -> SandboxRecord:
        return netns.call_in(
            self.node_ns, lambda: self.inner.ensure(pod_uid, namespace, name, pod_cidr)
        )

    def teardown(self, pod_uid: str) -> None:
        netns.call_in(self.node_ns, lambda: self.inner.teardown(pod_uid))

    def records(self) -> dict[str, SandboxRecord]:
        return self.inner.records()

    def orphan_netns(self, known_uids: Mapping[str, object]) -> list[str]:
        return self.inner.orphan_netns(known_uids)

    def delete_netns(self, ns_name: str) -> None:
        self.inner.delete_netns(ns_name)


@dataclass
class Node:
    api: HttpApi
    marker: str
    node_ns: str
    state_dir: Path
    images_dir: Path
    kubelet_tls: ssl.SSLContext
    kubeconfig: Path
    kubelets: list[tuple[KubeletComponent, asyncio.Event, asyncio.Task[None]]] = field(
        default_factory=list
    )

    def runtime(self) -> Any:
        from podnet.agent.kubelet.runtime import Runtime
        from podnet.images.store import ImageStore

        return Runtime(self.state_dir, ImageStore(self.images_dir))

    async def start_kubelet(self, backoff_base: float = 0.5) -> KubeletComponent:
        ctx = AgentContext(
            api=self.api,
            node_name=NODE,
            node_ip="127.0.0.1",
            state_dir=self.state_dir,
            run_dir=self.state_dir / "run",
            netns_prefix=self.marker,
            kubelet_port=free_port(),
            kubelet_tls=self.kubelet_tls,
        )
        sandboxes = NodeScopedSandboxes(
            SandboxManager(ctx.state_dir, ctx.run_dir, self.marker, ctx.cluster.cluster_cidr),
            self.node_ns,
        )
        kubelet = KubeletComponent(
            ctx,
            network_required=False,
            backoff_base=backoff_base,
            runtime=self.runtime(),
            sandboxes=sandboxes,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(kubelet.run(stop))
        self.kubelets.append((kubelet, stop, task))
        await eventually(kubelet.node.registered.is_set, 10, "node registration")
        return kubelet

    async def stop_kubelets(self) -> None:
        for _, stop, task in self.kubelets:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        self.kubelets.clear()

    async def pod(self, name: str) -> dict[str, Any]:
        return await self.api.get("pods", name, "default")

    async def until(self, predicate: Any, within: float = 10.0, message: str = "") -> None:
        await eventually(predicate, within, message or "the condition")

    async def assign_pod_cidr(self) -> None:
        """What node IPAM does (the server runs without controllers here)."""
        await eventually(lambda: _node_exists(self.api), 10, "the Node object")
        await self.api.patch("nodes", NODE, {"spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]}})

    async def create_pod(
        self, name: str, containers: list[dict[str, Any]], **spec: Any
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": NODE,
                "containers": containers,
                "terminationGracePeriodSeconds": 2,
                **spec,
            },
        }
        return await self.api.create("pods", body, "default")

    async def container_status(self, pod: str, container: str) -> dict[str, Any]:
        status = (await self.pod(pod)).get("status") or {}
        for cs in status.get("containerStatuses") or ():
            if cs.get("name") == container:
                return dict(cs)
        return {}


@pytest_asyncio.fixture
async def node(podnet_server: ServerProcess, tmp_path: Path) -> AsyncIterator[Node]:
    marker = f"pnt5-{secrets.token_hex(3)}-"
    node_ns = f"{marker}node"
    netns.create(node_ns)
    api = podnet_server.api()
    issued = podnet_server.node_credentials(NODE, ["127.0.0.1"])
    tls = server_tls(issued.cert_path, issued.key_path, podnet_server.ca_path.read_bytes())
    n = Node(
        api, marker, node_ns, tmp_path / "node", tmp_path / "images", tls, podnet_server.kubeconfig
    )
    try:
        yield n
    finally:
        # let the kubelet take its pods down the normal way first, then sweep what is left
        for pod in (await api.list("pods", "default")).get("items") or ():
            with contextlib.suppress(ApiError):
                await api.delete("pods", pod["metadata"]["name"], "default", grace_period_seconds=0)
        runtime = n.runtime()
        if n.kubelets:
            with contextlib.suppress(AssertionError):
                await eventually(lambda: not runtime.list(), 10, "containers gone")
        await n.stop_kubelets()
        for uid in {s.pod_uid for s in runtime.list()}:
            with contextlib.suppress(Exception):
                runtime.cleanup_pod(uid)
        procs.stop_all(n.state_dir, grace_seconds=1)
        with contextlib.suppress(ApiError):
            await api.delete("nodes", NODE)
        await api.close()
        for name in netns.list_names(marker):
            netns.delete(name)
        assert not netns.list_names(marker)
        assert os.geteuid() == 0


async def _node_exists(api: HttpApi) -> bool:
    try:
        await api.get("nodes", NODE)
    except ApiError:
        return False
    return True
