"""userspace mode with its relay process (#19): the proxy sockets and the connections through
them outlive the agent's proxy. A stream opened before the proxy stops keeps flowing while it is
gone and after a new one took over, new connections are served all along, the new proxy gets
the same ports back, and leaving userspace mode stops the relay process. One sync of 2,000
portals (a message far beyond asyncio's 64 KiB line limit) is taken and the last one serves."""

from __future__ import annotations

import asyncio
import functools
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import procs
from podnet.agent.proxy.relay import LABEL, PortalSpec, RemoteRelay, recorded_relay
from podnet.kernel import netns
from podnet.kernel.rules import IptablesRunner
from podnet.testing.proxy import endpoint_slice, service
from podnet.testing.proxy_lab import ENDPOINT_IPS, ProxyNode, Topology, topology

pytestmark = pytest.mark.root

VIP = "10.96.0.20"
ECHO_PORT = 9000
ECHO = """
import socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
def serve(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology() as t:
        echo = netns.call_in(
            t.endpoints[0],
            functools.partial(
                subprocess.Popen,
                [sys.executable, "-c", ECHO, str(ECHO_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        )
        t.procs.append(echo)  # stopped by the topology, by pid
        yield t


def connect(topo: Topology) -> socket.socket:
    return netns.call_in(topo.client, lambda: socket.create_connection((VIP, 90), timeout=5))


def echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "the stream was cut"
        got += chunk
    return got


def portal_rules(topo: Topology) -> list[str]:
    saved = netns.call_in(topo.node, lambda: IptablesRunner().save("nat"))
    return sorted(line for line in saved.splitlines() if "KUBE-PORTALS" in line and "-A" in line)


def program(node: ProxyNode) -> None:
    node.put("services", service("default", "echo", VIP, port=90, port_name="echo"))
    node.put(
        "endpointslices",
        endpoint_slice("default", "echo", [ENDPOINT_IPS[0]], port=ECHO_PORT, port_name="echo"),
    )
    node.wait_programmed()


def test_streams_and_new_connections_survive_a_proxy_restart(topo: Topology) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{topo.marker}-relay") as tmp:
        relay_dir = Path(tmp)
        first = ProxyNode(topo, "userspace", relay_dir=relay_dir)
        with first:
            program(first)
            relay = recorded_relay(relay_dir)
            assert relay is not None
            rules = portal_rules(topo)
            stream = connect(topo)
        try:
            assert echo(stream, b"before") == b"before"
            # no agent: the relay goes on relaying and accepting with what it last got
            assert echo(stream, b"while the proxy is away") == b"while the proxy is away"
            with connect(topo) as fresh:
                assert echo(fresh, b"new connection") == b"new connection"
            second = ProxyNode(topo, "userspace", relay_dir=relay_dir)
            with second:
                program(second)
                assert recorded_relay(relay_dir) == relay  # the same process
                assert portal_rules(topo) == rules  # the same ports
                assert echo(stream, b"after" * 10000) == b"after" * 10000
                second.cleanup_rules()  # leaving userspace mode
                deadline = time.monotonic() + 5
                while procs.process_start_time(relay.pid) is not None:
                    assert time.monotonic() < deadline, "the relay did not exit"
                    time.sleep(0.02)
                assert not [r for r in procs.recorded(relay_dir) if r.label == LABEL]
                assert portal_rules(topo) == []
        finally:
            stream.close()
            procs.stop_all(relay_dir, grace_seconds=1)


def test_one_sync_of_thousands_of_portals(topo: Topology) -> None:
    count = 2000
    target = (f"{ENDPOINT_IPS[0]}:{ECHO_PORT}",)
    specs = [PortalSpec(f"default/s{i:04d}:echo/tcp", "tcp", target) for i in range(count)]

    async def sync_and_dial(relay: RemoteRelay) -> tuple[dict[str, int], dict[str, int], bytes]:
        try:
            first = await relay.apply(specs, None)
            again = await relay.apply(specs, None)
            reader, writer = await asyncio.open_connection("127.0.0.1", first[specs[-1].key])
            writer.write(b"the last portal")
            got = await reader.readexactly(len(b"the last portal"))
            writer.close()
            return first, again, got
        finally:
            await relay.shutdown()

    with tempfile.TemporaryDirectory(prefix=f"{topo.marker}-relay") as tmp:
        try:  # the relay process starts in the node's namespace, from this thread
            first, again, got = netns.call_in(
                topo.node, lambda: asyncio.run(sync_and_dial(RemoteRelay(Path(tmp))))
            )
        finally:
            procs.stop_all(Path(tmp), grace_seconds=1)
    assert len(set(first.values())) == count
    assert again == first  # a portal that stays keeps its port
    assert got == b"the last portal"
