"""podnet's agnhost: the subcommands of Kubernetes' e2e test image that network tests use.

`python -m podnet.images.agnhost SUBCOMMAND [flags]` (the built-in agnhost image's
`/agnhost`). Behaviour follows test/images/agnhost (peers.md §4):

- netexec [--http-port 8080] [--udp-port 8081] [--delay-shutdown S]: HTTP `/` (NOW: time),
  `/hostname`, `/echo?msg=&code=`, `/clientip` (ip:port), `/header[?key=]`, `/shell?cmd=`,
  `/dial?host&port&request&protocol=http|udp&tries`, `/healthz`, `/readyz` (503 once SIGTERM
  arrived, with --delay-shutdown), `/redirect`, `/exit?code=`, `/shutdown`; UDP answers
  `hostname`, `echo <msg>`, `clientip`.
- serve-hostname [--port 9376] [--http] [--tcp] [--udp] [--close]
- pause (SIGINT -> exit 1, SIGTERM -> exit 2), connect HOST:PORT [--timeout] [--protocol],
  porter (SERVE_PORT_N / SERVE_TCP_PORT_N / SERVE_UDP_PORT_N), dns-suffix, dns-server-list,
  etc-hosts.
- liveness (the Kubernetes docs' liveness example): HTTP on :8080, `/healthz` 200 "ok" for
  the first 10 s, then 500 "error: <seconds>"; `/started` (the seconds since start);
  `/redirect?loc=` (302).

Only the standard library and asyncio streams: a container's process is up and listening in
tens of milliseconds. The HTTP/1.1 server here is deliberately small (keep-alive, bodies by
Content-Length) and is the only HTTP code in this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlsplit

REASONS = {
    200: "OK",
    201: "Created",
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    412: "Precondition Failed",
    417: "Expectation Failed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def hostname() -> str:
    return socket.gethostname()


def log(message: str) -> None:
    stamp = datetime.now().strftime("%m%d %H:%M:%S.%f")
    print(f"I{stamp} {os.getpid()} agnhost] {message}", file=sys.stderr, flush=True)


# -- a small HTTP/1.1 server ---------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    peer: str  # ip:port
    body: bytes = b""

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name: str) -> str:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), "")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode(), {"Content-Type": "text/plain; charset=utf-8"})


def as_json(data: object, status: int = 200) -> Response:
    return Response(
        status,
        json.dumps(data, separators=(",", ":")).encode(),
        {"Content-Type": "application/json"},
    )


Handler = Callable[[Request], Awaitable[Response]]


def format_peer(peername: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = peername[0], peername[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_http_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    always_close: bool = False,
) -> None:
    peer = format_peer(writer.get_extra_info("peername"))
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                method, target, version = line.decode("latin-1").split()
            except ValueError:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            headers: list[tuple[str, str]] = []
            while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = raw.decode("latin-1").partition(":")
                headers.append((key.strip(), value.strip()))
            url = urlsplit(target)
            request = Request(
                method, url.path or "/", parse_qs(url.query, keep_blank_values=True), headers, peer
            )
            length = int(request.header("Content-Length") or 0)
            if length:
                request.body = await reader.readexactly(length)
            response = await handler(request)
            close = (
                always_close
                or response.close
                or version == "HTTP/1.0"
                or request.header("Connection").lower() == "close"
            )
            head = [
                f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}",
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}",
                f"Content-Length: {len(response.body)}",
            ]
            head += [f"{k}: {v}" for k, v in response.headers.items()]
            if close:
                head.append("Connection: close")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def start_http(
    port: int, handler: Handler, always_close: bool = False, host: str | None = None
) -> asyncio.Server:
    """Serve on every address (host None, as agnhost does) or on `host`."""
    return await asyncio.start_server(
        lambda r, w: serve_http_connection(r, w, handler, always_close),
        host=host,
        port=port,
        reuse_address=True,
    )


class UdpResponder(asyncio.DatagramProtocol):
    def __init__(self, answer: Callable[[bytes, tuple[str, int]], bytes | None]) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.answer(data, addr)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def start_udp(
    port: int, answer: Callable[[bytes, tuple[str, int]], bytes | None], host: str | None = None
) -> asyncio.DatagramTransport:
    """Answer datagrams on every address (IPv6 and IPv4 when available) or on `host`."""
    loop = asyncio.get_running_loop()
    if host is not None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, port))
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError:  # no IPv6 in this namespace: IPv4 only
            sock.close()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", port))
    transport, _ = await loop.create_datagram_endpoint(lambda: UdpResponder(answer), sock=sock)
    return transport


def plain_peer(addr: tuple[str, int]) -> str:
    host = addr[0].removeprefix("::ffff:")
    return format_peer((host, addr[1]))


# -- netexec -----------------------------------------------------------------------------


class NetExec:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.terminating = False
        self.udp_started = args.udp_port < 0

    async def dial_http(self, host_port: str, request: str) -> str:
        host, _, port = host_port.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            writer.write(
                f"GET /{request} HTTP/1.1\r\nHost: {host_port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/"):
            raise ConnectionError(f"malformed HTTP response from {host_port}")
        return body.decode(errors="replace")

    async def dial_udp(self, host_port: str, request: str) -> str:
        host, _, port = host_port.rpartition(":")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()

        class Once(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not future.done():
                    future.set_result(data[:2048])

            def error_received(self, exc: Exception) -> None:
                if not future.done():
                    future.set_exception(exc)

        transport, _ = await loop.create_datagram_endpoint(
            Once, remote_addr=(host.strip("[]"), int(port))
        )
        try:
            transport.sendto(request.encode())
            return (await future).decode(errors="replace")
        finally:
            transport.close()

    async def dial(self, req: Request) -> Response:
        host, port, request = req.arg("host"), req.arg("port"), req.arg("request")
        protocol = req.arg("protocol", "http")
        try:
            tries = int(req.arg("tries", "1"))
            int(port)
        except ValueError:
            return text("port and tries must be integers", 400)
        if not host or not port or protocol not in ("http", "udp"):
            return text("host, port and protocol=http|udp are required", 400)
        host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        responses: list[str] = []
        errors: list[str] = []
        for _ in range(max(1, tries)):
            dialer = self.dial_http if protocol == "http" else self.dial_udp
            try:
                responses.append(await asyncio.wait_for(dialer(host_port, request), 5))
            except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
                errors.append(
                    f"reading from {protocol} {host_port}: {str(exc) or type(exc).__name__}"
                )
        output: dict[str, list[str]] = {}
        if responses:
            output["responses"] = responses
        if errors:
            output["errors"] = errors
        return as_json(output)

    async def shell(self, req: Request) -> Response:
        command = req.arg("shellCommand") or req.arg("cmd")
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        output: dict[str, str] = {}
        if out:
            output["output"] = out.decode(errors="replace")
        if proc.returncode:
            output["error"] = f"exit status {proc.returncode}"
        return as_json(output)

    async def handle(self, req: Request) -> Response:
        path = req.path
        if path == "/":
            return text(f"NOW: {datetime.now().astimezone()}")
        if path == "/clientip":
            return text(req.peer)
        if path in ("/hostname", "/hostName"):
            return text(hostname())
        if path == "/echo":
            code = int(req.arg("code", "200") or 200)
            return text(req.arg("msg"), code)
        if path == "/header":
            key = req.arg("key")
            if key:
                return text(req.header(key))
            merged: dict[str, list[str]] = {}
            for k, v in req.headers:
                merged.setdefault(k, []).append(v)
            return as_json(merged)
        if path == "/dial":
            return await self.dial(req)
        if path == "/shell":
            return await self.shell(req)
        if path == "/healthz":
            return text("ok") if self.udp_started else text("udp server not started", 412)
        if path == "/readyz":
            if self.terminating:
                return text("shutting down", 503)
            return text("ok") if self.udp_started else text("not ready", 412)
        if path == "/redirect":
            code = int(req.arg("code", "302") or 302)
            return Response(code, b"", {"Location": req.arg("location", "/")})
        if path == "/exit":
            try:
                code = int(req.arg("code", "0"))
            except ValueError:
                return text("code must be an integer 0..127", 400)
            if not 0 <= code <= 127:
                return text("code must be an integer 0..127", 400)
            log(f"exiting with {code} as requested")
            asyncio.get_running_loop().call_later(0.05, os._exit, code)
            return text("")
        if path == "/shutdown":
            asyncio.get_running_loop().call_later(0.05, os._exit, 0)
            return text("")
        return text("404 page not found", 404)

    def udp_answer(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        command = data.decode(errors="replace").strip()
        lowered = command.lower()
        if lowered == "hostname":
            return hostname().encode()
        if lowered.startswith("echo "):
            return command[5:].encode()
        if lowered == "clientip":
            return plain_peer(addr).encode()
        return None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.args.delay_shutdown > 0:

            def on_term() -> None:
                log(f"SIGTERM: shutting down in {self.args.delay_shutdown}s")
                self.terminating = True
                loop.call_later(self.args.delay_shutdown, os._exit, 0)

            loop.add_signal_handler(signal.SIGTERM, on_term)
        server = await start_http(self.args.http_port, self.handle)
        log(f"Started HTTP server on port {self.args.http_port}")
        if self.args.udp_port >= 0:
            await start_udp(self.args.udp_port, self.udp_answer)
            self.udp_started = True
            log(f"Started UDP server on port {self.args.udp_port}")
        async with server:
            await server.serve_forever()
        return 0


# -- serve-hostname ----------------------------------------------------------------------


async def serve_hostname(args: argparse.Namespace) -> int:
    if args.http and (args.tcp or args.udp):
        print("Can't serve TCP/UDP mode and HTTP mode at the same time", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()

    def on_term() -> None:
        log("Received SIGTERM; awaiting pod deletion (agnhost sleeps 60 s)")
        loop.call_later(60, os._exit, 0)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    name = hostname()
    servers: list[asyncio.Server] = []
    if args.http:

        async def handler(req: Request) -> Response:
            return text(name)

        servers.append(await start_http(args.port, handler, always_close=args.close))
        log(f"Serving on port {args.port} (http).")
    if args.tcp:

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(name.encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

        servers.append(await asyncio.start_server(tcp, port=args.port, reuse_address=True))
        log(f"Serving on port {args.port} (tcp).")
    if args.udp:
        await start_udp(args.port, lambda data, addr: name.encode())
        log(f"Serving on port {args.port} (udp).")
    await asyncio.Event().wait()
    return 0


# -- liveness ----------------------------------------------------------------------------

LIVENESS_PORT = 8080
LIVENESS_HEALTHY_FOR = 10.0  # seconds


class Liveness:
    """agnhost's `liveness` server: healthy for its first 10 s, then failing for good."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()

    async def handle(self, req: Request) -> Response:
        age = self.clock() - self.started
        if req.path == "/healthz":
            if age > LIVENESS_HEALTHY_FOR:
                return text(f"error: {age}", 500)  # Go's %v of the seconds
            return text("ok")
        if req.path == "/started":
            return text(f"{round(age, 9)}s")
        if req.path == "/redirect":
            return Response(302, b"", {"Location": req.arg("loc")})
        return text("404 page not found\n", 404)


