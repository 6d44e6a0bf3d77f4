"""Pod ↔ pod across nodes for every flannel backend, on 3 node namespaces with real components.

For each backend: TCP, UDP and ICMP both ways between a pod on node1 and one on node3, a 1 MiB
TCP transfer each way, a traceroute each way with the exact hops of the backend (its probes
expire inside the overlay: for udp in the datapath itself, which must drop them and keep
forwarding — pings in both directions right after prove it), a don't-fragment ping and
datagram at the path MTU (one byte more is refused), the pod source address preserved (no
masquerade inside the cluster network) and flannel's chains jumped to exactly once; then node
leave and join update the peers, and an agent restart keeps a TCP connection alive and
reconciles what changed while it was down.
"""

from __future__ import annotations

import asyncio
import errno
import json

import pytest

from podnet import procs
from podnet.agent.flannel import udp
from podnet.kernel.links import Netlink
from podnet.kernel.overlay import Overlay
from podnet.kernel.rules import IptablesRunner
from podnet.testing.flannel_lab import (
    ICMP_DEST_UNREACHABLE,
    ICMP_TIME_EXCEEDED,
    FlannelLab,
    Hop,
    Pod,
    TcpEcho,
    TcpSink,
    UdpEcho,
    connect,
    echo_once,
    node_ip,
    ping,
    ping_dont_fragment,
    pod_cidr,
    remote_subnets,
    tcp_exchange,
    traceroute,
    udp_echo,
    until,
)

