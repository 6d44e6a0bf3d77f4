"""Connection-tracking flows of one namespace: list them, delete the stale ones.

kube-proxy must forget UDP flows when a Service's endpoints change (otherwise packets keep
going to a dead pod's DNAT target until the entry times out), which upstream does with
`conntrack -D -p udp --orig-dst VIP` and `--dst-nat ENDPOINT`. podnet does the same through
ctnetlink with pyroute2's `Conntrack(netns=...)`: it works on this kernel (verified against
the `conntrack` tool), needs no extra binary, and returns structured tuples instead of text,
so there is no output parsing at all. Filters are applied here, then each match is deleted by
its original tuple.

Invariants: only IPv4; deleting a flow that vanished meanwhile is not an error.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import Conntrack as Pyroute2Conntrack
from pyroute2.netlink.exceptions import NetlinkError

PROTOCOL_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 1: "icmp", 132: "sctp"}


class ConntrackError(Exception):
    """Flows could not be read or deleted."""


@dataclass(frozen=True, slots=True)
class Flow:
    protocol: int  # IPPROTO_*
    src: str
    dst: str
    sport: int | None
    dport: int | None
    reply_src: str  # after DNAT this is the endpoint the traffic really goes to
    reply_dst: str
    reply_sport: int | None
    reply_dport: int | None

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.protocol, str(self.protocol))

    @property
    def is_dnat(self) -> bool:
        return self.reply_src != self.dst or self.reply_sport != self.dport


def _flow(entry: Any) -> Flow:
    orig, reply = entry.tuple_orig, entry.tuple_reply
    return Flow(
        protocol=int(orig.proto),
        src=str(orig.saddr),
        dst=str(orig.daddr),
        sport=orig.sport,
        dport=orig.dport,
        reply_src=str(reply.saddr),
        reply_dst=str(reply.daddr),
        reply_sport=reply.sport,
        reply_dport=reply.dport,
    )


class Conntrack:
    """ctnetlink for one namespace (`None` = the caller's)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _open(self) -> Any:
        try:
            return Pyroute2Conntrack(netns=self.netns) if self.netns else Pyroute2Conntrack()
        except (OSError, NetlinkError) as exc:
            where = f" in {self.netns!r}" if self.netns else ""
            raise ConntrackError(f"cannot open ctnetlink{where}: {exc}") from exc

    def flows(self, protocol: int | None = None) -> list[Flow]:
        ct = self._open()
        try:
            found = [_flow(e) for e in ct.dump_entries()]
        finally:
            ct.close()
        return [f for f in found if protocol is None or f.protocol == protocol]

    def delete_matching(self, should_delete: Callable[[Flow], bool]) -> int:
        """Delete every flow for which `should_delete(flow)` holds; returns how many went."""
        ct = self._open()
        deleted = 0
        try:
            for entry in list(ct.dump_entries()):
                if not should_delete(_flow(entry)):
                    continue
                try:
                    ct.delete(entry)
                    deleted += 1
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:  # expired meanwhile: fine
                        raise ConntrackError(f"deleting flow {_flow(entry)}: {exc}") from exc
        finally:
            ct.close()
        return deleted

    def delete_by_destination(
        self, ip: str, protocol: int = socket.IPPROTO_UDP, port: int | None = None
    ) -> int:
        """`conntrack -D -p PROTO --orig-dst IP [--dport PORT]` (a Service VIP went away)."""
        return self.delete_matching(
            lambda f: f.protocol == protocol and f.dst == ip and (port is None or f.dport == port)
        )

    def delete_by_nat_destination(self, ip: str, protocol: int = socket.IPPROTO_UDP) -> int:
        """`conntrack -D -p PROTO --dst-nat IP` (an endpoint went away)."""
        return self.delete_matching(
            lambda f: f.protocol == protocol and f.is_dnat and f.reply_src == ip
        )


@dataclass
class FakeConntrack:
    """In-memory flows for unit tests; records what each delete call removed."""

    table: list[Flow] = field(default_factory=list)
    deleted: list[Flow] = field(default_factory=list)

    def flows(self, protocol: int | None = None) -> list[Flow]:
        return [f for f in self.table if protocol is None or f.protocol == protocol]

    def delete_matching(self, should_delete: Callable[[Flow], bool]) -> int:
        gone = [f for f in self.table if should_delete(f)]
        self.table = [f for f in self.table if not should_delete(f)]
        self.deleted += gone
        return len(gone)

    def delete_by_destination(
        self, ip: str, protocol: int = socket.IPPROTO_UDP, port: int | None = None
    ) -> int:
        return self.delete_matching(
            lambda f: f.protocol == protocol and f.dst == ip and (port is None or f.dport == port)
        )

    def delete_by_nat_destination(self, ip: str, protocol: int = socket.IPPROTO_UDP) -> int:
        return self.delete_matching(
            lambda f: f.protocol == protocol and f.is_dnat and f.reply_src == ip
        )
