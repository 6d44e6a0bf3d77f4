"""The exec and log relay: the API server's half of `kubectl exec` and `kubectl logs`.

What belongs here: resolving which node agent serves a pod's container, and piping the client's
request to it. The agent (kubelet part, `podnet.agent.kubelet.server`) serves plain HTTP on
`<node InternalIP>:<node.status.daemonEndpoints.kubeletEndpoint.Port>` and requires
`Authorization: Bearer <cluster token>`:

- exec: WebSocket `GET /exec/{namespace}/{pod}/{container}?command=..&stdin=..&stdout=..
  &stderr=..&tty=..`, subprotocol `v5.channel.k8s.io` or `v4.channel.k8s.io`, Kubernetes
  channel framing (1 channel byte + payload; 3 = status JSON; 255 = close-channel in v5).
- logs: `GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&tailLines=
  &timestamps=&sinceSeconds=&limitBytes=` -> text/plain (chunked while following).

Invariants:
- Every check that can fail (pod, container, node, agent reachable, agent accepts the
  upgrade) happens *before* the client's WebSocket is accepted, so failures reach kubectl as a
  Status with an HTTP code, never as a silently dropped stream.
- The agent is asked for exactly the subprotocol the client negotiated, and binary frames are
  forwarded untouched in both directions; the agent's close code is passed on to the client
  (1000 after the channel-3 status is how client-go learns the stream ended normally).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from podnet.api.errors import ApiError, bad_request, internal
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.registry import Registry

log = logging.getLogger(__name__)

Obj = dict[str, Any]

EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
DEFAULT_KUBELET_PORT = 10250
_LOG_PARAMS = (
    "follow",
    "previous",
    "tailLines",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
)
_EXEC_FLAGS = ("stdin", "stdout", "stderr", "tty")


def choose_container(pod: Obj, requested: str | None) -> str:
    """The container a request means: the named one, else the default-container annotation,
    else the first; an unknown name is a 400 like upstream."""
    name = pod.get("metadata", {}).get("name", "")
    spec = pod.get("spec") or {}
    containers = [c.get("name") for c in spec.get("containers") or [] if isinstance(c, dict)]
    init = [c.get("name") for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    if requested:
        if requested not in containers and requested not in init:
            raise bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    annotated = (pod.get("metadata", {}).get("annotations") or {}).get(
        "kubectl.kubernetes.io/default-container"
    )
    if annotated in containers:
        return str(annotated)
    if not containers:
        raise bad_request(f"pod {name} has no containers")
    return str(containers[0])


def node_endpoint(node: Obj) -> tuple[str, int]:
    """(InternalIP, kubelet port) of a Node, as its agent reported them."""
    status = node.get("status") or {}
    addresses = [a for a in status.get("addresses") or [] if isinstance(a, dict)]
    internal_ips = [a.get("address") for a in addresses if a.get("type") == "InternalIP"]
    address = (
        internal_ips[0] if internal_ips else (addresses[0].get("address") if addresses else None)
    )
    if not address:
        name = node.get("metadata", {}).get("name", "")
        raise ApiError(
            503,
            "ServiceUnavailable",
            f"node {name} reports no address; is its podnet agent running?",
        )
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    return str(address), int(port) if isinstance(port, int) and port > 0 else DEFAULT_KUBELET_PORT


async def locate(
    registry: Registry, namespace: str, pod_name: str, container: str | None
) -> tuple[Obj, str, str]:
    """(pod, container, agent base URL) for a pod's container."""
    pod = await registry.get(BY_PLURAL["pods"], namespace, pod_name)
    chosen = choose_container(pod, container)
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise bad_request(f"pod {pod_name} does not have a host assigned")
    try:
        node = await registry.get(BY_PLURAL["nodes"], None, node_name)
    except ApiError as exc:
        if exc.code == 404:
            raise bad_request(
                f"pod {pod_name} is bound to node {node_name}, which does not exist any more"
            ) from None
        raise
    host, port = node_endpoint(node)
    host_part = f"[{host}]" if ":" in host else host
    return pod, chosen, f"http://{host_part}:{port}"


def _path(kind: str, namespace: str, pod: str, container: str) -> str:
    return "/".join(
        ["", kind, quote(namespace, safe=""), quote(pod, safe=""), quote(container, safe="")]
    )


async def _failure_from(response: aiohttp.ClientResponse) -> ApiError:
    body = await response.read()
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        status = json.loads(body)
        if isinstance(status, dict) and status.get("kind") == "Status":
            return ApiError.from_status(status, response.status)
    text = body.decode(errors="replace").strip() or response.reason or "no details"
    return ApiError(
        response.status if response.status >= 400 else 502,
        "InternalError",
        f"the node agent answered {response.status}: {text}",
    )


def _require_session(session: aiohttp.ClientSession | None) -> aiohttp.ClientSession:
    if session is None:
        raise internal("the exec/log relay is not running (no client session)")
    return session


