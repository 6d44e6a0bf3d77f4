"""The node agent: builds the components of one node and runs them until told to stop.

What belongs here: choosing the components — the kubelet (`agent/kubelet/component.py`),
flannel unless `--backend none` (`agent/flannel/component.py`), the proxy
(`agent/proxy/component.py`) and NetworkPolicy (`agent/policy/component.py`) — and
`run_agent`, which runs them all and stops them together.

Invariants:
- Stopping the agent leaves pods, their namespaces and all kernel state in place; a new agent on
  the same state dir adopts them without restarting healthy containers.
- The node is Ready only when the pod loop has synced and, if flannel runs, flannel has written
  `run_dir/flannel/subnet.env`.

The C heap's free pages go back to the kernel every few seconds (`agent/trim.py`).
With `PODNET_MEMORY_REPORT=PATH` in the environment the agent appends `podnet.memreport`'s
lines to PATH: per holder (`track_memory`), the bytes each component's local copies reach.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from podnet import memreport
from podnet.agent.context import AgentContext, Component
from podnet.agent.flannel.component import FlannelComponent
from podnet.agent.kubelet.component import KubeletComponent
from podnet.agent.kubelet.pods import DEFAULT_BACKOFF_BASE
from podnet.agent.policy.component import PolicyComponent
from podnet.agent.proxy.component import ProxyComponent
from podnet.agent.trim import trim_periodically

log = logging.getLogger("podnet.agent")


def network_components(ctx: AgentContext) -> list[Component]:
    found: list[Component] = []
    if ctx.backend == "none":
        log.info("flannel: --backend none; pods reach only their own node")
    else:
        found.append(FlannelComponent(ctx))
    # NetworkPolicy shares the proxy's /metrics endpoint, and the userspace proxy asks it
    # before dialling (its sockets, not the kernel's DNAT, pick the endpoint there)
    policy = PolicyComponent(ctx)
    found.append(
        ProxyComponent(
            ctx,
            dial_gate=policy.gate,
            extra_metrics=(policy.metrics,),
            relay_dir=ctx.run_dir / "proxy-relay",  # userspace mode's sockets outlive the agent
        )
    )
    found.append(policy)
    return found


def track_memory(components: list[Component]) -> None:
    """Name each component's holders for the memory report (an object reached from two
    holders counts under the first listed); then each component whole, for what is left."""
    by_name = {c.name: c for c in components}
    holders: dict[str, list[tuple[str, Any]]] = {
        "proxy": [
            ("proxy: rendered rules", lambda c: getattr(c.proxier, "fragments", None)),
            ("proxy: trackers", lambda c: c.state),
            ("proxy: objects kept", lambda c: c._known),
        ],
        "policy": [
            ("policy: parsed", lambda c: c.parsed),
            ("policy: objects kept", lambda c: c.objects),
            ("policy: view and table", lambda c: (c.view, c.table, c.planner)),
        ],
        "flannel": [("flannel: nodes", lambda c: c.nodes)],
        "kubelet": [
            ("kubelet: Services", lambda c: c.pods.services.by_namespace),
            ("kubelet: pods", lambda c: (c.pods.desired, c.pods.records)),
        ],
    }
    for name, parts in holders.items():
        if name in by_name:
            for label, part in parts:
                memreport.track(label, by_name[name], part)
    for component in components:
        memreport.track(f"{component.name}: the rest", component)


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
        ctx,
        network_required=network_required,
        backoff_base=backoff_base,
        images_dir=images_dir,
        serve=ctx.kubelet_tls is not None,  # the endpoint is TLS only
    )
    components: list[Component] = [kubelet, *extras]
    log.info(
        "agent for node %s (%s) starting: %s",
        ctx.node_name,
        ctx.node_ip,
        ", ".join(c.name for c in components),
    )
    tasks = {asyncio.create_task(c.run(stop), name=c.name): c for c in components}
    trimmer = asyncio.create_task(trim_periodically(stop), name="malloc-trim")
    report: asyncio.Task[None] | None = None
    if memreport.enabled():  # a debugging aid: its failure is logged, the agent goes on
        track_memory(components)
        report = asyncio.create_task(memreport.run(stop, f"agent {ctx.node_name}"))
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
        trimmer.cancel()
        if report is not None:
            report.cancel()
        for task in tasks:
            task.cancel()
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        exc = failed[0].exception()
        assert exc is not None
        raise exc
    log.info("agent for node %s stopped; pods and kernel state left in place", ctx.node_name)
