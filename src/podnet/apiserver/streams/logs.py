"""pods/log: a container's log, streamed from its node agent as it is written.

The agent applies `follow`, `previous`, `tailLines`, `timestamps`, `sinceSeconds`, `sinceTime`
and `limitBytes` (see `podnet.agent.kubelet.server`); this relays the bytes as they arrive
and ends when the agent's answer ends or the client goes away.
"""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web

from podnet.api.streamedbody import streamed_response
from podnet.apiserver.registry import Registry
from podnet.apiserver.streams.dial import AgentDialer, agent_path
from podnet.apiserver.streams.locate import locate

LOG_PARAMS = (
    "follow",
    "previous",
    "tailLines",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
)


async def serve(
    request: web.Request, registry: Registry, dialer: AgentDialer, namespace: str, pod_name: str
) -> web.StreamResponse:
    located = await locate(registry, namespace, pod_name, request.query.get("container"))
    params = [(k, request.query[k]) for k in LOG_PARAMS if request.query.get(k)]
    path = agent_path("containerLogs", namespace, pod_name, located.container)
    upstream = await dialer.get(located.agent, path, params)
    async with upstream:
        response = streamed_response(request, {"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, aiohttp.ClientPayloadError):
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response
