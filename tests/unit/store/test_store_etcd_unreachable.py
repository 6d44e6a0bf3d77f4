"""An etcd that is not there: every operation fails within the store's timeout (tried again
until then, as during an election) with an actionable StoreUnavailable."""

from __future__ import annotations

import pytest

from podnet.store import EtcdStore, StoreUnavailable
from podnet.testing.ports import free_port

pytestmark = pytest.mark.timeout(30)


@pytest.mark.asyncio
async def test_unreachable_etcd_is_store_unavailable_with_a_hint() -> None:
    port = free_port()  # nothing listens there
    store = EtcdStore([("127.0.0.1", port)], key_prefix="/podnet", timeout=1.0)
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
