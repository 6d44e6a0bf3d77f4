"""The watch cache (`apiserver.watchcache`): its pure parts (the window and its 410 decision,
the event type a change is for a watcher with selectors), and what a real server serves from
it over HTTP on SQLite and on etcd — every watcher sees every event once and in order from one
store watch, a watch inside the window replays, one older than the window is 410, a stalled
watcher is cut while the others go on and resumes from its last resourceVersion."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from podnet.api.client import HttpApi
from podnet.api.errors import ApiError
from podnet.api.selectors import LabelSelector
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.apiserver.watchcache import (
    CachedEvent,
    CacheOptions,
    Decoded,
    EventWindow,
    WatchCache,
    watch_type,
)
from podnet.store import open_store
from podnet.store.base import Compacted, KeyValue, Store, WatchEvent
from podnet.testing.waiting import eventually

Obj = dict[str, Any]

# -- the window -----------------------------------------------------------------------------


def event(revision: int, key: str = "/registry/configmaps/ns/a") -> CachedEvent:
    return CachedEvent(revision, key, False, b"{}", None)


def test_the_window_serves_what_follows_a_revision_and_410s_before_its_start() -> None:
    window = EventWindow(capacity=3, start=10)
    assert window.since(10) == [] and window.revision == 10
    for revision in (11, 12, 14, 17):
        window.append(event(revision))
    # the oldest event fell out: the window is complete from its revision on
    assert (window.start, window.revision, len(window)) == (11, 17, 3)
    assert [e.revision for e in window.since(11)] == [12, 14, 17]
    assert [e.revision for e in window.since(13)] == [14, 17]
    assert window.since(17) == [] and window.since(99) == []  # later: the live events follow
    with pytest.raises(ApiError) as old:
        window.since(10)
    assert (old.value.code, old.value.reason) == (410, "Expired")
    assert old.value.message == "too old resource version: 10 (11)"


def test_the_window_keeps_its_bytes_under_the_bound_but_always_the_newest_event() -> None:
    window = EventWindow(capacity=100, start=0, max_bytes=10)
    for revision in (1, 2, 3):
        window.append(CachedEvent(revision, "/k", False, b"abcd", None))  # 4 bytes each
    assert (window.start, len(window), window.bytes) == (1, 2, 8)
    window.append(CachedEvent(4, "/k", False, b"0123456789", b"ab"))  # 12 bytes alone
    assert (window.start, len(window), window.bytes) == (3, 1, 12)
    assert [e.revision for e in window.since(3)] == [4]


def put(revision: int, value: bytes, prev: bytes | None, prev_revision: int = 0) -> CachedEvent:
    return CachedEvent(revision, "/k", False, value, prev, prev_revision)


def test_a_change_shares_the_value_it_replaced_while_that_is_in_the_window() -> None:
    window = EventWindow(capacity=100, start=0)
    created = put(1, b'{"v":1,"rv":"1"}', None)
    window.append(created)
    updated = put(2, b'{"v":2,"rv":"2"}', b'{"v":1}', prev_revision=1)  # the store's copy
    window.append(updated)
    assert updated.prev is created.value and updated.shares_prev
    assert window.bytes == len(created.value) + len(updated.value)  # the shared bytes once
    stale = put(5, b'{"v":5}', b'{"v":4}', prev_revision=4)  # replaced a value not here
    window.append(stale)
    assert stale.prev == b'{"v":4}' and not stale.shares_prev
    assert window.bytes == len(created.value) + len(updated.value) + len(b'{"v":5}{"v":4}')


def test_a_shared_value_is_counted_under_the_next_change_once_its_own_event_is_dropped() -> None:
    window = EventWindow(capacity=2, start=0)
    first = put(1, b"a" * 10, None)
    second = put(2, b"b" * 20, b"a" * 10, prev_revision=1)
    third = put(3, b"c" * 30, b"b" * 20, prev_revision=2)
    for each in (first, second, third):
        window.append(each)
    # first fell out: second now holds its value (as its prev) and counts it
    assert (window.start, len(window)) == (1, 2)
    assert second.prev is first.value and not second.shares_prev
    assert third.prev is second.value and third.shares_prev
    assert window.bytes == 10 + 20 + 30 == sum(e.size for e in window.since(1))
    window.append(put(4, b"d" * 40, b"c" * 30, prev_revision=3))
    # third keeps second's value as its prev; fourth shares third's
    assert window.bytes == 30 + 20 + 40 == sum(e.size for e in window.since(2))


def test_after_a_delete_a_new_object_of_the_key_shares_nothing() -> None:
    window = EventWindow(capacity=10, start=0)
    window.append(put(1, b"x", None))
    window.append(CachedEvent(2, "/k", True, b"x", b"x", 1))  # the delete: prev is the value
    created = put(3, b"y", None)
    window.append(created)
    assert created.prev is None and not created.shares_prev
    window.reset(9)
    window.append(put(10, b"z", b"y", prev_revision=3))  # reset forgot revision 3
    assert window.bytes == 2


def test_the_window_refuses_events_out_of_order_and_resets() -> None:
    window = EventWindow(capacity=2, start=5)
    window.append(event(6))
    with pytest.raises(ValueError, match="out of order"):
        window.append(event(6))
    window.reset(40)
    assert (window.start, window.revision, len(window)) == (40, 40, 0)
    with pytest.raises(ApiError):
        window.since(39)
    with pytest.raises(ValueError, match="at least one event"):
        EventWindow(capacity=0, start=0)


# -- the store's history compacted under the cache ------------------------------------------


class ScriptedStore:
    """A store whose first watch delivers revisions 1 and 2 and then finds history compacted
    at 5 (it fell behind); watched again from 5, it delivers 6 and then nothing."""

    def __init__(self) -> None:
        self.watches: list[int] = []

    async def current_revision(self) -> int:
        return 2

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        self.watches.append(from_revision)
        return self._watch(from_revision)

    async def _watch(self, from_revision: int) -> AsyncIterator[WatchEvent]:
        revisions = [1, 2] if from_revision < 5 else [6]
        for revision in revisions:
            kv = KeyValue(f"/registry/configmaps/ns/c{revision}", b"{}", revision, revision)
            yield WatchEvent("PUT", kv, None)
        if from_revision < 5:
            raise Compacted(2, 5)
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_history_compacted_under_the_cache_is_410_for_whoever_had_not_seen_it() -> None:
    store = ScriptedStore()
    cache = WatchCache(store, lambda kv: kv.value)  # type: ignore[arg-type]
    kind = "/registry/configmaps/"
    behind = await cache.watch(kind, kind, 0, None)  # from the beginning
    ahead = await cache.watch(kind, kind, 5, None)  # a client that has seen revision 5
    try:
        await eventually(lambda: behind.ended, what="the watcher behind ended")
        # what it was sent before the gap, then the 410
        taken = [behind.next_nowait() for _ in range(3)]
        assert [d[1].revision if d else None for d in taken] == [1, 2, None]
        assert isinstance(behind.error, ApiError) and behind.error.code == 410
        assert behind.error.message == "too old resource version: 2 (5)"
        await eventually(lambda: ahead.position == 6, what="the watcher ahead going on")
        delivered = ahead.next_nowait()
        assert delivered is not None and delivered[1].revision == 6 and not ahead.ended
        assert store.watches == [0, 5]  # the window starts again at the compact revision
    finally:
        ahead.close()
        await cache.close()


class SlowStartStore(ScriptedStore):
    """A store whose current revision is given only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def current_revision(self) -> int:
        self.asked.set()
        await self.answer.wait()
        return 2


