"""The kubelet's dials into a pod's network namespace (its probes, its port server's
`connect_in_pod`) connect, and fail with the same words, on the agent's loop without its
resolver: `podnet.dial.connect`, never uvloop's `sock_connect`, which resolved every numeric
pod address on libuv's thread pool.

Marks: root. One throwaway namespace with its loopback up (`scratch_netns`), removed even when
the test fails.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from podnet.agent.kubelet.probes import ProbeSpec, ProbeTarget, run_probe
from podnet.agent.kubelet.server import connect_in_pod
from podnet.api.errors import ApiError
from podnet.kernel import netns
from podnet.testing.loops import NoResolverLoop

pytestmark = pytest.mark.root


def listener_in(name: str, family: int, host: str) -> socket.socket:
    return netns.call_in(name, lambda: socket.create_server((host, 0), family=family))


def closed_port_in(name: str) -> int:
    with listener_in(name, socket.AF_INET, "127.0.0.1") as gone:
        return int(gone.getsockname()[1])


def without_resolver(main: Callable[[], Awaitable[None]]) -> None:
    loop = NoResolverLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


def test_probes_dial_the_pod_without_the_loops_resolver(scratch_netns: str) -> None:
    target = ProbeTarget("c1", str(netns.path(scratch_netns)), "127.0.0.1")
    refused = closed_port_in(scratch_netns)

    async def main() -> None:
        listener = listener_in(scratch_netns, socket.AF_INET, "127.0.0.1")
        server = await asyncio.start_server(answer_ok, sock=listener)
        port = listener.getsockname()[1]
        async with server:
            for probe in ({"tcpSocket": {"port": port}}, {"httpGet": {"port": port}}):
                spec = ProbeSpec.from_spec(probe)
                assert spec is not None
                assert await run_probe(spec, target, exec_fn=no_exec) == (True, "")
            spec = ProbeSpec.from_spec({"tcpSocket": {"port": refused}})
            assert spec is not None
            assert await run_probe(spec, target, exec_fn=no_exec) == (
                False,
                "[Errno 111] Connection refused",
            )

    without_resolver(main)


async def no_exec(_container_id: str, _command: object, _seconds: float) -> tuple[int, bytes]:
    raise AssertionError("no exec probe here")


def test_the_port_server_dials_the_pod_without_the_loops_resolver(scratch_netns: str) -> None:
    path = str(netns.path(scratch_netns))
    refused = closed_port_in(scratch_netns)

    async def main() -> None:
        # IPv4 first, as the container runtimes dial; a port only on ::1 is reached by IPv6
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with listener_in(scratch_netns, family, host) as listener:
                sock = await connect_in_pod(path, listener.getsockname()[1])
                with sock:
                    accepted, peer = listener.accept()
                    accepted.close()
                    assert peer[:2] == sock.getsockname()[:2]
        with pytest.raises(ApiError) as failed:
            await connect_in_pod(path, refused)
        assert failed.value.code == 500
        assert (
            f"IPv4: dial tcp4 127.0.0.1:{refused}: connect: connection refused, "
            f"IPv6: dial tcp6 [::1]:{refused}: connect: connection refused"
        ) in str(failed.value.status())

    without_resolver(main)
