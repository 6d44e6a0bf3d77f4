"""`podnet trace --verify`: a real probe, traced by the kernels, compared with the prediction.

What belongs here: `verify_trace(snapshot, probe, endpoint, timeout)` — the one part of
`podnet trace` that touches the lab — and the pure halves it is built from: `trace_rules`
(which packets to mark in which namespace), `group_calls` and `classify` (the kernel's trace
events → base chain calls of the probe, its reply, the overlay's packets, or noise),
`compare` (predicted against observed, hook by hook) and `changed_rules` (a rule the kernel
ran that the snapshot lacks: the rules changed under the probe, and the verification says so).

How a probe is traced:
1. Plan the probe for every endpoint a random choice could pick; from those paths, derive per
   namespace the headers the probe, its reply and the overlay packets carrying them can have.
2. In each namespace on those paths, add table `ip podnet-trace-<random>`: base chains at
   prerouting and output, priority -350 (before raw, conntrack and NAT), whose rules match
   exactly those headers (TCP: the SYN one way, SYN-ACK or RST back; an overlay packet: by the
   inner header at its offset in the UDP payload) and jump to a chain named after what they
   found (`fwd0` the probe, `rep0` its reply, `fwd1`/`rep1` the userspace proxy's dial,
   `fwdtun`/`reptun` the overlay) that does `meta nftrace set 1`. The kernel resets the mark
   at every veth and tunnel, so each namespace marks again on entry.
3. Listen to each namespace's trace events (`kernel.nftrace.TraceReader`), send the probe
   from the source with a real socket (a random source port), collect until the probe's fate
   is known (`_collect`): its socket got the answer — every traced packet before it has
   reported already, its events wait on the sockets — or, on a path through the userspace
   proxy (which dials, or resets, after the kernel accepted), the answer and then `SETTLE`
   seconds without an event; when the prediction is a drop, a rule's drop of a traced packet
   and `SETTLE` seconds without an event (the probe's socket, still waiting, is aborted);
   else the timeout.
4. Always — also on an error, SIGINT or SIGTERM — delete every table added (a signal that
   arrives while a table is being added or deleted waits until that `nft -f` is done).
5. Classify the events: the probe by its IP ID (learned from the source's own event, and kept
   by every hop), its reply by its 5-tuple (the reverse of one the probe had), tunnel packets
   by the chain that marked them; re-plan for the endpoint the kernel picked; compare each
   namespace's base chain calls (table, chain, every rule matched and its verdict, the packet's
   addresses) with the prediction's.

A VM node's kernel is inside its guest: the probe tables and the trace listener work on this
host's namespaces only, so a probe whose possible paths cross a VM node (or its pods) is not
sent; `verify_trace` raises `NotVerifiable` with the prediction and the reason, and `podnet
trace --verify` shows the prediction with that reason instead of a comparison.

Invariants: only tables named `podnet-trace-*` are created, and only in the lab's node and pod
namespaces; nothing is left behind; the prediction compared is computed from a snapshot taken
before the probe, for the endpoint the kernel chose.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from types import FrameType

import dns.message
import dns.rdatatype

from podnet.kernel import netns as netns_ops
from podnet.kernel.nftrace import Header as SeenHeader
from podnet.kernel.nftrace import TraceEvent, TraceReader
from podnet.kernel.rules import NftRunner
from podnet.trace.listing import ListedTable, parse_listing
from podnet.trace.netfilter import TRACE_TABLE_PREFIX
from podnet.trace.plan import Header, Hop, Probe, Trace, plan_trace
from podnet.trace.snapshot import Snapshot

PRIORITY = -350  # before raw (-300), conntrack (-200) and NAT (-100)
SETTLE = 0.3  # seconds without a new event that end a collection the answer cannot end
VXLAN_INNER = 30  # bytes from the UDP header to the inner IPv4 header: 8 UDP + 8 VXLAN + 14
UDP_TUNNEL_INNER = 8  # flannel udp: the raw IPv4 packet right after the UDP header
TAGS = {
    ("forward", 0, False): "fwd0",
    ("forward", 1, False): "fwd1",
    ("reply", 0, False): "rep0",
    ("reply", 1, False): "rep1",
    ("forward", 0, True): "fwdtun",
    ("reply", 0, True): "reptun",
}
LABELS = {
    "fwd0": "the probe",
    "fwd1": "the proxy's dial",
    "rep0": "the reply",
    "rep1": "the endpoint's reply to the proxy",
    "fwdtun": "the overlay packet carrying it",
    "reptun": "the overlay packet carrying the reply",
}


def tag_of(direction: str, hop: Hop) -> str:
    return TAGS[(direction, 0 if hop.tunnel else hop.leg, hop.tunnel)]


# ---- which packets to mark ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    """One rule of the probe's table: in `netns`, packets like `header` (wrapped in `outer`
    when it is an overlay packet) are marked and tagged `tag`."""

    netns: str
    tag: str
    header: Header
    outer: Header | None = None
    tunnel: str = ""  # vxlan or udp, when `outer` is set
    refused: bool = False  # nothing listens: the answer is the kernel's RST


def _hex(ip: str) -> str:
    return f"0x{int(ipaddress.IPv4Address(ip)):08x}"


def _inner_matches(inner: Header, offset: int, reply: bool, refused: bool) -> list[str]:
    """Raw payload matches on the inner IPv4 header at `offset` bytes after the UDP header."""
    bits = offset * 8
    proto = {"tcp": 6, "udp": 17, "icmp": 1}[inner.proto]
    out = [f"@th,{bits + 72},8 {proto}"]
    if inner.src:
        out.append(f"@th,{bits + 96},32 {_hex(inner.src)}")
    out.append(f"@th,{bits + 128},32 {_hex(inner.dst)}")
    if inner.proto in ("tcp", "udp"):
        if inner.sport is not None:
            out.append(f"@th,{bits + 160},16 {inner.sport}")
        if inner.dport is not None:
            out.append(f"@th,{bits + 176},16 {inner.dport}")
    if inner.proto == "tcp":
        flags = f"@th,{bits + 264},8"
        if not reply:
            out.append(f"{flags} & 0x12 == 0x02")
        else:
            out.append(f"{flags} & 0x04 == 0x04" if refused else f"{flags} & 0x12 == 0x12")
    return out


def _tcp_flags(reply: bool, refused: bool) -> str:
    """The probe's SYN; back, the SYN-ACK of a socket that accepted it, or the kernel's RST
    when nothing listens (a proxy that accepts and then resets sends both: the first counts)."""
    if not reply:
        return "tcp flags & (syn | ack) == syn"
    return "tcp flags & rst == rst" if refused else "tcp flags & (syn | ack) == syn | ack"


def _matches(header: Header, reply: bool, refused: bool = False) -> list[str]:
    out = [f"ip protocol {header.proto}"]
    if header.src:
        out.append(f"ip saddr {header.src}")
    out.append(f"ip daddr {header.dst}")
    if header.proto in ("tcp", "udp"):
        if header.sport is not None:
            out.append(f"th sport {header.sport}")
        if header.dport is not None:
            out.append(f"th dport {header.dport}")
    if header.proto == "tcp":
        out.append(_tcp_flags(reply, refused))
    if header.proto == "icmp":
        out.append(
            "icmp type { echo-reply, destination-unreachable }"
            if reply
            else "icmp type echo-request"
        )
    return out


def rule_text(mark: Mark) -> str:
    reply = mark.tag.startswith("rep")
    if mark.outer is None:
        words = _matches(mark.header, reply, mark.refused)
    else:
        words = _matches(replace(mark.outer, sport=None), reply=False)
        offset = VXLAN_INNER if mark.tunnel == "vxlan" else UDP_TUNNEL_INNER
        words += _inner_matches(mark.header, offset, reply, mark.refused)
    return " ".join([*words, f"jump {mark.tag}"])


def trace_rules(traces: list[Trace]) -> list[Mark]:
    """Every header the probe, its reply and their overlay packets can have, per namespace."""
    marks: dict[tuple[str, str, Header, Header | None], Mark] = {}
    for trace in traces:
        for direction, hops in (("forward", trace.forward), ("reply", trace.reply)):
            for hop in hops:
                if hop.netns == "" or hop.packet is None:
                    continue
                if hop.kind in ("encap", "tun", "decap") and hop.outer is not None:
                    tag = TAGS[(direction, 0, True)]
                    mark = Mark(hop.netns, tag, hop.packet, hop.outer, _tunnel(hop))
                elif hop.tunnel:
                    continue  # the overlay packet's own hops: marked by the rule above
                else:
                    mark = Mark(hop.netns, tag_of(direction, hop), hop.packet)
                refused = trace.outcome == "refused" and trace.forward[-1].kind == "deliver"
                mark = replace(mark, refused=refused)
                marks.setdefault((mark.netns, mark.tag, mark.header, mark.outer), mark)
    return list(marks.values())


def _tunnel(hop: Hop) -> str:
    return "udp" if hop.kind == "tun" or (hop.device or "").startswith("flannel0") else "vxlan"


def table_script(name: str, marks: list[Mark]) -> str:
    lines = [
        f"add table ip {name}",
        f"add chain ip {name} pre {{ type filter hook prerouting priority {PRIORITY} ; }}",
        f"add chain ip {name} out {{ type filter hook output priority {PRIORITY} ; }}",
    ]
    for tag in sorted({m.tag for m in marks}):
        lines += [f"add chain ip {name} {tag}", f"add rule ip {name} {tag} meta nftrace set 1"]
    for mark in marks:
        for chain in ("pre", "out"):
            lines.append(f"add rule ip {name} {chain} {rule_text(mark)}")
    return "\n".join(lines) + "\n"


# ---- what the kernels reported --------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One base chain the kernel ran for a packet in one namespace (its events in order)."""

    netns: str
    table: str
    chain: str
    header: SeenHeader | None
    events: list[TraceEvent] = field(default_factory=list)
    tag: str | None = None


