"""The userspace relay's TCP data path on loopback: bytes spliced both ways intact, a client's
half-close carried through, a reset when no endpoint answers, connections closed with the core,
relayed sockets with room for a few pipefuls. Its dial (`podnet.dial.connect`) is tested in
tests/unit/test_dial.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator

import pytest

from podnet.agent.proxy.relay import SEND_BUFFER, LocalRelay, PortalSpec, RelayCore
from podnet.testing.waiting import eventually

KEY = "default/echo:80/tcp"


async def digest_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until the client's EOF, then answers with the size and sha256 of what came, then
    a reply larger than any pipe."""
    body = await reader.read()
    writer.write(f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode())
    writer.write(b"x" * (3 << 20))
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def relayed_digest_server() -> AsyncIterator[tuple[LocalRelay, int]]:
    """A relay with one portal to a `digest_server`: the relay and the portal's port; both
    are closed on the way out."""
    server = await asyncio.start_server(digest_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = LocalRelay(RelayCore())
    try:
        ports = await relay.apply([PortalSpec(KEY, "tcp", (f"127.0.0.1:{port}",))], None)
        yield relay, ports[KEY]
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_bytes_go_both_ways_through_the_kernel_and_half_close_is_kept() -> None:
    async with relayed_digest_server() as (relay, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = os.urandom(5 << 20)
        writer.write(sent)
        writer.write_eof()  # half-close: the answer must still come back
        line = await reader.readline()
        assert line.decode().split() == [str(len(sent)), hashlib.sha256(sent).hexdigest()]
        assert await reader.read() == b"x" * (3 << 20)
        writer.close()
        await writer.wait_closed()
        # both directions ended: the connection is closed
        await eventually(lambda: not relay.core.relays, what="the relay to close")


@pytest.mark.asyncio
async def test_a_portal_without_a_reachable_endpoint_resets_the_client() -> None:
    relay = LocalRelay(RelayCore())
    try:
        ports = await relay.apply([PortalSpec(KEY, "tcp", ())], None)
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[KEY])
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                await reader.read()
        writer.close()
    finally:
        await relay.close()


@pytest.mark.asyncio
async def test_closing_the_core_closes_open_connections() -> None:
    async with relayed_digest_server() as (relay, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"held open")
        await eventually(lambda: bool(relay.core.relays), what="the relay to connect")
        await relay.close()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # the relay closed its side
        writer.close()


@pytest.mark.root  # SO_SNDBUFFORCE: past net.core.wmem_max needs CAP_NET_ADMIN
@pytest.mark.asyncio
async def test_both_relayed_sockets_take_several_pipefuls_before_they_are_full() -> None:
    async with relayed_digest_server() as (relay, port):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: bool(relay.core.relays), what="the relay to connect")
        (spliced,) = relay.core.relays
        for sock in spliced.sockets:
            # the kernel doubles the value asked for (its bookkeeping), never less
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= SEND_BUFFER
        writer.close()
