"""The path planner: where the first packet of a new connection goes, and its reply.

What belongs here: `plan_trace(snapshot, probe, endpoint=None)` — a pure function of a
captured `Snapshot` — which walks the packet the way the kernels of the namespaces on its way
would handle it and returns a `Trace`: every hop (namespace, device, kernel object) of the
forward packet and of the reply, the netfilter chains and rules met at each hook, the
load-balancing candidates and the one followed, and where and why the packet is dropped.
`resolve.py` turns the user's FROM and TO into a `Probe`.

The walk, per namespace (`_Walk`):

    send (a socket)  → route lookup (rules → table → longest prefix) → OUTPUT hook → re-route
                       after DNAT → POSTROUTING hook → transmit
    receive(dev)     → bridge port? fdb: the bridge's own MAC goes up to IP, another is
                       bridged (br_netfilter runs the IP hooks) → PREROUTING → route lookup →
                       local: INPUT → socket | forward: ip_forward, FORWARD, POSTROUTING →
                       transmit
    transmit(dev)    → veth: the peer in its namespace · bridge: neighbour, fdb, port · vxlan:
                       neighbour + fdb give the VTEP, the outer UDP packet is sent from the
                       node · tun (flannel0): the datapath process sends it by UDP · a node's
                       eth0: the host's underlay bridge, then the other node's eth0
    deliver          → vxlan/udp port: decapsulate into flannel.1 / flannel0 · a userspace
                       proxy port: the proxy dials an endpoint (a second leg) · a pod's socket
    ipvs             → a new connection to a virtual server of the namespace's IPVS table (ipvs
                       mode, on a node whose kernel has IP_VS: a VM node) is taken at LOCAL_IN
                       (after the filter INPUT chains) or LOCAL_OUT (after nat OUTPUT): the
                       scheduler picks a real server, masq rewrites the destination, the packet
                       goes on through OUTPUT and POSTROUTING (see `trace/ipvs.py`)

A VM node's eth0 (virtio) is joined to the host's underlay bridge by its tap
(`NodeLayout.tap`), where a namespace node's eth0 is a veth.

The reply starts at the destination with the addresses swapped and crosses the same
namespaces; conntrack undoes each namespace's NAT (SNAT before routing, DNAT after it) and no
nat chain sees it. Random choices (iptables `statistic`, nft `numgen`, the userspace proxy's
round robin, IPVS's scheduler) list every candidate with its chance and follow `endpoint`
when it is one of them, else the first.

Invariants: pure and deterministic; a hop is added only for what the snapshot shows (a
namespace not captured is named as such); at most `MAX_HOPS` hops per direction, so a routing
loop ends with a clear drop instead of recursion.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from podnet.agent.proxy.ipvs import VirtualServer
from podnet.agent.proxy.trace_nftables import NftModel
from podnet.kernel.inventory import Inventory, LinkInfo, RouteInfo
from podnet.trace.ipvs import (
    IPVS_LOCAL_IN,
    IPVS_LOCAL_OUT,
    IpvsTable,
    describe,
    how_chosen,
    ipvsadm_lines,
    schedule,
)
from podnet.trace.netfilter import Candidate, ChainRun, HookResult, Netfilter, Packet
from podnet.trace.snapshot import Snapshot

MAX_HOPS = 120


@dataclass(frozen=True, slots=True)
class Header:
    proto: str  # tcp, udp, icmp
    src: str
    dst: str
    sport: int | None = None  # None: chosen by the kernel (ephemeral / random-fully)
    dport: int | None = None

    def __str__(self) -> str:
        if self.proto == "icmp":
            return f"icmp {self.src} → {self.dst}"
        sport = "*" if self.sport is None else str(self.sport)
        dport = "*" if self.dport is None else str(self.dport)
        return f"{self.proto} {self.src}:{sport} → {self.dst}:{dport}"

    def reversed(self) -> Header:
        if self.proto == "icmp":  # the echo identifier answers unchanged
            return Header(self.proto, self.dst, self.src, self.sport, self.dport)
        return Header(self.proto, self.dst, self.src, self.dport, self.sport)


@dataclass(frozen=True, slots=True)
class Probe:
    """What to trace: a packet leaving `netns` (a pod's or a node's)."""

    netns: str
    header: Header  # src may be "" (the route's source address is used)
    source: str  # "pod default/alpha (10.244.1.4 on node1)"
    target: str  # "service default/hostnames:http (10.111.69.60:80)"
    notes: tuple[str, ...] = ()  # what resolving TO found (DNS answers, ...)


@dataclass(frozen=True, slots=True)
class Hop:
    place: str  # "pod default/alpha", "node node1", "host", "datapath"
    netns: str
    kind: str  # send, route, netfilter, veth, bridge, neighbour, encap, underlay, decap, tun,
    #            proxy, ipvs, deliver, drop
    what: str  # one line for people
    objects: tuple[str, ...] = ()  # the kernel objects involved, as `ip`/`bridge`/`nft` name them
    device: str | None = None
    packet: Header | None = None
    hook: str | None = None
    runs: tuple[ChainRun, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    outer: Header | None = None  # the encapsulating header (overlay hops)
    leg: int = 0  # 0: the probe's connection; 1: the userspace proxy's dial to the endpoint
    tunnel: bool = False  # about the overlay's encapsulating packet, not the probe itself


@dataclass(frozen=True, slots=True)
class Trace:
    probe: Probe
    forward: tuple[Hop, ...]
    reply: tuple[Hop, ...]
    outcome: str  # delivered, dropped, rejected, refused (no listener), left (the cluster)
    reason: str
    endpoint: str | None  # the DNAT / proxy target followed
    candidates: tuple[Candidate, ...]
    notes: tuple[str, ...]

    @property
    def path(self) -> tuple[str, ...]:
        """The places the first packet went through, in order (the underlay's host left out)."""
        places: list[str] = []
        for hop in self.forward:
            if hop.place != "host" and (not places or places[-1] != hop.place):
                places.append(hop.place)
        return tuple(places)


class _Stop(Exception):
    """The packet's walk ends here (delivered or dropped); the hops so far are the path."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass(slots=True)
class _Binding:
    """The NAT one connection got in one namespace, to translate its reply back."""

    orig_src: tuple[str, int | None] | None = None  # before SNAT / masquerade
    orig_dst: tuple[str, int | None] | None = None  # before DNAT / REDIRECT
    by_ipvs: bool = False  # the destination was IPVS's (it translates the reply, not the nat core)


@dataclass(slots=True)
class _Flow:
    """One direction of the trace: its hops, and per connection leg its NATs."""

    state: str  # new (the first packet), established (the reply)
    hops: list[Hop] = field(default_factory=list)
    leg: int = 0  # 0: the probe's connection; 1: the userspace proxy's dial
    bindings: dict[tuple[int, str], _Binding] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    endpoint: str | None = None
    proxied: dict[str, str] = field(default_factory=dict)  # netns -> the REDIRECT rule
    arrivals: list[tuple[str, Header]] = field(default_factory=list)  # (netns, header) per leg
    outcome: str = ""
    reason: str = ""


class EndpointError(ValueError):
    """`--endpoint` names none of the endpoints a choice on the path offers (the message lists
    them): the trace would follow another one and look as if it followed the one asked for."""


class _Walk:
    def __init__(self, snap: Snapshot, endpoint: str | None) -> None:
        self.snap = snap
        self.endpoint = endpoint
        self.offered: list[str] = []  # every candidate a choice on the path offered
        self.matched = False  # whether `endpoint` was one of them
        self.notes: list[str] = []
        self.forward: _Flow | None = None  # set while the reply is walked
        self._nf: dict[str, Netfilter] = {}
        self._ipvs: dict[str, IpvsTable] = {}
        self._inner: list[tuple[Packet, str]] = []  # packets inside the tunnel being walked
        # (netns, bridge index, MAC): what bridges learned during the walk (a frame's source
        # MAC on its way in, an ARP reply's sender)
        self.learned: set[tuple[str, int, str]] = set()
        self.tunnels: set[str] = set()  # udp tunnel flows the walk started ("src:p dst:p")
        self._owners = self._index_owners()

    # ---- the snapshot, indexed ---------------------------------------------------------

    def _index_owners(self) -> dict[str, str]:
        """netns -> "pod ns/name" / "node nodeN" / "host"."""
        owners = {n.netns: f"node {n.name}" for n in self.snap.nodes}
        owners[""] = "host"
        for pod in self.snap.objects("pods"):
            meta = pod["metadata"]
            name = self.snap.pod_netns(pod)
            if name is not None and not (pod.get("spec") or {}).get("hostNetwork"):
                owners[name] = f"pod {meta.get('namespace')}/{meta.get('name')}"
        return owners

    def place(self, netns: str) -> str:
        return self._owners.get(netns, f"netns {netns}")

    def inv(self, netns: str) -> Inventory:
        state = self.snap.namespaces.get(netns)
        if state is None:
            raise _Stop("unknown", f"the state of {self.place(netns)} ({netns}) was not captured")
        return state.inventory

    def nf(self, netns: str) -> Netfilter:
        found = self._nf.get(netns)
        if found is None:
            found = self._nf[netns] = Netfilter(self.snap.namespaces[netns])
        return found

    def node_of(self, netns: str) -> str | None:
        for node in self.snap.nodes:
            if netns == node.netns or netns.startswith(f"{node.netns}-"):
                return node.netns
        return None

    def hop(self, flow: _Flow, netns: str, kind: str, what: str, **extra: Any) -> None:
        if len(flow.hops) >= MAX_HOPS:
            raise _Stop("dropped", f"more than {MAX_HOPS} hops: a routing loop?")
        hop = Hop(self.place(netns), netns, kind, what, leg=flow.leg, tunnel=bool(self._inner))
        flow.hops.append(replace(hop, **extra))

    # ---- routing -----------------------------------------------------------------------

    def lookup(self, inv: Inventory, dst: str) -> RouteInfo | None:
        """The kernel's FIB lookup: policy rules in order, the longest prefix in each table."""
        addr = ipaddress.IPv4Address(dst)
        tables = [r.table for r in inv.rules if r.action == 1] or [255, 254]
        for table in tables:
            best: RouteInfo | None = None
            for route in inv.routes:
                if route.table != table:
                    continue
                net = ipaddress.IPv4Network(route.dst, strict=False)
                if addr not in net:
                    continue
                if best is None:
                    best = route
                    continue
                have = ipaddress.IPv4Network(best.dst, strict=False).prefixlen
                if net.prefixlen > have or (net.prefixlen == have and route.metric < best.metric):
                    best = route
            if best is not None:
                return best
        return None

    def route_text(self, inv: Inventory, route: RouteInfo) -> str:
        dev = inv.link(route.oif)
        parts = [] if route.type == "unicast" else [route.type]
        parts.append("default" if route.dst == "0.0.0.0/0" else route.dst)
        if route.gateway:
            parts.append(f"via {route.gateway}")
        if dev is not None:
            parts.append(f"dev {dev.name}")
        if route.onlink:
            parts.append("onlink")
        if route.src:
            parts.append(f"src {route.src}")
        parts.append(f"table {route.table_name}")
        return " ".join(parts)

    def first_address(self, inv: Inventory, index: int | None) -> str | None:
        found = inv.addresses_of(index) if index is not None else []
        return found[0].address if found else None

    def route(self, flow: _Flow, netns: str, pkt: Packet, forwarding: bool) -> RouteInfo:
        inv = self.inv(netns)
        found = self.lookup(inv, pkt.dst)
        head = _header(pkt)
        if found is None:
            self.hop(flow, netns, "route", f"no route to {pkt.dst}", packet=head)
            raise _Stop("dropped", f"{self.place(netns)} has no route to {pkt.dst}")
        text = self.route_text(inv, found)
        if found.type in ("blackhole", "unreachable", "prohibit"):
            self.hop(flow, netns, "route", f"{found.type} route", objects=(text,), packet=head)
            raise _Stop("dropped", f"{self.place(netns)} routes {pkt.dst} to {found.type}")
        if found.type == "local":
            what = f"{pkt.dst} is a local address"
        else:
            dev = inv.link(found.oif)
            via = f" via {found.gateway}" if found.gateway else ""
            what = f"to {pkt.dst}{via} out {dev.name if dev else found.oif}"
        self.hop(flow, netns, "route", what, objects=(text,), packet=head)
        if forwarding and found.type != "local" and not inv.ip_forward:
            raise _Stop("dropped", f"{self.place(netns)} does not forward (ip_forward=0)")
        return found

    # ---- netfilter ---------------------------------------------------------------------

    def netfilter(
        self,
        flow: _Flow,
        netns: str,
        hook: str,
        pkt: Packet,
        nat: bool = True,
        reroute: Callable[[Packet], Packet] | None = None,
        before: int | None = None,
    ) -> HookResult:
        nf = self.nf(netns)
        result = nf.run(hook, pkt, None, nat, reroute, before)
        candidates = result.candidates
        if candidates:
            pick = self.pick(candidates)
            chosen = frozenset({(pick.chain, pick.index, pick.slot)})
            result = nf.run(hook, pkt, chosen, nat, reroute, before)
            flow.candidates, flow.endpoint = list(candidates), pick.target
        if result.runs:
            self.hop(
                flow, netns, "netfilter", _hook_summary(hook, result), hook=hook,
                runs=result.runs, packet=_header(pkt), device=pkt.iif or pkt.oif,
                candidates=candidates,
            )  # fmt: skip
        for table in result.unknown:
            self.notes.append(f"{self.place(netns)}: podnet trace does not read table {table}")
        if result.verdict in ("drop", "reject"):
            step = result.dropped_by
            where = f"{step.table} {step.chain}" if step else hook
            rule = f" `{step.rule}`" if step and step.rule else ""
            outcome = "rejected" if result.verdict == "reject" else "dropped"
            why = ""
            if step is not None and step.table == POLICY_TABLE:
                why = policy_reason(self.snap, result.packet)
            raise _Stop(
                outcome, f"{outcome} in {hook} of {self.place(netns)} by {where}{rule}{why}"
            )
        if flow.state == "new" and not pkt.outer and (result.dnat or result.redirect):
            binding = flow.bindings.setdefault((flow.leg, netns), _Binding())
            binding.orig_dst = (pkt.dst, pkt.dport)
            # the userspace proxy's portals: REDIRECT from pods, DNAT to the node's own
            # address from the node itself; the socket there dials an endpoint
            portals = [
                s.rule
                for r in result.runs
                for s in r.steps
                if s.chain.startswith(USERSPACE_CHAINS) and s.verdict == "accept"
            ]
            if portals:
                flow.proxied[netns] = portals[-1]
        return result

    def pick(self, candidates: tuple[Candidate, ...]) -> Candidate:
        self.offered += [c.target for c in candidates]
        if self.endpoint is not None:
            for c in candidates:
                if self.endpoint in (c.target, c.target.rpartition(":")[0]):
                    self.matched = True
                    return c
        return candidates[0]

    def nat_out(self, flow: _Flow, netns: str, pkt: Packet, result: HookResult) -> Packet:
        """SNAT / masquerade decided at POSTROUTING: `pkt` before the hook, the result's
        packet after it (the nat core rewrote its source)."""
        new = result.packet
        if not (result.masquerade or result.snat):
            return new
        if not pkt.outer:
            flow.bindings.setdefault((flow.leg, netns), _Binding()).orig_src = (pkt.src, pkt.sport)
        how = (
            f"masqueraded to {new.src} (source port chosen at random)"
            if result.masquerade
            else f"SNAT to {new.src}"
        )
        self.hop(flow, netns, "nat", how, packet=_header(new))
        return new

    # ---- the reply's conntrack ---------------------------------------------------------

    def _binding(self, flow: _Flow, netns: str, pkt: Packet) -> _Binding | None:
        if flow.state == "new" or self.forward is None or pkt.outer:
            return None
        return self.forward.bindings.get((flow.leg, netns))

    def undo_snat(self, flow: _Flow, netns: str, pkt: Packet) -> Packet:
        """Before routing, a reply gets back the address its connection was SNATed from."""
        binding = self._binding(flow, netns, pkt)
        if binding is None or binding.orig_src is None:
            return pkt
        dst, dport = binding.orig_src
        new = replace(pkt, dst=dst, dport=dport)
        port = f":{dport}" if dport is not None else ""
        self.hop(
            flow, netns, "nat", f"conntrack undoes the SNAT: destination back to {dst}{port}",
            packet=_header(pkt),
        )  # fmt: skip
        return new

    def undo_dnat(self, flow: _Flow, netns: str, pkt: Packet) -> Packet:
        """After routing, a reply gets back the address its connection was DNATed from."""
        binding = self._binding(flow, netns, pkt)
        if binding is None or binding.orig_dst is None:
            return pkt
        src, sport = binding.orig_dst
        new = replace(pkt, src=src, sport=sport)
        port = f":{sport}" if sport is not None else ""
        who = "IPVS translates the reply back" if binding.by_ipvs else "conntrack undoes the DNAT"
        self.hop(
            flow, netns, "nat", f"{who}: source back to {src}{port}", packet=_header(pkt),
        )  # fmt: skip
        return new

    # ---- IPVS --------------------------------------------------------------------------

    def virtual_server(self, flow: _Flow, netns: str, pkt: Packet) -> VirtualServer | None:
        """The IPVS virtual server a new connection's first packet is for, if any."""
        state = self.snap.namespaces.get(netns)
        if flow.state != "new" or pkt.outer or state is None or not state.ipvs:
            return None
        table = self._ipvs.get(netns)
        if table is None:
            table = self._ipvs[netns] = IpvsTable.parse(state.ipvs)
        return table.lookup(pkt.proto, pkt.dst, pkt.dport)

    def ipvs(self, flow: _Flow, netns: str, pkt: Packet, vs: VirtualServer, hook: str) -> None:
        """IPVS schedules the connection to a real server of `vs` and sends it there (masq):
        the route to it, then OUTPUT (no nat chain: the connection's DNAT is decided) and
        POSTROUTING."""
        candidates = schedule(vs)
        where = self.place(netns)
        objects = ipvsadm_lines(vs)
        if not candidates:
            self.hop(
                flow, netns, "ipvs",
                f"IPVS {describe(vs)} has no real server: the kernel answers ICMP port "
                "unreachable",
                objects=objects, packet=_header(pkt), hook=hook,
            )  # fmt: skip
            raise _Stop(
                "rejected", f"IPVS virtual server {describe(vs)} in {where} has no real server"
            )
        pick = self.pick(candidates)
        flow.candidates, flow.endpoint = list(candidates), pick.target
        ip, _, port = pick.target.rpartition(":")
        sent = replace(pkt, dst=ip, dport=int(port), iif=None)
        self.hop(
            flow, netns, "ipvs",
            f"IPVS {describe(vs)} ({how_chosen(vs, pkt.src)}) → real server {pick.target}, "
            "masq: destination rewritten",
            objects=objects, packet=_header(sent), hook=hook, candidates=candidates,
        )  # fmt: skip
        binding = flow.bindings.setdefault((flow.leg, netns), _Binding())
        binding.orig_dst, binding.by_ipvs = (pkt.dst, pkt.dport), True
        inv = self.inv(netns)
        found = self.route(flow, netns, sent, forwarding=False)
        sent = replace(sent, oif=_name(inv, found.oif))
        sent = self.netfilter(flow, netns, "output", sent, nat=False).packet
        self.post(flow, netns, sent, found)

    # ---- a namespace's IP layer --------------------------------------------------------

    def send(
        self,
        flow: _Flow,
        netns: str,
        head: Header,
        mark: int = 0,
        state: str | None = None,
        outer: bool = False,
        bound: bool = False,
    ) -> None:
        """A socket in `netns` sends the packet: route, OUTPUT, POSTROUTING, out."""
        inv = self.inv(netns)
        pkt = Packet(
            head.proto, head.src, head.dst, head.sport, head.dport, state or flow.state, mark,
            outer=outer, bound=bound,
        )  # fmt: skip
        pkt = self.undo_snat(flow, netns, pkt)
        found = self.route(flow, netns, pkt, forwarding=False)
        if not pkt.src:
            pkt = replace(pkt, src=found.src or self.first_address(inv, found.oif) or "0.0.0.0")
        pkt = replace(pkt, oif=_name(inv, found.oif))

        def reroute(translated: Packet) -> Packet:  # the kernel's lookup right after a DNAT
            again = self.lookup(inv, translated.dst)
            return replace(translated, oif=_name(inv, again.oif) if again else None)

        vs = self.virtual_server(flow, netns, pkt)
        before = IPVS_LOCAL_OUT if vs is not None else None
        result = self.netfilter(flow, netns, "output", pkt, reroute=reroute, before=before)
        pkt = result.packet
        if vs is not None:
            self.ipvs(flow, netns, pkt, vs, "output")
            return
        if result.dnat or result.redirect:  # the route the translated packet takes, shown
            found = self.route(flow, netns, pkt, forwarding=False)
        self.post(flow, netns, pkt, found)

    def post(self, flow: _Flow, netns: str, pkt: Packet, found: RouteInfo) -> None:
        """POSTROUTING, then out of the route's device (or, to a local address, back in)."""
        result = self.netfilter(flow, netns, "postrouting", pkt)
        pkt = self.nat_out(flow, netns, pkt, result)
        pkt = self.undo_dnat(flow, netns, pkt)
        if found.type == "local":
            # over loopback: PREROUTING again (its nat chains skip a connection already
            # translated on the way out), then INPUT
            looped = replace(pkt, iif="lo", oif=None)
            looped = self.netfilter(flow, netns, "prerouting", looped, nat=False).packet
            self.local_in(flow, netns, looped, undone=True)
            return
        self.transmit(flow, netns, found.oif, found.gateway or pkt.dst, pkt)

    def receive(
        self,
        flow: _Flow,
        netns: str,
        dev: LinkInfo,
        pkt: Packet,
        mac: str | None,
        src_mac: str | None = None,
    ) -> None:
        """A frame arrives on `dev`: a bridge port hands it to its bridge, else IP takes it."""
        inv = self.inv(netns)
        bridge = inv.link(dev.master) if dev.master is not None else None
        if bridge is not None and bridge.kind == "bridge":
            if src_mac:  # the bridge learns where the sender is
                self.learned.add((netns, bridge.index, src_mac))
            self.bridge_in(flow, netns, bridge, dev, pkt, mac)
        else:
            self.ip_in(flow, netns, dev, pkt)

    def ip_in(self, flow: _Flow, netns: str, dev: LinkInfo, pkt: Packet) -> None:
        """PREROUTING, the route lookup, then INPUT or FORWARD and POSTROUTING."""
        inv = self.inv(netns)
        pkt = replace(pkt, iif=dev.name, oif=None)
        pkt = self.undo_snat(flow, netns, pkt)
        result = self.netfilter(flow, netns, "prerouting", pkt)
        pkt = result.packet
        if result.redirect:
            self.hop(
                flow, netns, "nat", f"REDIRECT to {pkt.dst}:{result.redirect}", packet=_header(pkt)
            )
        found = self.route(flow, netns, pkt, forwarding=True)
        if found.type == "local":
            self.local_in(flow, netns, pkt)
            return
        pkt = replace(pkt, oif=_name(inv, found.oif))
        result = self.netfilter(flow, netns, "forward", pkt)
        self.post(flow, netns, result.packet, found)

    def local_in(self, flow: _Flow, netns: str, pkt: Packet, undone: bool = False) -> None:
        vs = None if undone else self.virtual_server(flow, netns, pkt)
        before = IPVS_LOCAL_IN if vs is not None else None
        result = self.netfilter(flow, netns, "input", pkt, before=before)
        if vs is not None:
            self.ipvs(flow, netns, result.packet, vs, "input")
            return
        pkt = result.packet if undone else self.undo_dnat(flow, netns, result.packet)
        self.deliver(flow, netns, pkt)

    # ---- links -------------------------------------------------------------------------

    def bridge_in(
        self,
        flow: _Flow,
        netns: str,
        bridge: LinkInfo,
        port: LinkInfo,
        pkt: Packet,
        mac: str | None,
    ) -> None:
        inv = self.inv(netns)
        if mac == bridge.mac:
            self.hop(
                flow, netns, "bridge",
                f"{port.name} → {bridge.name}: the bridge's own MAC, up to IP",
                objects=(f"fdb {mac} dev {bridge.name} master {bridge.name} permanent",),
                device=bridge.name, packet=_header(pkt),
            )  # fmt: skip
            self.ip_in(flow, netns, bridge, pkt)
            return
        out, fdb, flooded = self.fdb_port(netns, bridge, mac)
        self.hop(
            flow, netns, "bridge",
            f"{port.name} → {bridge.name} → {out.name if out else '?'}: bridged",
            objects=(fdb,), device=bridge.name, packet=_header(pkt),
        )  # fmt: skip
        if out is None:
            raise _Stop(
                "dropped", f"no port of {bridge.name} in {self.place(netns)} leads to {mac}"
            )
        if inv.bridge_nf_call_iptables:  # br_netfilter: bridged IPv4 crosses the IP hooks
            pkt = replace(pkt, iif=bridge.name, oif=None)
            pkt = self.undo_snat(flow, netns, pkt)
            pkt = self.netfilter(flow, netns, "prerouting", pkt).packet
            pkt = replace(pkt, oif=bridge.name)
            # a flooded frame is forwarded once per port: the hooks run for each copy
            copies = [p for p in inv.links if p.master == bridge.index and p.index != port.index]
            passed = pkt
            for n, _ in enumerate(copies if flooded else [out]):
                copy = self.netfilter(flow, netns, "forward", pkt, nat=n == 0).packet
                result = self.netfilter(flow, netns, "postrouting", copy, nat=n == 0)
                if n == 0:
                    passed = self.nat_out(flow, netns, copy, result)
            pkt = self.undo_dnat(flow, netns, passed)
        self.link_out(flow, netns, out, pkt, mac)

    def fdb_port(
        self, netns: str, bridge: LinkInfo, mac: str | None
    ) -> tuple[LinkInfo | None, str, bool]:
        """The bridge port a frame for `mac` leaves by, the fdb entry that says so, and
        whether the bridge floods it (no entry, and no ARP exchange taught it one)."""
        inv = self.inv(netns)
        for entry in inv.fdb:
            if entry.master == bridge.index and entry.mac == mac and not entry.local:
                port = inv.link(entry.index)
                if port is not None:
                    return port, f"fdb {mac} dev {port.name} master {bridge.name}", False
        for port in inv.links:
            if port.master == bridge.index:
                peer = self.peer(netns, port)
                if peer is None or peer[1].mac != mac:
                    continue
                if (netns, bridge.index, mac) in self.learned:
                    return port, f"{mac} on {port.name}: the bridge learned it just now", False
                return (
                    port,
                    f"{mac} not in {bridge.name}'s fdb: flooded to every port, "
                    f"{port.name}'s far end takes it",
                    True,
                )
        return None, f"{mac} not in {bridge.name}'s fdb and no port answers", True

    def peer(self, netns: str, dev: LinkInfo) -> tuple[str, LinkInfo] | None:
        """The far end of veth `dev` (or of a VM node's eth0 and its tap): (namespace, link)."""
        for vm in self.snap.nodes:
            if vm.vm and netns == "" and dev.name == vm.tap:  # the host's end: the guest's eth0
                state = self.snap.namespaces.get(vm.netns)
                eth0 = state.inventory.link_named("eth0") if state else None
                return (vm.netns, eth0) if eth0 is not None else None
            if vm.vm and netns == vm.netns and dev.name == "eth0":  # the guest's end: the tap
                host = self.snap.namespaces.get("")
                tap = host.inventory.link_named(vm.tap) if host else None
                return ("", tap) if tap is not None else None
        if dev.peer_index is None:
            return None
        if netns == "":  # a port of the underlay bridge: some node's eth0
            for n in self.snap.nodes:
                state = self.snap.namespaces.get(n.netns)
                eth0 = state.inventory.link_named("eth0") if state else None
                if eth0 is not None and eth0.peer_index == dev.index:
                    return n.netns, eth0
            return None
        node = self.node_of(netns)
        if netns != node and node is not None:  # a pod's eth0: a veth of its node
            found = self.snap.namespaces.get(node)
            link = found.inventory.link(dev.peer_index) if found else None
            return (node, link) if link is not None else None
        if dev.master is None:  # the node's eth0: the host's underlay port
            host = self.snap.namespaces.get("")
            link = host.inventory.link(dev.peer_index) if host else None
            return ("", link) if link is not None else None
        for other, state in self.snap.namespaces.items():  # a bridge port: one of its pods
            if other.startswith(f"{netns}-"):
                eth0 = state.inventory.link_named("eth0")
                if eth0 is not None and eth0.peer_index == dev.index:
                    return other, eth0
        return None

    def neighbour(self, netns: str, dev: LinkInfo, nexthop: str) -> tuple[str | None, str]:
        """The MAC for `nexthop` on `dev`, and how the kernel knows it."""
        inv = self.inv(netns)
        for n in inv.neighbours:
            if n.index == dev.index and n.ip == nexthop and n.mac and "FAILED" not in n.state:
                return n.mac, f"neigh {n.ip} lladdr {n.mac} dev {dev.name} {n.state}"
        if dev.kind != "vxlan":  # a nolearning vxlan device has nobody to ask
            segment = self.segment(netns, dev)
            for other, link in segment:
                state = self.snap.namespaces[other].inventory
                if any(a.address == nexthop for a in state.addresses_of(link.index)) and link.mac:
                    # the ARP reply crosses the segment's bridges: they learn the MAC
                    self.learned.update(
                        (where, b.index, link.mac) for where, b in segment if b.kind == "bridge"
                    )
                    return link.mac, (
                        f"{nexthop} is not in the neighbour table: ARP finds {link.mac} "
                        f"({link.name} of {self.place(other)})"
                    )
        return None, f"no neighbour entry for {nexthop} on {dev.name}"

    def segment(self, netns: str, dev: LinkInfo) -> list[tuple[str, LinkInfo]]:
        """Every link on the Ethernet segment `dev` is on (through veths and bridges)."""
        seen: set[tuple[str, int]] = set()
        todo = [(netns, dev)]
        out: list[tuple[str, LinkInfo]] = []
        while todo:
            where, link = todo.pop()
            if (where, link.index) in seen or where not in self.snap.namespaces:
                continue
            seen.add((where, link.index))
            out.append((where, link))
            inv = self.snap.namespaces[where].inventory
            if link.kind == "bridge":
                todo += [(where, p) for p in inv.links if p.master == link.index]
            if link.master is not None and (bridge := inv.link(link.master)) is not None:
                todo.append((where, bridge))
            if link.kind != "bridge" and (far := self.peer(where, link)) is not None:
                todo.append(far)
        return out

    def transmit(self, flow: _Flow, netns: str, oif: int | None, nexthop: str, pkt: Packet) -> None:
        inv = self.inv(netns)
        dev = inv.link(oif)
        if dev is None:
            raise _Stop(
                "dropped", f"the route's device (index {oif}) is gone in {self.place(netns)}"
            )
        if dev.kind == "tun":
            self.tun_out(flow, netns, dev, pkt)
            return
        mac, how = self.neighbour(netns, dev, nexthop)
        head = _header(pkt)
        if mac is None:
            self.hop(flow, netns, "neighbour", how, objects=(how,), device=dev.name, packet=head)
            reason = f"{self.place(netns)}: {how}"
            if dev.kind == "vxlan":
                reason += (
                    " (flannel writes one per remote node; a nolearning vxlan device cannot ARP)"
                )
            raise _Stop("dropped", reason)
        if dev.kind == "vxlan":
            self.vxlan_out(flow, netns, dev, pkt, mac, how)
            return
        if dev.kind == "bridge":
            port, fdb, _ = self.fdb_port(netns, dev, mac)
            where = port.name if port else "?"
            self.hop(
                flow, netns, "bridge", f"out {dev.name}, port {where}", objects=(how, fdb),
                device=dev.name, packet=head,
            )  # fmt: skip
            if port is None:
                raise _Stop(
                    "dropped", f"no port of {dev.name} in {self.place(netns)} leads to {mac}"
                )
            self.link_out(flow, netns, port, pkt, mac)
            return
        self.hop(
            flow,
            netns,
            "neighbour",
            f"next hop {nexthop} is {mac}",
            objects=(how,),
            device=dev.name,
            packet=head,
        )
        self.link_out(flow, netns, dev, pkt, mac)

    def link_out(
        self, flow: _Flow, netns: str, dev: LinkInfo, pkt: Packet, mac: str | None
    ) -> None:
        """The frame leaves by veth `dev` and arrives on its peer (the mark stays behind)."""
        far = self.peer(netns, dev)
        if far is None:
            raise _Stop(
                "unknown", f"where {dev.name} of {self.place(netns)} leads was not captured"
            )
        other, link = far
        pkt = replace(pkt, mark=0, iif=None, oif=None)
        if other == "":
            self.underlay(flow, netns, dev, link, pkt, mac)
            return
        self.hop(
            flow, netns, "veth", f"{dev.name} → {link.name} of {self.place(other)}",
            objects=(f"veth {dev.name} peer {link.name} in {other}",), device=dev.name,
            packet=_header(pkt),
        )  # fmt: skip
        self.receive(flow, other, link, pkt, mac, dev.mac)

    def underlay(
        self, flow: _Flow, netns: str, dev: LinkInfo, port: LinkInfo, pkt: Packet, mac: str | None
    ) -> None:
        """A node's eth0 → the host's underlay bridge → another node's eth0 (or the host)."""
        host = self.inv("")
        bridge = host.link(port.master)
        if bridge is None:
            raise _Stop("unknown", f"{port.name} in the host is not on the underlay bridge")
        head = _header(pkt)
        if mac == bridge.mac:
            self.hop(
                flow,
                netns,
                "underlay",
                f"{dev.name} → {bridge.name}: to the host itself",
                device=dev.name,
                packet=head,
            )
            raise _Stop("left", self.at_host(host, pkt))
        out, fdb, _ = self.fdb_port("", bridge, mac)
        far = self.peer("", out) if out is not None else None
        if far is None or out is None:
            stranger = self.foreign_node(pkt.dst)
            if stranger is not None:
                self.hop(
                    flow, netns, "underlay", f"{dev.name} → {bridge.name} → node {stranger}",
                    device=dev.name, packet=head,
                )  # fmt: skip
                raise _Stop(
                    "unknown",
                    f"{pkt.dst} is node {stranger}, which this lab did not make (a machine "
                    "joined with `podnet join`): its kernel is not read, so the walk ends here",
                )
            raise _Stop("dropped", f"no port of the underlay bridge {bridge.name} leads to {mac}")
        other, eth0 = far
        vm = self.snap.node_by_netns(netns)
        joined = (
            f"VM {dev.name} (virtio) ↔ tap {port.name} in the host"
            if vm is not None and vm.vm
            else f"veth {dev.name} peer {port.name} in the host"
        )
        self.hop(
            flow, netns, "underlay",
            f"{dev.name} → host {port.name} → {bridge.name} → {out.name} → "
            f"{eth0.name} of {self.place(other)}",
            objects=(joined, fdb), device=dev.name, packet=head,
        )  # fmt: skip
        self.receive(flow, other, eth0, pkt, mac, dev.mac)

    def foreign_node(self, address: str) -> str | None:
        """The name of the Node at underlay `address` that is not one of the lab's nodes."""
        ours = {n.name for n in self.snap.nodes}
        for node in self.snap.objects("nodes"):
            name = str((node.get("metadata") or {}).get("name") or "")
            addresses = (node.get("status") or {}).get("addresses") or []
            if name not in ours and any(a.get("address") == address for a in addresses):
                return name
        return None

    def at_host(self, host: Inventory, pkt: Packet) -> str:
        """Why the walk ends at the host: the packet is for the lab's API server there (the
        `kubernetes` Service's endpoint), for another address of the host, or for beyond."""
        mine = {str(a.address) for a in host.addresses} | {self.snap.host_ip}
        if pkt.dst not in mine:
            return f"the packet leaves the cluster through the host ({self.snap.host_ip})"
        api = {(ip, port) for ip, _, port in self.snap.ready_endpoints("default", "kubernetes")}
        if (pkt.dst, pkt.dport) in api:
            return (
                f"the packet reaches the host at {pkt.dst}:{pkt.dport}, where the lab's API "
                "server listens (the endpoint of Service default/kubernetes); podnet traces "
                "inside the nodes, not the host"
            )
        return f"the packet reaches the host itself ({pkt.dst}); podnet traces no further"

    # ---- overlays ----------------------------------------------------------------------

    def vxlan_out(
        self, flow: _Flow, netns: str, dev: LinkInfo, pkt: Packet, mac: str, how: str
    ) -> None:
        inv = self.inv(netns)
        fdb = next((f for f in inv.fdb if f.index == dev.index and f.mac == mac and f.dst), None)
        if fdb is None or fdb.dst is None:
            self.hop(
                flow,
                netns,
                "encap",
                f"no fdb entry for {mac} on {dev.name}",
                objects=(how,),
                device=dev.name,
                packet=_header(pkt),
            )
            raise _Stop(
                "dropped", f"{self.place(netns)}: {dev.name} has no fdb entry for {mac}, so no VTEP"
            )
        local = dev.vxlan_local or self.first_address(inv, dev.vxlan_underlay) or ""
        outer = Header("udp", local, fdb.dst, None, dev.vxlan_port)
        self.hop(
            flow, netns, "encap", f"{dev.name} encapsulates (VNI {dev.vni}): outer {outer}",
            objects=(how, f"fdb {mac} dev {dev.name} dst {fdb.dst} self permanent",
                     f"vxlan {dev.name} id {dev.vni} local {local} dstport {dev.vxlan_port}"),
            device=dev.name, packet=_header(pkt), outer=outer,
        )  # fmt: skip
        self.carry(flow, netns, outer, pkt, "vxlan")

    def tun_out(self, flow: _Flow, netns: str, dev: LinkInfo, pkt: Packet) -> None:
        """udp backend: the datapath process reads flannel0 and sends the packet by UDP."""
        lease = self.udp_lease(pkt.dst)
        head = _header(pkt)
        if lease is None:
            self.hop(
                flow,
                netns,
                "tun",
                f"{dev.name}: no node's subnet holds {pkt.dst}",
                device=dev.name,
                packet=head,
            )
            raise _Stop(
                "dropped", f"the udp datapath of {self.place(netns)} has no lease for {pkt.dst}"
            )
        subnet, remote = lease
        node_ip = next((n.ip for n in self.snap.nodes if n.netns == netns), "")
        outer = Header("udp", node_ip, remote, UDP_PORT, UDP_PORT)
        self.hop(
            flow, netns, "tun",
            f"{dev.name} → the flannel udp datapath process: {subnet} is at {remote}; "
            f"outer {outer}",
            objects=(f"tun {dev.name}", f"datapath route {subnet} → {remote}:{UDP_PORT}"),
            device=dev.name, packet=head, outer=outer,
        )  # fmt: skip
        self.carry(flow, netns, outer, pkt, "tun")

    def udp_lease(self, dst: str) -> tuple[str, str] | None:
        """The node subnet holding `dst` and that node's public IP (the datapath's table)."""
        best: tuple[int, str, str] | None = None
        for node in self.snap.objects("nodes"):
            cidr = (node.get("spec") or {}).get("podCIDR")
            public = ((node.get("metadata") or {}).get("annotations") or {}).get(PUBLIC_IP)
            if not cidr or not public:
                continue
            net = ipaddress.IPv4Network(cidr)
            if ipaddress.IPv4Address(dst) in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, cidr, public)
        return (best[1], best[2]) if best else None

    def carry(self, flow: _Flow, netns: str, outer: Header, inner: Packet, kind: str) -> None:
        """Send the encapsulating packet; `deliver` on the far node unpacks `inner`.

        The outer packet is a flow of its own: a vxlan source port is a hash of the inner
        flow — a TCP socket's random hash, UDP's ports — so a new connection's packets start
        new outer flows in both directions, but ICMP hashes only its addresses, so an ICMP
        packet's outer flow is known to conntrack while any ICMP flow between the same two
        addresses is (the snapshot's `icmp_flows`); the udp backend's fixed ports share one
        flow per node pair, new only if conntrack has none (`tunnel_flows`)."""
        state = "new"
        bound = False  # conntrack knows the flow one way only: still new, its NAT decided
        if kind == "vxlan" and inner.proto == "icmp":
            pairs = self.snap.namespaces[netns].icmp_flows
            bound = bool({f"{inner.src} {inner.dst}", f"{inner.dst} {inner.src}"} & set(pairs))
            if bound:
                self.notes.append(
                    f"{self.place(netns)}: conntrack already knows the overlay flow of ICMP "
                    f"between {inner.src} and {inner.dst} (vxlan hashes only ICMP's addresses "
                    "into the outer port), so no nat chain sees its packets"
                )
        if kind == "tun":
            flows = {*self.snap.namespaces[netns].tunnel_flows, *self.tunnels}
            there = f"{outer.src}:{outer.sport} {outer.dst}:{outer.dport}"
            back = f"{outer.dst}:{outer.dport} {outer.src}:{outer.sport}"
            state = "established" if {there, back} & flows else "new"
            self.tunnels.add(there)  # the reply's packet will find this flow
        self._inner.append((inner, kind))
        try:
            # vxlan encapsulates within the namespace: the skb keeps its mark (a policy's or
            # kube-proxy's); the udp datapath sends a new packet from its socket
            mark = inner.mark if kind == "vxlan" else 0
            self.send(flow, netns, outer, mark=mark, state=state, outer=True, bound=bound)
        finally:
            self._inner.pop()

    def tunnel(self, inv: Inventory, pkt: Packet) -> tuple[LinkInfo, Packet] | None:
        """The overlay device a UDP packet arriving here is for, and what it carries."""
        if not self._inner or pkt.proto != "udp":
            return None
        inner, kind = self._inner[-1]
        for link in inv.links:
            if kind == "vxlan" and link.kind == "vxlan" and link.vxlan_port == pkt.dport:
                return link, inner
            if kind == "tun" and link.kind == "tun" and pkt.dport == UDP_PORT:
                return link, inner
        return None

    # ---- arrival -----------------------------------------------------------------------

    def deliver(self, flow: _Flow, netns: str, pkt: Packet) -> None:
        inv = self.inv(netns)
        head = _header(pkt)
        tunnel = self.tunnel(inv, pkt)
        if tunnel is not None:
            dev, inner = tunnel
            if dev.kind == "vxlan":
                what = f"{dev.name} decapsulates (VNI {dev.vni}): inner {_header(inner)}"
                objects: tuple[str, ...] = (f"udp socket 0.0.0.0:{pkt.dport} of {dev.name}",)
            else:
                what = f"the udp datapath process writes the inner packet into {dev.name}"
                objects = (f"udp socket {pkt.dst}:{UDP_PORT} of the datapath", f"tun {dev.name}")
            self.hop(
                flow,
                netns,
                "decap",
                what,
                objects=objects,
                device=dev.name,
                packet=_header(inner),
                outer=head,
            )
            saved = self._inner.pop()
            try:
                self.ip_in(
                    flow, netns, dev, replace(inner, mark=0, iif=None, oif=None, dnatted=False)
                )
            finally:
                self._inner.append(saved)
            return
        if flow.state != "new":
            flow.arrivals.append((netns, head))
            self.hop(
                flow, netns, "deliver", "back at the socket that sent the first packet", packet=head
            )
            raise _Stop("delivered", f"the reply reaches {self.place(netns)}")
        rule = flow.proxied.pop(netns, None)
        if rule is not None:
            self.proxy(flow, netns, pkt, rule)
            return
        flow.arrivals.append((netns, head))
        if pkt.proto == "icmp":
            self.hop(flow, netns, "deliver", "the kernel answers the echo request", packet=head)
            raise _Stop("delivered", f"{self.place(netns)} answers the ICMP echo")
        listener = _listener(inv, pkt)
        if listener is None:
            answer = "RST" if pkt.proto == "tcp" else "ICMP port unreachable"
            self.hop(
                flow,
                netns,
                "deliver",
                f"no socket on {pkt.proto} port {pkt.dport}: the kernel answers {answer}",
                packet=head,
            )
            raise _Stop(
                "refused", f"nothing in {self.place(netns)} listens on {pkt.proto} port {pkt.dport}"
            )
        self.hop(
            flow,
            netns,
            "deliver",
            f"accepted by the {pkt.proto} socket on {listener}",
            objects=(f"{pkt.proto} socket {listener}",),
            packet=head,
        )
        raise _Stop("delivered", f"{self.place(netns)} accepts it on {listener}")

    def proxy(self, flow: _Flow, netns: str, pkt: Packet, rule: str) -> None:
        """The userspace proxy accepts the connection and dials an endpoint: a second leg."""
        inv = self.inv(netns)
        head = _header(pkt)
        flow.arrivals.append((netns, head))
        listener = _listener(inv, pkt) or f"port {pkt.dport}"
        service = _comment(rule)
        endpoints = self.service_endpoints(service)
        if not endpoints:
            self.hop(
                flow,
                netns,
                "proxy",
                f"the userspace proxy for {service} has no endpoint: it resets the connection",
                packet=head,
            )
            raise _Stop("refused", f"{service} has no endpoints")
        share = 1 / len(endpoints)
        candidates = tuple(
            Candidate(t, share, "userspace proxy", service, 0, i) for i, t in enumerate(endpoints)
        )
        pick = self.pick(candidates)
        flow.candidates, flow.endpoint = list(candidates), pick.target
        self.hop(
            flow, netns, "proxy",
            f"the userspace proxy's socket {listener} ({service}) dials {pick.target}",
            objects=(f"tcp socket {listener} of the node agent",), packet=head,
            candidates=candidates,
        )  # fmt: skip
        ip, _, port = pick.target.rpartition(":")
        flow.leg += 1
        mark = _proxy_mark(self.nf(netns).models.get(POLICY_TABLE))
        self.send(flow, netns, Header(pkt.proto, "", ip, None, int(port)), mark=mark)

    def service_endpoints(self, service: str) -> list[str]:
        """The ready endpoints ("ip:port") of `ns/name:port-name`."""
        ns, _, rest = service.partition("/")
        name, _, port_name = rest.partition(":")
        found = {
            f"{ip}:{port}"
            for ip, named, port in self.snap.ready_endpoints(ns, name)
            if named == port_name
        }
        return sorted(found, key=_addr_key)


