"""Fixtures of the API-level controller tests: a real `podnet server` in this process (HTTPS,
controllers on) on SQLite and on etcd, a client for it, the stand-in kubelet of two Ready nodes,
and the real kubectl pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from podnet.api.client import HttpApi
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.config import ClusterConfig
from podnet.testing.standin_kubelet import FakeKubelet, add_node
from podnet.testing.waiting import eventually

Kubectl = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]


@pytest_asyncio.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ApiServer]:
    store = "sqlite"
    if request.param == "etcd":  # a throwaway etcd shared by the session, our own key prefix
        store = f"{request.getfixturevalue('etcd_url')}/ctl-{uuid.uuid4().hex[:8]}"
    config = ClusterConfig(node_monitor_grace_seconds=300, pod_eviction_timeout_seconds=300)
    srv = ApiServer(
        ServerOptions(
            state_dir=tmp_path / "server",
            store_url=store,
            listen=parse_listen(["127.0.0.1:0"]),
            config=config,
        )
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest_asyncio.fixture
async def api(server: ApiServer) -> AsyncIterator[HttpApi]:
    client = HttpApi.from_kubeconfig(server.options.state_dir / "kubeconfig")
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def kubelet(api: HttpApi) -> AsyncIterator[FakeKubelet]:
    await add_node(api, "node-a")
    await add_node(api, "node-b")

    async def seen_by_the_controllers() -> bool:
        # node IPAM gave both a podCIDR: the controllers' shared node informer holds them, so a
        # DaemonSet created next counts them (else it may report 0 of 0 "rolled out" at first)
        nodes = (await api.list("nodes"))["items"]
        return len([n for n in nodes if (n.get("spec") or {}).get("podCIDR")]) == 2

    await eventually(seen_by_the_controllers, timeout=10, what="both nodes' podCIDRs")
    k = FakeKubelet(api)
    task = asyncio.create_task(k.run())
    try:
        yield k
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def kubectl(server: ApiServer, tmp_path: Path) -> Kubectl:
    """`await kubectl(*args, check=True, seconds=60)`: the real kubectl against `server`."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    env = {**os.environ, "KUBECONFIG": str(server.options.state_dir / "kubeconfig")}

    def run(
        *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["kubectl", "--cache-dir", str(tmp_path / "kcache"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out

    async def call(
        *args: str, check: bool = True, seconds: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run, *args, check=check, timeout=seconds)

    return call
