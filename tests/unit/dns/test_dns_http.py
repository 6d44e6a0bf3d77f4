"""The DNS server's plain HTTP endpoints (`podnet.dns.http`): the path, other paths and
methods, HEAD, and a client that sends nothing useful."""

from __future__ import annotations

import asyncio

import pytest

from podnet.dns import http


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()
    answer = await reader.read()  # the server closes after one response
    writer.close()
    return answer


@pytest.mark.asyncio
async def test_one_path_answered_the_rest_refused() -> None:
    server = await http.serve("127.0.0.1", 0, "/ready", lambda: (503, "kubernetes"), "text/plain")
    port = server.sockets[0].getsockname()[1]
    try:
        ready = await exchange(port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ready.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Content-Type: text/plain; charset=utf-8\r\n" in ready
        assert b"Content-Length: 10\r\n" in ready and ready.endswith(b"\r\n\r\nkubernetes")
        assert (await exchange(port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await exchange(port, b"POST /ready HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        head = await exchange(port, b"HEAD /ready?x=1 HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and head.endswith(b"\r\n\r\n")  # no body
        assert await exchange(port, b"GET /ready") == b""  # no complete head: dropped
    finally:
        server.close()
        await server.wait_closed()
