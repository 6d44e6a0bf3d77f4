"""Fixtures for API server unit tests: a registry on a throwaway SQLite store, bootstrapped (a
module may override `registry`, e.g. with one on etcd); `client`, the HTTP API over that
registry, accepting the bearer token `API_TOKEN`; `http10_get`, an HTTP/1.0 client on a raw
socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from podnet.apiserver.auth.chain import Auth
from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.handlers import ServerState, build_app
from podnet.apiserver.registry import Registry
from podnet.config import ClusterConfig
from podnet.store import Store, open_store


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store("sqlite", tmp_path)
    try:
        yield s
    finally:
        await s.close()


@pytest_asyncio.fixture
async def registry(store: Store) -> AsyncIterator[Registry]:
    reg = Registry(
        store, ClusterConfig(), ca_pem=b"-----BEGIN CERTIFICATE-----\n", bookmark_interval=0.2
    )
    await bootstrap(reg, "127.0.0.1", 6443)
    yield reg


API_TOKEN = "test-token"  # the test modules say it again: a conftest is not imported


@pytest_asyncio.fixture
async def client(registry: Registry, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The API's HTTP app over `registry` on a loopback port, with its authorizer's indexes
    running; a request is authenticated by `Authorization: Bearer <API_TOKEN>`."""
    session = aiohttp.ClientSession()
    auth = Auth.for_state_dir(registry, tmp_path, API_TOKEN)
    state = ServerState(registry, auth, "127.0.0.1:6443", session=session)
    indexes = asyncio.create_task(auth.run(state.shutdown))
    test_client: TestClient[Any, Any] = TestClient(TestServer(build_app(state)))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        state.shutdown.set()
        await indexes
        await test_client.close()
        await session.close()


@dataclass(frozen=True)
class RawResponse:
    status_line: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


Http10Get = Callable[[int, str, str], Awaitable[RawResponse]]


@pytest.fixture
def http10_get() -> Http10Get:
    """`await http10_get(port, path, token)`: GET `path` as an HTTP/1.0 client on a raw socket
    and read the answer to EOF, so what is seen is the bytes on the wire, not what a client
    library made of them."""
    return _http10_get


async def _http10_get(port: int, path: str, token: str) -> RawResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        writer.write(head.encode() + b"\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)  # to EOF: the server closes
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return RawResponse(status_line, headers, body)
