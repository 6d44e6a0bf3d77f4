"""The kubelet endpoint for real: exec over the Kubernetes WebSocket channel protocol and
container logs (tail, follow, previous, timestamps, limits), against running containers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from podnet.api.errors import ApiError
from podnet.apiserver.streams.dial import AgentDialer
from podnet.apiserver.streams.locate import AgentEndpoint
from podnet.testing.waiting import eventually

pytestmark = [pytest.mark.root, pytest.mark.asyncio]

V5 = "v5.channel.k8s.io"


async def register(kubelet: Any, harness: Any, name: str, script: str, attempt: int = 0) -> str:
    st = await harness.start(harness.busybox(name, script), attempt)
    kubelet.containers[("default", harness.sandbox.name, name)] = st.id
    return str(st.id)


class ExecResult:
    def __init__(self) -> None:
        self.channels: dict[int, bytes] = {}
        self.status: dict[str, Any] | None = None
        self.close_code: int | None = None
        self.protocol: str | None = None

    def out(self, channel: int) -> bytes:
        return self.channels.get(channel, b"")

    def __repr__(self) -> str:  # what a failing assertion shows
        return f"ExecResult({self.protocol}, {self.channels}, {self.status}, {self.close_code})"


async def run_exec(
    kubelet: Any,
    url: str,
    command: list[str],
    *,
    stdin: list[bytes] | None = None,
    tty: bool = False,
    protocols: tuple[str, ...] = (V5,),
    before_input: list[bytes] | None = None,
) -> ExecResult:
    query = [("command", c) for c in command] + [
        ("stdin", "true" if stdin is not None else "false"),
        ("stdout", "true"),
        ("stderr", "false" if tty else "true"),
        ("tty", "true" if tty else "false"),
    ]
    result = ExecResult()
    async with (
        kubelet.session() as session,
        session.ws_connect(url, params=query, protocols=protocols) as ws,
    ):
        result.protocol = ws.protocol
        for frame in before_input or []:
            await ws.send_bytes(frame)
        for frame in stdin or []:
            await ws.send_bytes(frame)
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            channel, payload = msg.data[0], msg.data[1:]
            if channel == 3:
                result.status = json.loads(payload)
            else:
                result.channels[channel] = result.out(channel) + payload
        result.close_code = ws.close_code
    return result


async def test_exec_stdout_stderr_and_exit_code(kubelet: Any, harness: Any) -> None:
    await register(kubelet, harness, "app", "echo ready; exec sleep 1000")
    await harness.wait_log(kubelet.containers[("default", "web-0", "app")], "ready")
    url = f"{kubelet.url}/exec/default/web-0/app"

    ok = await run_exec(kubelet, url, ["sh", "-c", "echo out; echo err >&2; hostname"])
    assert ok.protocol == V5
    assert (ok.out(1), ok.out(2)) == (b"out\nweb-0\n", b"err\n"), ok
    assert ok.status == {"metadata": {}, "status": "Success"}, ok
    assert ok.close_code == 1000, ok

    failed = await run_exec(kubelet, url, ["sh", "-c", "exit 3"])
    assert failed.status is not None, failed
    assert failed.status["status"] == "Failure"
    assert failed.status["reason"] == "NonZeroExitCode"
    assert failed.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert failed.close_code == 1000

    missing = await run_exec(kubelet, url, ["no-such-command"])
    assert missing.status is not None
    assert missing.status["details"]["causes"] == [{"reason": "ExitCode", "message": "127"}]
    assert "executable file not found in $PATH" in missing.status["message"]
    assert b"executable file not found" in missing.out(2)


async def test_exec_stdin_with_v5_close_and_v4(kubelet: Any, harness: Any) -> None:
    await register(kubelet, harness, "app", "exec sleep 1000")
    url = f"{kubelet.url}/exec/default/web-0/app"
    v5 = await run_exec(
        kubelet,
        url,
        ["sh", "-c", "tr a-z A-Z; echo done"],
        stdin=[b"\x00hello ", b"\x00world\n", b"\xff\x00"],
    )
    assert v5.out(1) == b"HELLO WORLD\ndone\n"
    assert v5.status == {"metadata": {}, "status": "Success"}
    # the Python client 32.x offers only v4 (no close channel): stdin-less exec must work
    v4 = await run_exec(kubelet, url, ["cat", "/etc/hostname"], protocols=("v4.channel.k8s.io",))
    assert v4.protocol == "v4.channel.k8s.io"
    assert v4.out(1) == b"web-0\n"


async def test_exec_with_a_tty_honours_resize(kubelet: Any, harness: Any) -> None:
    await register(kubelet, harness, "app", "exec sleep 1000")
    url = f"{kubelet.url}/exec/default/web-0/app"
    result = await run_exec(
        kubelet,
        url,
        ["sh", "-c", 'read line; tty; stty size; echo "got $line"'],
        tty=True,
        before_input=[b"\x04" + json.dumps({"Width": 100, "Height": 40}).encode()],
        stdin=[b"\x00hi\r"],
    )
    text = result.out(1).decode()
    assert re.search(r"/dev/pts/\d+\r\n", text), result
    assert "40 100\r\n" in text, text
    assert "got hi" in text, text
    assert result.out(2) == b""  # a tty merges stderr into stdout
    assert result.status == {"metadata": {}, "status": "Success"}, (result.status, text)


async def test_exec_refusals_are_statuses(kubelet: Any, harness: Any) -> None:
    cid = await register(kubelet, harness, "app", "true")
    await harness.wait_exited(cid)
    base = f"{kubelet.url}/exec/default/web-0"
    async with (
        kubelet.session(identity=False) as anonymous,
        anonymous.get(f"{base}/app", params={"command": "ls", "stdout": "true"}) as r,
    ):
        assert r.status == 401
        assert (await r.json())["reason"] == "Unauthorized"
    async with kubelet.session() as session:
        async with session.get(f"{base}/nope", params={"command": "ls", "stdout": "true"}) as r:
            assert r.status == 404
            assert (await r.json())["reason"] == "NotFound"
        async with session.get(f"{base}/app", params={"command": "ls", "stdout": "true"}) as r:
            assert r.status == 400
            assert "is not running" in (await r.json())["message"]
    # through the API server's dialer, as `kubectl exec -c app` reaches it: the agent's own
    # Status, not aiohttp's "Invalid response status" for a refused WebSocket handshake
    async with aiohttp.ClientSession() as session:
        dialer = AgentDialer(session, kubelet.client_tls())
        agent = AgentEndpoint("pnt4-node", "127.0.0.1", kubelet.server.port)
        for kind in ("exec", "attach"):
            with pytest.raises(ApiError) as refused:
                params = [("command", "ls")] if kind == "exec" else []
                await dialer.websocket(
                    agent, f"/{kind}/default/web-0/app", [*params, ("stdout", "true")]
                )
            assert refused.value.code == 400, refused.value
            assert str(refused.value) == 'container "app" in pod "web-0" is not running'


async def get_logs(kubelet: Any, container: str, **params: str) -> tuple[int, str]:
    async with (
        kubelet.session() as session,
        session.get(
            f"{kubelet.url}/containerLogs/default/web-0/{container}", params=params
        ) as response,
    ):
        return response.status, await response.text()


async def test_logs_tail_timestamps_limit_and_since(kubelet: Any, harness: Any) -> None:
    cid = await register(
        kubelet,
        harness,
        "app",
        "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2; printf partial",
    )
    await harness.wait_exited(cid)
    status, text = await get_logs(kubelet, "app")
    assert (status, text) == (200, "line1\nline2\nline3\nline4\nline5\noops\npartial")
    assert (await get_logs(kubelet, "app", tailLines="2"))[1] == "oops\npartial"
    assert (await get_logs(kubelet, "app", limitBytes="8"))[1] == "line1\nli"
    stamped = (await get_logs(kubelet, "app", timestamps="true", tailLines="1"))[1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z partial", stamped), stamped
    assert (await get_logs(kubelet, "app", sinceSeconds="3600"))[1].startswith("line1\n")
    assert (await get_logs(kubelet, "nope"))[0] == 404


async def test_logs_follow_streams_until_the_container_exits(kubelet: Any, harness: Any) -> None:
    await register(
        kubelet, harness, "app", "echo first; sleep 0.5; echo second; sleep 0.5; echo third"
    )
    chunks: list[bytes] = []
    async with (
        kubelet.session() as session,
        session.get(
            f"{kubelet.url}/containerLogs/default/web-0/app",
            params={"follow": "true"},
        ) as response,
    ):
        assert response.headers.get("Transfer-Encoding") == "chunked"
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
    assert b"".join(chunks) == b"first\nsecond\nthird\n"
    assert len(chunks) >= 2  # it really streamed rather than waiting for the end


async def test_logs_follow_for_an_http10_client_ends_at_close(kubelet: Any, harness: Any) -> None:
    """HTTP/1.0 has no chunked encoding: the followed log comes as it is, its end where the
    connection closes (it was a 500, aiohttp refusing chunks for HTTP/1.0)."""
    await register(kubelet, harness, "app", "echo first; sleep 0.5; echo second")
    port = kubelet.url.rsplit(":", 1)[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(port), ssl=kubelet.client_tls(), server_hostname="127.0.0.1"
    )
    try:
        writer.write(b"GET /containerLogs/default/web-0/app?follow=true HTTP/1.0\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)  # to EOF: the server closes
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *headers = head.decode("latin-1").lower().split("\r\n")
    assert status == "http/1.0 200 ok", answer
    assert not any(h.startswith("transfer-encoding:") for h in headers), headers
    assert body == b"first\nsecond\n"


async def test_logs_previous_shows_the_earlier_attempt(kubelet: Any, harness: Any) -> None:
    first = await register(kubelet, harness, "app", "echo from-attempt-0; exit 1", attempt=0)
    status, text = await get_logs(kubelet, "app", previous="true")
    assert status == 400 and "previous terminated container" in text
    await harness.wait_exited(first)
    second = await register(
        kubelet, harness, "app", "echo from-attempt-1; exec sleep 1000", attempt=1
    )
    harness.runtime.remove(first)
    await harness.wait_log(second, "from-attempt-1")
    assert await get_logs(kubelet, "app", previous="true") == (200, "from-attempt-0\n")
    assert await get_logs(kubelet, "app") == (200, "from-attempt-1\n")


async def test_client_going_away_kills_the_exec(kubelet: Any, harness: Any) -> None:
    cid = await register(kubelet, harness, "app", "exec sleep 1000")
    url = f"{kubelet.url}/exec/default/web-0/app"
    async with (
        kubelet.session() as session,
        session.ws_connect(
            url,
            params=[
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo started; exec sleep 77"),
                ("stdout", "true"),
            ],
            protocols=(V5,),
        ) as ws,
    ):
        msg = await ws.receive()
        while msg.data[1:] == b"":
            msg = await ws.receive()
        assert msg.data == b"\x01started\n"
    for _ in range(50):
        _code, out = await harness.runtime.exec_sync(
            cid, ["sh", "-c", "ps | grep -c 'sleep 7[7]'"], 5
        )
        if out.strip() == b"0":
            break
        await asyncio.sleep(0.05)
    assert out.strip() == b"0"


async def test_exec_processes_outlive_the_agent(kubelet: Any, harness: Any) -> None:
    """The exec'd process is the shim's child: stopping the kubelet endpoint (an agent restart)
    ends the stream, not the process, which keeps running and finishes its work."""
    cid = await register(kubelet, harness, "app", "exec sleep 1000")
    url = f"{kubelet.url}/exec/default/web-0/app"
    script = "echo started; sleep 1; echo lots-of-output-nobody-reads; seq 100000; touch /tmp/done"
    async with (
        kubelet.session() as session,
        session.ws_connect(
            url,
            params=[("command", "sh"), ("command", "-c"), ("command", script), ("stdout", "true")],
            protocols=(V5,),
        ) as ws,
    ):
        msg = await ws.receive()
        while msg.data[1:] == b"":
            msg = await ws.receive()
        assert msg.data == b"\x01started\n"
        await kubelet.server.stop()  # what the agent does when it stops
        after = [msg async for msg in ws]
    assert not [m for m in after if m.type == aiohttp.WSMsgType.BINARY and m.data[:1] == b"\x03"]

    async def done() -> bool:
        code, _ = await harness.runtime.exec_sync(cid, ["test", "-e", "/tmp/done"], 5)
        return code == 0

    await eventually(done, timeout=15, what="the exec'd process to finish its work")
    # the shim reaped it: no zombie or lingering process is left in the container
    _code, out = await harness.runtime.exec_sync(cid, ["sh", "-c", "ps -o stat,args"], 5)
    assert b"seq" not in out and b" Z " not in out, out


async def test_stop_ends_open_follows_promptly(kubelet: Any, harness: Any) -> None:
    await register(kubelet, harness, "app", "echo hi; exec sleep 1000")
    async with (
        kubelet.session() as session,
        session.get(
            f"{kubelet.url}/containerLogs/default/web-0/app",
            params={"follow": "true"},
        ) as response,
    ):
        assert await response.content.readline() == b"hi\n"
        t0 = asyncio.get_running_loop().time()
        await kubelet.server.stop()
        assert asyncio.get_running_loop().time() - t0 < 3.5


async def test_logs_rotate_and_followers_lose_nothing(kubelet: Any, harness: Any) -> None:
    harness.runtime.log_max_bytes = 4096  # rotate every ~60 records
    script = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); sleep 0.002; done"
    cid = await register(kubelet, harness, "app", script)
    expected = "".join(f"line-{i}\n" for i in range(300))
    chunks: list[bytes] = []
    async with (
        kubelet.session() as session,
        session.get(
            f"{kubelet.url}/containerLogs/default/web-0/app",
            params={"follow": "true"},
        ) as response,
    ):
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
    assert b"".join(chunks).decode() == expected
    log = harness.runtime.log_path(cid)
    assert log.stat().st_size < 4096 + 200
    assert log.with_name(log.name + ".1").exists()
    # without following: the kept rotation plus the current file, oldest first
    status, text = await get_logs(kubelet, "app")
    assert status == 200 and expected.endswith(text) and text.endswith("line-299\n")


async def test_exec_that_stops_reading_stdin_still_reports_its_exit(
    kubelet: Any, harness: Any
) -> None:
    """stdin keeps coming after the command exited (`tar xf -` ends at the archive's end
    marker, before `kubectl cp` sends its padding and stdin's end): the shim has hung up, yet
    the client gets the exit status, never a bare close."""
    await register(kubelet, harness, "app", "exec sleep 1000")
    url = f"{kubelet.url}/exec/default/web-0/app"
    stdin = [b"\x00" + bytes(65536)] * 64 + [b"\xff\x00"]
    for _ in range(5):  # the shim's hang-up and the next stdin write race
        result = await run_exec(
            kubelet, url, ["sh", "-c", "head -c 1 >/dev/null; exit 7"], stdin=stdin
        )
        assert result.status is not None, result
        assert result.status.get("reason") == "NonZeroExitCode", result


async def test_a_reset_shim_connection_still_ends_with_a_status(kubelet: Any, harness: Any) -> None:
    """The shim dies holding stdin it never read: the agent's read of the shim connection
    fails (ECONNRESET, not an end of stream); the client still gets a Status saying so,
    never a bare close it would take for the agent's death."""
    cid = await register(kubelet, harness, "app", "exec sleep 1000")
    shim = int(
        json.loads((harness.runtime.container_dir(cid) / "started.json").read_text())["shim_pid"]
    )
    url = f"{kubelet.url}/exec/default/web-0/app"
    query = [("command", "sleep"), ("command", "1000"), ("stdin", "true"), ("stdout", "true"),
             ("stderr", "true"), ("tty", "false")]  # fmt: skip
    status = None
    async with (
        kubelet.session() as session,
        session.ws_connect(url, params=query, protocols=(V5,)) as ws,
    ):
        first = await ws.receive()  # the connection-established notice: the shim has it
        assert first.type == aiohttp.WSMsgType.BINARY, first
        # its children (the container, the exec'd process) lose their shim: ended here
        listing = Path(f"/proc/{shim}/task/{shim}/children")
        await eventually(lambda: len(listing.read_text().split()) >= 2, what="the exec'd child")
        children = listing.read_text().split()
        os.kill(shim, signal.SIGSTOP)
        try:
            await ws.send_bytes(b"\x00" + b"unread by the shim")
            await asyncio.sleep(0.5)  # relayed into the stopped shim's socket
        finally:
            os.kill(shim, signal.SIGKILL)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(child), signal.SIGKILL)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x03":
                status = json.loads(msg.data[1:])
    assert status is not None, "a bare close"
    assert "shim" in str(status.get("message")), status