async def liveness() -> int:
    await start_http(LIVENESS_PORT, Liveness().handle)
    log(f"Serving liveness on port {LIVENESS_PORT}")
    await asyncio.Event().wait()
    return 0


# -- porter ------------------------------------------------------------------------------


async def porter(args: argparse.Namespace) -> int:
    started = 0
    for key, value in sorted(os.environ.items()):
        for prefix, kind in (
            ("SERVE_PORT_", "tcp"),
            ("SERVE_TCP_PORT_", "tcp"),
            ("SERVE_UDP_PORT_", "udp"),
        ):
            if not key.startswith(prefix) or not key[len(prefix) :].isdigit():
                continue
            port = int(key[len(prefix) :])
            if kind == "tcp":

                async def handler(req: Request, value: str = value) -> Response:
                    if args.json_response:
                        return as_json({"Method": req.method, "Body": value})
                    return text(value)

                await start_http(port, handler)
            else:

                def answer(
                    data: bytes, addr: tuple[str, int], reply: bytes = value.encode()
                ) -> bytes:
                    return reply

                await start_udp(port, answer)
            log(f"Serving {kind} on port {port}")
            started += 1
    if not started:
        print(
            "no SERVE_PORT_<n>, SERVE_TCP_PORT_<n> or SERVE_UDP_PORT_<n> variable set",
            file=sys.stderr,
        )
        return 1
    await asyncio.Event().wait()
    return 0


