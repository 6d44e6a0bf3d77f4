"""The registry: Kubernetes object semantics over the revisioned store.

What belongs here: the generic machinery that decides what an API call *means* for every
resource in `podnet.api.resources` — create/get/list/update/patch/delete/watch, server-managed
metadata, compare-and-swap and guaranteed update, list `continue`, finalizers and the deletion
timestamp, namespace existence, the status subresource, pod binding, and the scale subresource
of every kind whose strategy declares one. What is special about a kind (its initial status,
grace period, Service IP allocation, namespace termination, ...) is its strategy's, in
`apiserver.strategies`, called at fixed points (listed in that package's header). The HTTP
handlers (`apiserver.handlers`) and the in-process `LocalApi` both call this class, so kubectl
and the controllers see one set of semantics.

Invariants:
- Nothing is written before it passed defaults + validation (`podnet.api.defaults`,
  `podnet.api.validation`); every failure is an `ApiError` carrying an upstream-shaped Status.
- `metadata.resourceVersion` is the store's `mod_revision` of the key, as a decimal string; it
  is never stored inside the value (it is set on read), so it can never disagree with the store.
- Every write is compare-and-swap on the revision it started from: the value this server
  last read or wrote of the key (`apiserver.recent`; no store read when it is current) or
  the store's. A client-supplied resourceVersion turns a lost race into 409 Conflict; without
  one (PATCH, PUT without resourceVersion, internal updates) the operation is retried on the
  fresh object. Admission look-ups (namespace, service account) trust a value this server saw
  within the last second, as upstream's listers lag the store.
- Server-managed fields (uid, creationTimestamp, generation, deletionTimestamp, status of kinds
  with a status subresource) are never taken from a client body on the main resource.
- An object leaves the store only when it has a deletionTimestamp, its grace period is over and
  no finalizers remain (`Strategy.ready_to_remove`; namespaces also wait for `spec.finalizers`).
- Stored values are JSON with `metadata` first (see `encode`), so unfiltered lists are served
  by splicing the revision into stored bytes instead of decoding every object.
- A list `continue` token is upstream's: the list's revision and the key to start from
  (base64 JSON {"v", "rv", "start"}); the next page is a fresh store read from that key at
  that revision (`store.base.list_pages`), so nothing is kept between pages and any server
  can continue a list; once the revision is compacted the answer is 410 Expired and the
  client re-lists; a revision the store has not reached (a token of another cluster's, or
  edited) is 400, as a malformed token is. The state that is not in the store is the watch cache
  (`apiserver.watchcache`), from which every watch is served, and the recent values.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import functools
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, overload

from podnet import memreport
from podnet.api import defaults, errors, meta, patch, sharedjson, validation
from podnet.api.errors import (
    ApiError,
    Cause,
    already_exists,
    bad_request,
    conflict,
    forbidden,
    gone,
    invalid,
    not_found,
    unsupported_media_type,
)
from podnet.api.resources import BY_PLURAL, Resource
from podnet.api.schema import check_types
from podnet.api.selectors import FieldSelector, LabelSelector
from podnet.apiserver import managed
from podnet.apiserver.recent import RecentValues
from podnet.apiserver.strategies import Context, Hooks, ScaleSpec, Strategy, strategy_for
from podnet.apiserver.watchcache import CacheOptions, Trigger, WatchCache
from podnet.config import ClusterConfig
from podnet.store.base import (
    Compacted,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    RevisionConflict,
    Store,
    list_pages,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ObjList = list[Obj]
StrList = list[str]

NAMESPACES = BY_PLURAL["namespaces"]
PODS = BY_PLURAL["pods"]

# metadata fields only the server sets; a client body never overrides them on the main resource
_SYSTEM_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # upstream's: no vowels, no confusables
_CONFLICT_RETRIES = 64
_CONTINUE_VERSION = "meta.k8s.io/v1"  # upstream's continue token version
LIST_PAGE_SIZE = 500
"""Objects per store read (and per piece sent) of an unfiltered LIST."""
DEFAULT_BOOKMARK_INTERVAL = 10.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def clone(obj: Obj) -> Obj:
    """A deep copy of a JSON object (faster than copy.deepcopy for JSON)."""
    copied: Obj = json.loads(json.dumps(obj))
    return copied


_STORED_PREFIX = b'{"metadata":{'


def encode(obj: Obj) -> bytes:
    """The stored form: compact JSON with `metadata` first and no resourceVersion in it.

    Metadata first lets `with_resource_version` splice the revision into stored bytes, so an
    unfiltered list is served without decoding and re-encoding every object.
    """
    metadata = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    ordered = {"metadata": metadata, **{k: v for k, v in obj.items() if k != "metadata"}}
    return json.dumps(ordered, separators=(",", ":")).encode()


def with_resource_version(kv: KeyValue) -> bytes:
    """The stored JSON of `kv` with `metadata.resourceVersion` set: spliced into the bytes
    `encode` writes (metadata first, with or without fields), without a JSON round trip. A value
    of another layout (written by hand, or before `encode` put metadata first) is decoded with
    plain `json.loads` and encoded again: the object is dropped once sent, so sharing its
    strings (`sharedjson`, 2-3x the CPU) would buy nothing."""
    value = kv.value
    if value.startswith(_STORED_PREFIX):
        rest = value[len(_STORED_PREFIX) :]
        if rest[:1] == b'"':
            return b'{"metadata":{"resourceVersion":"%d",%s' % (kv.mod_revision, rest)
        if rest[:1] == b"}":
            return b'{"metadata":{"resourceVersion":"%d"%s' % (kv.mod_revision, rest)
    return json.dumps(decode_transient(kv), separators=(",", ":")).encode()


def _terminating(kv: KeyValue) -> bool:
    """Whether the stored namespace `kv` is being deleted."""
    return _terminating_value(kv.value)


@functools.lru_cache(maxsize=256)
def _terminating_value(value: bytes) -> bool:
    # every create asks this of its namespace's held value, the same bytes object each time
    # (its hash is kept): decoded once, not once per create
    return bool(json.loads(value).get("metadata", {}).get("deletionTimestamp"))


def decode(kv: KeyValue) -> Obj:
    obj: Obj = sharedjson.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
    return obj


def decode_transient(kv: KeyValue) -> Obj:
    """`decode` for an object that only lives while one request is handled (the start of
    an update, an update's answer, a watch filter's look): plain `json.loads`, about a quarter of
    `sharedjson.loads`'s CPU (19 vs 72 us for a pod), whose shared strings pay off only in
    what is kept."""
    obj: Obj = json.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
    return obj


Written = KeyValue | Obj
"""What an update made: the stored value (written, or the current one when nothing changed),
or the object a dry run would have written."""


def answer_object(written: Written) -> Obj:
    """An update's answer as an object of its own. It lives as long as the request (a
    response, a controller's look at its resourceVersion): plain json.loads, not sharedjson
    (benchmarks/endpoints.py)."""
    return decode_transient(written) if isinstance(written, KeyValue) else written


def answer_json(written: Written) -> bytes:
    """An update's answer as the JSON a response carries: a stored value's bytes with their
    resourceVersion spliced in, as a watch serves them, without a decode and an encode (a
    pod status PATCH: ~35 us)."""
    if isinstance(written, KeyValue):
        return with_resource_version(written)
    return json.dumps(written, separators=(",", ":")).encode()


def success_status(code: int = 200, details: Obj | None = None) -> Obj:
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    }
    if details:
        body["details"] = details
    return body


@dataclass(frozen=True, slots=True)
class WatchItem:
    """One watch event: its type and its object's JSON, ready to be sent as it is (a cached
    event's bytes are shared by every watcher it goes to)."""

    type: str
    object: bytes

    def line(self) -> bytes:
        """The event as one line of a watch stream (JSON and the newline)."""
        return b'{"type":"%s","object":%s}\n' % (self.type.encode(), self.object)

    def as_dict(self, managed_fields: bool = True) -> Obj:
        """The event decoded (sharedjson: what an informer keeps); without `managed_fields`
        its object comes without metadata.managedFields, which are cut from the JSON before
        it is decoded (a pod's two entries were ~40 of ~75 us of its decode)."""
        if managed_fields:
            return {"type": self.type, "object": sharedjson.loads(self.object)}
        obj = sharedjson.loads(without_managed_fields(self.object))
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            metadata.pop("managedFields", None)  # JSON of another layout was decoded whole
        return {"type": self.type, "object": obj}


