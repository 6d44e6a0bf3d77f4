"""The userspace proxy's dials and the policy table's `proxy-source` SNAT on a real node
namespace: a marked dial to an address outside the pod network (the `kubernetes` Service's API
server on the host address) must leave with the node's address, since nothing outside the pod
network routes back to a pod gateway.

Topology: node netns (eth0 172.31.250.11, pod bridge 10.244.1.1) ── veth ── host netns
(172.31.250.1, no route to the pod network, as the lab's host)."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import pytest

from podnet.agent.policy.model import build_view
from podnet.agent.policy.nftables import PolicyConfig, render_policy_table
from podnet.kernel import netns
from podnet.kernel.links import Netlink
from podnet.kernel.rules import NftRunner

pytestmark = pytest.mark.root

NODE_IP, HOST_IP, GATEWAY = "172.31.250.11", "172.31.250.1", "10.244.1.1"


@pytest.fixture
def node_and_host() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(2)
    node, host = f"pnps-{tag}-node", f"pnps-{tag}-host"
    try:
        netns.create(node)
        netns.create(host)
        with Netlink(node) as nl:
            nl.set_up("lo")
            nl.create_veth("eth0", "eth0", peer_netns=host)
            nl.ensure_address("eth0", f"{NODE_IP}/24")
            nl.set_up("eth0")
            nl.ensure_bridge(f"pps{tag}")
            nl.ensure_address(f"pps{tag}", f"{GATEWAY}/24")
            nl.set_up(f"pps{tag}")
        with Netlink(host) as nl:
            nl.ensure_address("eth0", f"{HOST_IP}/24")
            nl.set_up("eth0")
            nl.set_up("lo")
        yield node, host
    finally:
        for name in (node, host):
            netns.delete(name)


def test_a_proxied_dial_to_the_host_address_keeps_the_node_address(
    node_and_host: tuple[str, str],
) -> None:
    node, host = node_and_host
    cfg = PolicyConfig(userspace_proxy=True, gateway=GATEWAY, pod_network="10.244.0.0/16")
    NftRunner(node).apply(render_policy_table(build_view((), (), ()), "node", cfg).script())

    def listen() -> socket.socket:
        sock = socket.create_server((HOST_IP, 0))
        sock.settimeout(5)
        return sock

    def dial(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, cfg.mark)
        sock.settimeout(2)  # the SYN-ACK to a pod gateway would never come back
        sock.connect((HOST_IP, port))
        return sock

    with netns.call_in(host, listen) as server:
        client = netns.call_in(node, lambda: dial(server.getsockname()[1]))
        accepted, peer = server.accept()
        accepted.close()
        client.close()
    assert peer[0] == NODE_IP
