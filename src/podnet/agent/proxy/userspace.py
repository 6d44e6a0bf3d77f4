"""userspace mode: the data path is a proxy socket per service port (the explainer's first
kube-proxy design).

What belongs here: `render_portal_rules` (pure: the nat/filter rules that send ClusterIP/NodePort
traffic to the proxy sockets) and `UserspaceProxier`, which turns the proxy state into portals
for the relay (`relay.py`: the sockets, the TCP/UDP relays and the balancer) and the rules
pointing at the ports the relay chose.

Design (kube-proxy.md §4, with three deliberate changes):
- Traffic from pods arrives through nat PREROUTING `-j REDIRECT --to-ports P`; traffic from the
  node itself through nat OUTPUT `-j DNAT --to-destination <nodeIP>:P` (REDIRECT does not work
  for locally generated packets to a non-local VIP). NodePorts get the same pair.
- Rules are rendered whole and loaded with one `iptables-restore --noflush` per sync instead of
  upstream's rule-by-rule `iptables -A/-D` (DESIGN.md contract 2).
- The sockets live in a relay process of their own when the agent gives a directory for it
  (`ProxyConfig.relay_dir`, set by the agent): an agent restart, even `kill -9`, neither refuses
  new connections nor cuts established ones (#19; why a process: `relay.py`). Without a
  directory (tests, benchmarks) the same relay runs in the caller's event loop.
- TCP: dial the chosen endpoint with timeouts 250 ms, 500 ms, 1 s, 2 s, moving to the next
  endpoint (and past a sticky one) on failure; then relay in the kernel: `splice` from each
  socket into a pipe of the connection's own and on into the other socket, so no byte is
  copied into Python; the event loop only reports readiness (`relay._Spliced`), back-pressure
  is the pipe filling up, and the control path (dialing, the gate) stays asyncio.
- UDP: one connected socket per client address towards its endpoint, replies sent back from
  the service socket; a session ends after `udp_idle_timeout` without traffic.
- A service port with no endpoints keeps its socket; a new connection is reset at once
  (SO_LINGER 0), so clients fail immediately instead of timing out.

Invariants: rules are kept on stop (the relay keeps the ports they point at); a full sync
after the relay was lost (it died) re-creates sockets on new ports and rewrites the rules.
Chains are ours by name (`KUBE-PORTALS-*`, `KUBE-NODEPORT-*`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.iptables import JumpRule
from podnet.agent.proxy.model import ServicePort, ServicePortName
from podnet.agent.proxy.modes import (
    ProxyKernel,
    SyncResult,
    delete_chains,
    ensure_jump_rules,
    remove_jump_rules,
)
from podnet.agent.proxy.relay import (
    UDP_IDLE_TIMEOUT,
    DialGate,
    LocalRelay,
    PortalSpec,
    Relay,
    RelayCore,
    RemoteRelay,
)
from podnet.agent.proxy.tracker import ProxyState
from podnet.kernel.rules import Iptables

log = logging.getLogger(__name__)

PORTALS_CONTAINER = "KUBE-PORTALS-CONTAINER"
PORTALS_HOST = "KUBE-PORTALS-HOST"
NODEPORT_CONTAINER = "KUBE-NODEPORT-CONTAINER"
NODEPORT_HOST = "KUBE-NODEPORT-HOST"
NODEPORT_NON_LOCAL = "KUBE-NODEPORT-NON-LOCAL"
NAT_CHAINS = (PORTALS_CONTAINER, PORTALS_HOST, NODEPORT_CONTAINER, NODEPORT_HOST)

_CLUSTER_IPS = "handle ClusterIPs; NOTE: this must be before the NodePort rules"
_NODEPORTS = "handle service NodePorts; NOTE: this must be the last rule in the chain"
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule(
        "nat", "PREROUTING", ("-m", "comment", "--comment", _CLUSTER_IPS, "-j", PORTALS_CONTAINER)
    ),
    JumpRule("nat", "OUTPUT", ("-m", "comment", "--comment", _CLUSTER_IPS, "-j", PORTALS_HOST)),
    JumpRule(
        "nat",
        "PREROUTING",
        (
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-m",
            "comment",
            "--comment",
            _NODEPORTS,
            "-j",
            NODEPORT_CONTAINER,
        ),
    ),
    JumpRule(
        "nat",
        "OUTPUT",
        (
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-m",
            "comment",
            "--comment",
            _NODEPORTS,
            "-j",
            NODEPORT_HOST,
        ),
    ),
    JumpRule(
        "filter",
        "INPUT",
        (
            "-m",
            "comment",
            "--comment",
            "Ensure that non-local NodePort traffic can flow",
            "-j",
            NODEPORT_NON_LOCAL,
        ),
    ),
)


# --- rules ------------------------------------------------------------------------------


def render_portal_rules(
    portals: Mapping[ServicePortName, tuple[ServicePort, int]], node_ip: str
) -> str:
    """iptables-restore input for all portals: (service port, proxy port) per name."""
    out = ["*filter", f":{NODEPORT_NON_LOCAL} - [0:0]"]
    for spn in sorted(portals):
        sp, proxy_port = portals[spn]
        if sp.node_port:
            out.append(
                f"-A {NODEPORT_NON_LOCAL} -m comment --comment {spn} -m {sp.protocol} "
                f"-p {sp.protocol} --dport {proxy_port} -j ACCEPT"
            )
    out += ["COMMIT", "*nat"] + [f":{c} - [0:0]" for c in NAT_CHAINS]
    for spn in sorted(portals):
        sp, proxy_port = portals[spn]
        match = f"-m comment --comment {spn} -m {sp.protocol} -p {sp.protocol}"
        for ip in (sp.cluster_ip, *sp.external_ips):
            out.append(
                f"-A {PORTALS_CONTAINER} {match} -d {ip}/32 --dport {sp.port} "
                f"-j REDIRECT --to-ports {proxy_port}"
            )
            out.append(
                f"-A {PORTALS_HOST} {match} -d {ip}/32 --dport {sp.port} "
                f"-j DNAT --to-destination {node_ip}:{proxy_port}"
            )
        if sp.node_port:
            out.append(
                f"-A {NODEPORT_CONTAINER} {match} --dport {sp.node_port} "
                f"-j REDIRECT --to-ports {proxy_port}"
            )
            out.append(
                f"-A {NODEPORT_HOST} {match} --dport {sp.node_port} "
                f"-j DNAT --to-destination {node_ip}:{proxy_port}"
            )
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def cleanup_userspace_leftovers(runner: Iptables) -> None:
    remove_jump_rules(runner, JUMP_RULES)
    delete_chains(runner, "nat", lambda c: c in NAT_CHAINS)
    delete_chains(runner, "filter", lambda c: c == NODEPORT_NON_LOCAL)


class UserspaceProxier:
    mode = "userspace"

    def __init__(
        self,
        cfg: ProxyConfig,
        kernel: ProxyKernel,
        udp_idle_timeout: float = UDP_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cfg.node_ips:
            raise ValueError(
                "proxy mode 'userspace' needs the node's address (--node-ip): traffic from the "
                "node itself is sent to <node-ip>:<proxy port>"
            )
        self.cfg = cfg
        self.iptables: Iptables = kernel.iptables
        self.node_ip = cfg.node_ips[0]
        self.relay: Relay = (
            RemoteRelay(Path(cfg.relay_dir), on_reset=self._relay_lost)
            if cfg.relay_dir
            else LocalRelay(RelayCore(udp_idle_timeout, clock))
        )
        self.rules_known = False
        self.gate: DialGate | None = None  # NetworkPolicy's say on each dial, when it runs
        self.on_reset: Callable[[], None] | None = None  # asks the owner for a full sync

    def _relay_lost(self) -> None:
        self.rules_known = False
        if self.on_reset is not None:
            self.on_reset()

    @staticmethod
    def portal_key(spn: ServicePortName) -> str:
        return f"{spn}/{spn.protocol}"

    async def sync(self, state: ProxyState, changed: frozenset[str] | None) -> SyncResult:
        services = state.service_port_map()
        endpoints = state.endpoints_map()
        wanted: dict[ServicePortName, ServicePort] = {}
        specs = []
        for spn, sp in sorted(services.items()):
            if sp.protocol == "sctp":
                continue  # no SCTP relay in userspace mode
            ready = [e for e in endpoints.get(spn, ()) if e.ready] or [
                e for e in endpoints.get(spn, ()) if e.serving and e.terminating
            ]
            wanted[spn] = sp
            specs.append(
                PortalSpec(
                    self.portal_key(spn),
                    sp.protocol,
                    tuple(e.address for e in ready),
                    sp.affinity_seconds,
                )
            )
        try:
            ports = await self.relay.apply(specs, self.gate)
        except Exception:
            self.rules_known = False
            raise
        text = render_portal_rules(
            {spn: (sp, ports[self.portal_key(spn)]) for spn, sp in wanted.items()}, self.node_ip
        )
        full = changed is None or not self.rules_known

        def apply() -> None:
            self.iptables.restore(text)
            if full:
                ensure_jump_rules(self.iptables, JUMP_RULES)

        try:
            await asyncio.to_thread(apply)
        except Exception:
            self.rules_known = False
            raise
        self.rules_known = True
        return SyncResult(full, len(text), len(state.services))

    async def cleanup(self) -> None:
        await self.relay.shutdown()
        await asyncio.to_thread(cleanup_userspace_leftovers, self.iptables)

    async def stop(self) -> None:
        """The agent stops: a relay process keeps the sockets and connections; an in-process
        relay ends with us."""
        await self.relay.close()
