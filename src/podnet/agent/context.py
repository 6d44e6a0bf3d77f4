"""What every part of the node agent is given, and the shape every part has.

The agent (`podnet agent`) builds one `AgentContext` and runs one `Component` per concern:
kubelet (pods), flannel (overlay), proxy (Services), policy (NetworkPolicy). Components talk
to the cluster only through `ctx.api` and to the kernel only through `podnet.kernel`; they never
call each other except through the API (e.g. the kubelet waits for `node.spec.podCIDR`, which
the server's node IPAM sets) — with one exception: the userspace proxy is itself a data path,
so it asks NetworkPolicy (`DialGate`) before each dial, as the kernel would for a DNAT.

Paths: in a lab the node is a network namespace sharing the host's filesystem, so everything a
node writes lives under `state_dir` (the lab's `nodes/<node>/`); on a real host `state_dir` is
`/var/lib/podnet` and `run_dir` is `/run`. Components derive paths from these two only.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from podnet.api.interface import Api
from podnet.config import ClusterConfig


@dataclass(slots=True)
class AgentContext:
    api: Api
    node_name: str
    node_ip: str  # the underlay (InternalIP) address
    state_dir: Path  # persistent: IPAM, container state, images cache pointers
    run_dir: Path  # volatile: subnet.env (run_dir/flannel/subnet.env), sockets, pid files
    # every network namespace this agent creates (pod sandboxes) starts with this marker, so
    # `podnet down` and tests can remove exactly what is theirs. It must be this agent's alone
    # among the agents sharing the machine's /run/netns ("podnet-<lab>-<node>-" in a lab): the
    # kubelet treats every namespace under it that no pod claims as its own orphan.
    netns_prefix: str = "podnet-"
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    backend: str = "vxlan"  # flannel backend: vxlan | udp | host-gw
    proxy_mode: str = "iptables"  # userspace | iptables | nftables | ipvs
    proxy_fallback: bool = False  # ipvs unavailable -> iptables instead of refusing
    kubelet_port: int = 10250
    # the kubelet endpoint's TLS (`kubelet.authn.server_tls`: serving certificate from the
    # cluster CA, client certificates checked against it); None: no endpoint is served
    kubelet_tls: ssl.SSLContext | None = None
    metrics_port: int = 10249  # kube-proxy's metrics port; the agent serves /metrics there
    # kube-proxy's default --metrics-bind-address: the node's loopback, so neither pods nor
    # other nodes can read the metrics (#19)
    metrics_address: str = "127.0.0.1"
    underlay_ifname: str = "eth0"
    resolv_conf: Path | None = Path("/etc/resolv.conf")  # the node's (kubelet --resolv-conf)


class Component(Protocol):
    """One agent concern with its own sync loop (DESIGN.md contract 3): a `SyncRunner` from
    `agent/sync.py`. A new component is built in `agent/main.py` beside the others."""

    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; return after cleaning up what must not outlive the agent.

        Kernel state that traffic depends on (routes, rules, pod namespaces) is *left in place*
        on stop so an agent restart does not interrupt traffic; the next start reconciles it.
        """
        ...
