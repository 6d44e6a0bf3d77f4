"""A 3-node flannel cluster in throwaway namespaces, with real flannel components in-process.

    underlay netns  pnt6-<id>-ul: bridge pt6br (192.168.66.0/24, no address)
    node netns      pnt6-<id>-n<i>: eth0 192.168.66.1<i>/24 (peer pt6v<i> on pt6br),
                    cni0 10.244.<i>.1/24 (the CNI bridge plugin), flannel device of backend B
    pod netns       pnt6-<id>-p<i><k>: eth0 10.244.<i>.x via CNI ADD with FLANNEL_MTU

The netns prefix `pnt6-` can be changed with $PODNET_FLANNEL_TEST_PREFIX (e.g. `pnt8-`) so
that two runs on one machine keep apart. A real `podnet server --no-controllers` on loopback
holds the Nodes; the test plays node IPAM (it sets `spec.podCIDR`). Every node's
`FlannelComponent` runs in the test's event loop and programs its node namespace (`netns=`).
Nothing is created in the host namespace except the server process; `close()` removes every
namespace with the lab's marker and stops the server by its recorded pid. Used by the kernel
tests (`tests/kernel/flannel`, fixture `flannel_lab`) and by `benchmarks/overlay.py`; the
traffic helpers below (TCP/UDP echo, ping, traceroute from inside a pod) go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podnet.agent.cni import BridgeConfig, cni_add
from podnet.agent.context import AgentContext
from podnet.agent.flannel.component import FlannelComponent
from podnet.agent.kubelet.sandbox import read_subnet_env
from podnet.api.client import HttpApi
from podnet.config import ClusterConfig
from podnet.kernel import netns
from podnet.kernel.links import Netlink
from podnet.testing.server import ServerProcess

UNDERLAY = "192.168.66.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
NETNS_PREFIX = os.environ.get("PODNET_FLANNEL_TEST_PREFIX", "pnt6-")  # netns name prefix


def node_ip(index: int) -> str:
    return f"192.168.66.{10 + index}"


def pod_cidr(index: int) -> str:
    return f"10.244.{index}.0/24"


@dataclass
class Pod:
    node: int
    netns: str
    ip: str


@dataclass
class Agent:
    component: FlannelComponent
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class FlannelLab:
    backend: str
    base: Path
    marker: str = field(default_factory=lambda: f"{NETNS_PREFIX}{secrets.token_hex(3)}-")
    api: HttpApi | None = None
    server: ServerProcess | None = None
    agents: dict[int, Agent] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    resync_period: float = 2.0

    # -- names -------------------------------------------------------------------------

    @property
    def underlay_ns(self) -> str:
        return f"{self.marker}ul"

    def node_ns(self, index: int) -> str:
        return f"{self.marker}n{index}"

    def node_name(self, index: int) -> str:
        return f"node{index}"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, nodes: int = 3) -> None:
        self.server = ServerProcess(self.base / "server")
        await asyncio.to_thread(self.server.start)
        self.api = self.server.api()
        await asyncio.to_thread(self._make_underlay)
        for index in range(1, nodes + 1):
            await self.add_node(index)

    def _make_underlay(self) -> None:
        netns.create(self.underlay_ns)
        with Netlink(self.underlay_ns) as ul:
            ul.set_up("lo")
            ul.ensure_bridge("pt6br", mtu=1500)

    async def close(self) -> None:
        for index in list(self.agents):
            with contextlib.suppress(Exception):
                await self.stop_agent(index)
        if self.api is not None:
            with contextlib.suppress(Exception):
                await self.api.close()
        await asyncio.to_thread(self._delete_namespaces)
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    def _delete_namespaces(self) -> None:
        for name in netns.list_names(self.marker):
            with contextlib.suppress(Exception):
                netns.delete(name)

    # -- nodes ---------------------------------------------------------------------------

    async def add_node(self, index: int, start_agent: bool = True) -> None:
        """Create the node's namespace + underlay link and its Node object (with podCIDR)."""
        await asyncio.to_thread(self._make_node, index)
        assert self.api is not None
        cidr = pod_cidr(index)
        await self.api.create(
            "nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": self.node_name(index)},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            },
        )
        if start_agent:
            await self.start_agent(index)

    def _make_node(self, index: int) -> None:
        ns = self.node_ns(index)
        if not netns.exists(ns):
            netns.create(ns)
            with Netlink(self.underlay_ns) as ul:
                ul.create_veth(f"pt6v{index}", "eth0", peer_netns=ns, mtu=1500)
                ul.set_master(f"pt6v{index}", "pt6br")
                ul.set_up(f"pt6v{index}")
            with Netlink(ns) as nl:
                nl.set_up("lo")
                nl.ensure_address("eth0", f"{node_ip(index)}/24")
                nl.set_up("eth0")

    async def delete_node(self, index: int) -> None:
        """The node leaves: its agent stops and its Node object is deleted."""
        if index in self.agents:
            await self.stop_agent(index)
        assert self.api is not None
        await self.api.delete("nodes", self.node_name(index))

    def context(self, index: int) -> AgentContext:
        assert self.api is not None
        state = self.base / self.node_name(index)
        return AgentContext(
            api=self.api,
            node_name=self.node_name(index),
            node_ip=node_ip(index),
            state_dir=state,
            run_dir=state / "run",
            netns_prefix=self.marker,
            cluster=ClusterConfig(cluster_cidr=CLUSTER_CIDR),
            backend=self.backend,
        )

    async def start_agent(self, index: int, wait_ready: bool = True) -> FlannelComponent:
        component = FlannelComponent(
            self.context(index), netns=self.node_ns(index), resync_period=self.resync_period
        )
        stop = asyncio.Event()
        task = asyncio.create_task(component.run(stop), name=f"flannel-{index}")
        self.agents[index] = Agent(component, stop, task)
        if wait_ready:
            await until(
                lambda: component.ready.is_set() or task.done(), 20, f"flannel on node{index}"
            )
            if task.done():
                task.result()
        return component

    async def stop_agent(self, index: int) -> None:
        agent = self.agents.pop(index)
        agent.stop.set()
        await asyncio.wait_for(agent.task, 10)

    def subnet_env(self, index: int) -> Any:
        env = read_subnet_env(self.base / self.node_name(index) / "run")
        assert env is not None, f"node{index} has no subnet.env"
        return env

    # -- pods ----------------------------------------------------------------------------

    def add_pod(self, index: int) -> Pod:
        """A pod namespace on node `index`, wired by the CNI bridge plugin with FLANNEL_MTU
        (and PODNET_GSO_MAX_SEGS, the udp backend's), as the kubelet wires one."""
        env = self.subnet_env(index)
        ns = f"{self.marker}p{index}{len(self.pods)}"
        netns.create(ns)
        conf = BridgeConfig(
            subnet=pod_cidr(index),
            mtu=env.mtu,
            gso_max_segs=env.gso_max_segs,
            routes=(CLUSTER_CIDR,),
            data_dir=self.base / self.node_name(index) / "cni",
        )
        container_id = f"pt6{secrets.token_hex(6)}"
        result = netns.call_in(
            self.node_ns(index), lambda: cni_add(conf, container_id, f"/run/netns/{ns}", "eth0")
        )
        ip = str(result.ips[0].address).split("/")[0]
        pod = Pod(index, ns, ip)
        self.pods.append(pod)
        return pod


