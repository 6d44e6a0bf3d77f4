"""A stand-in node agent for the exec/log relay tests (run as its own process).

It serves the agent side of the relay contract (see `podnet.apiserver.streams.dial`) on
loopback, over TLS with a serving certificate from the cluster CA, to callers presenting the
API server's kubelet client certificate only: WebSocket exec that runs the command as a host
subprocess with Kubernetes channel framing, and fixed container logs.
Usage: `python standin_agent.py PORT CERT KEY CA`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys

from aiohttp import WSMsgType, web

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255


def log_lines(container: str) -> list[str]:
    return [f"{container} line {i}\n" for i in range(1, 4)]


def authorized(request: web.Request) -> bool:
    """The caller is the API server (its client certificate, verified by the TLS layer)."""
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    subject = dict(rdn[0] for rdn in (peer or {}).get("subject", ()))
    return subject.get("commonName") == "kube-apiserver-kubelet-client"


async def exec_handler(request: web.Request) -> web.StreamResponse:
    if not authorized(request):
        return web.json_response(
            {
                "kind": "Status",
                "code": 401,
                "status": "Failure",
                "reason": "Unauthorized",
                "message": "Unauthorized",
            },
            status=401,
        )
    command = request.query.getall("command")
    want_stdin = request.query.get("stdin") == "true"
    ws = web.WebSocketResponse(protocols=PROTOCOLS)
    await ws.prepare(request)
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def pump(stream: asyncio.StreamReader, channel: int) -> None:
        while chunk := await stream.read(32768):
            await ws.send_bytes(bytes([channel]) + chunk)

    async def feed() -> None:
        async for message in ws:
            if message.type != WSMsgType.BINARY or not message.data:
                continue
            data: bytes = message.data
            if data[0] == STDIN and proc.stdin is not None:
                proc.stdin.write(data[1:])
                await proc.stdin.drain()
            elif data[0] == CLOSE and data[1:] == bytes([STDIN]) and proc.stdin is not None:
                proc.stdin.close()

    assert proc.stdout is not None and proc.stderr is not None
    feeder = asyncio.create_task(feed())
    await asyncio.gather(pump(proc.stdout, STDOUT), pump(proc.stderr, STDERR))
    code = await proc.wait()
    feeder.cancel()
    if code == 0:
        status = {"metadata": {}, "status": "Success"}
    else:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    await ws.send_bytes(bytes([STATUS]) + json.dumps(status).encode())
    await ws.close(code=1000)
    return ws


async def logs_handler(request: web.Request) -> web.StreamResponse:
    if not authorized(request):
        return web.Response(status=401, text="Unauthorized")
    lines = log_lines(request.match_info["container"])
    tail = request.query.get("tailLines")
    if tail:
        lines = lines[-int(tail) :]
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for line in lines:
        await response.write(line.encode())
        if request.query.get("follow") == "true":
            await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def main(port: int, cert: str, key: str, ca: str) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    tls.load_cert_chain(cert, key)
    tls.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_get("/exec/{namespace}/{pod}/{container}", exec_handler)
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", logs_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), *sys.argv[2:5]))