def group_calls(netns: str, events: list[TraceEvent]) -> list[Call]:
    """A base chain call starts with the event carrying the packet's headers; the events
    after it with the same trace id belong to it."""
    calls: list[Call] = []
    open_calls: dict[int, Call] = {}
    for event in events:
        if event.header is not None or event.trace_id not in open_calls:
            call = Call(netns, event.table_key, event.chain, event.header)
            calls.append(call)
            open_calls[event.trace_id] = call
        open_calls[event.trace_id].events.append(event)
    return calls


def _tuple(h: SeenHeader) -> tuple[str, str, int | None, str, int | None]:
    if h.proto == "icmp":  # echo ids and ICMP errors: the addresses say it all
        return (h.proto, h.src, None, h.dst, None)
    return (h.proto, h.src, h.sport, h.dst, h.dport)


def _reverse(
    t: tuple[str, str, int | None, str, int | None],
) -> tuple[str, str, int | None, str, int | None]:
    proto, src, sport, dst, dport = t
    return (proto, dst, dport, src, sport)


def classify(calls: dict[str, list[Call]], probe: Header) -> int:
    """Tag every call (see the module header); returns how many calls are noise.

    Only the first packet counts: a SYN retransmitted after a drop matches the probe's rules
    too, so the probe is its first marked packet's IP ID, and an overlay tag keeps the first
    outer packet it marked in each namespace."""
    ours = [
        (netns, call)
        for netns, found in calls.items()
        for call in found
        if call.table.split(" ", 1)[1].startswith(TRACE_TABLE_PREFIX) and call.header
    ]
    ids: dict[int, str] = {}  # IP ID -> forward tag
    for _, call in ours:
        # the chain named after what the rule found (a packet already marked, over loopback,
        # also reports the jump to it from `pre` / `out`)
        call.tag = next((e.chain for e in call.events if e.chain in LABELS), None)
        h = call.header
        if h is None or call.tag not in ("fwd0", "fwd1") or call.tag in ids.values():
            continue
        exact = (h.proto, h.sport, h.dst, h.dport) == (
            probe.proto, probe.sport, probe.dst, probe.dport
        ) and probe.src in ("", h.src)  # fmt: skip
        if h.ip_id and (call.tag == "fwd1" or exact):
            ids[h.ip_id] = call.tag
    marked: dict[tuple[str, tuple[object, ...]], str] = {}  # (netns, header) -> tag
    first_outer: dict[tuple[str, str], tuple[object, ...]] = {}
    for netns, call in ours:
        if call.header is None or call.tag is None:
            continue
        key = (*_tuple(call.header), call.header.ip_id)
        if call.tag in ("fwd0", "fwd1") and ids.get(call.header.ip_id) != call.tag:
            call.tag = None  # a retransmission
            continue
        tunnel = call.tag in ("fwdtun", "reptun")
        if tunnel and first_outer.setdefault((netns, call.tag), key) != key:
            call.tag = None  # the overlay packet of a retransmission
            continue
        marked[(netns, key)] = call.tag
    forward: dict[tuple[str, str, int | None, str, int | None], str] = {}
    for netns, found in calls.items():
        for call in found:
            if call.tag is not None or call.header is None:
                continue
            call.tag = marked.get((netns, (*_tuple(call.header), call.header.ip_id)))
            if call.tag is None and call.header.ip_id in ids and call.header.proto == probe.proto:
                call.tag = ids[call.header.ip_id]
            if call.tag in ("fwd0", "fwd1"):
                forward[_tuple(call.header)] = call.tag
    replies = {_reverse(t): "rep" + tag[3:] for t, tag in forward.items()}
    # an ICMP error about the probe (port unreachable) answers it too
    replies |= {
        ("icmp", dst, None, src, None): "rep" + tag[3:]
        for (_, src, _, dst, _), tag in forward.items()
    }
    noise = 0
    for found in calls.values():
        for call in found:
            if call.tag is None and call.header is not None:
                call.tag = replies.get(_tuple(call.header))
            if call.tag is None:
                noise += 1
    return noise


