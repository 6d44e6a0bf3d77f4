"""Fixtures for API server unit tests: a registry on a throwaway SQLite store, bootstrapped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.registry import Registry
from podnet.config import ClusterConfig
from podnet.store import Store, open_store


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store("sqlite", tmp_path)
    try:
        yield s
    finally:
        await s.close()


@pytest_asyncio.fixture
async def registry(store: Store) -> AsyncIterator[Registry]:
    reg = Registry(
        store, ClusterConfig(), ca_pem=b"-----BEGIN CERTIFICATE-----\n", bookmark_interval=0.2
    )
    await bootstrap(reg, "127.0.0.1", 6443)
    yield reg
