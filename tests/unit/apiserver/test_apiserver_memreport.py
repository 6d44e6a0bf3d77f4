"""podnet.memreport: the debugging breakdown of the server's memory (PODNET_MEMORY_REPORT)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from podnet import memreport
from podnet.testing.waiting import eventually


class Holder:
    def __init__(self, items: dict[str, bytes]) -> None:
        self.items = items


def test_reachable_bytes_counts_each_object_once() -> None:
    shared = b"x" * 10_000
    seen: set[int] = set()
    first, _ = memreport.reachable_bytes(Holder({"a": shared}), seen)
    second, _ = memreport.reachable_bytes(Holder({"b": shared}), seen)
    assert first >= sys.getsizeof(shared)
    assert second < sys.getsizeof(shared)  # already counted under the first holder


def test_track_is_a_no_op_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memreport.ENV_PATH, raising=False)
    monkeypatch.setattr(memreport, "_holders", [])
    memreport.track("things", Holder({}))
    assert memreport._holders == []


@pytest.mark.asyncio
async def test_report_lines_name_holders_and_rss(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "memory.jsonl"
    monkeypatch.setenv(memreport.ENV_PATH, str(path))
    monkeypatch.setenv(memreport.ENV_INTERVAL, "0.05")
    monkeypatch.setattr(memreport, "_holders", [])
    holder = Holder({f"k{i}": bytes([i % 256]) * 1000 for i in range(1000)})
    memreport.track("values", holder, lambda h: h.items)
    stop = asyncio.Event()
    task = asyncio.create_task(memreport.run(stop))

    def reports() -> list[dict[str, Any]]:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        return [line for line in lines if "holders" in line]

    # each report is written by a forked child: on a busy machine that takes a while
    await eventually(lambda: len(reports()) >= 2, timeout=60, what="two report lines")
    stop.set()
    await task
    lines = reports()
    assert lines[0]["VmRSS"] > 0 and lines[0]["VmHWM"] >= lines[0]["VmRSS"]
    assert 1.0 <= lines[0]["holders"]["values"]["mb"] < 2.0
    del holder
    assert "values" not in memreport.snapshot()["holders"]  # a holder gone is not reported