# ---- the comparison -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One base chain call, as predicted and as observed, in one namespace."""

    place: str
    netns: str
    tag: str
    hook: str | None
    predicted: tuple[str, ...]  # "table chain" then one line per rule matched
    observed: tuple[str, ...]
    agree: bool


def _steps_text(table: str, chain: str, steps: list[tuple[str, int, str]]) -> tuple[str, ...]:
    lines = [f"{table} {chain}"]
    for step_chain, index, verdict in steps:
        lines.append(f"  {verdict}" if index < 0 else f"  {step_chain} #{index + 1} ⇒ {verdict}")
    return tuple(lines)


def _observed_steps(call: Call, listed: dict[str, ListedTable]) -> list[tuple[str, int, str]]:
    out: list[tuple[str, int, str]] = []
    table = listed.get(call.table)
    for event in call.events:
        if event.chain_end or event.kind == "return":
            continue
        if event.kind == "policy":
            out.append((event.chain, -1, f"policy {event.verdict}"))
            continue
        index = table.rule_index(event.chain, event.handle) if table and event.handle else None
        out.append((event.chain, -100 if index is None else index, event.verdict))
    return out


def _entry_row(place: str, key: tuple[str, str], hop: Hop | None, call: Call | None) -> Row:
    """Whether the packet reached the namespace, with the addresses predicted."""
    netns, tag = key
    predicted: tuple[str, ...] = ()
    observed: tuple[str, ...] = ()
    agree = hop is not None and call is not None and call.header is not None
    if hop is not None and hop.packet is not None:
        predicted = (f"enters as {hop.packet}",)
    if call is not None and call.header is not None:
        h = call.header
        seen = Header(h.proto, h.src, h.dst, h.sport, h.dport)
        observed = (f"enters as {seen}",)
        if hop is not None and hop.packet is not None:
            want = hop.packet
            agree = (want.proto, want.dst) == (seen.proto, seen.dst)
            agree = agree and want.src in ("", seen.src)
            if want.proto != "icmp":  # ports; None: chosen by the kernel, anything goes
                agree = agree and want.sport in (None, seen.sport)
                agree = agree and want.dport in (None, seen.dport)
    return Row(place, netns, tag, None, predicted, observed, agree)