@pytest.mark.asyncio
async def test_a_watcher_cancelled_while_the_cache_starts_does_not_fail_the_others() -> None:
    # the first watcher starts the cache (reads the store's revision); it is cancelled while
    # that read is out (the node authorizer handing its pod watch over to an informer did so,
    # and the informer waiting on the same start died with it)
    store = SlowStartStore()
    cache = WatchCache(store, lambda kv: kv.value)  # type: ignore[arg-type]
    kind = "/registry/configmaps/"
    first = asyncio.create_task(cache.watch(kind, kind, 5, None))
    await store.asked.wait()
    second = asyncio.create_task(cache.watch(kind, kind, 5, None))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    store.answer.set()
    watcher = await asyncio.wait_for(second, 5)
    try:
        await eventually(lambda: watcher.position == 6, what="the second watcher's events")
        delivered = watcher.next_nowait()
        assert delivered is not None and delivered[1].revision == 6
    finally:
        watcher.close()
        await cache.close()


# -- what a change is for a watcher with a selector (upstream's filter rules) ---------------


def change(labels: Obj | None, before: Obj | None, deleted: bool = False) -> Decoded:
    def stored(obj_labels: Obj) -> bytes:
        return b'{"metadata":{"name":"a","labels":%s}}' % str(obj_labels).replace("'", '"').encode()

    value = stored(labels or {})
    return Decoded(CachedEvent(7, "/k", deleted, value, None if before is None else stored(before)))


