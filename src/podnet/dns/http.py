"""The DNS server's plain HTTP endpoints, as CoreDNS has them: `/health`, `/ready`, `/metrics`.

What belongs here: `serve`, one listener answering GET (or HEAD) of one path with what its
handler returns, then closing the connection. Not aiohttp's server: importing it is 2 MB of a
DNS pod's memory (issue #20 caps the pod at 60 MB), and probes and scrapers need no more.
Anything else gets 404 (another path) or 405 (another method); a request head that does not
arrive within `HEAD_TIMEOUT` or exceeds the reader's 64 KiB limit is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Response = tuple[int, str]  # status, text body
HEAD_TIMEOUT = 10.0
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(
    address: str, port: int, path: str, handler: Callable[[], Response], content_type: str
) -> asyncio.Server:
    """Listen on address:port (0: a free port) and answer `path` with `handler()`."""
    wanted = path.encode()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            words = head.split(b"\r\n", 1)[0].split()
            if len(words) != 3 or words[0] not in (b"GET", b"HEAD"):
                status, body = 405, "405: Method Not Allowed"
            elif words[1].split(b"?", 1)[0] != wanted:
                status, body = 404, "404: Not Found"
            else:
                status, body = handler()
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + (data if words[0] != b"HEAD" else b"")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # the client went away or sent no proper request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(client, address, port)
