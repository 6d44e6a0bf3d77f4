"""`podnet.dial.connect`: a numeric address connects, or refuses, on the agent's loop without
its resolver (uvloop resolves on its thread pool); a name still goes through the resolver."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from podnet import dial
from podnet.testing.loops import NoResolverLoop


def run(loop: uvloop.Loop, main: Callable[[], Awaitable[None]]) -> None:
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def nonblocking(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


def test_a_numeric_address_connects_and_refuses_without_the_loops_resolver() -> None:
    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        closed = socket.create_server(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
        closed.close()
        with listener:
            with nonblocking() as sock:
                await dial.connect(sock, listener.getsockname())
                accepted, peer = listener.accept()
                accepted.close()
                assert peer == sock.getsockname()
            with nonblocking() as sock, pytest.raises(ConnectionRefusedError):
                await dial.connect(sock, ("127.0.0.1", refused_port))

    run(NoResolverLoop(), main)


def test_an_ipv6_address_connects_without_the_loops_resolver() -> None:
    async def main() -> None:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
        with listener, nonblocking(socket.AF_INET6) as sock:
            await dial.connect(sock, ("::1", listener.getsockname()[1]))
            accepted, _ = listener.accept()
            accepted.close()

    run(NoResolverLoop(), main)


def test_a_name_goes_through_the_loops_resolver() -> None:
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            with nonblocking() as sock, pytest.raises(AssertionError, match="localhost"):
                await dial.connect(sock, ("localhost", port))

    run(NoResolverLoop(), main)
