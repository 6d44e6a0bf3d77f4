"""Records what a real kubectl and podnet's API server say to each other over SPDY.

How the fixtures beside this file were made (run by hand against a lab, never by the suite):

    python record.py STATE_DIR NAME -- kubectl.1.30 port-forward pod/bb 18080:80

STATE_DIR is a lab's state directory (its server.crt/key, ca.crt and kubeconfig). The script
listens on a loopback port with the lab server's certificate, rewrites the kubeconfig to point
there, runs the command (with `curl` against the forwarded port when it is a port-forward),
relays every byte to the real server and writes what followed the HTTP upgrade in each
direction to NAME.client.bin and NAME.server.bin, plus the upgrade request to NAME.request.txt
(its token redacted). A WebSocket upgrade is recorded as it is: WebSocket frames, masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


async def main(state: Path, name: str, command: list[str]) -> None:
    kubeconfig = (state / "kubeconfig").read_text()
    upstream = re.search(r"server: https://([\d.]+):(\d+)", kubeconfig)
    assert upstream is not None
    host, port = upstream.group(1), int(upstream.group(2))
    serve_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serve_ctx.load_cert_chain(state / "server.crt", state / "server.key")
    dial_ctx = ssl.create_default_context(cafile=str(state / "ca.crt"))
    captured: dict[str, bytearray] = {"client": bytearray(), "server": bytearray()}
    request_text: list[bytes] = []

    async def pump(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        key: str,
        upgraded: asyncio.Event,
        heads: list[bytes],
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        heads.append(head)
        if key == "server" and head.startswith(b"HTTP/1.1 101"):
            request_text.append(heads[0])
            upgraded.set()
        while data := await reader.read(65536):
            if upgraded.is_set():
                captured[key] += data
            writer.write(data)
            await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port, ssl=dial_ctx)
        upgraded = asyncio.Event()
        heads: list[bytes] = []
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                pump(reader, up_writer, "client", upgraded, heads),
                pump(up_reader, writer, "server", upgraded, heads),
                return_exceptions=True,
            )

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=serve_ctx)
    local = listener.sockets[0].getsockname()[1]
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as config:
        config.write(kubeconfig.replace(f"https://{host}:{port}", f"https://127.0.0.1:{local}"))
    env = {**os.environ, "KUBECONFIG": config.name}
    proc = await asyncio.create_subprocess_exec(*command, env=env, stdin=subprocess.PIPE)
    if "port-forward" in command:
        forwarded = command[-1].split(":")[0]
        await asyncio.sleep(2)
        curl = await asyncio.create_subprocess_exec(
            "curl", "-s", f"http://127.0.0.1:{forwarded}/", stdout=subprocess.DEVNULL
        )
        await curl.wait()
        await asyncio.sleep(0.5)
        proc.terminate()
    else:
        assert proc.stdin is not None
        proc.stdin.write(b"recorded input\n")
        proc.stdin.close()
    await proc.wait()
    await asyncio.sleep(0.5)
    listener.close()
    os.unlink(config.name)
    for key, data in captured.items():
        (HERE / f"{name}.{key}.bin").write_bytes(bytes(data))
    token = re.compile(rb"Bearer [A-Za-z0-9_.-]+")
    (HERE / f"{name}.request.txt").write_bytes(token.sub(b"Bearer REDACTED", request_text[0]))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[sys.argv.index("--") + 1 :]))