def web(obj: Obj) -> bool:
    return LabelSelector.parse("app=web").matches(obj["metadata"].get("labels") or {})


WEB, DB = {"app": "web"}, {"app": "db"}


@pytest.mark.parametrize(
    ("decoded", "matches", "expected"),
    [
        (change(WEB, None), None, "ADDED"),
        (change(WEB, WEB), None, "MODIFIED"),
        (change(WEB, WEB, deleted=True), None, "DELETED"),
        (change(WEB, None), web, "ADDED"),
        (change(DB, None), web, None),
        (change(WEB, WEB), web, "MODIFIED"),
        (change(WEB, DB), web, "ADDED"),  # entered the selection
        (change(DB, WEB), web, "DELETED"),  # left it: DELETED, with its new state
        (change(DB, DB), web, None),
        (change(WEB, WEB, deleted=True), web, "DELETED"),
        (change(DB, DB, deleted=True), web, None),
    ],
)
def test_the_type_of_a_change_for_a_watcher(
    decoded: Decoded, matches: Callable[[Obj], bool] | None, expected: str | None
) -> None:
    assert watch_type(decoded, matches) == expected


# -- served by a real server, on SQLite and on etcd -----------------------------------------

WINDOW = 64
QUEUE_LIMIT = 16


class CountingStore:
    """A store that counts the watches opened on it, per prefix."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.watches: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        self.watches.append(prefix)
        return self.inner.watch(prefix, from_revision)


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)],
)
async def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ApiServer, CountingStore]]:
    state = tmp_path_factory.mktemp("wcache")
    if request.param == "etcd":
        url = f"{request.getfixturevalue('etcd_url')}/wcache-{secrets.token_hex(4)}"
    else:
        url = "sqlite"
    store = CountingStore(open_store(url, Path(state)))
    server = ApiServer(
        ServerOptions(
            state,
            store_url=url,
            listen=parse_listen(["127.0.0.1:0"]),
            controllers=False,
            watch_cache=CacheOptions(capacity=WINDOW, queue_limit=QUEUE_LIMIT),
        ),
        store=store,  # type: ignore[arg-type]
    )
    await server.start()
    try:
        yield server, store
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def api(served: tuple[ApiServer, CountingStore]) -> AsyncIterator[HttpApi]:
    server, _ = served
    assert server.credentials is not None
    async with HttpApi.from_kubeconfig(server.credentials.kubeconfig_path) as client:
        yield client


async def namespace(api: HttpApi) -> tuple[str, str]:
    """A fresh namespace, and the configmaps' resourceVersion before anything is in it."""
    name = f"wc-{secrets.token_hex(3)}"
    await api.create("namespaces", {"metadata": {"name": name}})
    return name, (await api.list("configmaps", name))["metadata"]["resourceVersion"]


async def take(events: AsyncIterator[Obj], count: int) -> list[tuple[str, str, str]]:
    """The next `count` non-bookmark events as (type, name, resourceVersion)."""
    taken: list[tuple[str, str, str]] = []
    async with asyncio.timeout(20):
        async for item in events:
            if item["type"] != "BOOKMARK":
                meta = item["object"]["metadata"]
                taken.append((item["type"], meta["name"], meta["resourceVersion"]))
                if len(taken) == count:
                    break
    return taken


def cm(name: str, labels: Obj | None = None, data: str = "") -> Obj:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": {"k": data}}


