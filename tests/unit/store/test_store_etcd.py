"""etcd driver specifics: key prefixes, endpoint failover, losing etcd, automatic compaction."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path
from typing import Any

import pytest

from podnet.store import (
    CompactionPolicy,
    EtcdStore,
    KeyExists,
    RevisionConflict,
    StoreUnavailable,
    ValueTooLarge,
    open_store,
    parse_etcd_url,
)
from podnet.testing.etcd import EtcdServer
from podnet.testing.ports import free_port

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


def unique_url(etcd_url: str) -> str:
    return f"{etcd_url}/etcd-{secrets.token_hex(4)}"


@pytest.mark.asyncio
async def test_clusters_with_different_prefixes_do_not_see_each_other(
    etcd_url: str, tmp_path: Path
) -> None:
    one, two = (
        open_store(unique_url(etcd_url), tmp_path),
        open_store(unique_url(etcd_url), tmp_path),
    )
    try:
        start = await two.current_revision()
        await one.create("/pods/a", b"one")
        mine = await two.create("/pods/a", b"two")  # same key, other cluster: no KeyExists
        assert [kv.value for kv in (await one.list("")).items] == [b"one"]
        assert [kv.value for kv in (await two.list("/pods/")).items] == [b"two"]
        async with contextlib.aclosing(two.watch("", start)) as events:
            event = await asyncio.wait_for(anext(events), 5)
        assert event.kv == mine
    finally:
        await one.close()
        await two.close()


@pytest.mark.asyncio
async def test_a_dead_first_endpoint_fails_over_to_the_next(etcd_url: str) -> None:
    dead_port = free_port()  # nothing listens there
    (live,), prefix = parse_etcd_url(unique_url(etcd_url))
    store = EtcdStore([("127.0.0.1", dead_port), live], key_prefix=prefix, timeout=5.0)
    try:
        created = await store.create("/k", b"v")
        assert await store.get("/k") == created
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_losing_etcd_ends_watches_and_writes_with_store_unavailable() -> None:
    with EtcdServer() as server:
        store = EtcdStore(parse_etcd_url(server.store_url)[0], timeout=3.0)
        try:
            start = await store.current_revision()
            events = store.watch("/", start)
            pending = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.2)
            server.stop()
            with pytest.raises(StoreUnavailable, match="Is etcd running"):
                await asyncio.wait_for(pending, 15)
            with pytest.raises(StoreUnavailable, match="Is etcd running"):
                await store.create("/k", b"v")
        finally:
            await store.close()


@pytest.mark.asyncio
async def test_automatic_compaction_keeps_the_window(etcd_url: str) -> None:
    (endpoint,), prefix = parse_etcd_url(unique_url(etcd_url))
    policy = CompactionPolicy(interval_seconds=0, retention_seconds=300, retained_revisions=2)
    store = EtcdStore([endpoint], key_prefix=prefix, compaction=policy)
    try:
        first = await store.create("/k", b"0")
        assert await store.compact_automatically(now=0.0) is None
        kv = first
        for n in range(1, 5):
            kv = await store.update("/k", f"{n}".encode(), kv.mod_revision)
        target = await store.compact_automatically(now=300.0)
        assert target == first.mod_revision  # the revision seen 5 minutes ago
        # history after the target is intact
        async with contextlib.aclosing(store.watch("/", first.mod_revision)) as events:
            nxt = await asyncio.wait_for(anext(events), 5)
        assert nxt.kv.value == b"1" and nxt.prev == first
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_value_over_etcds_request_limit_is_value_too_large(
    etcd_url: str, tmp_path: Path
) -> None:
    # found by the API fuzzer: a 2.6 MB ConfigMap (valid: the data limit counts values only)
    # was a 500 with gRPC's RESOURCE_EXHAUSTED; the API now answers 413 like upstream
    store = open_store(unique_url(etcd_url), tmp_path)
    try:
        kv = await store.create("/k", b"v")
        for size in (1_600_000, 2_700_000):  # over etcd's 1.5 MiB, over gRPC's 2 MiB
            with pytest.raises(ValueTooLarge, match="max-request-bytes"):
                await store.create(f"/big{size}", b"x" * size)
            with pytest.raises(ValueTooLarge):
                await store.update("/k", b"x" * size, kv.mod_revision)
        assert await store.get("/k") == kv
    finally:
        await store.close()


class LosesAnswers(EtcdStore):
    """A store whose first `lose` transactions reach etcd (when `applied`) but whose answers
    are lost, as when the member or the leader behind it dies mid-write."""

    def __init__(self, *args: Any, lose: int, applied: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lose, self.applied, self.attempts = lose, applied, 0

    async def _txn(self, request: Any, seconds: float | None = None) -> Any:
        self.attempts += 1
        assert seconds is not None and seconds <= self.write_attempt_timeout
        if self.attempts <= self.lose:
            if self.applied:
                await super()._txn(request, seconds)
            raise StoreUnavailable("the answer was lost")
        return await super()._txn(request, seconds)


@pytest.mark.asyncio
@pytest.mark.parametrize("applied", [True, False], ids=["applied", "dropped"])
async def test_a_write_whose_answer_is_lost_is_sent_again(etcd_url: str, applied: bool) -> None:
    (endpoint,), prefix = parse_etcd_url(unique_url(etcd_url))
    plain = EtcdStore([endpoint], key_prefix=prefix)
    store = LosesAnswers([endpoint], key_prefix=prefix, lose=2, applied=applied)
    try:
        created = await store.create("/k", b"mine")
        assert store.attempts == 3 and created.value == b"mine"
        assert await plain.get("/k") == created  # once, at the revision the caller was given
        store.attempts = 0
        updated = await store.update("/k", b"mine, updated", created.mod_revision)
        assert store.attempts == 3 and await plain.get("/k") == updated
        assert updated.create_revision == created.create_revision
        # someone else's value is no earlier attempt of ours: still a conflict
        await plain.create("/other", b"theirs")
        store.attempts = 0
        with pytest.raises(KeyExists):
            await store.create("/other", b"mine")
        with pytest.raises(RevisionConflict):
            await store.update("/other", b"mine", created.mod_revision)
    finally:
        await store.close()
        await plain.close()
