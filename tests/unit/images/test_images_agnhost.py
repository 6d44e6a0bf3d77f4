"""podnet's agnhost against agnhost's documented behaviour; servers on 127.0.0.1 only."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from podnet.images import agnhost


@pytest_asyncio.fixture
async def netexec() -> AsyncIterator[tuple[agnhost.NetExec, str]]:
    args = agnhost.build_parser().parse_args(["netexec", "--udp-port=-1"])
    app = agnhost.NetExec(args)
    server = await agnhost.start_http(0, app.handle, host="127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def get(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        return r.status, await r.text()


@pytest.mark.asyncio
async def test_netexec_basic_endpoints(netexec: tuple[agnhost.NetExec, str]) -> None:
    app, url = netexec
    assert await get(f"{url}/hostname") == (200, socket.gethostname())
    assert await get(f"{url}/hostName") == (200, socket.gethostname())
    assert await get(f"{url}/echo?msg=hello%20there") == (200, "hello there")
    assert await get(f"{url}/echo?msg=teapot&code=418") == (418, "teapot")
    status, body = await get(f"{url}/clientip")
    assert status == 200 and body.startswith("127.0.0.1:") and body.split(":")[1].isdigit()
    assert await get(f"{url}/header?key=X-Probe", **{"X-Probe": "yes"}) == (200, "yes")
    status, body = await get(f"{url}/header", **{"X-Probe": "yes"})
    assert json.loads(body)["X-Probe"] == ["yes"]
    status, body = await get(f"{url}/")
    assert body.startswith("NOW: ")
    assert (await get(f"{url}/nope"))[0] == 404
    assert await get(f"{url}/healthz") == (200, "ok")
    assert await get(f"{url}/readyz") == (200, "ok")
    app.terminating = True
    assert await get(f"{url}/readyz") == (503, "shutting down")


@pytest.mark.asyncio
async def test_liveness_is_healthy_for_ten_seconds_then_fails() -> None:
    """The server of the Kubernetes docs' liveness-http example (`args: [liveness]`)."""
    now = [100.0]
    app = agnhost.Liveness(clock=lambda: now[0])
    assert "liveness" in agnhost.build_parser().parse_args(["liveness"]).command
    server = await agnhost.start_http(0, app.handle, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        now[0] = 109.5
        assert await get(f"{url}/healthz", **{"Custom-Header": "Awesome"}) == (200, "ok")
        assert await get(f"{url}/started") == (200, "9.5s")
        now[0] = 112.25
        assert await get(f"{url}/healthz") == (500, "error: 12.25")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/redirect?loc=/healthz", allow_redirects=False) as r,
        ):
            assert (r.status, r.headers["Location"]) == (302, "/healthz")
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_netexec_shell(netexec: tuple[agnhost.NetExec, str]) -> None:
    _, url = netexec
    status, body = await get(f"{url}/shell?cmd=echo%20hi;%20exit%203")
    assert (status, json.loads(body)) == (200, {"output": "hi\n", "error": "exit status 3"})
    status, body = await get(f"{url}/shell?shellCommand=true")
    assert json.loads(body) == {}


@pytest.mark.asyncio
async def test_netexec_dial_http_udp_and_errors(netexec: tuple[agnhost.NetExec, str]) -> None:
    app, url = netexec
    port = url.rsplit(":", 1)[1]
    status, body = await get(
        f"{url}/dial?request=hostname&protocol=http&host=127.0.0.1&port={port}&tries=2"
    )
    assert json.loads(body) == {"responses": [socket.gethostname()] * 2}
    udp = await agnhost.start_udp(0, app.udp_answer, host="127.0.0.1")
    udp_port = udp.get_extra_info("sockname")[1]
    try:
        status, body = await get(
            f"{url}/dial?request=echo%20ping&protocol=udp&host=127.0.0.1&port={udp_port}&tries=1"
        )
        assert json.loads(body) == {"responses": ["ping"]}
        status, body = await get(
            f"{url}/dial?request=clientip&protocol=udp&host=127.0.0.1&port={udp_port}"
        )
        assert json.loads(body)["responses"][0].startswith("127.0.0.1:")
    finally:
        udp.close()
    # nothing listens on port 1 of loopback
    status, body = await get(f"{url}/dial?request=hostname&protocol=http&host=127.0.0.1&port=1")
    assert status == 200 and list(json.loads(body)) == ["errors"]
    assert (await get(f"{url}/dial?request=x&protocol=sctp&host=127.0.0.1&port=1"))[0] == 400
    assert (await get(f"{url}/dial?request=x&host=127.0.0.1&port=abc"))[0] == 400


def run_agnhost(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "podnet.images.agnhost", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_pause_exit_codes(sig: signal.Signals, code: int) -> None:
    proc = run_agnhost("pause")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "Paused\n"
        proc.send_signal(sig)
        assert proc.wait(10) == code
        assert f"exiting {code}" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_connect_reports_success_and_refusal() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ok = subprocess.run(
            [
                sys.executable,
                "-m",
                "podnet.images.agnhost",
                "connect",
                f"127.0.0.1:{port}",
                "--timeout=2s",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "podnet.images.agnhost",
            "connect",
            f"127.0.0.1:{port}",
            "--timeout=2s",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert refused.returncode == 1 and refused.stderr.startswith("REFUSED:")


def test_flags_parse_like_go(tmp_path: Path) -> None:
    args = agnhost.build_parser().parse_args(
        ["serve-hostname", "--http=false", "--tcp", "--udp", "--port=9377"]
    )
    assert (args.http, args.tcp, args.udp, args.close, args.port) == (
        False,
        True,
        True,
        False,
        9377,
    )
    assert agnhost.parse_duration("150ms") == pytest.approx(0.15)
    assert agnhost.parse_duration("2m") == 120.0
    assert agnhost.parse_duration("3") == 3.0
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search a.svc b.svc\nnameserver 10.96.0.10\nnameserver 10.96.0.11\n")
    assert agnhost.resolv_conf_field("search", resolv) == ["a.svc", "b.svc"]
    assert agnhost.resolv_conf_field("nameserver", resolv) == ["10.96.0.10", "10.96.0.11"]
