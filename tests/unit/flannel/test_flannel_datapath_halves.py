"""The udp datapath's two processes (`fork_receiving_half`): the parent's counters include
the child's, and a child that is gone when the agent asks for them ends the parent with the
loop-failure code, as `watch_receiving_half` does when it sees the child end first."""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import asdict
from types import SimpleNamespace
from typing import cast

from podnet.agent.flannel.datapath import (
    LOOP_FAILED_EXIT,
    DatapathStats,
    Forwarder,
    combined_stats,
)


def _forwarder(stats: DatapathStats) -> Forwarder:
    return cast(Forwarder, SimpleNamespace(stats=stats))


def test_flannel_datapath_counters_include_the_receiving_halfs() -> None:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = DatapathStats(udp_to_tun=7, udp_receives=3, tun_merged=2)

    def answer() -> None:  # the child's side: its counters for each request
        while child_end.recv(64):
            child_end.send(json.dumps(asdict(child)).encode())

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        stats = combined_stats(_forwarder(DatapathStats(tun_to_udp=5, udp_sends=1)), parent_end)
    finally:
        parent_end.close()
        thread.join(timeout=5)
        child_end.close()
    assert stats == DatapathStats(
        tun_to_udp=5, udp_sends=1, udp_to_tun=7, udp_receives=3, tun_merged=2
    )


def test_flannel_datapath_asked_for_counters_after_its_receiving_half_died_exits_70() -> None:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child_end.close()  # what the kernel does to a dead child's end
    pid = os.fork()
    if pid == 0:  # stands in for the datapath's parent process
        try:
            combined_stats(_forwarder(DatapathStats()), parent_end)
        finally:
            os._exit(0)  # reached only if the dead half went unnoticed
    parent_end.close()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == LOOP_FAILED_EXIT
