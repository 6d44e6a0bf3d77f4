"""The kubelet component of the node agent: node registration, the pod loop, the endpoint.

What belongs here: `KubeletComponent` (the agent's `Component` for pods, like flannel's and
the proxy's), which wires `NodeReporter` (Node, status, Lease), `PodManager` (the pod loop
over a `cri.ContainerRuntime` and `sandbox.Sandboxes`) and `KubeletServer` (exec, attach,
port-forward, logs) for one node, and the node's readiness.

Invariants:
- The node is Ready only when the pod loop has synced and, if flannel runs, flannel has written
  `run_dir/flannel/subnet.env`; a change of readiness is reported at once, not at the next
  status period.
- Stopping leaves pods, their namespaces and all kernel state in place; a new agent on the same
  state dir adopts them without restarting healthy containers.
- The endpoint serves the real runtime's containers only (exec and logs read its state
  directory), so a component built on another runtime runs with `serve=False`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from podnet.agent.context import AgentContext
from podnet.agent.kubelet.authn import KubeletAuth
from podnet.agent.kubelet.cri import ContainerRuntime
from podnet.agent.kubelet.node import NodeReporter, Readiness
from podnet.agent.kubelet.pods import DEFAULT_BACKOFF_BASE, PodManager
from podnet.agent.kubelet.runtime import Runtime
from podnet.agent.kubelet.sandbox import Sandboxes, SandboxManager
from podnet.agent.kubelet.server import KubeletServer
from podnet.images.store import DEFAULT_ROOT, ImageStore

log = logging.getLogger("podnet.agent")

READINESS_POLL = 0.05  # seconds between looks at what readiness depends on (a stat)


def subnet_env_path(ctx: AgentContext) -> Path:
    return ctx.run_dir / "flannel" / "subnet.env"


class KubeletComponent:
    """Node registration, the pod loop and the kubelet endpoint of one node."""

    name = "kubelet"

    def __init__(
        self,
        ctx: AgentContext,
        *,
        network_required: bool,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        runtime: ContainerRuntime | None = None,
        sandboxes: Sandboxes | None = None,
        images_dir: Path | None = None,
        serve: bool = True,
    ) -> None:
        self.ctx = ctx
        self.network_required = network_required
        if runtime is None:
            runtime = Runtime(ctx.state_dir, ImageStore(images_dir or DEFAULT_ROOT))
        self.runtime = runtime
        self.sandboxes = sandboxes or SandboxManager(
            ctx.state_dir,
            ctx.run_dir,
            ctx.netns_prefix,
            ctx.cluster.cluster_cidr,
            ctx.underlay_ifname,
        )
        self.pods = PodManager(
            ctx.api,
            ctx.node_name,
            ctx.node_ip,
            self.runtime,
            self.sandboxes,
            pod_cidr=lambda: self.node.pod_cidr,
            cluster=ctx.cluster,
            backoff_base=backoff_base,
            resolv_conf=ctx.resolv_conf,
            volumes_dir=ctx.state_dir / "pod-volumes",
        )
        self.node = NodeReporter(
            ctx.api,
            ctx.node_name,
            ctx.node_ip,
            ctx.kubelet_port,
            self.readiness,
            lease_duration=ctx.cluster.lease_duration_seconds,
            lease_renew_seconds=min(10.0, ctx.cluster.lease_renew_seconds),
            on_pod_cidr=lambda _cidr: self.pods.wake(),
        )
        # `logs --previous` needs no second resolver: the runtime finds the previous
        # attempt's log from the current container id
        self.server: KubeletServer | None = None
        if serve:
            if not isinstance(runtime, Runtime):
                raise TypeError(
                    "the kubelet endpoint serves the real runtime only; pass serve=False"
                )
            if ctx.kubelet_tls is None:
                raise ValueError(
                    "the kubelet endpoint is served over TLS only: give the agent its serving "
                    "certificate (--tls-cert-file, --tls-private-key-file)"
                )
            auth = KubeletAuth(ctx.api, ctx.node_name)
            self.server = KubeletServer(runtime, self.pods.resolve, auth, self.pods.netns_of)

    def readiness(self) -> Readiness:
        if not self.pods.synced.is_set():
            return Readiness(False, "KubeletNotReady", "the kubelet has not synced its pods yet")
        if self.network_required and not subnet_env_path(self.ctx).exists():
            return Readiness(
                False,
                "KubeletNotReady",
                "container runtime network not ready: NetworkReady=false "
                f"reason:NetworkPluginNotReady message:flannel has not written "
                f"{subnet_env_path(self.ctx)} yet",
            )
        return Readiness(True, "KubeletReady", "kubelet is posting ready status")

    async def _watch_readiness(self, stop: asyncio.Event) -> None:
        """Poke the node reporter as soon as readiness flips (pods synced, network up)."""
        last = self.readiness().ready
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READINESS_POLL):
                    await stop.wait()
            now = self.readiness().ready
            if now != last:
                last = now
                self.node.poke()

    async def run(self, stop: asyncio.Event) -> None:
        if self.server is not None:
            assert self.ctx.kubelet_tls is not None
            await self.server.start(self.ctx.node_ip, self.ctx.kubelet_port, self.ctx.kubelet_tls)
            log.info("kubelet endpoint on https://%s:%d", self.ctx.node_ip, self.server.port)
        try:
            await asyncio.gather(
                self.node.run(stop), self.pods.run(stop), self._watch_readiness(stop)
            )
        finally:
            if self.server is not None:
                await self.server.stop()
