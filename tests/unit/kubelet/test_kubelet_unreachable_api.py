"""No hot loops, and a prompt return: the kubelet while its API server restarts.

The real `KubeletComponent` (node registration, status and Lease, the pod list/watch, the pod
loop) runs over the real HTTP client against the real API server, in-process. The server is
stopped for a while, so every call is refused at once, as during a restart: a loop that retries
without waiting makes thousands of calls and log lines a second (issue #19: 2,000-2,800
`node status update failed` lines a second per agent). Counted here: the calls that reach the
HTTP client and the lines logged. Then the server comes back on the same port, and the kubelet
must come back by itself: a pod bound to the node afterwards runs, and the node status is
written again. (How soon is measured by `benchmarks/restart.py`, not asserted here.)
Containers and sandboxes are the in-memory runtime's (no root needed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from podnet.agent.context import AgentContext
from podnet.agent.kubelet.component import KubeletComponent
from podnet.api.client import HttpApi
from podnet.api.interface import Obj
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.testing.kubelet import FakeRuntime, FakeSandboxes

OUTAGE = 2.5  # seconds with the API server down
RECOVERY = 20.0  # a deadline, not a measure: the node loop's back-off is at most 8.4 s


class CountingHttpApi(HttpApi):
    """The real client; counts every request and watch it is asked to make."""

    calls = 0

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await super().request(*args, **kwargs)

    def watch(self, *args: Any, **kwargs: Any) -> AsyncIterator[Obj]:
        self.calls += 1
        return super().watch(*args, **kwargs)


def server_on(state: Path, port: int) -> ApiServer:
    return ApiServer(
        ServerOptions(state, listen=parse_listen([f"127.0.0.1:{port}"]), controllers=False)
    )


async def eventually(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until `check()` held; fails after `seconds`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"{what} within {seconds}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.asyncio
async def test_kubelet_backs_off_while_the_server_is_down_and_resumes_promptly(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fake_runtime: FakeRuntime,
    fake_sandboxes: FakeSandboxes,
) -> None:
    server = server_on(tmp_path / "server", 0)
    await server.start()
    port = server.ports[0]
    assert server.credentials is not None
    api = CountingHttpApi(server.url, server.credentials.token, server.credentials.ca_pem)
    ctx = AgentContext(
        api=api,
        node_name="node-a",
        node_ip="127.0.0.1",
        state_dir=tmp_path / "node",
        run_dir=tmp_path / "run",
        netns_prefix=f"podnet-test-{tmp_path.name[-8:]}-",
    )
    kubelet = KubeletComponent(
        ctx,
        network_required=False,
        serve=False,
        runtime=fake_runtime,
        sandboxes=fake_sandboxes,
    )
    kubelet.node.lease_renew_seconds = 0.5  # so that a renewal falls into the outage
    stop = asyncio.Event()
    task = asyncio.create_task(kubelet.run(stop))
    try:
        await eventually(kubelet.pods.synced.is_set, 20, "the kubelet's first sync")
        await eventually(kubelet.node.registered.is_set, 20, "node registration")
        # the server runs no controllers: play node IPAM (once it is known, the node loop
        # waits only on its timers, and that wait was the hot loop)
        await api.patch("nodes", "node-a", {"spec": {"podCIDR": "10.244.1.0/24"}})
        await eventually(lambda: kubelet.node.pod_cidr is not None, 5, "the podCIDR seen")

        caplog.clear()
        caplog.set_level(logging.INFO, "podnet")
        api.calls = 0
        await server.stop()
        await asyncio.sleep(OUTAGE)
        calls = api.calls
        failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not task.done(), task  # still trying, not crashed
        # the node loop backs off 0.2, 0.4, 0.8, 1.6 s and the pod reflector 0.2 s doubling to
        # 1 s, both jittered: about ten calls in the outage, where a loop without a pause makes
        # thousands
        assert 2 <= calls <= 25, calls
        # each loop logs its first failure at once and counts the repeats within 30 s
        assert 2 <= len(failures) <= 4, "\n".join(failures)
        assert any(m.startswith("node status update failed") for m in failures), failures
        assert any(m.startswith("kubelet: pods watch failed") for m in failures), failures

        server = server_on(tmp_path / "server", port)
        await server.start()
        client = HttpApi(server.url, server.credentials.token, server.credentials.ca_pem)
        async with client:
            late = {
                "metadata": {"name": "late"},
                "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]},
            }
            await client.create("pods", late, "default")

            async def phase() -> str:
                pod = await client.get("pods", "late", "default")
                return str(pod.get("status", {}).get("phase"))

            started = time.monotonic()
            while await phase() != "Running":
                assert time.monotonic() - started < RECOVERY, "the new pod Running"
                await asyncio.sleep(0.05)
        await eventually(
            lambda: any("status and lease written again" in r.getMessage() for r in caplog.records),
            RECOVERY,
            "the node status written again",
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await api.close()
        await server.stop()

    # the restarted server kept its store: the pods watch resumed where it was, no re-list
    assert any("kubelet: pods watched again" in r.getMessage() for r in caplog.records)
