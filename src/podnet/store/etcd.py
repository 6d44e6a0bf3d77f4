"""The etcd v3 store driver, for servers that share state (DESIGN.md "Hosts").

What belongs here: the mapping of the `Store` contract onto etcd's KV, Txn, Watch and Compact
RPCs, and the translation of etcd/gRPC errors into store errors. Nothing else.

Client choice: the maintained asyncio client `aetcd` (gRPC) works with etcd 3.4, so it is used
rather than the v3 JSON gateway. Connection handling comes from `aetcd.Client` (`connect`,
`compact`); the single-key transactions are sent through the client's generated stubs
(`client.kvstub.Txn`) because aetcd's `transaction()` drops the response header, and the
header's revision is the revision of our write. Watches go through `store.etcdwatch` on the
client's channel, not aetcd's `Watcher`, which could bind a watch to another's events.

Mapping (kube-apiserver's transaction shapes, plus `VERSION > 0` so that an expected revision
of 0 can never turn an update into a create):
- create  = Txn(if CREATE(key) == 0 then Put)
- update  = Txn(if MOD(key) == expected and VERSION(key) > 0 then Put, Range(key, keys only)
                else Range(key))
- delete  = Txn(if [MOD(key) == expected and] VERSION(key) > 0 then DeleteRange(prev_kv)
                else Range(key))
- compact(R) = Compact(R) (clamped to the current revision): etcd keeps the state at R, so
  every event above R still has its `prev_kv`.
- watch(prefix, from_revision) = Watch(prefix range, start_revision=from_revision, prev_kv),
  dropping the events at from_revision itself. Asking one revision early makes etcd's own
  check ("start_revision < compact revision") the contract's check ("from_revision < compact
  revision"): after Compact(R), watching from R works, from R-1 raises `Compacted`.
  A DELETE event's `kv.value` is taken from `prev_kv`, as the contract asks.

Writes whose answer is lost (create, update): a proposal a follower forwarded to a leader that
then died is dropped silently, and etcd answers only when its request timeout runs out (5 s +
two election timeouts: 7 s by default) — the whole API would stall that long after losing the
etcd leader. So each attempt gets `write_attempt_timeout` (2 s: far above a healthy write,
below the failover target of 5 s minus an election), and a create or update whose attempt timed
out or was cut off is sent again until `timeout`. Sending it again is safe: the transaction's
compare fails if an earlier attempt was applied after all, and then the stored value is ours
byte for byte (the value carries the object's uid and timestamps), which the retry takes as
its own result. Deletes are not sent again (a missing key after a lost answer would not say
whose delete it was); they wait out etcd's own timeout as before. Reads are asked again while
etcd answers "unavailable" (during an election: "leader changed"), each try with the time left.
Between tries: `RETRY`, the project's jittered back-off (`podnet.retry`), so the API servers that
lost the leader together do not come back in step.

Invariants:
- Every key podnet stores lives under the URL's key prefix (e.g. `/podnet`), so several clusters
  can share one etcd; keys handed back to callers never carry it. Compaction, however, is
  global to the etcd cluster.
- Unreachable etcd is always `StoreUnavailable` with the endpoints and how to check them; a
  write over etcd's request size limit is `ValueTooLarge` (the API answers 413).
- A store belongs to the event loop that first uses it (the gRPC channel is bound to it).
- Like kube-apiserver, every server compacts etcd itself (same `CompactionPolicy` as SQLite:
  keep 5 minutes and at least 1000 revisions); several servers doing so is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, NoReturn

import aetcd
from aetcd import rpc

from podnet.retry import Backoff, Retry
from podnet.store.base import (
    Compacted,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
    ValueTooLarge,
    WatchEvent,
)
from podnet.store.compaction import CompactionPlanner, CompactionPolicy
from podnet.store.etcdwatch import (
    CreateTimedOut,
    StreamLost,
    WatchCancelled,
    WatchCompacted,
    WatchStream,
)

MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # a list of 10k objects easily exceeds gRPC's 4 MiB default
UNREACHABLE_CODES = {rpc.StatusCode.UNAVAILABLE, rpc.StatusCode.DEADLINE_EXCEEDED}
WRITE_ATTEMPT_TIMEOUT = 2.0  # one attempt of a create/update (see the module docstring)
RETRY = Backoff(0.05, 0.4)  # between attempts of a read or write (see the module docstring)
# The compares' enum values, looked up once (each `rpc.Compare.CompareTarget.MOD` is a Python
# __getattr__ of protobuf's enum wrapper)
_CREATE = rpc.Compare.CompareTarget.CREATE
_MOD = rpc.Compare.CompareTarget.MOD
_VERSION = rpc.Compare.CompareTarget.VERSION
_EQUAL = rpc.Compare.CompareResult.EQUAL
_GREATER = rpc.Compare.CompareResult.GREATER


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix" (b"\\0" = to the end of keyspace)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def grpc_target(endpoints: Sequence[tuple[str, int]]) -> tuple[str, int]:
    """(host, port) for `aetcd.Client`, which dials f"{host}:{port}".

    Several endpoints become one gRPC `ipv4:`/`ipv6:` address list (`ipv4:a:1,b:2`), so the
    channel fails over between members by itself; that URI form only takes IP literals.
    """
    if not endpoints:
        raise ValueError("etcd store needs at least one endpoint (etcd://HOST:PORT)")
    if len(endpoints) == 1:
        return endpoints[0]
    families = {":" in host for host, _ in endpoints}
    if len(families) != 1 or not all(_is_ip(host) for host, _ in endpoints):
        raise ValueError(
            "several etcd endpoints must all be IPv4 or all be IPv6 addresses (not names): "
            + ",".join(f"{host}:{port}" for host, port in endpoints)
        )
    ipv6 = families == {True}
    formatted = [f"[{host}]:{port}" if ipv6 else f"{host}:{port}" for host, port in endpoints]
    last_host, last_port = endpoints[-1]
    scheme = "ipv6:" if ipv6 else "ipv4:"
    head = ",".join([*formatted[:-1], f"[{last_host}]" if ipv6 else last_host])
    return scheme + head, last_port


def _too_large(error: Any) -> bool:
    """etcd's "request is too large" (over --max-request-bytes) or gRPC's own refusal of a
    message over the server's receive limit (which etcd sets a little above it)."""
    details = str(error.details() or "")
    return (
        error.code() == rpc.StatusCode.INVALID_ARGUMENT and "request is too large" in details
    ) or (error.code() == rpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class EtcdStore:
    """`Store` on an etcd v3 cluster (tested against etcd 3.4)."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        key_prefix: str = "",
        timeout: float = 10.0,
        compaction: CompactionPolicy | None = None,
        write_attempt_timeout: float = WRITE_ATTEMPT_TIMEOUT,
    ) -> None:
        self.endpoints = list(endpoints)
        self.key_prefix = key_prefix.rstrip("/")
        self.timeout = timeout
        self.write_attempt_timeout = write_attempt_timeout
        self.compaction = compaction or CompactionPolicy()
        self._compaction_planner = CompactionPlanner(self.compaction)
        self._compactor: asyncio.Task[None] | None = None
        self._closed = False
        host, port = grpc_target(self.endpoints)
        self._watches = WatchStream(self._open_watch_call, create_timeout=timeout)
        self._client = aetcd.Client(
            host=host,
            port=port,
            timeout=timeout,
            options={
                "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
                "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
            },
        )

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return ",".join(f"http://{host}:{port}" for host, port in self.endpoints)

    def _unavailable(self, detail: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"etcd at {self._where} is unreachable ({detail}). Is etcd running? "
            f"Check with: etcdctl --endpoints={self._where} endpoint health"
        )

    def _raise_translated(self, error: BaseException) -> NoReturn:
        if isinstance(error, rpc.AioRpcError):
            if error.code() in UNREACHABLE_CODES:
                raise self._unavailable(f"{error.code().name}: {error.details()}") from error
            detail = f"{error.code().name}: {error.details()}"
            if _too_large(error):
                raise ValueTooLarge(
                    f"etcd at {self._where} refuses a write this large ({detail}); its limit is "
                    "--max-request-bytes (1.5 MiB by default)"
                ) from error
            raise StoreError(f"etcd at {self._where}: {detail}") from error
        if isinstance(error, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError):
            raise self._unavailable(str(error)) from error
        raise StoreError(f"etcd at {self._where}: {error}") from error

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except (rpc.AioRpcError, aetcd.ClientError) as error:
            self._raise_translated(error)

    async def _stub(self) -> Any:
        if self._closed:
            raise StoreUnavailable(f"etcd store for {self._where} is closed")
        if self._compactor is None and self.compaction.interval_seconds > 0:
            self._compactor = asyncio.create_task(self._compact_loop(), name="etcd-compactor")
        with self._translated_errors():
            await self._client.connect()
        return self._client.kvstub

    def _full(self, key: str) -> bytes:
        return (self.key_prefix + key).encode()

    def _kv(self, kv: Any, value: bytes | None = None, mod_revision: int | None = None) -> KeyValue:
        key = bytes(kv.key).decode()[len(self.key_prefix) :]
        return KeyValue(
            key,
            bytes(kv.value) if value is None else value,
            int(kv.create_revision),
            int(kv.mod_revision) if mod_revision is None else mod_revision,
        )

    async def _range(self, request: Any) -> Any:
        """A read, asked again while etcd is unavailable (an election: "leader changed")."""

        async def attempt(seconds: float) -> Any:
            stub = await self._stub()
            with self._translated_errors():
                return await stub.Range(request, timeout=seconds, metadata=self._client.metadata)

        response, _ = await self._retried(attempt, self.timeout)
        return response

    async def _txn(self, request: Any, seconds: float | None = None) -> Any:
        stub = await self._stub()
        with self._translated_errors():
            return await stub.Txn(
                request,
                timeout=self.timeout if seconds is None else seconds,
                metadata=self._client.metadata,
            )

    async def _write(self, request: Any) -> tuple[Any, bool]:
        """A create/update transaction (a `TxnRequest`, sent as it is by every attempt), sent
        again while an attempt times out or is cut off. The response, and whether an earlier
        attempt may have been applied (then a failed compare may be that attempt's doing: see
        `_ours`)."""

        attempt = functools.partial(self._txn, request)
        return await self._retried(attempt, self.write_attempt_timeout)

    async def _retried(
        self, attempt: Callable[[float], Awaitable[Any]], attempt_seconds: float
    ) -> tuple[Any, bool]:
        """`attempt(seconds)` until it does not raise StoreUnavailable, for `timeout` in all,
        each try given at most `attempt_seconds`. Its result, and whether a try failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        retry = Retry(RETRY)
        while True:
            left = deadline - loop.time()
            try:
                return await attempt(max(0.01, min(attempt_seconds, left))), retry.failures > 0
            except StoreUnavailable:
                pause = retry.next()
                if self._closed or deadline - loop.time() <= pause:
                    raise
            await asyncio.sleep(pause)

    def _ours(self, response: Any, value: bytes) -> KeyValue | None:
        """The stored key, if a failed compare's range shows exactly `value`: an earlier
        attempt of this same write was applied."""
        kvs = response.responses[0].response_range.kvs if response.responses else ()
        return self._kv(kvs[0]) if kvs and bytes(kvs[0].value) == value else None

    def _conflict_or_missing(self, key: str, expected: int, response: Any) -> StoreError:
        kvs = response.responses[0].response_range.kvs
        if not kvs:
            return KeyNotFound(key)
        return RevisionConflict(key, expected, self._kv(kvs[0]))

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        response = await self._range(rpc.RangeRequest(key=self._full(key)))
        return self._kv(response.kvs[0]) if response.kvs else None

    async def list(self, prefix: str) -> ListResult:
        full = self._full(prefix)
        start = full or b"\0"
        response = await self._range(rpc.RangeRequest(key=start, range_end=prefix_range_end(full)))
        items = [self._kv(kv) for kv in response.kvs]
        return ListResult(items, int(response.header.revision))

    async def list_pages(
        self, prefix: str, page_size: int, start: str = "", revision: int = 0
    ) -> AsyncGenerator[ListResult, None]:
        """`store.base.list_pages`: a range read of at most `page_size` keys per page, from
        `start` (or the prefix) at `revision` (0: the first page's), as upstream's paged LIST
        (a 100 MB range is not one gRPC message, one parsed response and one list of values
        at once). etcd's `count` (the keys left in the range) gives `remaining`. A revision
        etcd compacted raises `Compacted`."""
        full = self._full(prefix)
        end = prefix_range_end(full)
        key = self._full(start) if start else full or b"\0"
        while True:
            try:
                response = await self._range(
                    rpc.RangeRequest(key=key, range_end=end, limit=page_size, revision=revision)
                )
            except StoreError as error:
                if revision and "required revision has been compacted" in str(error):
                    # etcd's answer does not say the compact revision
                    raise Compacted(revision, 0) from error
                if revision and "required revision is a future revision" in str(error):
                    raise FutureRevision(revision, await self.current_revision()) from error
                raise
            if revision == 0:
                revision = int(response.header.revision)
            items = [self._kv(kv) for kv in response.kvs]
            last = bytes(response.kvs[-1].key) if response.kvs else b""
            more = bool(response.more) and bool(items)
            remaining = max(0, int(response.count) - len(items))
            del response
            yield ListResult(items, revision, remaining)
            if not more:
                return
            key = last + b"\0"

    async def current_revision(self) -> int:
        response = await self._range(rpc.RangeRequest(key=self._full("") or b"\0", limit=1))
        return int(response.header.revision)

    # -- writes ---------------------------------------------------------------------------------

    async def create(self, key: str, value: bytes) -> KeyValue:
        full = self._full(key)
        request = rpc.TxnRequest()
        absent = request.compare.add()
        absent.key, absent.target, absent.result, absent.create_revision = full, _CREATE, _EQUAL, 0
        _put(request.success, full, value)
        request.failure.add().request_range.key = full
        response, uncertain = await self._write(request)
        if not response.succeeded:
            if uncertain and (ours := self._ours(response, value)) is not None:
                return ours
            raise KeyExists(key)
        revision = int(response.header.revision)
        return KeyValue(key, value, revision, revision)

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        full = self._full(key)
        request = rpc.TxnRequest()
        _compare_mod(request, full, expected_revision)
        _compare_exists(request, full)
        _put(request.success, full, value)
        # the key's create revision, without its value: the put's prev_kv would carry the
        # whole previous value back (a pod's 3.5 kB, read by etcd and parsed here) for it
        created = request.success.add().request_range
        created.key, created.keys_only = full, True
        request.failure.add().request_range.key = full
        response, uncertain = await self._write(request)
        if not response.succeeded:
            if uncertain and (ours := self._ours(response, value)) is not None:
                return ours
            raise self._conflict_or_missing(key, expected_revision, response)
        stored = response.responses[1].response_range.kvs[0]
        return KeyValue(key, value, int(stored.create_revision), int(response.header.revision))

    async def delete(self, key: str, expected_revision: int | None = None) -> KeyValue:
        full = self._full(key)
        request = rpc.TxnRequest()
        _compare_exists(request, full)
        if expected_revision is not None:
            _compare_mod(request, full, expected_revision)
        remove = request.success.add().request_delete_range
        remove.key, remove.prev_kv = full, True
        request.failure.add().request_range.key = full
        response = await self._txn(request)
        if not response.succeeded:
            expected = -1 if expected_revision is None else expected_revision
            raise self._conflict_or_missing(key, expected, response)
        prev = response.responses[0].response_delete_range.prev_kvs[0]
        return self._kv(prev, mod_revision=int(response.header.revision))

    # -- watch ----------------------------------------------------------------------------------

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        return self._watch(prefix, from_revision)

    async def _watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        await self._stub()  # refuses a closed store, connects, starts the compactor
        full = self._full(prefix)
        with self._translated_watch_errors(from_revision):
            watch = await self._watches.watch(
                full or b"\0",
                prefix_range_end(full),
                max(from_revision, 1),  # etcd reads 0 as "from now"
            )
        try:
            with self._translated_watch_errors(from_revision):
                while True:
                    for event in await watch.next_events():
                        if not bytes(event.kv.key).startswith(full):
                            # cannot happen with watches tied to their ids (etcdwatch); if etcd
                            # ever routed so, never hand another prefix's events on as ours
                            raise self._unavailable(
                                f"the watch of {prefix!r} got an event of {bytes(event.kv.key)!r}"
                            )
                        if int(event.kv.mod_revision) > from_revision:
                            yield self._event(event)
        finally:
            await watch.cancel()

    async def _open_watch_call(self) -> Any:
        await self._stub()
        with self._translated_errors():
            return rpc.WatchStub(self._client.channel).Watch(metadata=self._client.metadata)

    @contextlib.contextmanager
    def _translated_watch_errors(self, from_revision: int) -> Iterator[None]:
        try:
            yield
        except WatchCompacted as error:
            raise Compacted(from_revision, error.compact_revision) from error
        except (StreamLost, CreateTimedOut, WatchCancelled) as error:
            # whatever ended a watch, its caller resumes from its revision on a new watch
            cause = error.__cause__
            if isinstance(cause, rpc.AioRpcError):
                raise self._unavailable(f"{cause.code().name}: {cause.details()}") from cause
            raise self._unavailable(str(error)) from error
        except (rpc.AioRpcError, aetcd.ClientError) as error:
            self._raise_translated(error)

    def _event(self, event: Any) -> WatchEvent:
        # a protobuf `mvccpb.Event`; prev_kv is absent when etcd no longer has it (compacted)
        has_prev = event.HasField("prev_kv") and int(event.prev_kv.mod_revision) > 0
        prev = self._kv(event.prev_kv) if has_prev else None
        if event.type == rpc.Event.DELETE:
            last = prev.value if prev is not None else b""
            create_revision = prev.create_revision if prev is not None else 0
            kv = KeyValue(
                bytes(event.kv.key).decode()[len(self.key_prefix) :],
                last,
                create_revision,
                int(event.kv.mod_revision),
            )
            return WatchEvent("DELETE", kv, prev)
        return WatchEvent("PUT", self._kv(event.kv), prev)

    # -- compaction and lifecycle ---------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        target = min(revision, await self.current_revision())
        if target <= 0:
            return
        try:
            await self._client.compact(target, physical=False)
        except aetcd.ClientError as error:
            if "compacted" in str(error):
                return  # already compacted at or past target: nothing left to do
            self._raise_translated(error)

    async def compact_automatically(self, now: float | None = None) -> int | None:
        """One step of the automatic compactor; returns the revision compacted to, if any."""
        now = time.monotonic() if now is None else now
        target = self._compaction_planner.observe(now, await self.current_revision())
        if target is not None:
            await self.compact(target)
        return target

    async def _compact_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.compaction.interval_seconds)
            with contextlib.suppress(StoreUnavailable):
                await self.compact_automatically()

    async def close(self) -> None:
        self._closed = True
        if self._compactor is not None:
            self._compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._compactor
        await self._watches.close()
        with contextlib.suppress(aetcd.ClientError, rpc.AioRpcError):
            await self._client.close()


# Transactions are built in place (`add()` and field assignment): constructing each message
# with keywords and nesting it copies it into its parent, ~18 us per update against ~4 us.


def _compare_exists(request: Any, full_key: bytes) -> None:
    compare = request.compare.add()
    compare.key, compare.target, compare.result, compare.version = full_key, _VERSION, _GREATER, 0


def _compare_mod(request: Any, full_key: bytes, revision: int) -> None:
    compare = request.compare.add()
    compare.key, compare.target, compare.result = full_key, _MOD, _EQUAL
    compare.mod_revision = revision


def _put(ops: Any, full_key: bytes, value: bytes) -> None:
    put = ops.add().request_put
    put.key, put.value = full_key, value
