"""The kubelet's volume manager against `InMemoryApi` (the real registry, its ServiceAccount
admission and TokenRequest): the projected token is requested again at 80% of its lifetime.
The loop-level tests (token, ca.crt, namespace and Service variables in a started container)
are in test_kubelet_loop.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from podnet.agent.kubelet.podvolumes import PodVolumes
from podnet.testing.api import InMemoryApi


def pod() -> dict[str, object]:
    return {
        "metadata": {"name": "web"},
        "spec": {"nodeName": "node1", "containers": [{"name": "app", "image": "busybox"}]},
    }


@pytest.mark.asyncio
async def test_the_token_is_requested_again_at_80_percent_of_its_lifetime(
    memory_api: InMemoryApi, tmp_path: Path
) -> None:
    created = await memory_api.create("pods", pod(), "default")
    now = [dt.datetime.now(dt.UTC).timestamp()]
    volumes = PodVolumes(memory_api, tmp_path, clock=lambda: now[0])
    assert not volumes.ready(created)
    await volumes.ensure(created)
    assert volumes.ready(created)
    (volume,) = volumes.directory(created["metadata"]["uid"]).iterdir()
    first = (volume / "token").read_text()
    requests = [c for c in memory_api.calls if c.subresource == "token"]
    assert len(requests) == 1
    assert requests[0].body["spec"]["boundObjectRef"]["uid"] == created["metadata"]["uid"]
    now[0] += 0.79 * 3607
    await volumes.ensure(created)
    assert (volume / "token").read_text() == first
    now[0] += 0.02 * 3607
    await volumes.ensure(created)
    assert len([c for c in memory_api.calls if c.subresource == "token"]) == 2
    assert (volume / "token").read_text() != first