def _visits(calls: list[Call], listed: dict[str, ListedTable]) -> list[list[Call]]:
    """Consecutive calls at one hook; within a visit, by priority, then table and chain.

    At equal priority the kernel runs the chain registered last first; it does not report
    registration order (no CONFIG_NETFILTER_NETLINK_HOOK here), so ties compare as a set."""
    visits: list[tuple[str | None, list[Call]]] = []
    for call in calls:
        table = listed.get(call.table)
        chain = table.chains.get(call.chain) if table else None
        hook = chain.hook[1] if chain and chain.hook else None
        if not visits or visits[-1][0] != hook:
            visits.append((hook, []))
        visits[-1][1].append(call)
    return [sorted(v, key=lambda c: (_priority(c, listed), c.table, c.chain)) for _, v in visits]


def _priority(call: Call, listed: dict[str, ListedTable]) -> int:
    table = listed.get(call.table)
    chain = table.chains.get(call.chain) if table else None
    return chain.hook[2] if chain and chain.hook else 0


def compare(
    trace: Trace, calls: dict[str, list[Call]], listed: dict[str, dict[str, ListedTable]]
) -> list[Row]:
    """Predicted netfilter calls against observed ones, per namespace and tag, in order."""
    predicted: dict[tuple[str, str], list[tuple[Hop, int]]] = {}
    entries: dict[tuple[str, str], Hop] = {}
    places: dict[str, str] = {}
    for direction, hops in (("forward", trace.forward), ("reply", trace.reply)):
        for hop in hops:
            places[hop.netns] = hop.place
            if hop.netns and hop.packet is not None and hop.kind not in ("encap", "decap", "tun"):
                entries.setdefault((hop.netns, tag_of(direction, hop)), hop)
                predicted.setdefault((hop.netns, tag_of(direction, hop)), [])
            if hop.kind == "netfilter":
                order = sorted(
                    range(len(hop.runs)),
                    key=lambda i: (hop.runs[i].priority, hop.runs[i].table, hop.runs[i].chain),
                )
                for i in order:
                    predicted.setdefault((hop.netns, tag_of(direction, hop)), []).append((hop, i))
    observed: dict[tuple[str, str], list[Call]] = {}
    marked: dict[tuple[str, str], Call] = {}
    for netns, found in calls.items():
        for call in found:
            if call.tag is None:
                continue
            if call.table.split(" ", 1)[1].startswith(TRACE_TABLE_PREFIX):
                marked.setdefault((netns, call.tag), call)
            else:
                observed.setdefault((netns, call.tag), []).append(call)
    rows: list[Row] = []
    for key in dict.fromkeys([*predicted, *observed, *marked]):
        netns, tag = key
        rows.append(_entry_row(places.get(netns, netns), key, entries.get(key), marked.get(key)))
        want = predicted.get(key, [])
        got = [c for visit in _visits(observed.get(key, []), listed.get(netns, {})) for c in visit]
        for i in range(max(len(want), len(got))):
            p_text: tuple[str, ...] = ()
            o_text: tuple[str, ...] = ()
            hook = None
            p_sig: tuple[object, ...] | None = None
            o_sig: tuple[object, ...] | None = None
            if i < len(want):
                hop, j = want[i]
                run = hop.runs[j]
                hook = hop.hook
                steps = [(s.chain, s.index, s.verdict) for s in run.steps]
                p_text = _steps_text(run.table, run.chain, steps)
                p_sig = (run.table, run.chain, tuple(steps))
            if i < len(got):
                call = got[i]
                steps = _observed_steps(call, listed.get(netns, {}))
                o_text = _steps_text(call.table, call.chain, steps)
                o_sig = (call.table, call.chain, tuple(steps))
            rows.append(
                Row(places.get(netns, netns), netns, tag, hook, p_text, o_text, p_sig == o_sig)
            )
    return rows


