"""A watch whose creation timed out must not hijack the next watch created on the stream.

etcd's answers to one Watch stream can come late (a busy event loop, a backlog of other
watches' events). aetcd's Watcher created a client's watches one at a time and bound whatever
`created` answer came next to the create pending *then*: when a create timed out, its late
answer was bound to the *next* create, possibly for another prefix, and that store watch yielded
the first prefix's events and never its own. In the API server: a watch cache fed another kind's
changes, the informers of its kind hearing nothing, silently, for good. `store.etcdwatch` ties
each watch to its own id; these tests hold etcd's answers back on a real etcd through a loopback
relay, so they check the store's behaviour, not an implementation's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from podnet.store import EtcdStore, StoreError, StoreUnavailable, parse_etcd_url

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


class HoldingRelay:
    """A loopback TCP relay to etcd whose answers (etcd -> client) can be held back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        etcd_r, etcd_w = await asyncio.open_connection(*self.target)
        self._writers += [client_w, etcd_w]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if held:
                        await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [
            asyncio.create_task(pump(client_r, etcd_w, held=False)),
            asyncio.create_task(pump(etcd_r, client_w, held=True)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest_asyncio.fixture
async def relay(etcd_url: str) -> AsyncIterator[HoldingRelay]:
    (endpoint,), _ = parse_etcd_url(etcd_url)
    relay = HoldingRelay(endpoint)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


@pytest.mark.asyncio
async def test_a_late_created_answer_does_not_bind_the_next_watch_to_the_wrong_prefix(
    etcd_url: str, relay: HoldingRelay
) -> None:
    _, prefix = parse_etcd_url(f"{etcd_url}/etcd-{secrets.token_hex(4)}")
    # the create timeout is the store's timeout (10 s by default), scaled down
    store = EtcdStore([("127.0.0.1", relay.port)], key_prefix=prefix, timeout=1.0)
    try:
        start = await store.current_revision()
        # a watch already on the stream: one event of it says its create was answered
        other = store.watch("/c/", start)
        await store.create("/c/0", b"c")
        assert (await asyncio.wait_for(anext(other), 5)).kv.key == "/c/0"
        pending_other = asyncio.ensure_future(anext(other))

        relay.flowing.clear()  # etcd's answers are held back from here
        first = store.watch("/a/", start)
        with pytest.raises(StoreError) as timed_out:
            await anext(first)  # its create timed out after 1 s
        await first.aclose()
        second = store.watch("/b/", start)
        got = asyncio.ensure_future(anext(second))  # its create is sent, unanswered
        await asyncio.sleep(0.3)
        relay.flowing.set()  # the late answer to /a/'s create comes first, then /b/'s

        await asyncio.sleep(0.3)
        await store.create("/a/x", b"a")
        await store.create("/b/x", b"b")
        await store.create("/c/x", b"c")
        event = await asyncio.wait_for(got, 5)
        assert event.kv.key == "/b/x", f"the watch of /b/ yielded {event.kv.key!r}"
        # the watches already on the stream go on undisturbed (session 8's fix ended them all)
        event = await asyncio.wait_for(pending_other, 5)
        assert event.kv.key == "/c/x"
        await second.aclose()
        await other.aclose()
        # a create that timed out is StoreUnavailable: the watch cache resumes from its revision
        assert isinstance(timed_out.value, StoreUnavailable), timed_out.value
    finally:
        with contextlib.suppress(Exception):
            await store.close()


@pytest.mark.asyncio
async def test_many_watches_created_at_once_each_get_their_own_events(etcd_url: str) -> None:
    """Creates are pipelined on the one stream; each watch still gets its own prefix only."""
    (endpoint,), prefix = parse_etcd_url(f"{etcd_url}/etcd-{secrets.token_hex(4)}")
    store = EtcdStore([endpoint], key_prefix=prefix)
    try:
        start = await store.current_revision()
        watches = [store.watch(f"/k{i}/", start) for i in range(40)]
        nexts = [asyncio.ensure_future(anext(w)) for w in watches]
        await asyncio.sleep(0.5)
        for i in reversed(range(40)):
            await store.create(f"/k{i}/x", str(i).encode())
        events = await asyncio.wait_for(asyncio.gather(*nexts), 10)
        assert [e.kv.key for e in events] == [f"/k{i}/x" for i in range(40)]
        for watch in watches:
            await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
