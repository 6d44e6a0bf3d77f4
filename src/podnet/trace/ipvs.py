"""IPVS as the trace planner sees it: a node's captured table and what it does with a packet.

What belongs here: `IpvsTable` — the virtual servers of a namespace's `ipvsadm-save -n` (read
with the proxier's own `parse_ipvsadm_save`) — its `lookup` of a packet's virtual server,
`schedule`, the real servers a new connection may go to with the chance the scheduler gives
each and how it decides, and the text the planner shows for them (`describe`, `how_chosen`).
`plan.py` calls it where the kernel calls IPVS.

What the kernel does (net/netfilter/ipvs/ip_vs_core.c, ip_vs_xmit.c), and the planner with it:
- IPVS takes a new connection's first packet at LOCAL_IN, priority 99 (`IPVS_LOCAL_IN`: after
  the filter INPUT chains, before nat INPUT) when its destination is local — a ClusterIP bound
  on kube-ipvs0, a node address for a NodePort — and at LOCAL_OUT, priority -98
  (`IPVS_LOCAL_OUT`: after nat OUTPUT, before filter OUTPUT) for the node's own packets;
- masq forwarding rewrites the destination to the real server and sends the packet on through
  LOCAL_OUT and POSTROUTING; the connection's destination NAT is decided by then, so only
  POSTROUTING's SNAT / masquerade (kube-proxy's mark, the KUBE-LOOP-BACK hairpin) still binds;
- a real server of weight 0 (a draining endpoint) gets no new connection; with no real server
  left, the virtual server (persistent or not) answers ICMP port unreachable and drops the
  packet (`ip_vs_leave`);
- the reply is translated back by IPVS itself (FORWARD, priority 100, or LOCAL_IN), not by the
  nat core.

Chances: rr spreads new connections evenly, wrr by weight; sh hashes the source address (one
real server for every connection from it; which one depends on the kernel's hash table, so
each is listed at an even share); persistence (ClientIP affinity) keeps a client on the real
server its first connection got; the least-connection schedulers (lc, wlc, sed, nq) depend on
live counters, and their candidates too are listed at even shares.

Invariants: pure; fwmark virtual services are not read (kube-proxy makes none).
"""

from __future__ import annotations

from dataclasses import dataclass

from podnet.agent.proxy.ipvs import VirtualServer, parse_ipvsadm_save
from podnet.trace.netfilter import Candidate

IPVS_LOCAL_IN = 99  # NF_IP_PRI_NAT_SRC - 1
IPVS_LOCAL_OUT = -98  # NF_IP_PRI_NAT_DST + 2
TABLE = "ipvs"
BY_CONNECTIONS = ("lc", "wlc", "sed", "nq", "lblc", "lblcr")


def describe(vs: VirtualServer) -> str:
    """How `ipvsadm -Ln` names a virtual server: `TCP 10.96.0.10:80 rr persistent 10800`."""
    text = f"{vs.protocol.upper()} {vs.address}:{vs.port} {vs.scheduler}"
    return text + (f" persistent {vs.persistence}" if vs.persistence else "")


@dataclass(frozen=True, slots=True)
class IpvsTable:
    virtual_servers: tuple[VirtualServer, ...]

    @classmethod
    def parse(cls, text: str) -> IpvsTable:
        """The table in `ipvsadm-save -n` output."""
        return cls(parse_ipvsadm_save(text))

    def lookup(self, proto: str, dst: str, dport: int | None) -> VirtualServer | None:
        """The virtual server a packet to `dst:dport` belongs to, if any."""
        return next(
            (vs for vs in self.virtual_servers if vs.key == (proto, dst, dport)),
            None,
        )


def schedule(vs: VirtualServer) -> tuple[Candidate, ...]:
    """The real servers a new connection to `vs` may go to, each with its chance (weight-0
    real servers, draining, get none); empty when none is left."""
    usable = [r for r in vs.real_servers if r.weight > 0]
    total = sum(r.weight for r in usable)
    chain = describe(vs)
    out = []
    for index, real in enumerate(vs.real_servers):
        if real.weight <= 0:
            continue
        share = real.weight / total if vs.scheduler == "wrr" else 1 / len(usable)
        out.append(Candidate(f"{real.address}:{real.port}", share, TABLE, chain, index))
    return tuple(out)


def how_chosen(vs: VirtualServer, src: str) -> str:
    """Why the scheduler picks the real server it picks, in a few words."""
    if vs.scheduler == "rr":
        how = "round robin: the next real server in turn"
    elif vs.scheduler == "wrr":
        how = "weighted round robin: in turn, by weight"
    elif vs.scheduler == "sh":
        how = f"source hashing: a hash of {src} picks one, the same for each of its connections"
    elif vs.scheduler == "dh":
        how = "destination hashing: a hash of the virtual address picks one"
    elif vs.scheduler in BY_CONNECTIONS:
        how = f"{vs.scheduler}: the one with the fewest connections now"
    else:
        how = f"scheduler {vs.scheduler}"
    if vs.persistence:
        how += (
            f"; persistent {vs.persistence} s (ClientIP affinity): a template keeps {src} on the "
            "real server its first connection got"
        )
    return how


def ipvsadm_lines(vs: VirtualServer) -> tuple[str, ...]:
    """The virtual server and its real servers as `ipvsadm -Ln` lists them."""
    return (
        describe(vs),
        *(f"-> {r.address}:{r.port} Masq weight {r.weight}" for r in vs.real_servers),
    )