BACKENDS = ["vxlan", "udp", "host-gw"]
EXPECTED_MTU = {"vxlan": 1450, "udp": 1472, "host-gw": 1500}
MIB = 1 << 20

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.mark.asyncio
@pytest.mark.parametrize("flannel_lab", BACKENDS, indirect=True)
async def test_flannel_pods_talk_across_nodes(flannel_lab: FlannelLab) -> None:
    lab = flannel_lab
    backend = lab.backend
    env = lab.subnet_env(1)
    assert env.mtu == EXPECTED_MTU[backend]
    text = (lab.base / "node1" / "run" / "flannel" / "subnet.env").read_text()
    assert text == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        f"FLANNEL_MTU={EXPECTED_MTU[backend]}\nFLANNEL_IPMASQ=true\n"
        + ("PODNET_GSO_MAX_SEGS=44\n" if backend == "udp" else "")
    )
    assert lab.api is not None
    node = await lab.api.get("nodes", "node1")
    annotations = node["metadata"]["annotations"]
    assert annotations["flannel.alpha.coreos.com/backend-type"] == backend
    assert annotations["flannel.alpha.coreos.com/public-ip"] == "192.168.66.11"
    assert annotations["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
    if backend == "vxlan":
        data = json.loads(annotations["flannel.alpha.coreos.com/backend-data"])
        assert data == {"VNI": 1, "VtepMAC": await asyncio.to_thread(_vtep_mac, lab, 1)}
    await until(lambda: len(remote_subnets(lab, 1)["routes"]) == 2, 10, "node1 programs 2 peers")

    pod1 = await asyncio.to_thread(lab.add_pod, 1)
    pod3 = await asyncio.to_thread(lab.add_pod, 3)
    # udp: the pods' TCP superpackets are kept to what one UDP GSO send carries once cut
    # (44 segments of 1,472 bytes); other backends leave the kernel's default
    segs = await asyncio.to_thread(_eth0_gso_max_segs, pod1)
    assert segs == (44 if backend == "udp" else 65535)
    servers = [
        TcpSink(pod1, reply_bytes=MIB),
        TcpSink(pod3, reply_bytes=MIB),
        UdpEcho(pod1),
        UdpEcho(pod3),
    ]
    try:
        for client, server in ((pod1, pod3), (pod3, pod1)):
            # TCP: 1 MiB there and 1 MiB back
            counted, replied = await asyncio.to_thread(tcp_exchange, client, server.ip, 7000, MIB)
            assert (counted, replied) == (MIB, MIB)
            # UDP and ICMP
            assert await asyncio.to_thread(udp_echo, client, server.ip, 7001, 100) == 100
            assert await asyncio.to_thread(ping, client, server.ip), (
                f"ping {client.ip} -> {server.ip}"
            )
            # traceroute: its probes run out of TTL at every hop, inside the overlay too
            hops = await asyncio.to_thread(traceroute, client, server.ip)
            assert hops == expected_hops(backend, client, server.ip)
            for source, target in ((client, server.ip), (server, client.ip)):
                assert await asyncio.to_thread(ping, source, target), (
                    f"ping {source.ip} -> {target} after a traceroute {client.ip} -> {server.ip}"
                )
            # don't-fragment ping and UDP datagram filling the path MTU; one byte more fails
            biggest = env.mtu - 28
            assert await asyncio.to_thread(ping_dont_fragment, client, server.ip, biggest)
            with pytest.raises(OSError) as too_big:
                await asyncio.to_thread(ping_dont_fragment, client, server.ip, biggest + 1)
            assert too_big.value.errno == errno.EMSGSIZE
            assert (
                await asyncio.to_thread(udp_echo, client, server.ip, 7001, biggest, True) == biggest
            )
            with pytest.raises(OSError) as too_big:
                await asyncio.to_thread(udp_echo, client, server.ip, 7001, biggest + 1, True)
            assert too_big.value.errno == errno.EMSGSIZE
        # pod source addresses are kept inside the cluster network (FLANNEL-POSTRTG RETURNs)
        seen = await asyncio.to_thread(_udp_peer_seen_by, pod3, pod1)
        assert seen == pod1.ip
        # flannel's chains are in place, jumped to exactly once after several full syncs
        await until(lambda: lab.agents[1].component.syncs >= 3, 15, "three syncs on node1")
        nat = await asyncio.to_thread(IptablesRunner(lab.node_ns(1)).save, "nat")
        filt = await asyncio.to_thread(IptablesRunner(lab.node_ns(1)).save, "filter")
        assert nat.count("-j FLANNEL-POSTRTG") == 1 and filt.count("-j FLANNEL-FWD") == 1
        assert "-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16" in nat
    finally:
        for server in servers:
            server.close()


def expected_hops(backend: str, client: Pod, server_ip: str) -> list[Hop | None]:
    """The hops a traceroute from `client` to `server_ip` (on node `server`) must show.

    First the client's gateway (its node's cni0), last the target's port unreachable. Between
    them, vxlan: the target node's flannel.1 (the subnet's .0); host-gw: the target node's
    underlay address; udp: two silent hops — each datapath decrements the TTL like a router
    and drops an expired packet without an ICMP error, as flannel's proxy does — and then the
    target node's kernel forwarding from flannel0 (the subnet's .0).
    """
    server_node = int(server_ip.split(".")[2])
    overlay_address = f"10.244.{server_node}.0"
    middle: dict[str, list[Hop | None]] = {
        "vxlan": [Hop(overlay_address, ICMP_TIME_EXCEEDED)],
        "host-gw": [Hop(node_ip(server_node), ICMP_TIME_EXCEEDED)],
        "udp": [None, None, Hop(overlay_address, ICMP_TIME_EXCEEDED)],
    }
    return [
        Hop(f"10.244.{client.node}.1", ICMP_TIME_EXCEEDED),
        *middle[backend],
        Hop(server_ip, ICMP_DEST_UNREACHABLE),
    ]


def _eth0_gso_max_segs(pod: Pod) -> int | None:
    with Netlink(pod.netns) as inside:
        return inside.require("eth0").gso_max_segs


def _vtep_mac(lab: FlannelLab, index: int) -> str | None:
    with Overlay(lab.node_ns(index)) as overlay:
        return overlay.require_vxlan("flannel.1").mac


def _udp_peer_seen_by(server_pod: object, client_pod: object) -> str:
    import socket as sock_mod

    from podnet.kernel import netns

    server = server_pod
    client = client_pod
    receiver = netns.call_in(server.netns, lambda: _bound(server.ip))  # type: ignore[attr-defined]
    try:
        receiver.settimeout(2)

        def send() -> None:
            with sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_DGRAM) as s:
                s.sendto(b"who", (server.ip, 7009))  # type: ignore[attr-defined]

        netns.call_in(client.netns, send)  # type: ignore[attr-defined]
        _, peer = receiver.recvfrom(100)
        return str(peer[0])
    finally:
        receiver.close()


def _bound(ip: str) -> object:
    import socket as sock_mod

    s = sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_DGRAM)
    s.bind((ip, 7009))
    return s


