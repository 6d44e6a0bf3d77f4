"""The node agent: builds the components of one node and runs them until told to stop.

What belongs here: `KubeletComponent` (node registration + Lease, the pod loop, the exec/log
endpoint, wired together), the network components (flannel unless `--backend none`, the
proxy and NetworkPolicy), and `run_agent`, which runs them all and stops them together.

Invariants:
- Stopping the agent leaves pods, their namespaces and all kernel state in place; a new agent on
  the same state dir adopts them without restarting healthy containers.
- The node is Ready only when the pod loop has synced and, if flannel runs, flannel has written
  `run_dir/flannel/subnet.env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from podnet.agent.context import AgentContext, Component
from podnet.agent.flannel.component import FlannelComponent
from podnet.agent.kubelet.node import NodeReporter, Readiness
from podnet.agent.kubelet.pods import (
    DEFAULT_BACKOFF_BASE,
    PodManager,
    RuntimeBindings,
    RuntimeLike,
    SandboxesLike,
)
from podnet.agent.kubelet.sandbox import SandboxManager
from podnet.agent.policy.component import PolicyComponent
from podnet.agent.proxy.component import ProxyComponent

log = logging.getLogger("podnet.agent")


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
        runtime: RuntimeLike | None = None,
        sandboxes: SandboxesLike | None = None,
        bindings: RuntimeBindings | None = None,
        images_dir: Path | None = None,
        serve: bool = True,
    ) -> None:
        self.ctx = ctx
        self.network_required = network_required
        self.serve = serve
        self.runtime = runtime if runtime is not None else _default_runtime(ctx, images_dir)
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
            bindings=bindings,
            backoff_base=backoff_base,
            resolv_conf=ctx.resolv_conf,
        )
        self.node = NodeReporter(
            ctx.api,
            ctx.node_name,
            ctx.node_ip,
            ctx.kubelet_port,
            self.readiness,
            lease_duration=ctx.cluster.lease_duration_seconds,
            on_pod_cidr=lambda _cidr: self.pods.wake(),
        )

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
                async with asyncio.timeout(0.2):
                    await stop.wait()
            now = self.readiness().ready
            if now != last:
                last = now
                self.node.poke()

    async def run(self, stop: asyncio.Event) -> None:
        server = None
        if self.serve:
            server = _kubelet_server(self.runtime, self.pods, self.ctx.token)
            await server.start(self.ctx.node_ip, self.ctx.kubelet_port)
            port = getattr(server, "port", None) or self.ctx.kubelet_port
            log.info("kubelet endpoint on http://%s:%d", self.ctx.node_ip, port)
        try:
            await asyncio.gather(
                self.node.run(stop), self.pods.run(stop), self._watch_readiness(stop)
            )
        finally:
            if server is not None:
                await server.stop()


def _default_runtime(ctx: AgentContext, images_dir: Path | None) -> RuntimeLike:
    from podnet.agent.kubelet.runtime import Runtime
    from podnet.images.store import DEFAULT_ROOT, ImageStore

    runtime: RuntimeLike = Runtime(ctx.state_dir, ImageStore(images_dir or DEFAULT_ROOT))
    return runtime


def _kubelet_server(runtime: RuntimeLike, pods: PodManager, token: str) -> Any:
    from podnet.agent.kubelet.runtime import Runtime
    from podnet.agent.kubelet.server import KubeletServer

    if not isinstance(runtime, Runtime):
        raise TypeError("the kubelet endpoint serves exec and logs of the real runtime only")
    # `logs --previous` needs no second resolver: the runtime finds the previous attempt's
    # log from the current container id
    return KubeletServer(runtime, pods.resolve, token, netns=pods.netns_of)


def network_components(ctx: AgentContext) -> list[Component]:
    found: list[Component] = []
    if ctx.backend == "none":
        log.info("flannel: --backend none; pods reach only their own node")
    else:
        found.append(FlannelComponent(ctx))
    # NetworkPolicy shares the proxy's /metrics endpoint, and the userspace proxy asks it
    # before dialling (its sockets, not the kernel's DNAT, pick the endpoint there)
    policy = PolicyComponent(ctx)
    found.append(ProxyComponent(ctx, dial_gate=policy.gate, extra_metrics=(policy.metrics,)))
    found.append(policy)
    return found


async def run_agent(
    ctx: AgentContext,
    stop: asyncio.Event,
    *,
    backoff_base: float = DEFAULT_BACKOFF_BASE,
    images_dir: Path | None = None,
) -> None:
    """Run every component of this node until `stop` is set (or one of them fails)."""
    extras = network_components(ctx)
    network_required = any(c.name == "flannel" for c in extras)
    kubelet = KubeletComponent(
        ctx, network_required=network_required, backoff_base=backoff_base, images_dir=images_dir
    )
    components: list[Component] = [kubelet, *extras]
    log.info(
        "agent for node %s (%s) starting: %s",
        ctx.node_name,
        ctx.node_ip,
        ", ".join(c.name for c in components),
    )
    tasks = {asyncio.create_task(c.run(stop), name=c.name): c for c in components}
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for component_task, component in tasks.items():
            if component_task in done and component_task.exception() is not None:
                log.error("component %s failed: %s", component.name, component_task.exception())
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stopper.cancel()
        for task in tasks:
            task.cancel()
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        exc = failed[0].exception()
        assert exc is not None
        raise exc
    log.info("agent for node %s stopped; pods and kernel state left in place", ctx.node_name)
