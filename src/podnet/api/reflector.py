"""List, then watch, forever: how an agent component keeps a local copy of one resource.

`reflect` is client-go's Reflector in one function, shared by the kubelet (its pods), flannel
(nodes) and kube-proxy (services, endpointslices). It owns no state: the caller passes
`replace(items)`, called with the full list (at start and after every re-list), and
`apply(type, obj)`, called per watch event (ADDED / MODIFIED / DELETED). Invariants:

- nothing is applied before the first list has been replaced in full;
- a watch that ends normally (server timeout) resumes from the last resourceVersion seen,
  bookmarks included, so no event is missed and none is replayed; one that ends at once with
  no event is re-opened only after a short pause, so such a server cannot make us spin;
- an expired resourceVersion (410) or an ERROR event re-lists at once; any other failure
  (server unreachable, connection dropped, a 5xx or 429 while a failed-over server or etcd
  member settles) retries what failed after a jittered back-off that doubles from
  `first_delay` up to `max_delay` (1 s: a restarted server is noticed within about a second,
  and the agents' retries spread out instead of arriving together). A failed watch resumes
  from the last resourceVersion seen, as client-go's Reflector does, so a server failover
  costs no re-list; only a 410 (too old) or another refusal of the watch itself (4xx)
  re-lists. Failures are logged at once, then at most every 30 s with a count, and the
  recovery once (`podnet.retry.ThrottledLog`), so an operator sees why the component is
  stale without the log filling up.

A component that keeps only a few fields of many objects (the cluster DNS) passes
`page_size` and `transform`, as client-go's pager and informer transforms do: the first list
comes in pages of that many items and each item is turned into what the component keeps
(`replace` then gets those) on arrival, so only one page of whole objects is ever in memory
(not 10k Services' at once, whose freed memory the process would keep).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.retry import Backoff, Retry, ThrottledLog, sleep_or_stop

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300
RETRY_FIRST = 0.2
RETRY_CAP = 1.0


PAGE_SIZE = 500
"""Items per page of a paged first list (`page_size`): client-go's pager default."""


async def reflect(
    api: Api,
    resource: str,
    *,
    replace: Callable[[list[Any]], None],
    apply: Callable[[str, Obj], None],
    stop: asyncio.Event,
    namespace: str | None = None,
    field_selector: str | None = None,
    label_selector: str | None = None,
    who: str = "",
    first_delay: float = RETRY_FIRST,
    max_delay: float = RETRY_CAP,
    page_size: int | None = None,
    transform: Callable[[Obj], Any] | None = None,
) -> None:
    """Keep `replace`/`apply` fed with `resource` until `stop` is set (`page_size` and
    `transform`: see the module docstring; watch events are applied untransformed)."""
    version: str | None = None
    retry = Retry(Backoff(first_delay, max_delay))
    errors = ThrottledLog(log)
    name = f"{who}: " if who else ""
    while not stop.is_set():
        try:
            if version is None:
                items: list[Any] = []
                token: str | None = None
                while True:  # one page, or every page of one snapshot
                    listed = await api.list(
                        resource,
                        namespace=namespace,
                        field_selector=field_selector,
                        label_selector=label_selector,
                        limit=page_size,
                        continue_token=token,
                    )
                    page = listed.get("items") or ()
                    items += map(transform, page) if transform is not None else page
                    meta: dict[str, Any] = listed.get("metadata") or {}
                    del listed, page
                    token = meta.get("continue") or None
                    if token is None:
                        break
                replace(items)
                del items
                version = str(meta.get("resourceVersion") or "")
                if retry.failures:
                    retry.reset()
                    errors.recovered("list", "%s%s listed again", name, resource)
            opened, events = time.monotonic(), 0
            async for event in api.watch(
                resource,
                namespace=namespace,
                resource_version=version,
                field_selector=field_selector,
                label_selector=label_selector,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                allow_bookmarks=True,
            ):
                events += 1
                if retry.failures:
                    retry.reset()
                    errors.recovered("list", "%s%s watched again", name, resource)
                kind = str(event.get("type"))
                obj = event.get("object") or {}
                if kind == "ERROR":
                    version = None  # e.g. 410 delivered as an event: start over
                    break
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind != "BOOKMARK":
                    apply(kind, obj)
                if stop.is_set():
                    return
            if version is not None and events == 0 and time.monotonic() - opened < 0.1:
                await sleep_or_stop(stop, 0.1)
        except asyncio.CancelledError:
            raise
        except ApiError as exc:
            if exc.code == 410:
                version = None
                continue
            if exc.code < 500 and exc.code != 429:
                version = None  # the server refused this watch itself: start over from a list
            delay = retry.next()
            errors.failed("list", "%s%s %s failed (%s); retrying in %.1fs", name, resource,
                          "list" if version is None else "watch", exc, delay)  # fmt: skip
            await sleep_or_stop(stop, delay)
        except Exception as exc:  # connection refused or dropped: the server may be restarting
            delay = retry.next()
            errors.failed(
                "list", "%scannot reach the API server for %s (%s: %s); retrying in %.1fs",
                name, resource, type(exc).__name__, exc, delay,
            )  # fmt: skip
            await sleep_or_stop(stop, delay)