async def until(predicate: Callable[[], Any], within: float = 10.0, message: str = "") -> None:
    """Poll `predicate` (run on a worker thread: pyroute2 must not run on the loop's thread)."""
    deadline = time.monotonic() + within
    while True:
        if await asyncio.to_thread(predicate):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {message or predicate}")
        await asyncio.sleep(0.05)


# -- traffic (threads inside pod namespaces; blocking: call through asyncio.to_thread) -------


def _in(ns: str, fn: Callable[[], Any]) -> Any:
    return netns.call_in(ns, fn)


class TcpSink:
    """A TCP server in a pod: for each connection, reads to EOF and answers with the byte count
    followed by `reply_bytes` bytes."""

    def __init__(self, pod: Pod, port: int = 7000, reply_bytes: int = 0) -> None:
        self.reply_bytes = reply_bytes
        self.sock: socket.socket = _in(pod.netns, lambda: socket.create_server((pod.ip, port)))
        self.sock.settimeout(0.2)
        self.port = port
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(10)
                total = 0
                while chunk := conn.recv(65536):
                    total += len(chunk)
                conn.sendall(f"{total}\n".encode() + b"r" * self.reply_bytes)

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def tcp_exchange(
    client: Pod, server_ip: str, port: int, payload: int, timeout: float = 10
) -> tuple[int, int]:
    """Send `payload` bytes; returns (bytes the server counted, reply bytes received)."""

    def run() -> tuple[int, int]:
        with socket.create_connection((server_ip, port), timeout=timeout) as conn:
            conn.sendall(b"x" * payload)
            conn.shutdown(socket.SHUT_WR)
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
        head, _, rest = bytes(data).partition(b"\n")
        return int(head), len(rest)

    return _in(client.netns, run)  # type: ignore[no-any-return]