# ---- the probe ------------------------------------------------------------------------------


@dataclass(slots=True)
class Verification:
    probe: Header
    trace: Trace  # the prediction, for the endpoint the kernel picked
    rows: list[Row]
    outcome: str  # what the probe's socket saw: connected, refused, answered, no answer
    chosen: str | None
    noise: int
    notes: list[str] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return bool(self.rows) and all(r.agree for r in self.rows)


class _Probe(threading.Thread):
    """Sends the probe from inside the source namespace and keeps the connection open until
    told to close (the userspace proxy dials its endpoint only after accepting)."""

    def __init__(self, netns: str, header: Header, timeout: float, domain: str) -> None:
        super().__init__(name="podnet-trace-probe", daemon=True)
        self.netns = netns
        self.domain = domain
        self.header = header
        self.timeout = timeout
        self.outcome = "not sent"
        self.done = threading.Event()
        self.release = threading.Event()
        self.aborted = False
        self.sock: socket.socket | None = None

    def abort(self) -> None:
        """Stop waiting for an answer (the kernels showed the probe dropped): the socket's
        shutdown wakes a connect or receive blocked on it."""
        self.aborted = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        try:
            netns_ops.switch(self.netns)
            self.outcome = self._send()
        except OSError as exc:
            self.outcome = "no answer" if self.aborted else f"failed: {exc.strerror or exc}"
        finally:
            self.done.set()

    def _send(self) -> str:
        h = self.header
        if h.proto == "icmp":
            return self._ping()
        kind = socket.SOCK_STREAM if h.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as sock:
            self.sock = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((h.src or "0.0.0.0", h.sport or 0))
            sock.settimeout(self.timeout)
            try:
                sock.connect((h.dst, h.dport or 0))
                if h.proto == "udp":
                    sock.send(udp_payload(h.dport or 0, self.domain))
                    if not sock.recv(4096) and self.aborted:
                        return "no answer"
                    outcome = "answered"
                else:
                    outcome = "connected"
            except ConnectionRefusedError:
                return "refused"
            except TimeoutError:
                return "no answer"
            self.done.set()
            self.release.wait(self.timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return outcome

    def _ping(self) -> str:
        h = self.header
        ident = h.sport or 1
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            self.sock = sock
            sock.settimeout(self.timeout)
            body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"podnet-trace"
            checksum = _checksum(body)
            sock.sendto(body[:2] + struct.pack("!H", checksum) + body[4:], (h.dst, 0))
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(1500)
                except TimeoutError:
                    break
                if not data:  # aborted
                    break
                icmp = data[(data[0] & 0x0F) * 4 :]
                if icmp[:1] == b"\x00" and struct.unpack("!H", icmp[4:6])[0] == ident:
                    return "answered"
        return "no answer"


def udp_payload(port: int, domain: str) -> bytes:
    """What a UDP probe carries: a DNS question on port 53 (a DNS server answers nothing
    else), agnhost netexec's `hostname` command elsewhere (a server may not answer it; then
    only the way there is compared)."""
    if port == 53:
        query = dns.message.make_query(f"kubernetes.default.svc.{domain}.", dns.rdatatype.A)
        return bytes(query.to_wire())
    return b"hostname"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


class _Interrupts:
    """SIGINT and SIGTERM end the verification through its cleanup, but never in the middle
    of adding or deleting a table (an `nft -f` cut short could leave one behind): while
    `deferred`, a signal is only noted, and `check()` raises it afterwards."""

    def __init__(self) -> None:
        self.deferring = False
        self.pending = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class NotVerifiable(Exception):
    """The probe's path cannot be checked against the kernels; `trace` is the prediction."""

    def __init__(self, reason: str, trace: Trace) -> None:
        super().__init__(reason)
        self.reason = reason
        self.trace = trace


def unverifiable(snap: Snapshot, plans: list[Trace]) -> str | None:
    """Why these paths cannot be verified (they cross a VM node), or None."""
    nodes = (snap.node_by_netns(h.netns) for plan in plans for h in (*plan.forward, *plan.reply))
    crossed = sorted({node.name for node in nodes if node is not None and node.vm})
    if not crossed:
        return None
    return (
        f"--verify cannot check this path: it crosses VM node {', '.join(crossed)}, whose "
        "kernel runs inside its guest, and the probe's trace tables and the kernel trace "
        "listener work in this host's namespaces only; what is shown is the prediction from the "
        "state read inside the guest, not checked against its kernel"
    )


def _free_port() -> int:
    return 32768 + secrets.randbelow(28000)


def verify_trace(
    snap: Snapshot, probe: Probe, endpoint: str | None = None, timeout: float = 2.0
) -> Verification:
    sport = _free_port()
    header = replace(probe.header, sport=sport)
    probe = replace(probe, header=header)
    first = plan_trace(snap, probe, endpoint)
    # where the kernel may send it: every candidate of a random choice, else the one address
    # a NAT sends it to (kube-proxy nftables' ClientIP affinity: no choice left to make)
    targets: list[str] = [c.target for c in first.candidates] or _translated(first)
    plans = [plan_trace(snap, probe, t) for t in targets] or [first]
    reason = unverifiable(snap, plans)
    if reason is not None:
        raise NotVerifiable(reason, first)
    marks = trace_rules(plans)
    name = f"{TRACE_TABLE_PREFIX}{secrets.token_hex(4)}"
    namespaces = sorted({m.netns for m in marks} | {probe.netns})
    readers: dict[str, TraceReader] = {}
    installed: list[str] = []
    events: dict[str, list[TraceEvent]] = {ns: [] for ns in namespaces}
    sender = _Probe(probe.netns, header, timeout, snap.cluster_domain)
    with _Interrupts().installed() as interrupts:
        try:
            for ns in namespaces:
                reader = TraceReader(ns)
                reader.open()
                readers[ns] = reader
            for ns in namespaces:
                with interrupts.deferred():
                    installed.append(ns)
                    NftRunner(ns).apply(table_script(name, [m for m in marks if m.netns == ns]))
                interrupts.check()
            sender.start()
            settle = SETTLE if any(h.kind == "proxy" for p in plans for h in p.forward) else 0.0
            drop = all(p.outcome == "dropped" for p in plans)
            _collect(readers, events, sender, timeout, settle, drop)
        finally:
            with interrupts.deferred():
                sender.release.set()
                for ns in installed:
                    with contextlib.suppress(Exception):  # the namespace may be gone
                        NftRunner(ns).delete_table("ip", name)
                for reader in readers.values():
                    reader.close()
        if sender.is_alive():  # (not after an interruption: the thread dies with the process)
            sender.join(timeout)
    calls = {ns: group_calls(ns, evs) for ns, evs in events.items()}
    noise = classify(calls, header)
    chosen = _chosen(calls, targets)
    trace = plan_trace(snap, probe, chosen) if chosen else first
    listed = {
        ns: {t.key: t for t in parse_listing(state.nft)} for ns, state in snap.namespaces.items()
    }
    places = {h.netns: h.place for h in (*trace.forward, *trace.reply)}
    notes = changed_rules(calls, listed, places)
    if sender.outcome == "no answer" and not any(
        c.tag and c.tag.startswith("rep") for found in calls.values() for c in found
    ):
        trace = replace(trace, reply=())
        notes.append("the destination sent no reply: only the way there is compared")
    rows = compare(trace, calls, listed)
    return Verification(header, trace, rows, sender.outcome, chosen, noise, notes)


def changed_rules(
    calls: dict[str, list[Call]], listed: dict[str, dict[str, ListedTable]], places: dict[str, str]
) -> list[str]:
    """Where the kernel ran a rule the snapshot does not hold: the rules changed between the
    snapshot and the probe (an agent's sync rewrote a chain; iptables-restore gives every
    rule of a rewritten chain a new handle), so the prediction is of rules no longer there."""
    notes = []
    for netns, found in calls.items():
        for call in found:
            table = listed.get(netns, {}).get(call.table)
            if call.tag is None or call.table.split(" ", 1)[1].startswith(TRACE_TABLE_PREFIX):
                continue
            event = next(
                (
                    e for e in call.events
                    if e.handle is not None
                    and (table is None or table.rule_index(e.chain, e.handle) is None)
                ),
                None,
            )  # fmt: skip
            if event is not None:
                notes.append(
                    f"{places.get(netns, netns)}: the rules changed while the probe ran "
                    f"(rule handle {event.handle} of {call.table} {event.chain} is not in the "
                    "snapshot: an agent's sync rewrote it), so the prediction is of the rules "
                    "before; verify again once the agents are idle"
                )
                break
    return notes


def _collect(
    readers: dict[str, TraceReader],
    events: dict[str, list[TraceEvent]],
    sender: _Probe,
    timeout: float,
    settle: float,
    drop: bool,
) -> None:
    """Read the trace events until the probe's fate is known (see the module header):
    `settle` seconds of quiet after the sender's answer; with `drop` predicted, `SETTLE`
    seconds of quiet after a rule dropped a traced packet; at most `timeout` seconds."""
    poller = select.poll()
    by_fd = {}
    for ns, reader in readers.items():
        poller.register(reader.fileno(), select.POLLIN)
        by_fd[reader.fileno()] = ns
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    dropped = False
    while True:
        now = time.monotonic()
        if sender.done.is_set() and now - last >= settle:
            for ns, reader in readers.items():  # what was reported before the answer came
                events[ns] += reader.read()
            break
        if now >= deadline:
            break
        if dropped and now - last >= SETTLE:
            sender.abort()
            break
        for fd, _ in poller.poll(10 if sender.done.is_set() else 50):
            found = readers[by_fd[fd]].read()
            if found:
                events[by_fd[fd]] += found
                last = time.monotonic()
                dropped = dropped or (
                    drop
                    and any(
                        e.verdict == "drop" and not e.table.startswith(TRACE_TABLE_PREFIX)
                        for e in found
                    )
                )


def _translated(trace: Trace) -> list[str]:
    """The destination the probe's first packet reaches, when a NAT changed it."""
    last = trace.forward[-1].packet if trace.forward else None
    head = trace.probe.header
    if last is None or last.dport is None or (last.dst, last.dport) == (head.dst, head.dport):
        return []
    return [f"{last.dst}:{last.dport}"]


def _chosen(calls: dict[str, list[Call]], targets: list[str]) -> str | None:
    """The endpoint the kernel picked: the first candidate a probe packet was addressed to."""
    wanted = set(targets)
    for found in calls.values():
        for call in found:
            if call.tag in ("fwd0", "fwd1") and call.header is not None:
                target = f"{call.header.dst}:{call.header.dport}"
                if target in wanted:
                    return target
    return None