_SCAN = json.JSONDecoder().raw_decode  # one JSON value at an index: (value, end)
_SERVED_PREFIX = '{"metadata":{'


def without_managed_fields(value: bytes) -> bytes | str:
    """The JSON of an object as stored or served (compact, metadata first: `encode`,
    `with_resource_version`) without the `managedFields` member of its metadata, cut out of
    the text: metadata's members are scanned one value at a time, the rest is not looked at.
    JSON of any other layout is given back as it is (the caller decodes it whole)."""
    text = value.decode()
    if not text.startswith(_SERVED_PREFIX):
        return value
    index = len(_SERVED_PREFIX)
    try:
        while text[index] == '"':
            start = index
            key, index = _SCAN(text, index)
            if text[index] != ":":
                return value
            _, end = _SCAN(text, index + 1)
            if key == "managedFields":
                if text[end] == ",":
                    return text[:start] + text[end + 1 :]
                if text[start - 1] == ",":  # the last member: its comma goes with it
                    return text[: start - 1] + text[end:]
                return text[:start] + text[end:]
            if text[end] != ",":
                return value  # the end of metadata: there are none
            index = end + 1
    except (ValueError, IndexError):
        pass
    return value


def _trigger(opts: ListOptions) -> Trigger | None:
    """The field a watch's selector pins to one value, which the watch cache indexes."""
    selector = opts.field_selector
    for requirement in selector.requirements if selector is not None else ():
        if requirement.operator != "!=":
            return Trigger(requirement.field, requirement.value, requirement.value_of)
    return None


def _bookmark(res: Resource, revision: int) -> bytes:
    return json.dumps(
        {
            "kind": res.kind,
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(revision)},
        },
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True, slots=True)
class ListOptions:
    label_selector: LabelSelector | None = None
    field_selector: FieldSelector | None = None
    limit: int | None = None
    continue_token: str | None = None

    def matches(self, obj: Obj) -> bool:
        if self.label_selector is not None and not self.label_selector.matches(
            obj.get("metadata", {}).get("labels") or {}
        ):
            return False
        return self.field_selector is None or self.field_selector.matches(obj)


@dataclass(frozen=True, slots=True)
class DeleteOptions:
    grace_period_seconds: int | None = None
    propagation_policy: str | None = None  # Background (default) | Foreground | Orphan
    precondition_uid: str | None = None
    precondition_resource_version: str | None = None
    dry_run: bool = False

    @classmethod
    def from_json(cls, body: Any) -> DeleteOptions:
        """A `meta/v1 DeleteOptions` object (a DELETE body, an Eviction's `deleteOptions`)."""
        if body is None:
            return cls()
        if not isinstance(body, dict):
            raise bad_request("the DeleteOptions body must be a JSON object")
        grace = body.get("gracePeriodSeconds")
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
            raise bad_request(f"gracePeriodSeconds must be an integer, not {grace!r}")
        policy = body.get("propagationPolicy") or None
        if policy is None and body.get("orphanDependents") is True:
            policy = "Orphan"
        preconditions = body.get("preconditions")
        if not isinstance(preconditions, dict):
            preconditions = {}
        dry_run = body.get("dryRun") or []
        return cls(
            grace_period_seconds=grace,
            propagation_policy=policy,
            precondition_uid=preconditions.get("uid"),
            precondition_resource_version=preconditions.get("resourceVersion"),
            dry_run=isinstance(dry_run, list) and "All" in dry_run,
        )


