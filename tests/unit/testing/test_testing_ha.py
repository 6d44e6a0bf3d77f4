"""The failover load of tests/e2e/test_ha.py and benchmarks/ha.py (podnet.testing.ha): the
Writer retries a refused write and takes a 409 for a cut-off attempt that was applied, the
Watcher counts what its reflector is fed, and the gap/window figures come from the recorded
acknowledgement times."""

from __future__ import annotations

import asyncio

import pytest

from podnet.api.errors import ApiError
from podnet.testing.api import InMemoryApi
from podnet.testing.ha import Watcher, Writer
from podnet.testing.waiting import eventually

pytestmark = pytest.mark.timeout(30)


@pytest.mark.asyncio
async def test_every_acknowledged_write_is_stored_and_seen_once(memory_api: InMemoryApi) -> None:
    await memory_api.create("namespaces", {"metadata": {"name": "w"}})
    writer, watcher = Writer(memory_api, "w"), Watcher(memory_api, "w")
    stop, stop_watching = asyncio.Event(), asyncio.Event()
    watching = asyncio.create_task(watcher.run(stop_watching))
    await eventually(lambda: watcher.lists == 1, 5, "the watcher's first list")
    # cm-1 is in the store already, as after an attempt cut off once the store had applied it
    await memory_api.put("configmaps", {"metadata": {"name": "cm-1"}}, "w")
    memory_api.fail_next(
        "create", "configmaps", ApiError(503, "ServiceUnavailable", "etcdserver: leader changed")
    )
    writing = asyncio.create_task(writer.run(stop))
    await eventually(lambda: len(writer.acked) >= 5, 5, "five acknowledged writes")
    stop.set()
    await writing
    await eventually(lambda: set(writer.acked) <= set(watcher.added), 5, "every write seen")
    stop_watching.set()
    watching.cancel()  # reflect notices `stop` only between watch events
    await asyncio.gather(watching, return_exceptions=True)

    assert writer.acked[:5] == [f"cm-{i}" for i in range(5)]
    assert writer.retries == 1  # the 503; the 409 for cm-1 counts as its acknowledgement
    assert len(writer.ack_times) == len(writer.acked)
    stored = {cm["metadata"]["name"] for cm in memory_api.peek_list("configmaps", "w")}
    assert set(writer.acked) <= stored
    assert watcher.lists == 1
    assert set(watcher.added.values()) == {1}


def test_gaps_and_windows_come_from_the_acknowledgement_times(memory_api: InMemoryApi) -> None:
    writer = Writer(memory_api, "w")
    writer.acked = ["a", "b", "c", "d", "e"]
    writer.ack_times = [0.0, 1.0, 1.5, 5.0, 5.2]
    writer.retry_times = [2.0, 3.0, 5.1]
    # a failure at 1.2: from the last acknowledgement before it (1.0) over everything after
    assert writer.longest_gap(1.2) == pytest.approx(3.5)
    assert writer.longest_gap(1.2, until=5.0) == pytest.approx(0.5)
    assert writer.longest_gap(-1.0) == pytest.approx(3.5)  # nothing before: from `since`
    assert writer.acked_between(1.2, 5.0) == ["c"]
    assert writer.retries_between(1.2, 5.0) == 2
    with pytest.raises(ValueError, match="no write was acknowledged"):
        writer.longest_gap(6.0)
