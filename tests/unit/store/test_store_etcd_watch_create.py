"""A watch whose creation timed out must not hijack the next watch created on the stream.

aetcd multiplexes every watch of a client over one gRPC stream and creates them one at a time:
`Watcher.add_callback` sends a create request and waits `timeout` for a `created` answer, and
`_handle_response` binds whatever `created` answer comes next to the create pending *then*. When
an answer is late (the stream is behind: a busy event loop, a backlog of other watches' events),
the create times out (WatchTimeoutError -> StoreError; the watch cache of that kind ends and is
started again) and the late answer is bound to the *next* create, possibly for another prefix:
that store watch then yields the first prefix's events and never its own (its own `created`
answer, arriving with no create pending, is cancelled). In the API server that is a watch cache
fed another kind's changes: the informers of its kind hear nothing, silently, for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest

from podnet.store import EtcdStore, StoreError, StoreUnavailable, parse_etcd_url

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


@pytest.mark.asyncio
async def test_a_late_created_answer_does_not_bind_the_next_watch_to_the_wrong_prefix(
    etcd_url: str,
) -> None:
    (endpoint,), prefix = parse_etcd_url(f"{etcd_url}/etcd-{secrets.token_hex(4)}")
    store = EtcdStore([endpoint], key_prefix=prefix, timeout=5.0)
    try:
        start = await store.current_revision()
        client = store._client
        await client.connect()
        watcher = client._watcher
        watcher._timeout = 0.3  # the create timeout (EtcdStore's 10 s, scaled down)
        handle = watcher._handle_response
        delayed = {"left": 0}

        async def slow_stream(response):  # the first `created` answer comes 0.45 s late
            if response.created and delayed["left"]:
                delayed["left"] -= 1
                await asyncio.sleep(0.45)
            await handle(response)

        watcher._handle_response = slow_stream

        other = store.watch("/c/", start)  # a watch already on the stream
        pending_other = asyncio.ensure_future(other.__anext__())
        await asyncio.sleep(0.1)
        delayed["left"] = 1  # /c/'s own `created` was not delayed

        first = store.watch("/a/", start)
        with pytest.raises(StoreError):  # the create timed out (StoreUnavailable)
            await first.__anext__()
        await first.aclose()

        second = store.watch("/b/", start)
        got = asyncio.ensure_future(second.__anext__())
        await asyncio.sleep(1.0)  # the late `created` of /a/ has come meanwhile
        await store.create("/a/x", b"a")
        await store.create("/b/x", b"b")
        event = await asyncio.wait_for(got, 5)
        assert event.kv.key == "/b/x", f"the watch of /b/ yielded {event.kv.key!r}"
        await second.aclose()
        # the watches already on the stream end as after a lost member: their caches resume
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(pending_other, 5)
        await other.aclose()
    finally:
        with contextlib.suppress(Exception):
            await store.close()