# -- small one-shot commands -------------------------------------------------------------


def pause() -> int:
    wanted = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)  # held for sigwait: no race with print
    print("Paused", flush=True)
    received = signal.sigwait(wanted)
    code = 1 if received == signal.SIGINT else 2
    print(f"Shutting down after receiving signal: {signal.Signals(received).name}.")
    print(f"exiting {code}", flush=True)
    return code


def connect(args: argparse.Namespace) -> int:
    host, sep, port = args.dest.rpartition(":")
    if not sep or not port.isdigit():
        print(f"UNKNOWN: bad destination {args.dest!r}: want HOST:PORT", file=sys.stderr)
        return 1
    host = host.strip("[]")
    timeout = args.timeout if args.timeout > 0 else None
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        print(f"DNS: {exc}", file=sys.stderr)
        return 1
    family, _, _, _, address = infos[0]
    kind = socket.SOCK_DGRAM if args.protocol == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            if args.protocol == "udp":
                sock.send(args.udp_data.encode())
                sock.recv(2048)
    except TimeoutError as exc:
        print(f"TIMEOUT: {exc}", file=sys.stderr)
        return 1
    except ConnectionRefusedError as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"OTHER: {exc}", file=sys.stderr)
        return 1
    return 0


def resolv_conf_field(name: str, path: Path = Path("/etc/resolv.conf")) -> list[str]:
    values: list[str] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            values.extend(parts[1:])
    return values


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agnhost", description="podnet's agnhost")
    sub = parser.add_subparsers(dest="command", required=True)
    netexec = sub.add_parser("netexec")
    netexec.add_argument("--http-port", type=int, default=8080)
    netexec.add_argument("--udp-port", type=int, default=8081)
    netexec.add_argument("--sctp-port", type=int, default=-1)
    netexec.add_argument("--delay-shutdown", type=int, default=0)
    serve = sub.add_parser("serve-hostname")
    serve.add_argument("--port", type=int, default=9376)
    for flag, default in (("http", True), ("tcp", False), ("udp", False), ("close", False)):
        serve.add_argument(f"--{flag}", type=parse_go_bool, nargs="?", const=True, default=default)
    sub.add_parser("pause")
    conn = sub.add_parser("connect")
    conn.add_argument("dest")
    conn.add_argument("--timeout", type=parse_duration, default=0.0)
    conn.add_argument("--protocol", choices=("tcp", "udp"), default="tcp")
    conn.add_argument("--udp-data", default="hostname")
    port = sub.add_parser("porter")
    port.add_argument("--json-response", type=parse_go_bool, nargs="?", const=True, default=False)
    sub.add_parser("dns-suffix")
    sub.add_parser("dns-server-list")
    sub.add_parser("etc-hosts")
    sub.add_parser("liveness")
    return parser