async def serve_log(
    request: web.Request,
    registry: Registry,
    session: aiohttp.ClientSession | None,
    token: str,
    namespace: str,
    pod_name: str,
) -> web.StreamResponse:
    client = _require_session(session)
    _, container, base = await locate(registry, namespace, pod_name, request.query.get("container"))
    params = [(k, request.query[k]) for k in _LOG_PARAMS if request.query.get(k)]
    url = base + _path("containerLogs", namespace, pod_name, container)
    if params:
        url += "?" + urlencode(params)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    try:
        upstream = await client.get(url, headers=headers, timeout=timeout)
    except (aiohttp.ClientError, OSError) as exc:
        raise internal(f"error dialing backend: {base}: {exc}") from None
    async with upstream:
        if upstream.status != 200:
            raise await _failure_from(upstream)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/plain; charset=utf-8"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, aiohttp.ClientPayloadError):
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response


def _agent_hint(node: str) -> str:
    return f"is the podnet agent of node {node} running? `podnet status` shows it"


async def _require_agent(client: aiohttp.ClientSession, base: str, node: str) -> None:
    """Raise the dialing error if the node agent's endpoint does not answer."""
    try:
        async with client.get(base + "/healthz", timeout=aiohttp.ClientTimeout(total=3)):
            pass
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise internal(f"error dialing backend: {base}: {exc} ({_agent_hint(node)})") from None


async def serve_exec(
    request: web.Request,
    registry: Registry,
    session: aiohttp.ClientSession | None,
    token: str,
    namespace: str,
    pod_name: str,
) -> web.StreamResponse:
    client = _require_session(session)
    # pod, container and phase first: kubectl retries a failed WebSocket upgrade over SPDY,
    # and whichever attempt it reports must carry the real reason
    pod, container, base = await locate(
        registry, namespace, pod_name, request.query.get("container")
    )
    phase = (pod.get("status") or {}).get("phase")
    if phase != "Running":
        raise bad_request(
            f"cannot exec into container {container} of pod {pod_name}: the pod is "
            f"not running (phase {phase or 'unknown'})"
        )
    commands = request.query.getall("command", [])
    if not commands:
        raise bad_request("you must specify at least 1 command")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        # kubectl only falls back to SPDY after its WebSocket attempt failed; if that was
        # because the node's agent is down, say so rather than blaming the protocol
        await _require_agent(client, base, (pod.get("spec") or {}).get("nodeName", ""))
        raise bad_request(
            "exec needs a WebSocket upgrade (subprotocol v5.channel.k8s.io or v4.channel.k8s.io);"
            " SPDY is not supported by podnet — use kubectl >= 1.30 or the Python client"
        )
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    protocol = next((p for p in offered if p in EXEC_PROTOCOLS), None)
    if protocol is None:
        wanted = ", ".join(EXEC_PROTOCOLS)
        got = ", ".join(p for p in offered if p) or "none"
        raise bad_request(
            f"exec needs one of the WebSocket subprotocols {wanted}; the client offered {got}"
        )
    params: list[tuple[str, str]] = [("command", c) for c in commands]
    params += [(f, request.query[f].lower()) for f in _EXEC_FLAGS if f in request.query]
    url = base + _path("exec", namespace, pod_name, container) + "?" + urlencode(params)
    try:
        agent = await client.ws_connect(
            url,
            protocols=(protocol,),
            headers={"Authorization": f"Bearer {token}"},
            autoping=True,
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise ApiError(
            exc.status if exc.status >= 400 else 502,
            "InternalError",
            f"the node agent refused the exec stream: {exc.message}",
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        node = (pod.get("spec") or {}).get("nodeName", "")
        raise internal(f"error dialing backend: {base}: {exc} ({_agent_hint(node)})") from None
    if agent.protocol != protocol:
        await agent.close()
        raise internal(
            f"the node agent answered with subprotocol {agent.protocol!r}, not {protocol!r}"
        )

    downstream = web.WebSocketResponse(protocols=(protocol,), autoping=True, max_msg_size=0)
    try:
        await downstream.prepare(request)
    except BaseException:
        await agent.close()
        raise

    async def client_to_agent() -> None:
        async for message in downstream:
            if message.type == aiohttp.WSMsgType.BINARY:
                await agent.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                await agent.send_str(message.data)

    async def agent_to_client() -> None:
        async for message in agent:
            if message.type == aiohttp.WSMsgType.BINARY:
                await downstream.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                await downstream.send_str(message.data)

    up = asyncio.create_task(client_to_agent())
    down = asyncio.create_task(agent_to_client())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down.done():
            # the agent finished (status on channel 3 was forwarded): pass its close on
            code = agent.close_code if agent.close_code is not None else 1000
            await downstream.close(code=code)
        else:
            await agent.close()
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not agent.closed:
            await agent.close()
    return downstream