@pytest.mark.asyncio(loop_scope="module")
async def test_many_watchers_see_every_event_once_in_order_from_one_store_watch(
    served: tuple[ApiServer, CountingStore], api: HttpApi
) -> None:
    _, store = served
    ns, start = await namespace(api)
    watches = [api.watch("configmaps", ns, resource_version=start) for _ in range(24)]
    labelled = api.watch("configmaps", ns, resource_version=start, label_selector="app=web")
    opened = [asyncio.ensure_future(w.__anext__()) for w in (*watches, labelled)]
    expected: list[tuple[str, str, str]] = []
    web_only: list[tuple[str, str, str]] = []
    try:
        for i in range(8):
            made = await api.create("configmaps", cm(f"c{i}", {"app": "web"} if i % 2 else {}), ns)
            expected.append(("ADDED", f"c{i}", made["metadata"]["resourceVersion"]))
            if i % 2:
                web_only.append(expected[-1])
        moved = await api.patch("configmaps", "c1", {"metadata": {"labels": {"app": "db"}}}, ns)
        expected.append(("MODIFIED", "c1", moved["metadata"]["resourceVersion"]))
        web_only.append(("DELETED", "c1", moved["metadata"]["resourceVersion"]))  # left it
        gone = await api.delete("configmaps", "c3", ns)
        expected.append(("DELETED", "c3", gone["metadata"]["resourceVersion"]))
        web_only.append(expected[-1])
        firsts = await asyncio.gather(*opened)
        seen = [
            [
                (
                    f["type"],
                    f["object"]["metadata"]["name"],
                    f["object"]["metadata"]["resourceVersion"],
                )
            ]
            + await take(w, len(expected) - 1)
            for f, w in zip(firsts[:-1], watches, strict=True)
        ]
        first = firsts[-1]["object"]["metadata"]
        labelled_seen = [(firsts[-1]["type"], first["name"], first["resourceVersion"])]
        labelled_seen += await take(labelled, len(web_only) - 1)
    finally:
        for w in (*watches, labelled):
            await w.aclose()  # type: ignore[attr-defined]
    assert all(s == expected for s in seen)
    assert labelled_seen == web_only
    # 25 API watches of configmaps, one store watch of configmaps
    assert store.watches.count("/registry/configmaps/") == 1