UDP_PORT = 8285
USERSPACE_CHAINS = ("KUBE-PORTALS-", "KUBE-NODEPORT-CONTAINER", "KUBE-NODEPORT-HOST")
PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"
POLICY_TABLE = "inet podnet-policy"


def _name(inv: Inventory, index: int | None) -> str | None:
    link = inv.link(index)
    return link.name if link else None


def policy_reason(snap: Snapshot, pkt: Packet) -> str:
    """Why the NetworkPolicy table dropped `pkt`, in the API's terms: the pod isolated in the
    direction that refused it and the policies isolating it (none of whose rules admits the
    packet), from `PolicyView.verdict` — the spec the rendered table is tested against.
    Empty when the snapshot holds no policies (an older snapshot file) or the verdict allows
    the packet (a table the agent has not yet caught up with)."""
    from podnet.agent.policy.model import build_view

    policies = snap.objects("networkpolicies")
    if not policies:
        return ""
    view = build_view(snap.objects("pods"), snap.objects("namespaces"), policies)
    verdict = view.verdict(pkt.src, pkt.dst, pkt.proto, pkt.dport or 0)
    if verdict.allowed or not verdict.policies:
        return ""
    pod = view.by_ip.get(pkt.dst if verdict.denied_by == "ingress" else pkt.src)
    if pod is None:
        return ""
    peer = f"from {pkt.src}" if verdict.denied_by == "ingress" else f"to {pkt.dst}"
    what = f"{pkt.proto}/{pkt.dport}" if pkt.dport is not None else pkt.proto
    many = len(verdict.policies) > 1
    return (
        f": pod {pod.namespace}/{pod.name} is isolated for {verdict.denied_by} by "
        f"NetworkPolic{'ies' if many else 'y'} {', '.join(verdict.policies)} and none of "
        f"{'their' if many else 'its'} rules admits {what} {peer}"
    )