class Registry:
    def __init__(
        self,
        store: Store,
        config: ClusterConfig,
        *,
        ca_pem: bytes = b"",
        clock: Callable[[], dt.datetime] = utc_now,
        bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
        watch_cache: CacheOptions | None = None,
    ) -> None:
        self.store = store
        self.recent = RecentValues(store)
        self.watch_cache = WatchCache(store, with_resource_version, watch_cache)
        self.config = config
        self.ca_pem = ca_pem
        self.clock = clock
        self.bookmark_interval = bookmark_interval
        self.hooks = Hooks()
        memreport.track("recent values", self.recent)
        memreport.track("watch cache", self.watch_cache)

    async def close(self) -> None:
        """End every watch and stop the watch cache's store watches (before the store closes)."""
        await self.watch_cache.close()

    # -- helpers -------------------------------------------------------------------------

    def _now(self) -> str:
        return meta.rfc3339(self.clock())

    def _context(self, res: Resource) -> tuple[Strategy, Context]:
        return strategy_for(res), Context(res, self)

    def _key(self, res: Resource, namespace: str | None, name: str) -> str:
        return res.storage_key(namespace if res.namespaced else None, name)

    async def _read(self, res: Resource, namespace: str | None, name: str) -> KeyValue:
        kv = await self.recent.get(self._key(res, namespace, name))
        if kv is None:
            raise not_found(res.plural, name, res.group)
        return kv

    async def lookup(self, key: str) -> KeyValue | None:
        """An admission look-up of `key`: a value this server saw at most
        `recent.LOOKUP_MAX_AGE` ago, else the store's (upstream's admission plugins read
        listers, which lag the store as much)."""
        return await self.recent.lookup(key)

    async def _require_namespace(
        self, res: Resource, namespace: str | None, name: str, creating: bool
    ) -> None:
        if not res.namespaced:
            return
        if not namespace:
            raise bad_request(f"{res.plural} is namespaced: the request needs a namespace")
        key = NAMESPACES.storage_key(None, namespace)
        kv = await self.lookup(key)
        if creating and kv is not None and _terminating(kv):
            # a refusal is never answered from a held value: the namespace may have been
            # removed and created again since (the store's answer costs a read only here)
            kv = await self.recent.get(key)
        if kv is None:
            raise not_found("namespaces", namespace)
        if creating and _terminating(kv):
            raise forbidden(
                f'{res.plural} "{name}" is forbidden: unable to create new content in namespace '
                f"{namespace} because it is being terminated",
                res.plural,
                name,
                res.group,
            )

    @staticmethod
    def check_identity(
        res: Resource,
        obj: Any,
        namespace: str | None,
        name: str | None = None,
        only: Collection[str] | None = None,
    ) -> Obj:
        """Refuse bodies that are not this resource's objects (400 like upstream). `only`:
        the top-level fields whose types are checked (`schema.check_types`), all without."""
        if not isinstance(obj, dict):
            raise bad_request(f"the request body must be a JSON object describing a {res.kind}")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version not in (None, "", res.api_version):
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({res.api_version})"
            )
        if kind not in (None, "", res.kind):
            raise bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
            )
        metadata = obj.get("metadata")
        if metadata is None:
            metadata = obj["metadata"] = {}
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be an object")
        body_ns = metadata.get("namespace")
        if res.namespaced and body_ns and namespace and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                f"request ({body_ns!r} vs {namespace!r})"
            )
        if name is not None and metadata.get("name") and metadata["name"] != name:
            raise bad_request(
                f"the name of the object ({metadata['name']}) does not match the name on the URL "
                f"({name})"
            )
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        check_types(res.kind, res.version, obj, only)
        return obj

    @staticmethod
    def _refuse_invalid(res: Resource, obj: Obj, causes: list[Cause]) -> None:
        if causes:
            raise invalid(res.kind, str(obj.get("metadata", {}).get("name", "")), causes, res.group)

    # -- read ----------------------------------------------------------------------------

    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj:
        return decode(await self._read(res, namespace, name))

    async def list(self, res: Resource, namespace: str | None, opts: ListOptions) -> Obj:
        """A LIST as upstream pages it: at most `limit` matching objects read from the store a
        page at a time (a continued list: from its token's key, at its revision), and a
        `continue` token naming the key after the last one returned while keys remain; the
        objects examined are never all held at once, and nothing is kept between pages.
        `remainingItemCount` is the keys left, given only without a selector (as upstream:
        with one, how many of them match is not known without reading them)."""
        prefix = res.storage_prefix(namespace)
        start, revision = "", 0
        if opts.continue_token:
            start, revision = _continue(opts.continue_token, prefix)
        limit = opts.limit if opts.limit and opts.limit > 0 else None
        selecting = opts.label_selector is not None or opts.field_selector is not None
        # without a selector every key read is returned: read no more than the page
        size = LIST_PAGE_SIZE if limit is None or selecting else min(limit, LIST_PAGE_SIZE)
        items: ObjList = []
        last_key, remaining = "", 0
        pages = list_pages(self.store, prefix, size, start, revision)
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    revision = page.revision
                    for index, kv in enumerate(page.items):
                        obj = decode(kv)
                        if opts.matches(obj):
                            items.append(obj)
                            if len(items) == limit:
                                last_key = kv.key
                                remaining = len(page.items) - index - 1 + page.remaining
                                break
                    if last_key:
                        break
        except Compacted:
            if not opts.continue_token:
                raise
            raise gone(
                "The provided continue parameter is too old to display a consistent list "
                "result. You can start a new list without the continue parameter."
            ) from None
        except FutureRevision as exc:  # a token of another store's, or edited
            raise bad_request(
                f"invalid value for continue: the token's resourceVersion {exc.requested} is "
                f"newer than the storage's current {exc.current}, so it was not issued by "
                "this cluster; start a new list without the continue parameter"
            ) from None
        list_meta: Obj = {"resourceVersion": str(revision)}
        if last_key and remaining > 0:
            list_meta["continue"] = _token(revision, last_key[len(prefix) :] + "\0")
            if not selecting:
                list_meta["remainingItemCount"] = remaining
        return {
            "kind": res.list_kind,
            "apiVersion": res.api_version,
            "metadata": list_meta,
            "items": items,
        }

    async def list_json(self, res: Resource, namespace: str | None) -> bytes:
        """An unfiltered, unpaginated list as JSON bytes (`list_json_pieces`, joined)."""
        return b"".join([piece async for piece in self.list_json_pieces(res, namespace)])

    async def list_json_pieces(
        self, res: Resource, namespace: str | None, page_size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """An unfiltered, unpaginated list as JSON (the fast path of `list`: stored bytes with
        their resourceVersion spliced in, never decoded), in pieces of about `page_size`
        objects read from the store one page at a time (`store.base.list_pages`: every page at
        the first one's revision). Sent as they come, a list of 30,000 pods (106 MB) is never
        whole in the server; the first piece is ready only once the store's first page is
        read, so a store that fails at once fails before anything is sent."""
        size = page_size or LIST_PAGE_SIZE
        pages = list_pages(self.store, res.storage_prefix(namespace), size)
        head: bytes | None = None
        async with contextlib.aclosing(pages):
            async for page in pages:
                body = b",".join([with_resource_version(kv) for kv in page.items])
                if head is None:
                    meta = {
                        "kind": res.list_kind,
                        "apiVersion": res.api_version,
                        "metadata": {"resourceVersion": str(page.revision)},
                    }
                    head = json.dumps(meta, separators=(",", ":")).encode()[:-1]
                    yield head + b',"items":[' + body
                    separator = b"," if body else b""
                elif body:
                    yield separator + body
                    separator = b","
        yield b"]}"

    # -- create --------------------------------------------------------------------------

    async def create(
        self,
        res: Resource,
        namespace: str | None,
        body: Any,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        warnings: StrList | None = None,
        manager: str = "",
        applied: bool = False,
    ) -> Obj:
        """Create `body`. `manager` (the request's field manager) is recorded in
        managedFields; `applied`: `body` is what a server-side apply made (its managedFields
        are already the apply's, see `managed.apply_config`)."""
        obj = self.check_identity(res, clone(body), namespace)
        obj = check_fields(res, obj, field_validation, warnings, refuse=_decode_error(res))
        sent = obj["metadata"].get("managedFields")
        metadata = obj["metadata"]
        if res.namespaced:
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        if not metadata.get("name") and isinstance(metadata.get("generateName"), str):
            suffix = "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            metadata["name"] = metadata["generateName"] + suffix
        name = metadata.get("name")
        if not name:
            raise invalid(
                res.kind,
                "",
                [
                    Cause(
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    )
                ],
                res.group,
            )
        if not isinstance(name, str):
            raise invalid(
                res.kind,
                "",
                [
                    Cause(
                        "metadata.name",
                        "FieldValueInvalid",
                        f"Invalid value: {json.dumps(name)}: must be a string",
                    )
                ],
                res.group,
            )
        for key in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            metadata.pop(key, None)
        metadata["uid"] = meta.new_uid()
        metadata["creationTimestamp"] = self._now()
        metadata["generation"] = 1
        strategy, ctx = self._context(res)
        obj = defaults.apply_defaults(res, obj, in_place=True)  # our own copy of the body
        if applied:
            obj["metadata"]["managedFields"] = sent
        elif manager:
            obj = managed.track_write(res, None, obj, sent, manager, self._now())
        strategy.prepare_for_create(ctx, obj)
        await strategy.admit_create(ctx, obj)
        self._refuse_invalid(res, obj, strategy.validate(ctx, obj))
        _add_warnings(warnings, strategy.warnings_on_create(ctx, obj))
        await self._require_namespace(res, namespace, name, creating=True)
        if dry_run:
            return obj
        finish = await strategy.begin_create(ctx, obj)
        try:
            kv = await self.store.create(self._key(res, namespace, name), encode(obj))
        except KeyExists:
            await finish(False)
            raise already_exists(res.plural, name, res.group) from None
        except BaseException:
            await finish(False)
            raise
        await finish(True)
        self.recent.remember(kv)
        created = decode(kv)
        await strategy.after_create(ctx, created)
        return created

    # -- update / patch ------------------------------------------------------------------

    @overload
    async def update(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        warnings: StrList | None = None,
        manager: str = "",
        *,
        encoded: Literal[False] = False,
    ) -> Obj: ...

    @overload
    async def update(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        warnings: StrList | None = None,
        manager: str = "",
        *,
        encoded: Literal[True],
    ) -> bytes: ...

    async def update(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        warnings: StrList | None = None,
        manager: str = "",
        *,
        encoded: bool = False,
    ) -> Obj | bytes:
        """Replace the object with `body` (PUT). The answer is the object written; with
        `encoded` its JSON as served (`answer_json`), not decoded into a dict first."""
        incoming = self.check_identity(res, clone(body), namespace, name)
        precondition = incoming["metadata"].get("resourceVersion") or None
        # the first attempt makes its object of this checked copy itself (almost every update
        # has one attempt); a retry starts from a new copy of the body, checked the same way
        unused = [incoming]

        def mutate(current: Obj) -> Obj:  # reads `current` only: no copy of it is made
            given = (
                unused.pop() if unused else self.check_identity(res, clone(body), namespace, name)
            )
            return check_fields(res, given, field_validation, warnings, current, _decode_error(res))

        written = await self._guaranteed_update(
            res,
            namespace,
            name,
            mutate,
            precondition,
            subresource,
            dry_run,
            warnings,
            manager,
            mutates=False,
        )
        return answer_json(written) if encoded else answer_object(written)

    @overload
    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        warnings: StrList | None = None,
        manager: str = "",
        force: bool = False,
        *,
        encoded: Literal[False] = False,
    ) -> Obj: ...

    @overload
    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        warnings: StrList | None = None,
        manager: str = "",
        force: bool = False,
        *,
        encoded: Literal[True],
    ) -> bytes: ...

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        warnings: StrList | None = None,
        manager: str = "",
        force: bool = False,
        *,
        encoded: bool = False,
    ) -> Obj | bytes:
        """Patch the object (PATCH, every patch type). The answer is the object written; with
        `encoded` its JSON as served (`answer_json`), not decoded into a dict first."""
        if patch_type == "apply":
            applied = await self._apply(
                res, namespace, name, body, subresource, dry_run, warnings, manager, force
            )
            return answer_json(applied) if encoded else answer_object(applied)
        apply_patch = _patcher(patch_type, res.kind)
        precondition: str | None = None
        if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
            precondition = body["metadata"].get("resourceVersion") or None
        # A merge patch is merged into a copy of the stored object of the loop's own
        # (`_updated`'s second decode) where it is, unless Strict validation still compares
        # with it. Every other patch is made on the loop's decode of the stored object itself
        # (`mutates=False`: one decode per attempt, not two): the other patchers copy their
        # target, and a status write's merge patch copies only what it reaches
        # (`merge_patch_sharing`): of a status write only the patched object's `status` is
        # kept (`prepare_for_status_update` takes the rest from the stored object), and no step
        # writes into the parts of it the patch did not reach (a kubelet's status write: one
        # decode of its pod fewer, ~22 us)
        sharing = patch_type == "merge" and subresource == "status"
        in_place = patch_type == "merge" and field_validation != "Strict" and not sharing
        touched = _touched(patch_type, body)

        def mutate(current: Obj) -> Obj:
            if sharing:
                patched = patch.merge_patch_sharing(current, body)
            elif in_place:
                patched = patch.apply_merge_patch(current, body, in_place=True)
            else:
                patched = apply_patch(current, body)
            if not isinstance(patched, dict):
                raise bad_request("the patch must produce a JSON object")
            checked = self.check_identity(res, patched, namespace, name, touched)
            return check_fields(
                res,
                checked,
                field_validation,
                warnings,
                current,
                _patch_error(body if patch_type == "strategic" else None, patched),
                touched,
            )

        written = await self._guaranteed_update(
            res,
            namespace,
            name,
            mutate,
            precondition,
            subresource,
            dry_run,
            warnings,
            manager,
            mutates=in_place,
        )
        return answer_json(written) if encoded else answer_object(written)

    async def _apply(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None,
        dry_run: bool,
        warnings: StrList | None,
        manager: str,
        force: bool,
    ) -> Written:
        """Server-side apply (PATCH application/apply-patch+yaml): `body` merged into the
        live object by `managed.apply_config`, or the object created from it. Unknown fields
        are refused whatever fieldValidation says, as upstream's typed apply does."""
        config = managed.check_apply_request(res, body, manager)
        config = self.check_identity(res, clone(config), namespace, name)
        if res.namespaced:
            config["metadata"].setdefault("namespace", namespace)
        managed.check_undeclared(res, config)
        try:
            await self._read(res, namespace, name)
        except ApiError as exc:
            if exc.code != 404 or subresource:
                raise
            merged = managed.apply_config(res, None, config, manager, self._now(), force)
            return await self.create(
                res, namespace, merged, dry_run, "Ignore", warnings, manager, applied=True
            )

        def mutate(current: Obj) -> Obj:
            return managed.apply_config(
                res, current, config, manager, self._now(), force, subresource
            )

        precondition = config["metadata"].get("resourceVersion") or None
        return await self._guaranteed_update(
            res,
            namespace,
            name,
            mutate,
            precondition,
            subresource,
            dry_run,
            warnings,
            "",
            keep=True,
        )

    async def _guaranteed_update(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        mutate: Callable[[Obj], Obj],
        precondition: str | None,
        subresource: str | None,
        dry_run: bool,
        warnings: StrList | None = None,
        manager: str = "",
        keep: bool = False,
        track_as: str | None = None,
        mutates: bool = True,
    ) -> Written:
        """The compare-and-swap loop of every update. managedFields: with `manager` the
        write is tracked (`managed.track_write`, as a write of the subresource `track_as`
        when given); with `keep` the ones `mutate` made stay (apply); else the stored ones
        are kept. `mutate` is given a copy of the stored object it may change, or with
        `mutates=False` (it only reads it) the decoded object itself. What it made
        (`Written`) is the caller's to answer with (`answer_object`, `answer_json`).

        The loop starts from the value this server last saw of the key (`recent`), not from a
        store read: the compare-and-swap checks it, and a failed one carries the current
        value. A start that may be stale is never the ground for an answer: a failed
        precondition, a refusal or "nothing changed" found on it is looked at again on the
        store's value (upstream's etcd3 GuaranteedUpdate from the watch cache's object)."""
        strategy, ctx = self._context(res)
        key = self._key(res, namespace, name)
        kv = None if dry_run else self.recent.suggestion(key)
        current = kv is None
        for _ in range(_CONFLICT_RETRIES):
            if kv is None:
                kv, current = await self._read(res, namespace, name), True
            if precondition is not None and precondition != str(kv.mod_revision):
                if current:
                    raise conflict(res.plural, name, res.group)
                kv = None
                continue
            old = decode_transient(kv)
            try:
                new = self._updated(
                    res,
                    strategy,
                    ctx,
                    kv,
                    old,
                    mutate,
                    subresource,
                    manager,
                    keep,
                    track_as,
                    mutates,
                )
            except ApiError:
                if current:
                    raise
                kv = None
                continue
            if new == old:
                if current:
                    return kv  # nothing changed: no write, same resourceVersion
                kv = None
                continue
            if subresource is None:
                _add_warnings(warnings, strategy.warnings_on_update(ctx, new, old))
            if dry_run:
                return new
            remove = strategy.ready_to_remove(ctx, new)  # e.g. the last finalizer was dropped
            try:
                finish = await strategy.begin_update(ctx, new, old)
            except ApiError:
                if current:
                    raise
                kv = None
                continue
            try:
                if remove:
                    written = await self.store.delete(key, kv.mod_revision)
                else:
                    written = await self.store.update(key, encode(new), kv.mod_revision)
            except (RevisionConflict, KeyNotFound) as exc:
                await finish(False)
                if isinstance(exc, KeyNotFound):
                    self.recent.forget(key)
                    raise not_found(res.plural, name, res.group) from None
                if precondition is not None:
                    raise conflict(res.plural, name, res.group) from None
                kv, current = self._conflicted(exc)
                continue
            except BaseException:
                await finish(False)
                raise
            await finish(True)
            if remove:
                self.recent.forget(key)
                await strategy.after_removal(ctx, new)
            else:
                self.recent.remember(written)
            return written
        raise conflict(res.plural, name, res.group, why="too many concurrent writers; retry")

    def _updated(
        self,
        res: Resource,
        strategy: Strategy,
        ctx: Context,
        kv: KeyValue,
        old: Obj,
        mutate: Callable[[Obj], Obj],
        subresource: str | None,
        manager: str,
        keep: bool,
        track_as: str | None,
        mutates: bool = True,
    ) -> Obj:
        """What `mutate` makes of `old` (`kv`'s decode), prepared for the store, managedFields
        as `_guaranteed_update` says."""
        # `mutate`'s copy of `old` is `kv` decoded again: the same fresh object `clone(old)`
        # made, for one json.loads instead of a dumps and a loads (a pod: ~20 vs ~45 us)
        candidate = mutate(decode_transient(kv) if mutates else old)
        sent = candidate.get("metadata", {}).get("managedFields")
        new = self._prepare_update(strategy, ctx, old, candidate, subresource, owned=not keep)
        if manager:
            return managed.track_write(
                res, old, new, sent, manager, self._now(), track_as or subresource
            )
        if (sent if keep else old.get("metadata", {}).get("managedFields")) is not None:
            new["metadata"]["managedFields"] = sent if keep else old["metadata"]["managedFields"]
        return new

    def _conflicted(self, exc: RevisionConflict) -> tuple[KeyValue | None, bool]:
        """After a failed compare-and-swap: the key's current value, if the store said it
        (remembered), and whether there is one (else the next round reads the store)."""
        if exc.current is not None:
            self.recent.remember(exc.current)
            return exc.current, True
        return None, False

    def _prepare_update(
        self,
        strategy: Strategy,
        ctx: Context,
        old: Obj,
        new: Obj,
        subresource: str | None,
        owned: bool = False,
    ) -> Obj:
        """The object to store when `new` (a client's view) replaces `old`. `owned`: `new`
        is this write's own (a patched copy of the stored object, or a copy of the request's
        body), so defaults are filled in where it is; an apply's may share parts with the
        request's configuration, which every retry starts from again, so it is copied."""
        res = ctx.res
        if subresource == "status":
            # kubelets/controllers may set conditions but not the object's identity
            strategy.prepare_for_status_update(ctx, new, old)
            self._refuse_invalid(res, new, strategy.validate_update(ctx, new, old))
            return new
        # namespaces/finalize is an update of the namespace whose status is kept (upstream's
        # finalize strategy), which is what the main resource's path does for a kind with status
        if subresource not in (None, "", "finalize"):
            raise bad_request(f"{res.plural}/{subresource} cannot be updated this way")
        metadata = new.setdefault("metadata", {})
        old_meta = old.get("metadata", {})
        for key in _SYSTEM_META:
            if key in old_meta:
                metadata[key] = old_meta[key]
            else:
                metadata.pop(key, None)
        metadata["name"] = old_meta.get("name")
        if res.namespaced:
            metadata["namespace"] = old_meta.get("namespace")
        metadata["resourceVersion"] = old_meta.get("resourceVersion")
        metadata.pop("managedFields", None)
        metadata.pop("selfLink", None)
        result = defaults.apply_defaults(res, new, in_place=owned)
        if subresource == "finalize":
            strategy.prepare_for_finalize(ctx, result, old)
        else:
            strategy.prepare_for_update(ctx, result, old)
        if _spec_of(result) != _spec_of(old):
            result["metadata"]["generation"] = int(old_meta.get("generation") or 1) + 1
        self._refuse_invalid(res, result, strategy.validate_update(ctx, result, old))
        return result

    async def rewrite(
        self, res: Resource, namespace: str | None, name: str, mutate: Callable[[Obj], Obj]
    ) -> Obj:
        """A server-internal compare-and-swap write (see `strategies.Backend.rewrite`)."""
        strategy, ctx = self._context(res)
        key = self._key(res, namespace, name)
        kv = self.recent.suggestion(key)  # checked as in _guaranteed_update
        current = kv is None
        for _ in range(_CONFLICT_RETRIES):
            if kv is None:
                kv, current = await self._read(res, namespace, name), True
            try:
                new = mutate(decode_transient(kv))
            except ApiError:
                if current:
                    raise
                kv = None
                continue
            try:
                if strategy.ready_to_remove(ctx, new):
                    removed = decode(await self.store.delete(key, kv.mod_revision))
                    self.recent.forget(key)
                    await strategy.after_removal(ctx, new)
                    return removed
                written = await self.store.update(key, encode(new), kv.mod_revision)
            except RevisionConflict as exc:
                kv, current = self._conflicted(exc)
                continue
            except KeyNotFound:
                self.recent.forget(key)
                raise not_found(res.plural, name, res.group) from None
            self.recent.remember(written)
            return decode(written)
        raise conflict(res.plural, name, res.group, why="too many concurrent writers; retry")

    # -- delete --------------------------------------------------------------------------

    async def delete(
        self, res: Resource, namespace: str | None, name: str, opts: DeleteOptions | None = None
    ) -> Obj:
        opts = opts or DeleteOptions()
        strategy, ctx = self._context(res)
        key = self._key(res, namespace, name)
        for _ in range(_CONFLICT_RETRIES):
            kv = await self._read(res, namespace, name)
            obj = decode(kv)
            metadata = obj["metadata"]
            if opts.precondition_uid and opts.precondition_uid != metadata.get("uid"):
                raise conflict(
                    res.plural,
                    name,
                    res.group,
                    why=(
                        f"Precondition failed: UID in precondition: {opts.precondition_uid}, "
                        f"UID in object meta: {metadata.get('uid')}"
                    ),
                )
            if (
                opts.precondition_resource_version
                and opts.precondition_resource_version != metadata["resourceVersion"]
            ):
                raise conflict(
                    res.plural,
                    name,
                    res.group,
                    why=(
                        "Precondition failed: ResourceVersion in precondition: "
                        f"{opts.precondition_resource_version}, ResourceVersion in object meta: "
                        f"{metadata['resourceVersion']}"
                    ),
                )
            new = self._plan_delete(strategy, ctx, obj, opts)
            remove = strategy.ready_to_remove(ctx, new)
            if opts.dry_run:
                return obj if remove else new
            try:
                if remove:
                    stored = decode(await self.store.delete(key, kv.mod_revision))
                    self.recent.forget(key)
                    await strategy.after_removal(ctx, stored)
                    return stored
                if new == obj:
                    return obj
                written = await self.store.update(key, encode(new), kv.mod_revision)
            except KeyNotFound:
                self.recent.forget(key)
                raise not_found(res.plural, name, res.group) from None
            except RevisionConflict:
                continue
            self.recent.remember(written)
            updated = decode(written)
            await strategy.after_deletion_recorded(ctx, updated)
            return updated
        raise conflict(res.plural, name, res.group, why="too many concurrent writers; retry")

    def _plan_delete(self, strategy: Strategy, ctx: Context, obj: Obj, opts: DeleteOptions) -> Obj:
        """`obj` with its deletion recorded (deletionTimestamp, grace period, finalizers the
        propagation policy asks for); the caller removes it when it is ready to go."""
        strategy.check_delete(ctx, obj)
        new = clone(obj)
        metadata = new["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        if opts.propagation_policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        elif opts.propagation_policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        elif opts.propagation_policy not in (None, "", "Background", "Orphan", "Foreground"):
            raise invalid(
                "DeleteOptions",
                "",
                [
                    Cause(
                        "propagationPolicy",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{opts.propagation_policy}": supported values: '
                        '"Foreground", "Background", "Orphan"',
                    )
                ],
            )
        if finalizers:
            metadata["finalizers"] = finalizers
        grace = strategy.grace_period(ctx, obj, opts.grace_period_seconds)
        current_grace = int(metadata.get("deletionGracePeriodSeconds") or 0)
        # a second delete may only shorten the grace period, never restart or extend it
        if not metadata.get("deletionTimestamp") or grace < current_grace:
            metadata["deletionTimestamp"] = meta.rfc3339(self.clock() + dt.timedelta(seconds=grace))
            metadata["deletionGracePeriodSeconds"] = grace
        strategy.prepare_for_delete(ctx, new)
        return new

    async def delete_collection(
        self, res: Resource, namespace: str | None, opts: ListOptions, delete_opts: DeleteOptions
    ) -> Obj:
        listed = await self.list(
            res, namespace, ListOptions(opts.label_selector, opts.field_selector)
        )
        deleted: ObjList = []
        for item in listed["items"]:
            item_meta = item["metadata"]
            try:
                deleted.append(
                    await self.delete(
                        res, item_meta.get("namespace"), item_meta["name"], delete_opts
                    )
                )
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return {
            "kind": res.list_kind,
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": listed["metadata"]["resourceVersion"]},
            "items": deleted,
        }

    # -- watch ---------------------------------------------------------------------------

    async def watch(
        self,
        res: Resource,
        namespace: str | None,
        resource_version: str | None,
        opts: ListOptions,
        *,
        bookmarks: bool = False,
        duration: float | None = None,
        stop: asyncio.Event | None = None,
        managed_fields: bool = True,
    ) -> AsyncGenerator[Obj, None]:
        """Watch events as dicts (`watch_stream`'s, decoded: each caller owns its objects);
        without `managed_fields` their objects come without metadata.managedFields."""
        items = self.watch_stream(
            res,
            namespace,
            resource_version,
            opts,
            bookmarks=bookmarks,
            duration=duration,
            stop=stop,
        )
        async with contextlib.aclosing(items):
            async for item in items:
                yield item.as_dict(managed_fields)

    async def watch_stream(
        self,
        res: Resource,
        namespace: str | None,
        resource_version: str | None,
        opts: ListOptions,
        *,
        bookmarks: bool = False,
        duration: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> AsyncGenerator[WatchItem, None]:
        """Watch events, served from the kind's watch cache (`apiserver.watchcache`).

        Without a resourceVersion (or "0") the current objects come first as ADDED, listed
        from the store. A resourceVersion older than the cache's window raises ApiError 410
        (Expired); a store that stays away raises its error; a watch the cache cut (too slow)
        or the server's shutdown (`stop`) just ends, and so does it after `duration`.
        """
        if stop is not None and stop.is_set():
            # shutting down: no list, and no kind's cache started to linger after close. The
            # pause keeps a caller that watches again whenever a watch ends from spinning
            # without ever giving the loop back (and so never seeing its own cancellation)
            await asyncio.sleep(0)
            return
        prefix = res.storage_prefix(namespace)
        matches = (
            None if opts.label_selector is None and opts.field_selector is None else opts.matches
        )
        initial: list[KeyValue] = []
        if resource_version in (None, "", "0"):
            listed = await self.store.list(prefix)
            start = listed.revision
            initial = listed.items
        else:
            start = parse_resource_version(str(resource_version))
        watcher = await self.watch_cache.watch(
            res.storage_prefix(None), prefix, start, matches, _trigger(opts)
        )
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            stopper.add_done_callback(lambda _: watcher.wake())
        try:
            for kv in initial:
                if matches is None or matches(decode_transient(kv)):
                    yield WatchItem("ADDED", with_resource_version(kv))
            loop = asyncio.get_running_loop()
            deadline = None if duration is None else loop.time() + duration
            next_bookmark = loop.time() + self.bookmark_interval
            while stop is None or not stop.is_set():
                delivery = watcher.next_nowait()
                if delivery is not None:
                    yield WatchItem(delivery[0], delivery[1].value)
                    continue
                if watcher.ended:
                    if watcher.error is not None:
                        raise watcher.error
                    return
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return
                if bookmarks and now >= next_bookmark:
                    next_bookmark = now + self.bookmark_interval
                    yield WatchItem("BOOKMARK", _bookmark(res, watcher.progress))
                    continue
                wait_until = next_bookmark if bookmarks else None
                if deadline is not None:
                    wait_until = deadline if wait_until is None else min(wait_until, deadline)
                watcher.wake_at(wait_until)
                await watcher.wait()
        finally:
            watcher.close()
            if stopper is not None:
                stopper.cancel()

    # -- subresources --------------------------------------------------------------------

    async def bind(self, namespace: str, name: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a Binding object")
        check_types("Binding", "v1", body)
        target = body.get("target") or {}
        node = target.get("name") if isinstance(target, dict) else None
        if not node or not isinstance(node, str):
            raise invalid(
                "Binding", name, [Cause("target.name", "FieldValueRequired", "Required value")]
            )

        def assign(pod: Obj) -> Obj:
            if pod["metadata"].get("deletionTimestamp"):
                raise conflict(
                    "pods/binding",
                    name,
                    why=f"pod {name} is being deleted, cannot be assigned to a host",
                )
            current = pod.get("spec", {}).get("nodeName")
            if current:
                raise conflict(
                    "pods/binding",
                    name,
                    why=f'pod {name} is already assigned to node "{current}"',
                )
            pod.setdefault("spec", {})["nodeName"] = node
            status = pod.setdefault("status", {})
            conditions = [
                c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"
            ]
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": self._now(),
                }
            )
            status["conditions"] = conditions
            return pod

        await self.rewrite(PODS, namespace, name, assign)
        return success_status(201)

    async def get_scale(self, res: Resource, namespace: str | None, name: str) -> Obj:
        return _to_scale(_scale_spec(res), await self.get(res, namespace, name))

    async def update_scale(
        self, res: Resource, namespace: str | None, name: str, body: Any, manager: str = ""
    ) -> Obj:
        scale = _scale_spec(res)
        if not isinstance(body, dict):
            raise bad_request("the request body must be an autoscaling/v1 Scale")
        check_types("Scale", "v1", body)
        replicas = (
            body.get("spec", {}).get("replicas") if isinstance(body.get("spec"), dict) else None
        )
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid(
                "Scale",
                name,
                [
                    Cause(
                        "spec.replicas",
                        "FieldValueInvalid",
                        f"Invalid value: {json.dumps(replicas)}: "
                        "must be greater than or equal to 0",
                    )
                ],
                "autoscaling",
            )
        precondition = (body.get("metadata") or {}).get("resourceVersion") or None

        def mutate(current: Obj) -> Obj:
            _set_path(current, scale.spec_replicas, replicas)
            return current

        updated = await self._guaranteed_update(
            res, namespace, name, mutate, precondition, None, False, None, manager, track_as="scale"
        )
        return _to_scale(scale, answer_object(updated))

    async def patch_scale(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        manager: str = "",
    ) -> Obj:
        scale = await self.get_scale(res, namespace, name)
        patched = _patcher(patch_type, "Scale")(clone(scale), body)
        if not isinstance(patched, dict):
            raise bad_request("the patch must produce a JSON object")
        check_types("Scale", "v1", patched)
        # only a resourceVersion the patch itself names is a precondition
        asked = body.get("metadata") if isinstance(body, dict) else None
        version = asked.get("resourceVersion") if isinstance(asked, dict) else None
        patched.setdefault("metadata", {})["resourceVersion"] = version
        return await self.update_scale(res, namespace, name, patched, manager)


# -- pure helpers ----------------------------------------------------------------------------


FIELD_VALIDATION_MODES = ("Strict", "Warn", "Ignore")


def check_fields(
    res: Resource,
    obj: Obj,
    mode: str,
    warnings: list[str] | None,
    current: Obj | None = None,
    refuse: Callable[[ApiError], ApiError] = lambda error: error,
    only: Collection[str] | None = None,
) -> Obj:
    """Apply `fieldValidation`: Strict refuses unknown fields (`refuse` words the error as the
    request's kind does upstream), Warn drops them and records a warning, Ignore drops them
    silently (upstream stores only known fields).

    On update only fields the client *added* count: a path already present in the stored
    object (`current`) is not the client's typo, so it never fails a PUT or PATCH. `only`: the
    top-level fields to look in (a patch's; the others are the stored object's).
    """
    if mode not in FIELD_VALIDATION_MODES:
        raise bad_request(
            f"fieldValidation must be one of {', '.join(FIELD_VALIDATION_MODES)}, not {mode!r}"
        )
    if mode == "Strict":
        unknown = validation.unknown_fields(res, obj, only)
        if unknown and current is not None:
            stored = set(validation.unknown_fields(res, current, only))
            unknown = [path for path in unknown if path not in stored]
        if unknown:
            raise refuse(validation.strict_decoding_error(unknown))
        return obj
    pruned, dropped = validation.drop_unknown_fields(res, obj, only)
    if mode == "Warn" and warnings is not None:
        for path in dropped:
            if f'unknown field "{path}"' not in warnings:  # retries see the same body again
                warnings.append(f'unknown field "{path}"')
    return pruned


def _decode_error(res: Resource) -> Callable[[ApiError], ApiError]:
    """A body that does not decode (create, update) as upstream's transformDecodeError: 400
    `Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: ...`."""

    def refuse(error: ApiError) -> ApiError:
        kind = res.kind
        return bad_request(
            f'{kind} in version "{res.version}" cannot be handled as a {kind}: {error.message}'
        )

    return refuse


def _patch_error(strategic_patch: Any, patched: Any) -> Callable[[ApiError], ApiError]:
    """A patched object that does not decode, as upstream's patcher words it: 422 with the
    cause `patch` whose value is the strategic patch (Go's %+v of the map) or, for JSON and
    merge patches, the patched object's JSON."""

    def refuse(error: ApiError) -> ApiError:
        if strategic_patch is not None:
            value = errors.go_sprint(strategic_patch)
        else:
            value = json.dumps(patched, separators=(",", ":"))
        cause = Cause(
            "patch",
            "FieldValueInvalid",
            f"Invalid value: {json.dumps(value, ensure_ascii=False)}: {error}",
        )
        return invalid("", "", [cause])

    return refuse


def parse_resource_version(text: str) -> int:
    """A resourceVersion query parameter as a store revision (upstream: a uint64 that the
    store keeps in an int64); anything else is a 400."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) < 2**63):
        raise bad_request(
            f"invalid resourceVersion {text[:64]!r}: podnet resource versions are decimal "
            "integers from 0 to 9223372036854775807"
        )
    return int(text)


def _token(revision: int, start: str) -> str:
    """Upstream's continue token: unpadded URL-safe base64 of {"v", "rv", "start"}, `start`
    the key to go on from, relative to the list's prefix."""
    raw = json.dumps({"v": _CONTINUE_VERSION, "rv": revision, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _continue(token: str, prefix: str) -> tuple[str, int]:
    """(the key to start from, the revision) of a continue token (400 if malformed, 410 if it
    is an older podnet's, whose snapshot no server has any more)."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        if not isinstance(raw, dict):
            raise ValueError(raw)
        if "id" in raw and "v" not in raw:
            raise gone(
                "The provided continue parameter is too old to display a consistent list "
                "result. You can start a new list without the continue parameter."
            )
        start, revision = raw["start"], raw["rv"]
        if raw.get("v") != _CONTINUE_VERSION or not isinstance(start, str):
            raise ValueError(raw)
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
            raise ValueError(revision)
        # upstream's check: the key stays inside the list's prefix
        if not start or start.startswith("/") or ".." in start.split("/"):
            raise ValueError(start)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise bad_request(
            "invalid value for continue: the token is malformed; start a new "
            "list without the continue parameter"
        ) from None
    return prefix + start, revision


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _touched(patch_type: str, body: Any) -> frozenset[str] | None:
    """The top-level fields a merge or strategic merge patch can change: its own keys (plus
    the two `check_identity` sets). A patched object's other fields are the stored object's,
    which passed `check_types` and the unknown-field walk when written, so only these are
    walked again (a kubelet's status patch: `status`, not the whole pod). None (walk it all)
    for a JSON patch, or a strategic patch with a top-level directive (`$patch`,
    `$retainKeys`, `$setElementOrder/...`), which may change any field."""
    if patch_type not in ("merge", "strategic") or not isinstance(body, dict):
        return None
    if patch_type == "strategic" and any(str(key).startswith("$") for key in body):
        return None
    return frozenset((*body, "apiVersion", "kind"))


def _patcher(patch_type: str, kind: str) -> Callable[[Obj, Any], Any]:
    if patch_type == "merge":
        return patch.apply_merge_patch
    if patch_type == "json":
        return patch.apply_json_patch
    if patch_type == "strategic":
        return lambda target, body: patch.apply_strategic_merge_patch(target, body, kind)
    if patch_type == "apply":
        raise unsupported_media_type(
            "server-side apply (application/apply-patch+yaml) of this subresource is not "
            "supported by podnet; use a merge patch (`kubectl scale`, `kubectl patch --type=merge`)"
        )
    raise unsupported_media_type(
        f"the patch type {patch_type!r} is not supported; use application/merge-patch+json, "
        "application/strategic-merge-patch+json or application/json-patch+json"
    )


def _scale_spec(res: Resource) -> ScaleSpec:
    scale = strategy_for(res).scale
    if scale is None:
        raise ApiError(404, "NotFound", f"{res.plural} have no scale subresource")
    return scale


def _get_path(obj: Obj, path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _set_path(obj: Obj, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[last] = value


def _to_scale(scale: ScaleSpec, obj: Obj) -> Obj:
    """`obj` as an autoscaling/v1 Scale, read from the fields `scale` names."""
    metadata = obj.get("metadata", {})
    try:
        selector = str(LabelSelector.from_spec(_get_path(obj, scale.selector) or {}))
    except ApiError:
        selector = ""  # validation keeps malformed selectors out; never fail a read on one
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: metadata[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in metadata
        },
        "spec": {"replicas": int(_get_path(obj, scale.spec_replicas) or 0)},
        "status": {
            "replicas": int(_get_path(obj, scale.status_replicas) or 0),
            "selector": selector,
        },
    }


def _add_warnings(warnings: StrList | None, found: StrList) -> None:
    """Record `found` once each (a retried update sees the same object again)."""
    if warnings is None:
        return
    for warning in found:
        if warning not in warnings:
            warnings.append(warning)
