"""The API server's watch cache (upstream's cacher, k8s.io/apiserver/pkg/storage/cacher).

What belongs here: per resource kind (one storage prefix), ONE store watch feeding an
in-memory window of that kind's recent events, from which every API watch of the kind is
served — filtered by namespace (key prefix) and label/field selectors in memory — and the
pure pieces that decide it: the window (`EventWindow`, with the 410 decision), the watch event
type a change is for one watcher (`watch_type`). The registry (`apiserver.registry`) turns a
watch request into a `Watcher` here and its items into watch events; nothing here knows HTTP.

Without it every API watch had its own store watch, so a write cost one store event, one JSON
decode and one encode per watcher; with it a write is read from the store once, spliced with
its resourceVersion once (`CachedEvent.value`, served as is), and decoded at most once for all
the watchers that filter on selectors.

Invariants:
- A kind's store watch starts with its first API watch and stops `linger` seconds after its
  last one ends (or on `WatchCache.close`). It starts up to `prefill` revisions back (as far as
  the store's history goes), so a watch resumed on a server that just started or took over
  from a failed one finds its resourceVersion in the window and needs no re-list.
- `EventWindow.start`: every event of the kind with a revision above it is in the window. A
  watch from an older resourceVersion is 410 Gone ("too old resource version", as upstream's
  cacher and as the store's own compaction answer), and the client re-lists.
- Each watcher sees every matching event above its resourceVersion exactly once, in revision
  order: the window's events when it registers, then the live ones (registration and the
  window read happen with no await between them, so there is no gap and no overlap).
- A slow watcher never blocks the others: its live queue is bounded (`queue_limit`, counted
  once it has taken its replay); when it overflows the watch is ended — as upstream's cacher
  closes an unresponsive watcher — and the client resumes from its last resourceVersion.
- The store watch is resumed from its last revision when the store member it was on goes
  away (`StoreUnavailable`: an etcd member died), for `WATCH_RESUME_SECONDS`; after that every
  watcher ends with the error. `Compacted` (the store forgot history the window had not read)
  ends with 410 every watcher that has not seen up to the compact revision; the window starts
  again there.
- A watcher's `progress` is the revision up to which every event of the kind was considered
  for it; once its queue is empty that is a safe bookmark. A watcher whose field selector
  requires one value (`Trigger`) is offered only the events whose object has or had it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podnet.api.errors import ApiError, gone
from podnet.apiserver import DEFAULT_WATCH_CACHE_SIZE
from podnet.store.base import Compacted, KeyValue, Store, StoreUnavailable, WatchEvent

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]
"""A watcher's label/field selector test on an object; None stands for "everything"."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """A watcher's field selector requires `field` to equal `value` (spec.nodeName=NODE for a
    kubelet's pods, metadata.name=NAME for one object): its cacher offers it only the events
    whose object has or had that value — upstream's trigger functions, so one pod event costs
    one kubelet's filter, not a thousand. `value_of` reads the field as the selector does."""

    field: str
    value: str
    value_of: Callable[[Obj], str]


DEFAULT_CAPACITY = DEFAULT_WATCH_CACHE_SIZE
"""Events kept per kind (upstream sizes its window to hold at least 75 s of events)."""
DEFAULT_WINDOW_BYTES = 20 * 1024 * 1024
"""...and at most this much of their JSON, so a kind of big objects (EndpointSlices of large
Services) cannot hold the server's memory; the newest event is always kept. (32 MiB before a
change shared the value it replaced with the previous event: a pod's create, bind and two
status changes held 26 KB, now 15 KB, so 20 MiB keeps about as many pod events.)"""
DEFAULT_QUEUE_LIMIT = 1024
"""Live events a watcher may have waiting before it is cut."""
DEFAULT_LINGER_SECONDS = 60.0
"""How long a kind's store watch and window outlive its last watcher."""
# a store watch cut by the loss of a store member is resumed from its last revision for this
# long (every WATCH_RESUME_DELAY) before the watches of its kind end with the error
WATCH_RESUME_SECONDS = 10.0
WATCH_RESUME_DELAY = 0.2


def too_old(revision: int, start: int) -> ApiError:
    return gone(f"too old resource version: {revision} ({start})")


@dataclass(slots=True, eq=False)
class CachedEvent:
    """One change of one object, as the window keeps it."""

    revision: int
    key: str
    deleted: bool
    value: bytes
    """The object as served: its JSON with metadata.resourceVersion = `revision` (for a
    delete, the last value)."""
    prev: bytes | None
    """The JSON of the value this change replaced (None: the key was created): the previous
    event's `value` (the same bytes object, served form, resourceVersion included) while that
    event is in the window, else the stored JSON the store gave with the change. Only
    selectors read it, and none selects on the resourceVersion."""
    prev_revision: int = 0
    """The revision of the value `prev` is (0: unknown)."""
    shares_prev: bool = False
    """`prev` is the previous event's `value`, counted under that event while it is in the
    window."""
    successor: CachedEvent | None = None
    """The next event of the same key, if it shares this one's `value` as its `prev`."""

    @property
    def size(self) -> int:
        """The bytes it holds (what the window's memory bound counts)."""
        own_prev = self.prev is not None and not self.shares_prev
        return len(self.value) + (len(self.prev) if own_prev and self.prev else 0)

    @classmethod
    def from_store(cls, event: WatchEvent, serve: Callable[[KeyValue], bytes]) -> CachedEvent:
        prev = event.prev.value if event.prev is not None else None
        prev_revision = event.prev.mod_revision if event.prev is not None else 0
        return cls(
            event.kv.mod_revision,
            event.kv.key,
            event.type == "DELETE",
            serve(event.kv),
            prev,
            prev_revision,
        )


@dataclass(slots=True)
class Decoded:
    """An event's objects, decoded on first use and shared by every watcher that filters on
    them during one dispatch. Read-only: what a watcher is given is decoded afresh."""

    event: CachedEvent
    _obj: Obj | None = None
    _prev: Obj | None = None

    def obj(self) -> Obj:
        if self._obj is None:
            self._obj = json.loads(self.event.value)
        return self._obj

    def prev(self) -> Obj:
        if self._prev is None:
            assert self.event.prev is not None
            self._prev = json.loads(self.event.prev)
        return self._prev


def watch_type(decoded: Decoded, matches: Matcher | None) -> str | None:
    """The watch event type this change is for a watcher with `matches` (None: not shown).

    Upstream's filter rules: an object entering the selection is ADDED, one leaving it is
    DELETED (with its new state), one staying in it is MODIFIED.
    """
    event = decoded.event
    if event.deleted:
        return "DELETED" if matches is None or matches(decoded.obj()) else None
    if event.prev is None:
        return "ADDED" if matches is None or matches(decoded.obj()) else None
    if matches is None:
        return "MODIFIED"
    now_matches, before_matches = matches(decoded.obj()), matches(decoded.prev())
    if now_matches:
        return "MODIFIED" if before_matches else "ADDED"
    return "DELETED" if before_matches else None


class EventWindow:
    """The last `capacity` events of one kind (and no more than `max_bytes` of their JSON, but
    always the newest), and `start`: every event of the kind with a revision above it is here.
    Pure; the cacher feeds it in revision order."""

    def __init__(self, capacity: int, start: int, max_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        if capacity < 1:
            raise ValueError(f"a watch cache window holds at least one event, not {capacity}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.start = start
        self.bytes = 0
        self._events: deque[CachedEvent] = deque()
        # each key's newest event in the window: a later change of the key takes that event's
        # value as its prev (one bytes object for both) instead of the store's copy
        self._newest: dict[str, CachedEvent] = {}

    def __len__(self) -> int:
        return len(self._events)

    @property
    def revision(self) -> int:
        """The revision up to which the window is complete."""
        return self._events[-1].revision if self._events else self.start

    def append(self, event: CachedEvent) -> None:
        if event.revision <= self.revision:
            raise ValueError(
                f"event at revision {event.revision} after {self.revision}: out of order"
            )
        last = self._newest.get(event.key)
        if (
            last is not None
            and event.prev is not None
            and not last.deleted
            and event.prev_revision == last.revision
        ):
            event.prev, event.shares_prev, last.successor = last.value, True, event
        self._newest[event.key] = event
        self._events.append(event)
        self.bytes += event.size
        while len(self._events) > self.capacity or (
            self.bytes > self.max_bytes and len(self._events) > 1
        ):
            dropped = self._events.popleft()
            self.bytes -= dropped.size
            self.start = dropped.revision
            after = dropped.successor
            if after is not None:  # its prev (this value) is now counted under it
                dropped.successor, after.shares_prev = None, False
                self.bytes += after.size - len(after.value)
            if self._newest.get(dropped.key) is dropped:
                del self._newest[dropped.key]

    def since(self, revision: int) -> list[CachedEvent]:
        """The events above `revision`, oldest first; 410 Gone if the window no longer
        reaches back to it."""
        if revision < self.start:
            raise too_old(revision, self.start)
        index = bisect.bisect_right(self._events, revision, key=_revision_of)
        return [self._events[i] for i in range(index, len(self._events))]

    def reset(self, start: int) -> None:
        """Forget every event; the window is complete from `start` on."""
        self._events.clear()
        self._newest.clear()
        self.bytes = 0
        self.start = start


def _revision_of(event: CachedEvent) -> int:
    return event.revision


Delivery = tuple[str, CachedEvent]
"""(watch event type, the change) as one watcher is given it."""


class Watcher:
    """One API watch's feed from its kind's cacher: the window's events above its
    resourceVersion when it registered (`replay`), then the live ones (`queue`)."""

    def __init__(
        self,
        cacher: Cacher,
        prefix: str,
        after: int,
        matches: Matcher | None,
        trigger: Trigger | None,
        replay: list[CachedEvent],
        limit: int,
    ) -> None:
        self._cacher = cacher
        self.prefix = prefix
        self.matches = matches
        self.trigger = trigger
        self.position = after
        self._replay: list[CachedEvent] | None = replay
        self._replay_index = 0
        self._queue: deque[Delivery] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.ended = False
        self.error: Exception | None = None

    def offer(self, decoded: Decoded) -> None:
        """A live event of the kind (called by the cacher, in revision order)."""
        event = decoded.event
        if self.ended or event.revision <= self.position:
            return
        self.position = event.revision
        if not event.key.startswith(self.prefix):
            return
        kind = watch_type(decoded, self.matches)
        if kind is None:
            return
        if self._replay is None and len(self._queue) >= self._limit:
            log.info(
                "a watch on %s fell %d events behind; ending it (the client resumes)",
                self.prefix,
                len(self._queue),
            )
            self._queue.clear()
            self.end(None)
            return
        self._queue.append((kind, event))
        self.wake()

    @property
    def progress(self) -> int:
        """The revision up to which every event of the kind was considered for this watcher
        (a safe bookmark once it has taken what was waiting): its cacher dispatches each
        event to every watcher it concerns before the next, in revision order."""
        return max(self.position, self._cacher.revision)

    def next_nowait(self) -> Delivery | None:
        """The next event for this watcher, or None if it has none waiting."""
        if self._replay is not None:
            while self._replay_index < len(self._replay):
                event = self._replay[self._replay_index]
                self._replay_index += 1
                if event.key.startswith(self.prefix):
                    kind = watch_type(Decoded(event), self.matches)
                    if kind is not None:
                        return kind, event
            self._replay = None  # taken: from now on the live queue is bounded
        return self._queue.popleft() if self._queue else None

    async def wait(self) -> None:
        """Until an event is waiting, the watch ended or `wake` was called."""
        if self._queue or self._replay is not None or self.ended:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def wake_at(self, when: float | None) -> None:
        """Let `wait` return at loop time `when` too (the consumer's next bookmark or deadline);
        one timer per watcher, moved only when `when` changes, not one per wait."""
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = (
            None if when is None else asyncio.get_running_loop().call_at(when, self._timer_fired)
        )

    def _timer_fired(self) -> None:
        self._timer = self._timer_at = None
        self.wake()

    def end(self, error: Exception | None) -> None:
        """No more events: the client resumes (error None) or gets `error`."""
        if not self.ended:
            self.ended, self.error = True, error
            self._cacher.remove(self)
            self.wake()

    def close(self) -> None:
        """The consumer is done (its watch ended or its client went away)."""
        self.ended = True
        self._queue.clear()
        self.wake_at(None)
        self._cacher.remove(self)

    def wake(self) -> None:
        """Let `wait` return (the consumer looks at its stop event, deadline, bookmarks)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class CacheOptions:
    capacity: int = DEFAULT_CAPACITY
    """Events kept per kind; a starting store watch also reaches this many revisions back."""
    max_bytes: int = DEFAULT_WINDOW_BYTES
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    linger: float = DEFAULT_LINGER_SECONDS

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(
                "the watch cache size (--default-watch-cache-size) must be at least 1 event "
                f"per kind, not {self.capacity}"
            )
        if self.max_bytes < 0 or self.queue_limit < 1 or self.linger < 0:
            raise ValueError(f"bad watch cache options: {self}")


class Cacher:
    """One kind's store watch, window and watchers."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        options: CacheOptions,
        serve: Callable[[KeyValue], bytes],
        on_stop: Callable[[Cacher], None],
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.options = options
        self._serve = serve
        self._on_stop = on_stop
        self.window: EventWindow | None = None
        self._watchers: set[Watcher] = set()
        self._plain: set[Watcher] = set()  # offered every event
        # field -> (how to read it, value -> the watchers triggered by that value)
        self._triggered: dict[str, tuple[Callable[[Obj], str], dict[str, set[Watcher]]]] = {}
        self._starting: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._stopped = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def revision(self) -> int:
        return self.window.revision if self.window is not None else 0

    async def watch(
        self, prefix: str, after: int, matches: Matcher | None, trigger: Trigger | None = None
    ) -> Watcher:
        window = await self._started()
        replay = window.since(after)  # raises 410; no await from here to registration
        watcher = Watcher(
            self,
            prefix,
            max(after, window.revision),
            matches,
            trigger,
            replay,
            self.options.queue_limit,
        )
        self._watchers.add(watcher)
        if trigger is None:
            self._plain.add(watcher)
        else:
            _, by_value = self._triggered.setdefault(trigger.field, (trigger.value_of, {}))
            by_value.setdefault(trigger.value, set()).add(watcher)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._stopped:  # its store watch ended meanwhile: the client comes back afresh
            watcher.end(None)
        return watcher

    def remove(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        trigger = watcher.trigger
        if trigger is None:
            self._plain.discard(watcher)
        elif trigger.field in self._triggered:
            by_value = self._triggered[trigger.field][1]
            triggered = by_value.get(trigger.value, set())
            triggered.discard(watcher)
            if not triggered:
                by_value.pop(trigger.value, None)
                if not by_value:
                    del self._triggered[trigger.field]
        if not self._watchers and self._task is not None and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(
                self.options.linger, self._stop_if_idle
            )

    async def stop(self) -> None:
        """End every watcher (they resume elsewhere or here, afresh) and the store watch."""
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _started(self) -> EventWindow:
        # the start is a task of its own that every first watcher awaits shielded: one of them
        # cancelled meanwhile (a client gone, a watch handed over) must not fail the others'
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
            self._starting.add_done_callback(_retrieved)
        await asyncio.shield(self._starting)
        assert self.window is not None
        return self.window

    async def _start(self) -> None:
        try:
            current = await self.store.current_revision()
        except BaseException:
            self._starting = None
            self._on_stop(self)
            raise
        self.window = EventWindow(
            self.options.capacity,
            max(0, current - self.options.capacity),
            self.options.max_bytes,
        )
        self._task = asyncio.create_task(self._run(), name=f"watch-cache {self.prefix}")
        # stopped after `linger` unless a watcher registers (each does at once, without an
        # await, after the start; none does if every one waiting was cancelled)
        self._idle = asyncio.get_running_loop().call_later(self.options.linger, self._stop_if_idle)

    def _stop_if_idle(self) -> None:
        self._idle = None
        if not self._watchers and self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        window = self.window
        assert window is not None
        lost_since: float | None = None  # the store's watch broke this long ago
        try:
            while True:
                try:
                    events = self.store.watch(self.prefix, window.revision)
                    try:
                        async for event in events:
                            lost_since = None
                            self._dispatch(window, CachedEvent.from_store(event, self._serve))
                            await asyncio.sleep(0)  # the watchers' consumers run between events
                    finally:
                        # close the store's watch now (drivers' watches are async generators),
                        # not whenever the garbage collector finalizes it
                        aclose = getattr(events, "aclose", None)
                        if aclose is not None:
                            await aclose()
                    return  # the store was closed (the watchers end below)
                except Compacted as exc:
                    self._compacted(window, exc.compact_revision)
                except StoreUnavailable as exc:
                    # the store member this watch was on is gone (an etcd member died): resume
                    # from the last revision on whichever member answers, as etcd's own client
                    # does, so the API watches go on without a gap or a re-list
                    now = time.monotonic()
                    lost_since = now if lost_since is None else lost_since
                    if now - lost_since > WATCH_RESUME_SECONDS:
                        self._end_all(exc)
                        return
                    log.info(
                        "store watch on %s broke (%s); resuming from %d",
                        self.prefix,
                        exc,
                        window.revision,
                    )
                    await asyncio.sleep(WATCH_RESUME_DELAY)
                except Exception as exc:  # surfaced to every watcher, which own the error path
                    log.exception("the watch cache of %s failed", self.prefix)
                    self._end_all(exc)
                    return
        finally:
            self._stopped = True
            self._end_all(None)
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self._on_stop(self)

    def _dispatch(self, window: EventWindow, event: CachedEvent) -> None:
        window.append(event)
        decoded = Decoded(event)
        targets = list(self._plain)
        for value_of, by_value in self._triggered.values():
            now = value_of(decoded.obj())
            targets.extend(by_value.get(now, ()))
            if event.prev is not None:
                before = value_of(decoded.prev())
                if before != now:
                    targets.extend(by_value.get(before, ()))
        for watcher in targets:
            watcher.offer(decoded)

    def _compacted(self, window: EventWindow, compact_revision: int) -> None:
        """The store forgot history above the window: whoever has not seen up to the compact
        revision would miss events, so gets 410 (and re-lists); the rest go on."""
        log.info(
            "store history of %s compacted at %d, past the watch cache's %d",
            self.prefix,
            compact_revision,
            window.revision,
        )
        for watcher in list(self._watchers):
            if watcher.position < compact_revision:
                watcher.end(too_old(watcher.position, compact_revision))
        window.reset(compact_revision)

    def _end_all(self, error: Exception | None) -> None:
        for watcher in list(self._watchers):
            watcher.end(error)


class WatchCache:
    """Every kind's `Cacher`, started on the kind's first watch."""

    def __init__(
        self,
        store: Store,
        serve: Callable[[KeyValue], bytes],
        options: CacheOptions | None = None,
    ) -> None:
        self.store = store
        self.options = options or CacheOptions()
        self._serve = serve
        self._cachers: dict[str, Cacher] = {}

    def cacher(self, kind_prefix: str) -> Cacher:
        cacher = self._cachers.get(kind_prefix)
        if cacher is None:
            cacher = Cacher(self.store, kind_prefix, self.options, self._serve, self._forget)
            self._cachers[kind_prefix] = cacher
        return cacher

    async def watch(
        self,
        kind_prefix: str,
        prefix: str,
        after: int,
        matches: Matcher | None,
        trigger: Trigger | None = None,
    ) -> Watcher:
        """A watcher of the keys under `prefix` (inside the kind's `kind_prefix`) from
        revision `after` on; 410 Gone if the window no longer reaches back to it."""
        return await self.cacher(kind_prefix).watch(prefix, after, matches, trigger)

    def store_watching(self) -> list[str]:
        """The kinds (storage prefixes) whose store watch is running."""
        return [prefix for prefix, cacher in self._cachers.items() if cacher.running]

    async def close(self) -> None:
        """Stop every kind's store watch and end its watchers, as a server restart does; a
        later watch starts afresh from the store."""
        cachers = list(self._cachers.values())
        self._cachers.clear()
        for cacher in cachers:
            await cacher.stop()

    def _forget(self, cacher: Cacher) -> None:
        if self._cachers.get(cacher.prefix) is cacher:
            del self._cachers[cacher.prefix]


def _retrieved(task: asyncio.Future[None]) -> None:
    """A failed start is raised to its watchers; with none left waiting it is not an
    unretrieved exception either."""
    if not task.cancelled():
        task.exception()