@pytest.mark.asyncio(loop_scope="module")
async def test_watchers_pinned_to_a_node_see_exactly_their_pods(api: HttpApi) -> None:
    """Field selectors the cache indexes (spec.nodeName=NODE, the kubelet's; spec.nodeName=,
    the scheduler's) and one it cannot (!=) agree with the unfiltered stream."""
    ns, start = await namespace(api)
    start = (await api.list("pods", ns))["metadata"]["resourceVersion"]
    selectors = ["spec.nodeName=n1", "spec.nodeName=n2", "spec.nodeName=", "spec.nodeName!="]
    every = api.watch("pods", ns, resource_version=start, allow_bookmarks=False)
    pinned = [
        api.watch("pods", ns, resource_version=start, field_selector=f, allow_bookmarks=False)
        for f in selectors
    ]
    spec = {"containers": [{"name": "c", "image": "x"}]}
    for name in ("p1", "p2"):
        await api.create("pods", {"metadata": {"name": name}, "spec": spec}, ns)
    for name, node in (("p1", "n1"), ("p2", "n2")):
        binding = {"metadata": {"name": name}, "target": {"kind": "Node", "name": node}}
        await api.create("pods", binding, ns, subresource="binding")
    await api.delete("pods", "p1", ns, grace_period_seconds=0)
    # the last events, one for each watcher: nothing it should not see came before them
    for name, node in (("p3", ""), ("p4", "n1"), ("p5", "n2")):
        await api.create(
            "pods", {"metadata": {"name": name}, "spec": {**spec, "nodeName": node}}, ns
        )
    try:
        seen = []
        async with asyncio.timeout(20):
            async for item in every:
                seen.append(item)
                if item["object"]["metadata"]["name"] == "p5":
                    break
        rv = [e["object"]["metadata"]["resourceVersion"] for e in seen]
        p1_end = [(e["type"], "p1", r) for e, r in zip(seen[4:-3], rv[4:-3], strict=True)]
        assert p1_end[-1][0] == "DELETED"
        p3, p4, p5 = (("ADDED", f"p{i}", rv[i - 6]) for i in (3, 4, 5))
        expected = {
            "spec.nodeName=n1": [("ADDED", "p1", rv[2]), *p1_end, p4],
            "spec.nodeName=n2": [("ADDED", "p2", rv[3]), p5],
            "spec.nodeName=": [
                ("ADDED", "p1", rv[0]),
                ("ADDED", "p2", rv[1]),
                ("DELETED", "p1", rv[2]),  # bound: it left the selection
                ("DELETED", "p2", rv[3]),
                p3,
            ],
            "spec.nodeName!=": [("ADDED", "p1", rv[2]), ("ADDED", "p2", rv[3]), *p1_end, p4, p5],
        }
        for selector, watch in zip(selectors, pinned, strict=True):
            assert await take(watch, len(expected[selector])) == expected[selector], selector
    finally:
        for w in (every, *pinned):
            await w.aclose()  # type: ignore[attr-defined]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_watch_inside_the_window_replays_and_one_older_is_410(api: HttpApi) -> None:
    ns, start = await namespace(api)
    made = [await api.create("configmaps", cm(f"r{i}"), ns) for i in range(5)]
    replayed = await take(api.watch("configmaps", ns, resource_version=start), 5)
    assert replayed == [
        ("ADDED", f"r{i}", m["metadata"]["resourceVersion"]) for i, m in enumerate(made)
    ]
    # from the middle: exactly what followed
    middle = made[2]["metadata"]["resourceVersion"]
    assert [
        n for _, n, _ in await take(api.watch("configmaps", ns, resource_version=middle), 2)
    ] == [
        "r3",
        "r4",
    ]
    for i in range(WINDOW):  # push `start` out of the configmaps' window
        await api.patch("configmaps", "r0", {"data": {"k": str(i)}}, ns)
    with pytest.raises(ApiError) as expired:
        await take(api.watch("configmaps", ns, resource_version=start), 1)
    assert expired.value.code == 410
    assert expired.value.message.startswith(f"too old resource version: {start} (")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_stalled_watcher_is_cut_while_the_others_go_on(
    served: tuple[ApiServer, CountingStore], api: HttpApi
) -> None:
    server, _ = served
    assert server.registry is not None
    cacher = server.registry.watch_cache.cacher("/registry/configmaps/")
    ns, start = await namespace(api)
    stalled = api.watch("configmaps", ns, resource_version=start, allow_bookmarks=False)
    lively = api.watch("configmaps", ns, resource_version=start, allow_bookmarks=False)
    big = "x" * 64 * 1024
    written: list[str] = []
    try:
        await api.create("configmaps", cm("s0", data=big), ns)
        written.append("s0")
        # the stalled client takes one event and then reads no more; the lively one keeps up
        got = await take(stalled, 1)
        assert [n for _, n, _ in got] == ["s0"]
        assert [n for _, n, _ in await take(lively, 1)] == ["s0"]
        watching = cacher.watchers
        # socket buffers fill, then its queue (QUEUE_LIMIT events): it is cut, nobody waits
        while cacher.watchers == watching:
            assert len(written) < 400, "the stalled watcher was never cut"
            name = f"s{len(written)}"
            await api.create("configmaps", cm(name, data=big), ns)
            written.append(name)
            assert [n for _, n, _ in await take(lively, 1)] == [name]
        # what the stalled watcher was sent before the cut arrives in order, then its stream
        # ends; resumed from its last resourceVersion (still in the window) it gets the rest
        got += await take(stalled, len(written))  # fewer: it ends first
        names = [n for _, n, _ in got]
        assert names == written[: len(names)] and len(names) < len(written)
        resumed = api.watch("configmaps", ns, resource_version=got[-1][2])
        rest = await take(resumed, len(written) - len(names))
        await resumed.aclose()  # type: ignore[attr-defined]
        assert names + [n for _, n, _ in rest] == written
    finally:
        for w in (stalled, lively):
            await w.aclose()  # type: ignore[attr-defined]
