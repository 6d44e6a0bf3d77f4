"""The etcd store's watches: every watch of one store multiplexed on one etcd Watch stream, each
tied to its watch id, as etcd's own Go client (clientv3 `watchGrpcStream`) does, small.

What belongs here: `WatchStream` (opens the stream, sends creates and cancels, routes answers)
and the errors a watch ends with. The store (`store.etcd`) maps keys and events onto it and
translates the errors; nothing here knows podnet's keys.

Why not aetcd's `Watcher`: it creates a client's watches one at a time and binds whichever
`created` answer comes next to the create waiting *then*. When a create timed out (the stream
behind: a busy event loop, a backlog of other watches' events), its late answer was bound to
the next create, possibly for another prefix: that watch yielded the first prefix's events and
never its own, and the API server's watch cache of a kind was fed another kind's changes while
its informers heard nothing (session 8, f3f48a7). Session 8 worked around it by ending the whole
stream through aetcd's private `_terminate_stream`. Here the binding cannot go wrong:

- each create carries a watch id chosen here (`WatchCreateRequest.watch_id`, honoured since
  etcd 3.4), unique on its stream; events are routed by that id only;
- etcd answers the creates of one stream in the order they were sent (its `recvLoop` handles a
  stream's requests one at a time), so a `created` answer belongs to the oldest create not yet
  answered; it must carry that create's id (or -1, etcd's id when it refuses a create). Any
  other id means the stream is not what this side thinks: every watch on it ends (`StreamLost`)
  and the next watch opens a new stream;
- a create that timed out stays queued, marked abandoned: its answer, whenever it comes, is
  matched to it and the watch it created is cancelled at once. No other watch is disturbed.
- Creates are pipelined (not one at a time), so a backlog of creates (every kind's watch cache
  starting) is one round trip, not one each.

Invariants:
- A watch's events are exactly the events etcd sent for its id, in order; it ends with one
  error: `StreamLost` (the stream failed or ended; etcd's gRPC error as the cause when there is
  one), `WatchCompacted` (its start revision is compacted), `WatchCancelled` (etcd cancelled it).
- A stream belongs to the event loop that opened it; `close()` ends it and every watch on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aetcd import rpc


class StreamLost(Exception):
    """The watch stream failed or ended; every watch on it ended with it."""


class CreateTimedOut(Exception):
    """etcd did not confirm a new watch within the create timeout."""


class WatchCompacted(Exception):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"the watch's start revision is compacted (at {compact_revision})")
        self.compact_revision = compact_revision


class WatchCancelled(Exception):
    """etcd refused or cancelled the watch (its reason is the message)."""


class Watch:
    """One watch on a `WatchStream`: `next_events()` until it raises, then `cancel()`."""

    def __init__(self, stream: _Stream, watch_id: int) -> None:
        self.watch_id = watch_id
        self._stream = stream
        self._queue: asyncio.Queue[list[Any] | BaseException] = asyncio.Queue()
        self._created = asyncio.Event()
        self.error: BaseException | None = None
        self.abandoned = False  # its create timed out or its creator went away

    async def next_events(self) -> list[Any]:
        """The events of etcd's next answer for this watch (protobuf `mvccpb.Event`s)."""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later call raises it too
            raise item
        return item

    async def cancel(self) -> None:
        self._stream.cancel(self)

    def _deliver(self, events: list[Any]) -> None:
        if self.error is None:
            self._queue.put_nowait(events)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self._queue.put_nowait(error)
        self._created.set()


