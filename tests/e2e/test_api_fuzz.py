"""A real `podnet server` under a few thousand seeded hostile requests (issue #19).

The cases come from `podnet.testing.fuzz` (typed mutations of valid objects, hostile strings,
deep nesting, bad query parameters, every patch type, subresources, protobuf, malformed HTTP);
`benchmarks/fuzz.py` runs many more. Every answer must be a non-5xx, every error a Status,
every watch well-formed; the server must log no traceback, stay ready, keep its memory
bounded, and still exit by itself on SIGTERM: code 0 (not the SIGKILL after the grace period),
with every task ended by the stop event (none waited out and cancelled). How long the exit
takes is measured by `benchmarks/fuzz.py` (tests assert behaviour, benchmarks time it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podnet.testing import fuzz
from podnet.testing.server import ServerProcess

SEED = 19
CASES = 2500
# the server starts at ~80 MB; big bodies (up to 3 MiB, parsed) raise its high-water mark,
# an unbounded store of anything (abandoned watches, snapshots, ...) would pass this
RSS_GROWTH_LIMIT = 160 * 1024 * 1024

pytestmark = [pytest.mark.timeout(300)]


def test_a_few_thousand_hostile_requests(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "state")
    server.start()
    try:
        report = asyncio.run(fuzz.campaign(server, SEED, CASES))
        exit_code = server.stop()
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    problems = "\n".join(fuzz.describe(p)[:600] for p in report.problems)
    assert report.cases == CASES
    assert report.problem_count == 0, problems
    assert report.server_errors == 0
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:4000]
    growth = max(report.rss_samples) - report.rss_samples[0]
    assert growth < RSS_GROWTH_LIMIT, [r // 2**20 for r in report.rss_samples]
    assert exit_code == 0, log[-2000:]
    assert "did not stop" not in log, log[-2000:]
