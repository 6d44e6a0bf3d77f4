"""Suite-wide test configuration: root-only tests are skipped for non-root developers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); CI runs these as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def etcd_url() -> Iterator[str]:
    """`etcd://127.0.0.1:PORT` of a throwaway etcd shared by the session (tests marked `etcd`).

    Tests must keep to their own key prefix (append `/<unique>` to the URL). The server is
    stopped by its recorded pid and its data directory removed when the session ends.
    """
    from podnet.testing.etcd import EtcdServer

    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server)")
    with EtcdServer() as server:
        yield server.store_url
