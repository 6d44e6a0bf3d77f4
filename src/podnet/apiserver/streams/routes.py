"""The one entry point handlers use for pods' streaming subresources."""

from __future__ import annotations

import ssl

from aiohttp import ClientSession, web

from podnet.api.errors import ApiError, method_not_allowed
from podnet.apiserver.registry import Registry
from podnet.apiserver.streams import logs, portforward, remotecommand
from podnet.apiserver.streams.dial import AgentDialer

SUBRESOURCES = ("exec", "attach", "portforward", "log", "ephemeralcontainers")


async def serve(
    request: web.Request,
    registry: Registry,
    session: ClientSession | None,
    tls: ssl.SSLContext | None,
    subresource: str,
    namespace: str,
    pod: str,
) -> web.StreamResponse:
    dialer = AgentDialer(session, tls)
    if subresource == "ephemeralcontainers":
        # NotFound without a name is what kubectl debug reads as "ephemeral containers are
        # disabled for this cluster", quoting this message
        # (kubectl dereferences `details`: it must be present, without a name)
        raise ApiError(
            404,
            "NotFound",
            "podnet does not run ephemeral containers: use kubectl exec, or "
            "kubectl debug --copy-to=<new pod> to debug a copy of the pod",
            {
                "kind": "pods",
                "causes": [{"reason": "NotSupported", "field": "ephemeralcontainers"}],
            },
        )
    if subresource == "log":
        if request.method != "GET":
            raise method_not_allowed("pods/log only supports GET")
        return await logs.serve(request, registry, dialer, namespace, pod)
    if request.method not in ("GET", "POST"):
        raise method_not_allowed(f"pods/{subresource} supports GET (WebSocket) and POST (SPDY)")
    if subresource == "portforward":
        return await portforward.serve(request, registry, dialer, namespace, pod)
    return await remotecommand.serve(request, registry, dialer, namespace, pod, subresource)
