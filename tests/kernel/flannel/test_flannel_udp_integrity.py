"""Every byte across the udp overlay: 64 MiB of random bytes in random-sized writes (1 B to
1 MiB) from a pod on node1 to a pod on node3 and back, with sha256 compared at the far end.

The udp datapath rewrites what it carries — TSO superpackets cut into segments by header
arithmetic, partial checksums marked on the sender and finished by the receiving kernel,
received runs merged into GSO writes — so a wrong sequence number, length or checksum shows
up here as a hash mismatch, a stalled transfer or a reset. The datapaths' counters must
show that the superpacket path carried the transfer (else this proves nothing about it).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import threading
from typing import cast

import pytest

from podnet.agent.flannel.udp import UdpNetwork
from podnet.kernel import netns
from podnet.testing.flannel_lab import FlannelLab, Pod

TOTAL = 64 << 20
PORT = 7010

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


class HashSink:
    """Reads one connection to EOF and answers with the byte count and sha256 of what came."""

    def __init__(self, pod: Pod) -> None:
        self.sock: socket.socket = netns.call_in(
            pod.netns, lambda: socket.create_server((pod.ip, PORT))
        )
        self.sock.settimeout(60)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.sock, self.sock.accept()[0] as conn:
            conn.settimeout(60)
            digest, count = hashlib.sha256(), 0
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
                count += len(chunk)
            conn.sendall(f"{count} {digest.hexdigest()}".encode())


def send_random(client: Pod, server_ip: str, seed: int) -> tuple[str, str]:
    """(what the sender hashed, what the server answered), both "count sha256"."""
    rng = random.Random(seed)
    data = rng.randbytes(TOTAL)

    def run() -> str:
        with socket.create_connection((server_ip, PORT), timeout=60) as conn:
            sent = 0
            while sent < TOTAL:
                size = min(rng.randint(1, 1 << 20), TOTAL - sent)
                conn.sendall(data[sent : sent + size])
                sent += size
            conn.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        return answer.decode()

    answer: str = netns.call_in(client.netns, run)
    return f"{TOTAL} {hashlib.sha256(data).hexdigest()}", answer


@pytest.mark.asyncio
@pytest.mark.parametrize("flannel_lab", ["udp"], indirect=True)
async def test_flannel_udp_overlay_carries_64_mib_intact(flannel_lab: FlannelLab) -> None:
    lab = flannel_lab
    pods = {1: await asyncio.to_thread(lab.add_pod, 1), 3: await asyncio.to_thread(lab.add_pod, 3)}
    for seed, (src, dst) in enumerate(((1, 3), (3, 1))):
        sink = HashSink(pods[dst])
        sent, answered = await asyncio.to_thread(send_random, pods[src], pods[dst].ip, seed)
        sink.thread.join(timeout=10)
        assert answered == sent, f"node{src} -> node{dst}"
    for index in (1, 3):
        network = cast(UdpNetwork, lab.agents[index].component.network)
        stats = await asyncio.to_thread(network.datapath.stats)
        assert stats.tun_superpackets > 0 and stats.tun_merged > 0, f"node{index}: {stats}"
        assert stats.errors == 0, f"node{index}: {stats}"
