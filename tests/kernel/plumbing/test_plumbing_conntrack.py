"""Conntrack flows listed and deleted through ctnetlink in a throwaway namespace."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from podnet.kernel import netns
from podnet.kernel.conntrack import Conntrack
from podnet.kernel.links import Netlink
from podnet.kernel.rules import NftRunner

pytestmark = pytest.mark.root


def send_udp(ns: str, dst: str, port: int) -> None:
    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", (dst, port))

    netns.call_in(ns, send)


def test_list_and_delete_udp_flows_by_destination(new_netns: Callable[[], str]) -> None:
    ns = new_netns()
    with Netlink(ns) as nl:
        nl.set_up("lo")
    # conntrack is only active in a namespace once some rule needs it
    NftRunner(ns).apply(
        "table ip pt1ct {\n chain out {\n  type filter hook output priority 0;\n"
        "  ct state new counter\n }\n}\n"
    )
    send_udp(ns, "127.0.0.7", 5353)
    send_udp(ns, "127.0.0.8", 5353)
    ct = Conntrack(ns)
    udp = ct.flows(socket.IPPROTO_UDP)
    assert sorted(f.dst for f in udp) == ["127.0.0.7", "127.0.0.8"]
    assert all(f.protocol_name == "udp" and f.dport == 5353 and not f.is_dnat for f in udp)
    assert ct.delete_by_destination("127.0.0.7") == 1
    assert [f.dst for f in ct.flows(socket.IPPROTO_UDP)] == ["127.0.0.8"]
    assert ct.delete_by_destination("127.0.0.7") == 0
    # the host's table is a different one
    assert all(f.dst != "127.0.0.8" for f in Conntrack().flows(socket.IPPROTO_UDP))