class UdpEcho:
    """A UDP echo server in a pod."""

    def __init__(self, pod: Pod, port: int = 7001) -> None:
        self.sock: socket.socket = _in(pod.netns, lambda: _udp_bound(pod.ip, port))
        self.sock.settimeout(0.2)
        self.port = port
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(OSError):
                self.sock.sendto(data, peer)

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def _udp_bound(ip: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    return s


IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2


def udp_echo(client: Pod, server_ip: str, port: int, size: int, dont_fragment: bool = False) -> int:
    """Send one datagram of `size` bytes (DF set if asked) and return the echoed size.

    Raises OSError (EMSGSIZE) when DF is set and the datagram does not fit the path MTU.
    """

    def run() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            if dont_fragment:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.settimeout(1.0)
            for _ in range(3):
                s.sendto(b"u" * size, (server_ip, port))
                with contextlib.suppress(TimeoutError):
                    data, _ = s.recvfrom(65535)
                    return len(data)
            raise TimeoutError(f"no UDP echo from {server_ip}:{port}")

    return _in(client.netns, run)  # type: ignore[no-any-return]


def ping(client: Pod, ip: str, size: int = 56, count: int = 1) -> bool:
    """ICMP echo with busybox ping inside the pod."""
    done = netns.run(
        ["busybox", "ping", "-c", str(count), "-W", "2", "-s", str(size), ip], client.netns
    )
    return done.returncode == 0


def in_network(address: str, network: str) -> bool:
    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(network)


class TcpEcho:
    """A TCP echo server in a pod (one thread per connection), for long-lived connections."""

    def __init__(self, pod: Pod, port: int = 7002) -> None:
        self.sock: socket.socket = _in(pod.netns, lambda: socket.create_server((pod.ip, port)))
        self.sock.settimeout(0.2)
        self.port = port
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def connect(client: Pod, ip: str, port: int) -> socket.socket:
    """A TCP connection made from inside the client pod (the socket stays in its namespace)."""
    return _in(client.netns, lambda: socket.create_connection((ip, port), timeout=10))  # type: ignore[no-any-return]


def echo_once(conn: socket.socket, message: bytes) -> bytes:
    conn.sendall(message)
    data = b""
    while len(data) < len(message):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def remote_subnets(lab: FlannelLab, index: int) -> dict[str, set[str]]:
    """What node `index` has programmed for remote nodes, per kind of entry.

    vxlan: routes / neighbours / fdb VTEPs on flannel.1; host-gw: routes via the underlay;
    udp: the datapath's route table (the udp backend's forwarding state lives in-process).
    """
    from podnet.kernel.overlay import Overlay

    ns = lab.node_ns(index)
    out: dict[str, set[str]] = {}
    with Netlink(ns) as nl:
        if lab.backend == "vxlan":
            dev = nl.require("flannel.1")
            out["routes"] = {r.dst for r in nl.routes() if r.oif == dev.index}
            with Overlay(ns) as overlay:
                out["neighbours"] = {n.ip for n in overlay.neighbours("flannel.1")}
                out["fdb"] = {str(e.dst) for e in overlay.fdb("flannel.1")}
        elif lab.backend == "host-gw":
            eth0 = nl.require("eth0")
            out["routes"] = {
                r.dst
                for r in nl.routes()
                if r.oif == eth0.index
                and r.gateway
                and in_network(r.dst.split("/")[0], CLUSTER_CIDR)
            }
        else:
            agent = lab.agents.get(index)
            network: Any = agent.component.network if agent else None
            out["routes"] = set(network._routes) if network is not None else set()
    return out


ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping_dont_fragment(client: Pod, ip: str, size: int) -> bool:
    """One ICMP echo with `size` data bytes and the DF bit set (raw socket, PMTUDISC_DO).

    True when the reply came back; raises OSError (EMSGSIZE) when the packet does not fit.
    """

    def run() -> bool:
        ident = secrets.randbits(16)
        payload = secrets.token_bytes(size)
        header = bytes([ICMP_ECHO_REQUEST, 0, 0, 0]) + ident.to_bytes(2, "big") + b"\0\1"
        checksum = _icmp_checksum(header + payload).to_bytes(2, "big")
        packet = header[:2] + checksum + header[4:] + payload
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.settimeout(2)
            s.sendto(packet, (ip, 0))
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    data, peer = s.recvfrom(65535)
                except TimeoutError:
                    return False
                icmp = data[(data[0] & 0x0F) * 4 :]
                if (
                    peer[0] == ip
                    and icmp[0] == ICMP_ECHO_REPLY
                    and int.from_bytes(icmp[4:6], "big") == ident
                ):
                    return icmp[8:] == payload
            return False

    return _in(client.netns, run)  # type: ignore[no-any-return]


ICMP_DEST_UNREACHABLE = 3
ICMP_TIME_EXCEEDED = 11
TRACE_PORT = 33434  # traceroute's first probe port: nothing listens there


@dataclass(frozen=True)
class Hop:
    address: str  # who answered the probe
    icmp_type: int  # ICMP_TIME_EXCEEDED from a router, ICMP_DEST_UNREACHABLE from the target


def trace_probe(client: Pod, ip: str, ttl: int, timeout: float = 1.0) -> Hop | None:
    """One traceroute probe from the pod: a UDP datagram to `ip`:33434 with IP TTL `ttl`.

    Returns who answered with an ICMP error quoting this very probe (matched on the quoted
    source port and destination), or None when nothing did within `timeout` (a silent hop).
    """

    def run() -> Hop | None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            udp.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            udp.bind((client.ip, 0))
            source_port = udp.getsockname()[1]
            udp.sendto(b"podnet-trace", (ip, TRACE_PORT))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                icmp.settimeout(left)
                try:
                    data, peer = icmp.recvfrom(2048)
                except TimeoutError:
                    return None
                header = (data[0] & 0x0F) * 4
                kind = data[header]
                quoted = data[header + 8 :]
                quoted_header = (quoted[0] & 0x0F) * 4 if quoted else 0
                if (
                    kind in (ICMP_DEST_UNREACHABLE, ICMP_TIME_EXCEEDED)
                    and len(quoted) >= quoted_header + 8
                    and quoted[9] == socket.IPPROTO_UDP
                    and quoted[16:20] == socket.inet_aton(ip)
                    and int.from_bytes(quoted[quoted_header : quoted_header + 2], "big")
                    == source_port
                ):
                    return Hop(str(peer[0]), kind)
            return None

    return _in(client.netns, run)  # type: ignore[no-any-return]


def traceroute(client: Pod, ip: str, max_hops: int = 8) -> list[Hop | None]:
    """traceroute from the pod, one probe per TTL: the hops until the target answers with
    port unreachable (the last entry), None for a hop that stayed silent."""
    hops: list[Hop | None] = []
    for ttl in range(1, max_hops + 1):
        hop = trace_probe(client, ip, ttl)
        hops.append(hop)
        if hop is not None and hop.icmp_type == ICMP_DEST_UNREACHABLE:
            break
    return hops
