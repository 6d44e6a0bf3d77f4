"""Suite-wide test configuration: root-only tests are skipped for non-root developers, the
fixtures for real servers (etcd, `podnet server`) and stores (`each_store`: a test run on every
store driver) that several folders share, and the checks that no test leaves a process
running (`no_leftover_processes`) or a lab's links and namespaces behind (`no_leftover_labs`).

Helpers tests import (the in-memory API, builders, `ServerProcess`, `free_port`) live in
`podnet.testing`, not here, so benchmarks can use them too.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from podnet.store import MemoryStore, SqliteOptions, SqliteStore, Store, open_store
from podnet.testing import leftovers
from podnet.testing.api import InMemoryApi
from podnet.testing.server import ServerProcess

if TYPE_CHECKING:
    from podnet.apiserver.server import ApiServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); CI runs these as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


# every process a test starts carries this session's marker and the test's id (environment)
_MARKER = leftovers.SessionMarker()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _MARKER.current_test(item.nodeid)
    yield


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fails the session if a test left a process it started running (a server, an agent, a
    launcher zygote, a shim, ...): found by this session's marker, ended by pid and start
    time, and listed with the test that started each. Set up first, so it runs after every
    other session fixture's teardown."""
    yield
    left = _MARKER.wait_for_leftovers(10.0)
    leftovers.stop(left)
    assert not left, "processes left running by tests:\n" + "\n".join(p.describe() for p in left)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_labs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the session if lab links or namespaces appeared during it and are still there at
    its end (a lab a test did not take down; `podnet down --name LAB` removes it). A leftover
    of a lab this session planned (its lab journal) always fails it; one of a lab someone else
    runs meanwhile (a benchmark's, an engineer's `podnet up`) is a warning
    (`leftovers.judge_lab_objects`)."""
    from podnet.lab.spec import DEFAULT_STATE_ROOT

    if os.geteuid() != 0:
        yield
        _MARKER.close()
        return
    before = leftovers.lab_objects()
    yield
    try:
        new = leftovers.wait_for_lab_objects(before, 10.0)
        verdict = leftovers.judge_lab_objects(_MARKER, new, DEFAULT_STATE_ROOT)
        if verdict is None:
            return
        message, fatal = verdict
        if fatal:
            raise AssertionError(message)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"WARNING: {message}")
    finally:
        _MARKER.close()


@pytest.fixture(scope="session")
def etcd_url() -> Iterator[str]:
    """`etcd://127.0.0.1:PORT` of a throwaway etcd shared by the session (tests marked `etcd`).

    Tests must keep to their own key prefix (append `/<unique>` to the URL). The server is
    stopped by its recorded pid and its data directory removed when the session ends.
    """
    from podnet.testing.etcd import EtcdServer

    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server)")
    with EtcdServer() as server:
        yield server.store_url


@pytest_asyncio.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store on each driver in turn (the test runs once per driver): in memory, a new
    SQLite file, or a unique key prefix on the session's etcd (revisions are the shared
    server's: take them from the store, never assume they start at 1)."""
    opened: Store
    if request.param == "memory":
        opened = MemoryStore()
    elif request.param == "sqlite":
        opened = SqliteStore(tmp_path / "state.db", SqliteOptions(poll_interval=0.05))
    else:
        etcd_url: str = request.getfixturevalue("etcd_url")
        opened = open_store(f"{etcd_url}/test-{secrets.token_hex(4)}", tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="module")
def podnet_store() -> str:
    """The store URL `podnet_server` runs on; a folder's conftest may override it."""
    return "sqlite"


@pytest.fixture(scope="module")
def podnet_server(
    podnet_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real `podnet server --no-controllers` process, shared by the test module.

    Ready means bootstrapped (namespace `default` exists). It is stopped by its recorded pid
    when the module ends, and must have exited cleanly (code 0).
    """
    server = ServerProcess(tmp_path_factory.mktemp("podnet-server"), store=podnet_store)
    with server:
        yield server
    assert server.returncode == 0, f"podnet server exited with {server.returncode}:\n" + (
        server.log_tail()
    )


@pytest.fixture
def memory_api() -> InMemoryApi:
    """The API in memory (`podnet.testing.api.InMemoryApi`): the real registry on a
    `MemoryStore`, with the four system namespaces, call recording and fault injection."""
    return InMemoryApi()


@pytest_asyncio.fixture
async def api_server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    """The API server in this process (HTTPS on a free loopback port, no controllers), its
    state dir `tmp_path/state`; stopped when the test ends."""
    from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen

    srv = ApiServer(
        ServerOptions(tmp_path / "state", listen=parse_listen(["127.0.0.1:0"]), controllers=False)
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