def _header(pkt: Packet) -> Header:
    return Header(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)


def _hook_summary(hook: str, result: HookResult) -> str:
    effect = ""
    if result.verdict != "accept":
        effect = f": {result.verdict.upper()}"
    elif result.dnat:
        effect = f": DNAT to {result.dnat}"
    elif result.redirect:
        effect = f": REDIRECT to port {result.redirect}"
    elif result.masquerade:
        effect = ": masquerade"
    elif result.snat:
        effect = f": SNAT to {result.snat}"
    return f"{hook.upper()}{effect}"


def _listener(inv: Inventory, pkt: Packet) -> str | None:
    for sock in inv.sockets:
        if (
            sock.protocol == pkt.proto
            and sock.port == pkt.dport
            and sock.address in ("0.0.0.0", pkt.dst)
        ):
            return f"{sock.address}:{sock.port}"
    return None


def _comment(rule: str) -> str:
    words = rule.split()
    if "--comment" in words:
        return words[words.index("--comment") + 1].strip('"')
    return "the service"


def _proxy_mark(policy: NftModel | None) -> int:
    """The mark the userspace proxy gives its dials when NetworkPolicy gates them."""
    for rule in policy.chains.get("proxy-source", ()) if policy else ():
        words = rule.split()
        if "&" in words:
            return int(words[words.index("&") + 1], 16)
    return 0


