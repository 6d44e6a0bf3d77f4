"""agent/trim.py: the C heap's free pages go back to the kernel (RSS falls), then periodically
until the agent stops."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from podnet.agent.trim import _malloc_trim, trim_periodically


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_free_heap_left_between_live_chunks_is_returned() -> None:
    trim = _malloc_trim()
    assert trim is not None  # Debian's glibc
    kept: list[bytes] = []

    def churn() -> None:  # what decoding a burst of events on a worker thread leaves behind
        burst = [bytes(3000 + i % 500) for i in range(12_000)]
        kept.extend(burst[::50])  # a few live chunks pin every page between them
        del burst

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    before = _rss_mb()
    trim()
    assert _rss_mb() < before - 30  # ~75 MB were freed; the pages between live chunks go back
    assert len(kept) == 480


@pytest.mark.asyncio
async def test_trims_until_stopped() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(trim_periodically(stop, period=0.01))
    await asyncio.sleep(0.1)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)