@pytest.mark.asyncio
@pytest.mark.parametrize("flannel_lab", BACKENDS, indirect=True)
async def test_flannel_leave_join_and_restart(flannel_lab: FlannelLab) -> None:
    lab = flannel_lab
    backend = lab.backend
    subnet2, subnet3 = pod_cidr(2), pod_cidr(3)
    await until(lambda: remote_subnets(lab, 1)["routes"] == {subnet2, subnet3}, 10, "peers")
    pod1 = await asyncio.to_thread(lab.add_pod, 1)
    pod3 = await asyncio.to_thread(lab.add_pod, 3)
    echo = TcpEcho(pod3)
    udp3 = UdpEcho(pod3)
    try:
        # -- node3 leaves: every peer forgets it (routes, neighbours, fdb) --------------
        await lab.delete_node(3)
        for peer in (1, 2):
            await until(
                lambda p=peer: all(
                    subnet3 not in v and "192.168.66.13" not in v and "10.244.3.0" not in v
                    for v in remote_subnets(lab, p).values()
                ),
                10,
                f"node{peer} forgets node3",
            )
        with pytest.raises(OSError):
            await asyncio.to_thread(udp_echo, pod1, pod3.ip, 7001, 10)

        # -- node3 joins again: every peer learns it -------------------------------------
        await lab.add_node(3)
        for peer in (1, 2):
            await until(
                lambda p=peer: subnet3 in remote_subnets(lab, p)["routes"],
                10,
                f"node{peer} learns node3",
            )
        assert await asyncio.to_thread(udp_echo, pod1, pod3.ip, 7001, 10) == 10

        # -- restart node1's agent: a live connection survives, changes while down are fixed
        conn = await asyncio.to_thread(connect, pod1, pod3.ip, echo.port)
        try:
            assert await asyncio.to_thread(echo_once, conn, b"before") == b"before"
            datapath = procs.recorded(lab.base / lab.node_name(1) / "run" / udp.PIDS_DIR)
            if backend == "udp":  # its two processes, recorded while the agent runs
                labels = {rec.label for rec in datapath if procs.is_alive(rec)}
                assert labels == {udp.LABEL, udp.RECEIVING_HALF_LABEL}
            await lab.stop_agent(1)
            assert not [rec for rec in datapath if procs.is_alive(rec)]  # stopped by pid
            if backend != "udp":  # the kernel keeps forwarding: no agent needed
                assert await asyncio.to_thread(echo_once, conn, b"while down") == b"while down"
            # while node1's agent is down: node2 leaves, and node1's kernel state drifts
            await lab.delete_node(2)
            await asyncio.to_thread(_drift, lab)
            await lab.start_agent(1)
            await until(
                lambda: remote_subnets(lab, 1)["routes"] == {subnet3}, 10, "node1 reconciled"
            )
            entries = await asyncio.to_thread(remote_subnets, lab, 1)
            filt = await asyncio.to_thread(IptablesRunner(lab.node_ns(1)).save, "filter")
            assert filt.count("-j FLANNEL-FWD") == 1  # the jump removed while down is back
            if backend == "vxlan":
                assert entries["neighbours"] == {"10.244.3.0"}
                assert entries["fdb"] == {"192.168.66.13"}
            assert await asyncio.to_thread(echo_once, conn, b"after") == b"after"
        finally:
            conn.close()
        assert await asyncio.to_thread(ping, pod1, pod3.ip)
        assert await asyncio.to_thread(ping, pod3, pod1.ip)
    finally:
        echo.close()
        udp3.close()


def _drift(lab: FlannelLab) -> None:
    """Kernel changes on node1 while its agent is down: a stale entry appears, a live one
    goes, and the FORWARD jump into FLANNEL-FWD is deleted."""
    ns = lab.node_ns(1)
    IptablesRunner(ns).restore(
        '*filter\n-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\nCOMMIT\n'
    )
    with Netlink(ns) as nl:
        if lab.backend == "vxlan":
            with Overlay(ns) as overlay:
                overlay.replace_neighbour("flannel.1", "10.244.77.0", "02:00:00:00:77:77")
                overlay.replace_fdb("flannel.1", "02:00:00:00:77:77", "192.168.66.77")
            nl.replace_route("10.244.77.0/24", gateway="10.244.77.0", dev="flannel.1", onlink=True)
            nl.delete_route(pod_cidr(3))
        elif lab.backend == "host-gw":
            nl.replace_route("10.244.77.0/24", gateway="192.168.66.77", dev="eth0")
            nl.delete_route(pod_cidr(3))
