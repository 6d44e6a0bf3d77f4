"""An etcd that is not there: every operation fails fast with an actionable StoreUnavailable."""

from __future__ import annotations

import socket

import pytest

from podnet.store import EtcdStore, StoreUnavailable

pytestmark = pytest.mark.timeout(30)


def closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here once the socket is closed


@pytest.mark.asyncio
async def test_unreachable_etcd_is_store_unavailable_with_a_hint() -> None:
    port = closed_loopback_port()
    store = EtcdStore([("127.0.0.1", port)], key_prefix="/podnet", timeout=3.0)
    try:
        for attempt in (store.get("/k"), store.create("/k", b"x"), store.list("/")):
            with pytest.raises(StoreUnavailable) as raised:
                await attempt
            message = str(raised.value)
            assert f"http://127.0.0.1:{port}" in message
            assert "Is etcd running?" in message
            assert "etcdctl" in message
        with pytest.raises(StoreUnavailable, match="Is etcd running"):
            await anext(store.watch("/", 0))
    finally:
        await store.close()
