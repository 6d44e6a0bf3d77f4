"""Snapshots captured from live labs (`podnet trace --save-snapshot`), shared by the trace
tests: `snapshots("vxlan-iptables")` loads `snapshots/vxlan-iptables.json.gz` once."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from podnet.trace.snapshot import Snapshot, from_json

HERE = Path(__file__).parent


@cache
def _load(name: str) -> Snapshot:
    return from_json(
        gzip.decompress((HERE / "snapshots" / f"{name}.json.gz").read_bytes()).decode()
    )


@pytest.fixture(scope="session")
def snapshots() -> Callable[[str], Snapshot]:
    return _load