class _Stream:
    """One Watch RPC and the watches on it; once lost it stays lost (a new one replaces it)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.pending: deque[Watch] = deque()  # creates sent, not yet answered, in order
        self.watches: dict[int, Watch] = {}
        self.lost: BaseException | None = None
        self._next_id = 1
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._write(), name="etcd-watch-writer"),
            asyncio.create_task(self._read(), name="etcd-watch-reader"),
        ]

    def create(
        self, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool = True
    ) -> Watch:
        watch = Watch(self, self._next_id)
        self._next_id += 1
        if self.lost is not None:
            watch._fail(self.lost)
            return watch
        self.watches[watch.watch_id] = watch
        self.pending.append(watch)  # in the order the writer sends: etcd answers in this order
        self._outbox.put_nowait(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=key,
                    range_end=range_end,
                    start_revision=start_revision,
                    prev_kv=prev_kv,
                    watch_id=watch.watch_id,
                )
            )
        )
        return watch

    def cancel(self, watch: Watch) -> None:
        watch.abandoned = True
        if self.watches.pop(watch.watch_id, None) is None or self.lost is not None:
            return  # never created, already cancelled, or the stream is gone with it
        if watch in self.pending:
            return  # its `created` answer cancels it (it may not exist on etcd yet)
        self._send_cancel(watch.watch_id)

    def _send_cancel(self, watch_id: int) -> None:
        self._outbox.put_nowait(
            rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch_id))
        )

    async def _write(self) -> None:
        try:
            while True:
                await self.call.write(await self._outbox.get())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the call failed: the reader sees it too
            self.lose(StreamLost(f"writing to the watch stream failed: {error}"), error)

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self._dispatch(response)
            self.lose(StreamLost("etcd ended the watch stream"))
        except asyncio.CancelledError:
            raise
        except StreamLost as error:
            self.lose(error)
        except Exception as error:
            self.lose(error, error)

    def _dispatch(self, response: Any) -> None:
        watch_id = int(response.watch_id)
        if response.created:
            if not self.pending:
                raise StreamLost(f"etcd confirmed watch {watch_id}, which was never asked for")
            watch = self.pending.popleft()
            if watch_id not in (watch.watch_id, -1):
                raise StreamLost(
                    f"etcd answered the create of watch {watch.watch_id} with id {watch_id}: "
                    "the stream's creates and answers are out of step"
                )
            if response.canceled:  # refused (etcd's id is then -1): nothing to cancel
                self.watches.pop(watch.watch_id, None)
                watch._fail(WatchCancelled(response.cancel_reason or "etcd refused the watch"))
                return
            if watch.abandoned:  # a late answer: the watch's creator is gone
                self.watches.pop(watch.watch_id, None)
                self._send_cancel(watch.watch_id)
                return
            watch._created.set()
        target = self.watches.get(watch_id)
        if target is None:
            return  # what was in flight for a cancelled watch
        if response.compact_revision:  # etcd has cancelled it
            self.watches.pop(watch_id, None)
            target._fail(WatchCompacted(int(response.compact_revision)))
        elif response.canceled:
            self.watches.pop(watch_id, None)
            target._fail(WatchCancelled(response.cancel_reason or "etcd cancelled the watch"))
        elif response.events:
            target._deliver(list(response.events))

    def lose(self, error: BaseException, cause: BaseException | None = None) -> None:
        if self.lost is not None:
            return
        if cause is not None and error is not cause:
            error.__cause__ = cause
        self.lost = error
        for watch in list(self.watches.values()) + list(self.pending):
            watch._fail(error)
        self.watches.clear()
        self.pending.clear()
        self.call.cancel()

    async def close(self) -> None:
        self.lose(StreamLost("the etcd store is closed"))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class WatchStream:
    """The watches of one store, on one Watch RPC opened by `open_call` (again after a loss)."""

    def __init__(self, open_call: Callable[[], Awaitable[Any]], create_timeout: float) -> None:
        self._open_call = open_call
        self.create_timeout = create_timeout
        self._stream: _Stream | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def _current(self) -> _Stream:
        async with self._opening:
            if self._closed:
                raise StreamLost("the etcd store is closed")
            if self._stream is None or self._stream.lost is not None:
                if self._stream is not None:
                    await self._stream.close()
                self._stream = _Stream(await self._open_call())
            return self._stream

    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> Watch:
        """A watch etcd has confirmed; `CreateTimedOut` if it did not within the timeout (its
        late answer then cancels it), or the error the watch ended with before that."""
        stream = await self._current()
        watch = stream.create(key, range_end, start_revision)
        try:
            async with asyncio.timeout(self.create_timeout):
                await watch._created.wait()
        except TimeoutError:
            stream.cancel(watch)
            raise CreateTimedOut(
                f"etcd did not confirm a new watch within {self.create_timeout:g} s"
            ) from None
        except BaseException:
            stream.cancel(watch)
            raise
        if watch.error is not None:
            raise watch.error
        return watch

    async def close(self) -> None:
        async with self._opening:
            self._closed = True
            if self._stream is not None:
                await self._stream.close()
                self._stream = None
