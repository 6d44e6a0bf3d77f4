"""The `flannel_lab` fixture: a started 3-node lab per backend (`podnet.testing.flannel_lab`,
shared with `benchmarks/overlay.py`), always torn down (namespaces, server process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from podnet.testing.flannel_lab import FlannelLab


@pytest_asyncio.fixture
async def flannel_lab(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FlannelLab]:
    lab = FlannelLab(backend=request.param, base=tmp_path)
    try:
        await lab.start(nodes=3)
        yield lab
    finally:
        await lab.close()