def _addr_key(target: str) -> tuple[int, int]:
    ip, _, port = target.rpartition(":")
    return int(ipaddress.IPv4Address(ip)), int(port or 0)


def plan_trace(snap: Snapshot, probe: Probe, endpoint: str | None = None) -> Trace:
    """Trace `probe` through the snapshot's kernels (see the module header). `endpoint`
    ("ip:port" or "ip") is followed wherever a random choice could send the packet there;
    `EndpointError` when the choices on the path offer it nowhere."""
    walk = _Walk(snap, endpoint)
    forward = _Flow("new")
    try:
        walk.send(forward, probe.netns, probe.header)
    except _Stop as stop:
        forward.outcome, forward.reason = stop.outcome, stop.reason
    if endpoint is not None and walk.offered and not walk.matched:
        raise EndpointError(
            f"--endpoint {endpoint} is none of the endpoints this packet can be sent to: "
            f"{', '.join(dict.fromkeys(walk.offered))}"
        )
    reply = _Flow("established")
    if forward.outcome in ("delivered", "refused"):
        walk.forward = forward
        # each leg answers in turn, the last one first (the proxy's dial, then the client's)
        for leg, (netns, head) in reversed(list(enumerate(forward.arrivals))):
            reply.leg = leg
            answer = head.reversed()
            if forward.outcome == "refused" and head.proto == "udp":
                # ICMP port unreachable: conntrack calls it RELATED and translates it back
                reply.state = "related"
                answer = Header("icmp", head.dst, head.src)
            try:
                walk.send(reply, netns, answer)
            except _Stop as stop:
                reply.outcome, reply.reason = stop.outcome, stop.reason
            if reply.outcome != "delivered":
                break
    return Trace(
        probe=probe,
        forward=tuple(forward.hops),
        reply=tuple(reply.hops),
        outcome=forward.outcome,
        reason=forward.reason,
        endpoint=forward.endpoint,
        candidates=tuple(forward.candidates),
        notes=tuple(dict.fromkeys([*probe.notes, *walk.notes])),
    )
