"""Every connection the API server opens to a node agent (the kubelet endpoint).

What belongs here: the transport, address and credentials of API server → agent traffic, and
turning an agent's refusal into the `ApiError` the client sees. Nothing else in the API server
dials an agent.

Security (upstream's `--kubelet-certificate-authority` and `--kubelet-client-certificate`):
every connection is TLS (`kubelet_client_tls`); the kubelet's serving certificate must be
signed by the cluster CA and name the address dialled (its InternalIP), and the API server
presents its client certificate (CN `kube-apiserver-kubelet-client`, O `system:masters`),
which the kubelet authenticates and authorizes (`nodes/proxy`).

The agent's contract (`podnet.agent.kubelet.server`):
- `GET /exec/{ns}/{pod}/{container}?command=..&stdin=&stdout=&stderr=&tty=` and
  `GET /attach/{ns}/{pod}/{container}?stdin=&stdout=&stderr=&tty=`: WebSocket, `v5.channel.k8s.io`;
- `POST /portForward/{ns}/{pod}?port=N` with `Upgrade: tcp`: 101, then the connection is a
  byte stream to `localhost:N` inside the pod's network namespace;
- `GET /containerLogs/{ns}/{pod}/{container}?...`: text/plain, chunked while following.
Errors before an upgrade are `Status` objects with an HTTP code (for exec and attach also in
the `X-Podnet-Status` header: a failed WebSocket handshake's body is not read).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import aiohttp

from podnet.api import remotecommand
from podnet.api.errors import ApiError, internal
from podnet.api.upgrade import SocketStream
from podnet.apiserver.streams.locate import AgentEndpoint

CONNECT_TIMEOUT = 5.0
MAX_ERROR_BODY = 64 * 1024


def agent_path(kind: str, *parts: str) -> str:
    return "/".join(["", kind, *(quote(p, safe="") for p in parts)])


def failure(status_code: int, reason: str, body: bytes, who: str) -> ApiError:
    """The client-facing error for an agent's non-success answer."""
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        status = json.loads(body)
        if isinstance(status, dict) and status.get("kind") == "Status":
            return ApiError.from_status(status, status_code)
    text = body.decode(errors="replace").strip() or reason or "no details"
    return ApiError(
        status_code if status_code >= 400 else 502,
        "InternalError",
        f"{who} answered {status_code}: {text}",
    )


def kubelet_client_tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS settings of every connection to a kubelet: verify its serving certificate
    against the cluster CA (and the address dialled), present the API server's client
    certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(cert, key)
    return context


@dataclass
class AgentDialer:
    session: aiohttp.ClientSession | None
    tls: ssl.SSLContext | None

    def _client(self) -> tuple[aiohttp.ClientSession, ssl.SSLContext]:
        if self.session is None or self.tls is None:
            raise internal("the API server is not connected to node agents (no client session)")
        return self.session, self.tls

    @staticmethod
    def _unreachable(agent: AgentEndpoint, exc: BaseException) -> ApiError:
        if isinstance(exc, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError):
            return internal(
                f"error dialing backend: {agent.authority()}: the kubelet's serving certificate "
                f"is not trusted ({exc}); the agent of node {agent.node} needs a certificate "
                "from the cluster CA for its address (`podnet node-credentials`)"
            )
        return internal(f"error dialing backend: {agent.authority()}: {exc} ({agent.hint()})")

    async def websocket(
        self, agent: AgentEndpoint, path: str, params: Sequence[tuple[str, str]]
    ) -> aiohttp.ClientWebSocketResponse:
        """A v5 channel WebSocket to the agent (exec, attach)."""
        url = f"wss://{agent.authority()}{path}?{urlencode(params)}"
        session, tls = self._client()
        try:
            ws = await session.ws_connect(
                url,
                protocols=(remotecommand.V5,),
                ssl=tls,
                autoping=True,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            )
        except aiohttp.WSServerHandshakeError as exc:
            carried = exc.headers.get(remotecommand.REFUSAL_HEADER) if exc.headers else None
            if carried:  # the agent's own Status: 'container "b" in pod "x" is not running'
                raise failure(exc.status, exc.message, carried.encode(), "the node agent") from None
            raise ApiError(
                exc.status if exc.status >= 400 else 502,
                "InternalError",
                f"the node agent refused the stream: {exc.message}",
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(agent, exc) from None
        if ws.protocol != remotecommand.V5:
            await ws.close()
            raise internal(
                f"the node agent answered with subprotocol {ws.protocol!r}, not {remotecommand.V5}"
            )
        return ws

    async def tunnel(
        self, agent: AgentEndpoint, namespace: str, pod: str, port: int
    ) -> SocketStream:
        """A byte stream to `localhost:port` in the pod's network namespace."""
        _, tls = self._client()
        try:
            stream = await asyncio.wait_for(
                SocketStream.connect(agent.host, agent.port, tls), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            raise self._unreachable(agent, exc) from None
        try:
            path = agent_path("portForward", namespace, pod) + f"?port={port}"
            await stream.write(
                (
                    f"POST {path} HTTP/1.1\r\nHost: {agent.authority()}\r\n"
                    "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
                ).encode()
            )
            async with asyncio.timeout(CONNECT_TIMEOUT):
                head, rest = await stream.read_until(b"\r\n\r\n", MAX_ERROR_BODY)
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                code = int(status_line.split(" ", 2)[1])
                if code == 101:
                    stream.unread(rest)  # the pod may have spoken already
                    return stream
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in header_lines if line)
                }
                length = min(int(headers.get("content-length", "0") or 0), MAX_ERROR_BODY)
                body = rest
                while len(body) < length and (chunk := await stream.read()):
                    body += chunk
            raise failure(code, status_line, body[:length], "the node agent")
        except ApiError:
            await stream.close()
            raise
        except (OSError, TimeoutError, ValueError, IndexError, EOFError) as exc:
            await stream.close()
            raise self._unreachable(agent, exc) from None

    async def get(
        self, agent: AgentEndpoint, path: str, params: Sequence[tuple[str, str]]
    ) -> aiohttp.ClientResponse:
        """A plain GET (container logs); the caller reads and releases the response."""
        url = f"https://{agent.authority()}{path}"
        if params:
            url += "?" + urlencode(params)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        session, tls = self._client()
        try:
            response = await session.get(url, ssl=tls, timeout=timeout)
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(agent, exc) from None
        if response.status != 200:
            body = await response.content.read(MAX_ERROR_BODY)
            response.release()
            raise failure(response.status, response.reason or "", body, "the node agent")
        return response
