"""The kubelet endpoint's port-forward tunnel over TLS (#11), dialled as the API server dials it
(`streams.dial.AgentDialer.tunnel`) to a port inside a pod's network namespace.

TLS cannot carry a half-close, so an end on either side must end the tunnel (containerd's
rule): a client that reads until the connection ends (the Python client's `portforward`, an
HTTP/1.0 download) gets the end soon after the pod closed, and the pod's connection ends when
the API server hangs up."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from podnet.apiserver.streams.dial import AgentDialer
from podnet.apiserver.streams.locate import AgentEndpoint
from podnet.kernel import netns

pytestmark = [pytest.mark.root, pytest.mark.asyncio]

NODE = "pnt4-node"  # the conftest's
PORT = 8080


class PodListener:
    """A server on localhost:PORT inside the pod's namespace: answers one line with
    `answer` and closes, and records when the client's side ended."""

    def __init__(self) -> None:
        self.client_ended = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line == b"question\n":
            writer.write(b"answer\n")
            await writer.drain()
            writer.close()
            return
        while await reader.read(65536):
            pass
        self.client_ended.set()
        writer.close()


@pytest_asyncio.fixture
async def pod(kubelet: Any, pod_netns: Any) -> AsyncIterator[PodListener]:
    kubelet.sandboxes[("default", "web-0")] = pod_netns.path

    def bound() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", PORT))
        return sock

    listener = PodListener()
    sock = netns.call_in(pod_netns.path, bound)
    listener.server = await asyncio.start_server(listener.handle, sock=sock)
    try:
        yield listener
    finally:
        listener.server.close()
        await listener.server.wait_closed()


@pytest_asyncio.fixture
async def dialer(kubelet: Any) -> AsyncIterator[tuple[AgentDialer, AgentEndpoint]]:
    tls = kubelet.client_tls()
    async with aiohttp.ClientSession() as session:
        yield AgentDialer(session, tls), AgentEndpoint(NODE, "127.0.0.1", kubelet.server.port)


async def test_the_tunnel_ends_soon_after_the_pod_closes(pod: PodListener, dialer: Any) -> None:
    agent_dialer, endpoint = dialer
    tunnel = await agent_dialer.tunnel(endpoint, "default", "web-0", PORT)
    try:
        await tunnel.write(b"question\n")
        received = b""
        async with asyncio.timeout(10):  # the agent's grace is 1 s; a hang never ends
            while chunk := await tunnel.read():
                received += chunk
        assert received == b"answer\n"
    finally:
        await tunnel.close()


async def test_the_pod_sees_the_end_when_the_api_server_hangs_up(
    pod: PodListener, dialer: Any
) -> None:
    agent_dialer, endpoint = dialer
    tunnel = await agent_dialer.tunnel(endpoint, "default", "web-0", PORT)
    await tunnel.write(b"some bytes, then nothing more\n")
    await tunnel.close()
    async with asyncio.timeout(10):
        await pod.client_ended.wait()