def parse_go_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "t"):
        return True
    if lowered in ("false", "0", "f"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean")


def parse_duration(value: str) -> float:
    """Go durations as agnhost takes them (5s, 100ms, 1m) or plain seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if value.endswith(suffix) and value[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(value[: -len(suffix)]) * scale
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 5s") from None


def main(argv: list[str] | None = None) -> int:
    # agnhost accepts klog flags (--v=2, --alsologtostderr) before the subcommand: ignore them
    args_in = [
        a
        for a in (sys.argv[1:] if argv is None else argv)
        if not (a.startswith("--v=") or a in ("--alsologtostderr", "--logtostderr"))
    ]
    args = build_parser().parse_args(args_in)
    if args.command == "netexec":
        return asyncio.run(NetExec(args).run())
    if args.command == "serve-hostname":
        return asyncio.run(serve_hostname(args))
    if args.command == "porter":
        return asyncio.run(porter(args))
    if args.command == "liveness":
        return asyncio.run(liveness())
    if args.command == "pause":
        return pause()
    if args.command == "connect":
        return connect(args)
    if args.command == "dns-suffix":
        print(",".join(resolv_conf_field("search")))
        return 0
    if args.command == "dns-server-list":
        print(",".join(resolv_conf_field("nameserver")))
        return 0
    if args.command == "etc-hosts":
        print(Path("/etc/hosts").read_text(), end="")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
