"""The kubelet's HTTP endpoint: exec, attach, port-forward and container logs, for the API server.

Contract with the API server (exact; its side is `podnet.apiserver.streams.dial`):
- HTTPS only, on `<node ip>:<port>` (10250 by default), with a serving certificate from the
  cluster CA; every request, `/healthz` included, is authenticated (a client certificate from
  the cluster CA, or a bearer token) and authorized (`nodes/proxy` ...) by `authn.KubeletAuth`,
  else 401/403 with a Status body;
- `GET /exec/{namespace}/{pod}/{container}?command=..&command=..&stdin=&stdout=&stderr=&tty=`
  upgraded to a WebSocket speaking `v5.channel.k8s.io` or `v4.channel.k8s.io`
  (`podnet.api.remotecommand`); the command runs inside the container (launcher `exec`), with
  a pty when tty=true; after it exits one Status goes on channel 3 and the socket closes with
  1000. A non-upgrade request gets 400 with a Status;
- `GET /attach/{namespace}/{pod}/{container}?stdin=&stdout=&stderr=&tty=`: the same channels,
  wired to the container's own stdio through its shim's attach socket; the Status comes when
  the container exits (or the client detaches: then no Status, the socket just closes);
- `POST /portForward/{namespace}/{pod}?port=N` with `Upgrade: tcp`: connects to localhost:N
  inside the pod's network namespace (as the kubelet's runtime does) and answers 101; the
  connection is then the byte stream of that TCP connection. TLS cannot pass a half-close on:
  when the pod's side ends, the API server's direction gets `PORT_FORWARD_GRACE` and then the
  connection closes (containerd's rule); when the API server hangs up, the pod's connection
  gets the end and closes.
  A refused connect is a 500 Status naming the port, before any upgrade;
- `GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&tailLines=&timestamps=`
  `&sinceSeconds=&sinceTime=&limitBytes=`
  answers text/plain, chunked while following until the container exits or the client goes.

`resolve(namespace, pod, container)` (given by the kubelet from its pod state) names the
current container id, `netns(namespace, pod)` the pod's network namespace. `previous=true`
needs no second resolver: the runtime keeps the logs of earlier attempts and
`Runtime.previous_log_path(current id)` finds the latest one, so `--previous` works as long as
the pod has a current container record (as in Kubernetes).

Errors before the upgrade are Kubernetes Status objects: 404 for an unknown pod/container,
400 for bad parameters or a container that is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from aiohttp import WSMsgType, web

from podnet import dial
from podnet.agent.kubelet import attachsocket, execsocket
from podnet.agent.kubelet.authn import KubeletAuth
from podnet.agent.kubelet.cri import ContainerNotFound, ContainerNotRunning
from podnet.agent.kubelet.logformat import (
    LineJoiner,
    LogLine,
    LogOptions,
    parse_records,
    render_line,
    rotated_path,
    select_lines,
)
from podnet.agent.kubelet.runtime import Runtime
from podnet.api import remotecommand as ch
from podnet.api.errors import ApiError, bad_request, internal
from podnet.api.meta import parse_rfc3339
from podnet.api.streamedbody import streamed_response
from podnet.api.upgrade import SocketStream, UpgradedResponse, bridge
from podnet.kernel import netns

log = logging.getLogger(__name__)

Resolve = Callable[[str, str, str], str | None]
ResolveNetns = Callable[[str, str], str | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FOLLOW_POLL_SECONDS = 0.1
SHUTDOWN_SECONDS = 2.0
EXIT_DRAIN_SECONDS = 5.0  # after the exec'd command exits, wait this long for its output
CONNECT_SECONDS = 5.0  # port-forward: connecting to the pod's port
PORT_FORWARD_GRACE = 1.0  # after the pod's side ends, the API server's gets this long (containerd)


def parse_bool(value: str | None, name: str) -> bool:
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise bad_request(f"parameter {name}={value!r} must be true or false")


def parse_int(value: str | None, name: str, minimum: int = 0) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise bad_request(f"parameter {name}={value!r} must be an integer") from None
    if number < minimum:
        raise bad_request(f"parameter {name}={value} must be at least {minimum}")
    return number


def error_response(error: ApiError) -> web.Response:
    """The Status of a refusal, in the body and (for the API server's WebSocket client, which
    never sees the body of a refused upgrade) in `REFUSAL_HEADER`."""
    status = error.status()
    header = json.dumps(status, separators=(",", ":"))  # ASCII, one line
    return web.json_response(status, status=error.code, headers={ch.REFUSAL_HEADER: header})


async def connect_in_pod(netns_path: str, port: int) -> socket.socket:
    """A TCP connection to localhost:port inside the pod's network namespace (IPv4, then
    IPv6, as the container runtimes dial), or a 500 Status saying why neither worked."""
    failures: list[str] = []
    for family, label, address in (
        (socket.AF_INET, "IPv4: dial tcp4", ("127.0.0.1", port)),
        (socket.AF_INET6, "IPv6: dial tcp6", ("::1", port)),
    ):
        where = f"{address[0]}:{port}" if family == socket.AF_INET else f"[::1]:{port}"
        try:
            sock = await asyncio.to_thread(
                netns.call_in, netns_path, lambda f=family: socket.socket(f, socket.SOCK_STREAM)
            )
        except OSError as exc:
            failures.append(f"{label} {where}: {os.strerror(exc.errno or 0).lower()}")
            continue
        sock.setblocking(False)
        try:
            await asyncio.wait_for(dial.connect(sock, address), CONNECT_SECONDS)
            return sock
        except TimeoutError:
            sock.close()
            failures.append(f"{label} {where}: i/o timeout after {CONNECT_SECONDS:g}s")
        except OSError as exc:
            sock.close()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            failures.append(f"{label} {where}: connect: {reason}")
    raise ApiError(
        500,
        "InternalError",
        f"failed to connect to localhost:{port} inside the pod's network namespace: "
        + ", ".join(failures),
    )


class KubeletServer:
    def __init__(
        self,
        runtime: Runtime,
        resolve: Resolve,
        auth: KubeletAuth,
        netns: ResolveNetns | None = None,
    ) -> None:
        self.runtime = runtime
        self.resolve = resolve
        self.netns = netns
        self.auth = auth
        self.runner: web.AppRunner | None = None
        self.port: int | None = None  # the bound port once started (useful with port 0)
        self.stopping = asyncio.Event()
        self.sessions: set[ExecSession] = set()
        self.tunnels: set[asyncio.Task[None]] = set()
        self.attached: set[AttachSession] = set()

    # -- lifecycle -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.authenticate])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_route("*", "/exec/{namespace}/{pod}/{container}", self.exec)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self.logs)
        app.router.add_route("*", "/portForward/{namespace}/{pod}", self.port_forward)
        app.router.add_route("*", "/attach/{namespace}/{pod}/{container}", self.attach)
        return app

    async def start(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        # open exec sessions and log follows end within SHUTDOWN_SECONDS of stop()
        self.runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True, ssl_context=tls)
        await site.start()
        bound = self.runner.addresses
        self.port = int(bound[0][1]) if bound else port

    async def stop(self) -> None:
        """Stop serving: log follows end, exec and attach streams end (their processes keep
        running in the container's shim), then the listener closes."""
        self.stopping.set()
        for session in list(self.sessions):
            session.detach()
        for tunnel in list(self.tunnels):
            tunnel.cancel()
        for attached in list(self.attached):
            attached.detach()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # -- plumbing ------------------------------------------------------------------------

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            peercert = request.transport.get_extra_info("peercert") if request.transport else None
            caller = await self.auth.authenticate(
                peercert, request.headers.get("Authorization", "")
            )
            await self.auth.authorize(caller, request.method, request.path)
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def container_id(self, request: web.Request) -> str:
        ns = request.match_info["namespace"]
        pod = request.match_info["pod"]
        container = request.match_info["container"]
        try:
            found = self.resolve(ns, pod, container)
        except Exception as exc:
            log.exception("resolve(%s, %s, %s) failed", ns, pod, container)
            raise internal(f"looking up container {container} of pod {ns}/{pod}: {exc}") from exc
        if found is None:
            raise ApiError(
                404,
                "NotFound",
                f'container "{container}" in pod "{pod}" (namespace "{ns}") not found on this node',
                {"name": pod, "kind": "pods"},
            )
        return found

    # -- exec ----------------------------------------------------------------------------

    @staticmethod
    def stream_options(request: web.Request) -> tuple[bool, bool, bool, bool]:
        """(tty, stdin, stdout, stderr) of an exec or attach; stderr is merged into a tty."""
        query = request.query
        tty = parse_bool(query.get("tty"), "tty")
        use_stdin = parse_bool(query.get("stdin"), "stdin")
        use_stdout = parse_bool(query.get("stdout"), "stdout")
        use_stderr = parse_bool(query.get("stderr"), "stderr") and not tty
        if not (use_stdin or use_stdout or use_stderr):
            raise bad_request("you must specify at least 1 of stdin, stdout, stderr")
        return tty, use_stdin, use_stdout, use_stderr

    @staticmethod
    def websocket(request: web.Request, what: str) -> tuple[web.WebSocketResponse, str]:
        """The WebSocket to answer with and its subprotocol, or a 400 saying what is wrong."""
        offered = [
            p for h in request.headers.getall("Sec-WebSocket-Protocol", []) for p in h.split(",")
        ]
        protocol = ch.negotiate(offered)
        ws = web.WebSocketResponse(protocols=ch.SUPPORTED_PROTOCOLS, autoping=True)
        if not ws.can_prepare(request).ok:
            raise bad_request(
                f"{what} needs a WebSocket upgrade (GET with Upgrade: websocket); "
                f"offer {ch.V5} or {ch.V4}"
            )
        if protocol is None:
            raise bad_request(
                f"no supported WebSocket subprotocol offered ({', '.join(offered) or 'none'});"
                f" podnet speaks {ch.V5} and {ch.V4}"
            )
        return ws, protocol

    def not_running(self, request: web.Request) -> ApiError:
        container, pod = request.match_info["container"], request.match_info["pod"]
        return bad_request(f'container "{container}" in pod "{pod}" is not running')

    async def exec(self, request: web.Request) -> web.StreamResponse:
        command = request.query.getall("command", [])
        if not command:
            raise bad_request("you must specify at least one command for the container")
        tty, use_stdin, use_stdout, use_stderr = self.stream_options(request)
        container_id = self.container_id(request)
        try:
            self.runtime.exec_command_line(container_id, command)
        except (ContainerNotRunning, ContainerNotFound):
            raise self.not_running(request) from None
        ws, protocol = self.websocket(request, "exec")
        await ws.prepare(request)
        session = ExecSession(
            self.runtime,
            ws,
            protocol,
            container_id,
            command,
            tty=tty,
            stdin=use_stdin,
            stdout=use_stdout,
            stderr=use_stderr,
        )
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
        return ws

    # -- attach --------------------------------------------------------------------------

    async def attach(self, request: web.Request) -> web.StreamResponse:
        tty, use_stdin, use_stdout, use_stderr = self.stream_options(request)
        container_id = self.container_id(request)
        if not self.container_running(container_id):
            raise self.not_running(request)
        path = self.runtime.container_dir(container_id) / attachsocket.SOCKET_NAME
        try:
            sock = await asyncio.to_thread(attachsocket.connect, str(path))
        except OSError as exc:
            raise bad_request(
                f'container "{request.match_info["container"]}" cannot be attached to: its '
                f"shim does not answer ({exc.strerror or exc}); it may have just exited"
            ) from None
        try:
            ws, protocol = self.websocket(request, "attach")
            await ws.prepare(request)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        session = AttachSession(
            self.runtime,
            ws,
            protocol,
            container_id,
            reader,
            writer,
            tty=tty,
            stdin=use_stdin,
            stdout=use_stdout,
            stderr=use_stderr,
        )
        self.attached.add(session)
        try:
            await session.run()
        finally:
            self.attached.discard(session)
            writer.close()
        return ws

    # -- port-forward --------------------------------------------------------------------

    async def port_forward(self, request: web.Request) -> web.StreamResponse:
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        port = parse_int(request.query.get("port"), "port", minimum=1)
        if port is None or port > 65535:
            raise bad_request("parameter port must be a port number between 1 and 65535")
        netns = self.netns(namespace, pod) if self.netns is not None else None
        if netns is None:
            raise ApiError(
                404,
                "NotFound",
                f'pod "{pod}" (namespace "{namespace}") has no sandbox on this node',
                {"name": pod, "kind": "pods"},
            )
        if request.headers.get("Upgrade", "").lower() != "tcp":
            raise bad_request("port forwarding needs an HTTP upgrade to tcp (Upgrade: tcp)")
        sock = await connect_in_pod(netns, port)
        response = UpgradedResponse({"Connection": "Upgrade", "Upgrade": "tcp"})
        try:
            await response.prepare(request)
            pod_side = await SocketStream.adopt(sock)
        except BaseException:
            sock.close()
            raise
        task = asyncio.create_task(bridge(response, pod_side, pod_side, PORT_FORWARD_GRACE))
        self.tunnels.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
        finally:
            self.tunnels.discard(task)
            await pod_side.close()
            await response.close()
        return response

    # -- logs ----------------------------------------------------------------------------

    async def logs(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        follow = parse_bool(query.get("follow"), "follow")
        previous = parse_bool(query.get("previous"), "previous")
        options = LogOptions(
            timestamps=parse_bool(query.get("timestamps"), "timestamps"),
            tail_lines=parse_int(query.get("tailLines"), "tailLines"),
            since_epoch=self.since(query.get("sinceSeconds"), query.get("sinceTime")),
            limit_bytes=parse_int(query.get("limitBytes"), "limitBytes", minimum=1),
        )
        container_id = self.container_id(request)
        if previous:
            path = self.runtime.previous_log_path(container_id)
            if path is None:
                raise bad_request(
                    f'previous terminated container "{request.match_info["container"]}" in pod '
                    f'"{request.match_info["pod"]}" not found'
                )
            follow = False
        else:
            path = self.runtime.log_path(container_id)
        response = streamed_response(request, {"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        streamer = LogStreamer(path, options)
        try:
            await streamer.send(response, streamer.initial(complete_only=follow))
            while follow and not streamer.done and not self.stopping.is_set():
                running = self.container_running(container_id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), FOLLOW_POLL_SECONDS)
                lines = streamer.more()
                if not running and not lines:
                    await streamer.send(response, streamer.finish())
                    break
                await streamer.send(response, lines)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away: nothing left to do
        finally:
            streamer.close()
        return response

    def container_running(self, container_id: str) -> bool:
        try:
            return self.runtime.inspect(container_id).running
        except ContainerNotFound:
            return False

    @staticmethod
    def since(seconds: str | None, since_time: str | None) -> float | None:
        n = parse_int(seconds, "sinceSeconds", minimum=1)
        if n is not None:
            return time.time() - n
        if since_time:
            when = parse_rfc3339(since_time)
            if when is None:
                raise bad_request(f"sinceTime={since_time!r} is not an RFC3339 time")
            return when.timestamp()
        return None


class LogStreamer:
    """Reads a CRI log file incrementally and renders it as `kubectl logs` options ask.

    The first read takes the rotated file (`<log>.1`) and then the current one; later reads
    continue in the open file and, when the shim rotates it (the path names a new inode),
    finish the old file before moving on to the new one, so a follower loses nothing."""

    def __init__(self, path: Path, options: LogOptions) -> None:
        self.path = path
        self.options = options
        self.file: BinaryIO | None = None
        self.leftover = b""
        self.joiner = LineJoiner()
        self.sent = 0
        self.done = False

    def read_new(self) -> bytes:
        chunks: list[bytes] = []
        if self.file is None:
            with contextlib.suppress(FileNotFoundError):
                chunks.append(Path(rotated_path(str(self.path))).read_bytes())
            try:
                self.file = self.path.open("rb")
            except FileNotFoundError:
                return b"".join(chunks)
        chunks.append(self.file.read())
        try:
            current = self.path.stat().st_ino
        except FileNotFoundError:
            current = None
        if current is not None and current != os.fstat(self.file.fileno()).st_ino:
            chunks.append(self.file.read())  # the rest of the rotated file
            self.file.close()
            self.file = self.path.open("rb")
            chunks.append(self.file.read())
        return b"".join(chunks)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def read_lines(self) -> list[LogLine]:
        data = self.leftover + self.read_new()
        records, used = parse_records(data)
        self.leftover = data[used:]
        return self.joiner.feed(records)

    def initial(self, complete_only: bool) -> list[LogLine]:
        """What is in the file now, --since and --tail applied. When following, a trailing
        partial line waits for its end; otherwise it is shown as it is."""
        lines = self.read_lines()
        if not complete_only:
            lines += self.joiner.finish()
        return select_lines(lines, self.options)

    def more(self) -> list[LogLine]:
        since = LogOptions(since_epoch=self.options.since_epoch)
        return select_lines(self.read_lines(), since)

    def finish(self) -> list[LogLine]:
        return select_lines(
            self.read_lines() + self.joiner.finish(),
            LogOptions(since_epoch=self.options.since_epoch),
        )

    async def send(self, response: web.StreamResponse, lines: list[LogLine]) -> None:
        if self.done or not lines:
            return
        data = b"".join(render_line(line, self.options.timestamps) for line in lines)
        limit = self.options.limit_bytes
        if limit is not None:
            data = data[: max(0, limit - self.sent)]
            if self.sent + len(data) >= limit:
                self.done = True
        self.sent += len(data)
        if data:
            await response.write(data)


class ExecSession:
    """One exec: a process the container's shim runs for us (`execsocket.py`), its streams
    wired to the WebSocket's channels.

    The process is the shim's, not ours: when the client goes away we ask the shim to kill it
    (as before); when the agent stops, only the stream ends and the process keeps running."""

    def __init__(
        self,
        runtime: Runtime,
        ws: web.WebSocketResponse,
        protocol: str,
        container_id: str,
        command: list[str],
        *,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> None:
        self.runtime = runtime
        self.ws = ws
        self.protocol = protocol
        self.container_id = container_id
        self.command = command
        self.request = execsocket.ExecRequest(tuple(command), tty, stdin, stdout, stderr)
        self.tty = tty
        self.use_stdin = stdin
        self.writer: asyncio.StreamWriter | None = None  # the shim's connection (read side)
        self.shim_out: socket.socket | None = None  # a duplicate of it that stdin is written to
        self.detached = False
        self.send_lock = asyncio.Lock()

    async def send(self, channel: int, payload: bytes) -> None:
        if self.ws.closed:
            return
        async with self.send_lock:
            with contextlib.suppress(ConnectionResetError):
                await self.ws.send_bytes(ch.encode(channel, payload))

    async def fail(self, message: str) -> None:
        await self.send(ch.ERROR, json.dumps(ch.internal_error_status(message)).encode())
        await self.ws.close(code=1000)

    async def run(self) -> None:
        path = self.runtime.container_dir(self.container_id) / execsocket.SOCKET_NAME
        try:
            sock = await asyncio.to_thread(attachsocket.connect, str(path))
        except OSError as exc:
            await self.fail(
                f"the container's shim does not answer ({exc.strerror or exc}); "
                "it may have just exited"
            )
            return
        # Writes go through a duplicate of the socket: once the process exited, the shim sends
        # the exit status and hangs up, and a write after that fails; through the transport it
        # would tear the read side down too (its StreamReader then raises instead of giving out
        # the exit status it holds, or the status is never read).
        shim_out = self.shim_out = sock.dup()
        shim_out.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self.writer = writer
        await self.to_shim(self.request.to_frame())
        request = self.request
        first = ch.STDOUT if request.stdout else ch.STDERR if request.stderr else ch.ERROR
        await self.send(first, b"")  # kubelet's "connection established" notice
        down = asyncio.create_task(self.from_shim(reader))
        up = asyncio.create_task(self.read_client())
        try:
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            if not down.done():  # the client went away first: end the process too
                await self.kill()
                return
            status = down.result()
            if self.detached:  # the agent stops: the stream ends, the process goes on
                await self.ws.close(code=1001, message=b"the kubelet is restarting")
                return
            if status is None:  # the shim hung up without a status: the container is gone
                await self.fail("the container's shim ended the exec without an exit status")
                return
            await self.send(ch.ERROR, json.dumps(status).encode())
            await self.ws.close(code=1000)
        except (ConnectionError, OSError) as exc:
            # the shim's connection failed (a reset loses the frames still buffered here):
            # say so, rather than a bare close the client cannot tell from the agent's death
            log.warning("exec in %s ended: %s", self.container_id, exc)
            if not self.detached:
                with contextlib.suppress(ConnectionError, OSError):
                    await self.fail(f"the connection to the container's shim failed: {exc}")
        finally:
            for task in (down, up):
                task.cancel()
            await asyncio.gather(down, up, return_exceptions=True)
            writer.close()
            self.writer = None
            shim_out.close()

    async def from_shim(self, reader: asyncio.StreamReader) -> dict[str, object] | None:
        """Relay output until the shim reports the exit; the Status to send (None: hung up)."""
        frames = attachsocket.FrameReader()
        channels = {attachsocket.STDOUT: ch.STDOUT, attachsocket.STDERR: ch.STDERR}
        while chunk := await reader.read(65536):
            for kind, payload in frames.feed(chunk):
                if kind == execsocket.EXIT:
                    result = json.loads(payload)
                    code = int(result.get("exit_code", 126))
                    message = str(result.get("message") or "")
                    message = message or f"error executing command {self.command}, exit code {code}"
                    return ch.exit_status(code, message)
                channel = channels.get(kind)
                if channel is not None:
                    await self.send(channel, payload)
        return None

    async def to_shim(self, data: bytes) -> None:
        """Send a frame to the shim, waiting until it took it (back-pressure); dropped once
        the shim hung up (its exit status is then on the read side)."""
        if self.shim_out is None or self.shim_out.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(self.shim_out, data)

    async def kill(self) -> None:
        """The client went away: the shim kills the process's group."""
        await self.to_shim(attachsocket.frame(execsocket.KILL))

    def detach(self) -> None:
        """The agent stops: end the stream, leave the process to the shim."""
        self.detached = True
        if self.writer is not None:
            self.writer.close()

    async def read_client(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.TEXT:
                    await self.ws.close(code=1003, message=b"text messages are not supported")
                break
            try:
                frame = ch.decode(msg.data, self.protocol)
                if frame.channel == ch.STDIN and self.use_stdin:
                    await self.to_shim(attachsocket.frame(attachsocket.STDIN, frame.payload))
                elif frame.channel == ch.RESIZE and self.tty:
                    for width, height in ch.parse_resize(frame.payload):
                        await self.to_shim(attachsocket.resize_frame(width, height))
                elif frame.channel == ch.CLOSE and frame.payload == bytes([ch.STDIN]):
                    await self.to_shim(attachsocket.frame(attachsocket.CLOSE_STDIN))
            except ch.ProtocolError as exc:
                log.warning("exec protocol error from client: %s", exc)
                await self.ws.close(code=1002, message=str(exc).encode()[:120])
                break


class AttachSession:
    """One attach: the container's attach socket wired to the WebSocket's channels.

    The container keeps running when the client detaches; when the container exits (its shim
    hangs up), the client gets the exit status on channel 3 and a normal close."""

    def __init__(
        self,
        runtime: Runtime,
        ws: web.WebSocketResponse,
        protocol: str,
        container_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> None:
        self.runtime = runtime
        self.ws = ws
        self.protocol = protocol
        self.container_id = container_id
        self.reader = reader
        self.writer = writer
        self.tty = tty
        self.channels = {attachsocket.STDOUT: ch.STDOUT if stdout else None}
        self.channels[attachsocket.STDERR] = (
            (ch.STDOUT if stdout else None) if tty else (ch.STDERR if stderr else None)
        )
        self.use_stdin = stdin

    def detach(self) -> None:
        self.writer.close()

    async def from_client(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                break
            try:
                frame = ch.decode(msg.data, self.protocol)
            except ch.ProtocolError as exc:
                await self.ws.close(code=1002, message=str(exc).encode()[:120])
                break
            if frame.channel == ch.STDIN and self.use_stdin:
                self.writer.write(attachsocket.frame(attachsocket.STDIN, frame.payload))
            elif frame.channel == ch.RESIZE and self.tty:
                for width, height in ch.parse_resize(frame.payload):
                    self.writer.write(attachsocket.resize_frame(width, height))
            elif frame.channel == ch.CLOSE and frame.payload == bytes([ch.STDIN]):
                self.writer.write(attachsocket.frame(attachsocket.CLOSE_STDIN))
            await self.writer.drain()

    async def to_client(self) -> None:
        frames = attachsocket.FrameReader()
        while chunk := await self.reader.read(65536):
            for kind, payload in frames.feed(chunk):
                channel = self.channels.get(kind)
                if channel is not None and not self.ws.closed:
                    await self.ws.send_bytes(ch.encode(channel, payload))

    async def run(self) -> None:
        first = next((c for c in self.channels.values() if c is not None), ch.ERROR)
        await self.ws.send_bytes(ch.encode(first))  # kubelet's "connection established"
        down = asyncio.create_task(self.to_client())
        up = asyncio.create_task(self.from_client())
        try:
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            if down.done() and not self.ws.closed:  # the container exited
                status = await self.exit_status()
                await self.ws.send_bytes(ch.encode(ch.ERROR, json.dumps(status).encode()))
            await self.ws.close(code=1000)
        except (ConnectionError, ValueError, ch.ProtocolError) as exc:
            log.info("attach to %s ended: %s", self.container_id, exc)
        finally:
            for task in (down, up):
                task.cancel()
            await asyncio.gather(down, up, return_exceptions=True)

    async def exit_status(self) -> dict[str, object]:
        """The container's exit status, once the runtime has it (the shim writes it last)."""
        deadline = time.monotonic() + EXIT_DRAIN_SECONDS
        while time.monotonic() < deadline:
            try:
                state = self.runtime.inspect(self.container_id)
            except ContainerNotFound:
                break
            if state.terminated and state.exit_code is not None:
                message = f"container exited with code {state.exit_code}"
                return ch.exit_status(state.exit_code, message)
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
        return ch.internal_error_status("the container's exit status is not known")
