"""The exec relay's Status when the node agent ends the stream without an exit status: it says
how the agent's WebSocket ended (the agent's own close, a restart, or a lost connection), the
one clue left once a lab, and the agent's log with it, is gone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from podnet.api import remotecommand as rc
from podnet.apiserver.streams.remotecommand import relay

pytestmark = pytest.mark.asyncio

AgentEnd = Callable[[web.Request, web.WebSocketResponse], Awaitable[None]]


class RecordingClient:
    """A client end without stdin (it sends nothing and stays connected, as `kubectl exec`
    without -i does) that records what the relay delivers."""

    def __init__(self) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.status: dict[str, object] | None = None

    async def inputs(self) -> AsyncIterator[rc.Frame]:
        await asyncio.Event().wait()  # until the relay is done with it
        yield rc.Frame(rc.STDIN, b"")

    async def output(self, channel: int, payload: bytes) -> None:
        self.received.append((channel, payload))

    async def finish(self, status_json: bytes) -> None:
        self.status = json.loads(status_json)


async def relayed(agent_end: AgentEnd, client: RecordingClient | None = None) -> RecordingClient:
    """Relay one exec from an agent whose WebSocket handler is `agent_end`."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(rc.V5,))
        await ws.prepare(request)
        await ws.send_bytes(rc.encode(rc.STDOUT, b"partial"))
        await agent_end(request, ws)
        return ws

    app = web.Application()
    app.router.add_get("/exec", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = client or RecordingClient()
    try:
        async with aiohttp.ClientSession() as session:
            agent = await session.ws_connect(f"http://127.0.0.1:{port}/exec", protocols=(rc.V5,))
            await relay(client, agent)
    finally:
        await runner.cleanup()
    return client


async def restarting(request: web.Request, ws: web.WebSocketResponse) -> None:
    await ws.close(code=1001, message=b"the kubelet is restarting")


async def connection_lost(request: web.Request, ws: web.WebSocketResponse) -> None:
    assert request.transport is not None
    request.transport.abort()


async def test_an_agent_restart_is_named_by_its_close_code() -> None:
    client = await relayed(restarting)
    assert client.received == [(rc.STDOUT, b"partial")]
    assert client.status is not None
    message = str(client.status["message"])
    assert "the node agent closed the stream without an exit status" in message
    assert "WebSocket close code 1001" in message


async def test_a_lost_agent_connection_is_named_as_such() -> None:
    client = await relayed(connection_lost)
    assert client.status is not None
    message = str(client.status["message"])
    assert "without an exit status" in message
    assert "WebSocket close code 1006" in message


class BrokenClient(RecordingClient):
    async def output(self, channel: int, payload: bytes) -> None:
        raise TypeError("the client end broke")


async def test_the_relays_own_failure_is_not_blamed_on_the_agent() -> None:
    client = BrokenClient()
    await relayed(restarting, client)
    assert client.status is not None
    message = str(client.status["message"])
    assert "relaying the stream failed" in message and "the client end broke" in message
    assert "node agent" not in message
