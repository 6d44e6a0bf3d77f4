"""HTTP: routing Kubernetes REST paths onto the registry, content negotiation, auth, errors.

What belongs here: the aiohttp application — URL parsing (`/api/v1/namespaces/ns/pods/name/sub`,
`/apis/<group>/<version>/...`, the legacy `/watch/` prefix), query and body decoding, bearer
token authentication, Table output when the client asks for it, watch streaming, and turning
every failure into a `Status`. What a call *means* lives in `apiserver.registry`; the exec/log
relay in `apiserver.streams`.

Invariants:
- Every request except the public ones (`/healthz`, `/livez`, `/readyz`, `/version`, with no
  credentials) needs `Authorization: Bearer <token>`; a missing or wrong token is a 401 Status.
  A wrong token is refused even on public paths (authentication runs before anonymous access).
  Every request is then authorized (`apiserver.auth`: system:masters, Node, RBAC) before
  anything is read or written; a refusal is upstream's 403 Status.
- Every error response is a `meta/v1 Status` JSON with the matching HTTP code — never a
  traceback or plain text: the middleware maps every exception (the catch-all logs it and
  answers 500 InternalError), and `ApiRunner` answers aiohttp's own errors (a request line or
  header over the limits: 431; a malformed request line, header or chunked body: 400) with a
  Status too. What stays outside: `/healthz`, `/livez`, `/readyz` answer plain text, as
  upstream's do; a HEAD answer has no body; a client that does not speak TLS (or HTTP) gets
  no HTTP answer at all.
- Limits like upstream's: request line 1 MiB (Go's MaxHeaderBytes), 64 KiB per header, 128
  headers; bodies over 3 MiB are refused with 413 before they are parsed, and are never
  decompressed (a Content-Encoding is a 415); `apiserver.decoding` bounds nesting and types.
- Integer query parameters are int64 (strconv.ParseInt); anything else is a 400.
- Watch streams are newline-delimited JSON events (chunked for HTTP/1.1; for HTTP/1.0 the
  body ends where the connection closes: `api.streamedbody`, as for a streamed LIST), and end
  on timeoutSeconds, on client disconnect (the handler is cancelled, like upstream's request
  context) or when the server shuts down. A bad resourceVersion is a 400 before the 200; a
  failure after it, an ERROR event.
- Bodies are JSON or YAML; kubectl's protobuf bodies are decoded for the kinds its typed
  `create` commands send (`apiserver.protobuf`). Responses are always JSON (clients decode by
  the response Content-Type). `fieldValidation` defaults to Warn (dropped fields come back as
  `Warning` headers, escaped and bounded like upstream's), kubectl sends Strict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import ClientSession, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from podnet.api import openapi, tables
from podnet.api.errors import (
    ApiError,
    Cause,
    bad_request,
    internal,
    invalid,
    method_not_allowed,
    method_not_supported,
    service_unavailable,
    too_large,
    unauthorized,
    unsupported_media_type,
)
from podnet.api.resources import RESOURCES, Resource
from podnet.api.schema import INT64, check_types
from podnet.api.selectors import FieldSelector, LabelSelector
from podnet.api.streamedbody import streamed_response
from podnet.apiserver import discovery, eviction, managed
from podnet.apiserver.auth import bootstrap as bootstrap_auth
from podnet.apiserver.auth import node as node_auth
from podnet.apiserver.auth import reviews
from podnet.apiserver.auth.attributes import Attributes, nonresource_verb, resource_verb
from podnet.apiserver.auth.chain import Auth
from podnet.apiserver.auth.user import BOOTSTRAPPERS, UserInfo
from podnet.apiserver.decoding import MAX_BODY_BYTES, parse_document
from podnet.apiserver.registry import (
    DeleteOptions,
    ListOptions,
    Registry,
    parse_resource_version,
)
from podnet.apiserver.streams import routes as streams
from podnet.store.base import StoreUnavailable, ValueTooLarge

log = logging.getLogger(__name__)

Obj = dict[str, Any]

# cluster-info: `podnet join` reads it before it trusts the CA, so before it sends its token
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version", bootstrap_auth.CLUSTER_INFO_PATH)
DEFAULT_WATCH_TIMEOUT = 1800.0  # upstream --min-request-timeout; randomised like upstream

_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "apply",
}

_INT64_TEXT = re.compile(r"[+-]?[0-9]{1,19}")

STATE_KEY: web.AppKey[ServerState] = web.AppKey("podnet_state")
USER_KEY: web.RequestKey[UserInfo] = web.RequestKey("podnet_user", UserInfo)


@dataclass(slots=True)
class ServerState:
    registry: Registry
    auth: Auth
    server_address: str  # host:port advertised in /api
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    session: ClientSession | None = None  # for the exec/log relay to node agents
    agent_tls: ssl.SSLContext | None = None  # ... over TLS (`streams.dial.kubelet_client_tls`)
    # issues a joining node's kubelet serving certificate (`credentials.issue_kubelet_serving`)
    kubelet_serving: bootstrap_auth.ServingIssuer | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed resource URL."""

    res: Resource
    namespace: str | None
    name: str | None
    subresource: str | None
    legacy_watch: bool


def status_response(error: ApiError) -> web.Response:
    retry_after = (error.details or {}).get("retryAfterSeconds")
    return web.Response(
        status=error.code,
        body=error.status_bytes(),
        content_type="application/json",
        headers={"Retry-After": str(retry_after)} if retry_after else None,
    )


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(obj, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def encoded_response(body: bytes, status: int = 200) -> web.Response:
    """An answer whose JSON is already made (`Registry.update`/`patch` with `encoded`)."""
    return web.Response(status=status, body=body, content_type="application/json")


# -- middlewares -----------------------------------------------------------------------------


_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
}


def _as_api_error(exc: Exception, request: web.Request) -> ApiError:
    """Any failure of a request as the Status it answers with (logging what is unexpected)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StoreUnavailable):
        log.error("store unavailable: %s", exc)
        return service_unavailable(str(exc))
    if isinstance(exc, ValueTooLarge):
        return too_large(str(exc))
    if isinstance(exc, web.HTTPException):  # raised by aiohttp itself (e.g. a body too large)
        return ApiError(exc.status, _REASONS.get(exc.status, "BadRequest"), exc.text or exc.reason)
    log.error("internal error serving %s %s", request.method, request.path_qs[:512], exc_info=exc)
    return internal(f"{type(exc).__name__}: {exc}")


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.monotonic()
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        return response
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        response = status_response(_as_api_error(exc, request))
        return response
    finally:
        if log.isEnabledFor(logging.DEBUG):
            code = response.status if response is not None else "-"
            log.debug(
                "%s %s -> %s in %.1f ms",
                request.method,
                request.path_qs[:512],
                code,
                (time.monotonic() - started) * 1000,
            )


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    header = request.headers.get("Authorization", "")
    if not header and not any(
        request.path == p or request.path.startswith(p + "/") for p in PUBLIC_PATHS
    ):
        raise unauthorized()
    request[USER_KEY] = await state.auth.authenticate(header)
    return await handler(request)


def user_of(request: web.Request) -> UserInfo:
    return request[USER_KEY]


async def authorize_path(request: web.Request, state: ServerState) -> None:
    verb = nonresource_verb(request.method)
    await state.auth.authorize(Attributes(user_of(request), verb, False, path=request.path))


async def authorize_resource(
    request: web.Request, state: ServerState, target: Target, watch: bool
) -> Attributes:
    res = target.res
    verb = resource_verb(request.method, target.name is not None and not watch, watch)
    attrs = Attributes(
        user_of(request),
        verb,
        True,
        target.namespace or "",
        res.group,
        res.version,
        res.plural,
        target.subresource or "",
        target.name or "",
    )
    await state.auth.authorize(attrs)
    return attrs


# -- request decoding ------------------------------------------------------------------------


async def read_body(request: web.Request) -> bytes:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise unsupported_media_type(
            f"request bodies with Content-Encoding {encoding!r} are not supported; send the "
            "body uncompressed (kubectl and client-go never compress request bodies)"
        )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large(
            f"the request body is {request.content_length} bytes; the limit is "
            f"{MAX_BODY_BYTES} bytes (3 MiB)"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        # read(n) returns what has arrived so far, not n bytes: read until EOF, up to the limit
        while chunk := await request.content.read(MAX_BODY_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_large(
                    f"the request body exceeds the limit of {MAX_BODY_BYTES} bytes (3 MiB)"
                )
    except (HttpProcessingError, RequestPayloadError, ConnectionError) as exc:  # bad framing,
        # a body cut short, the client gone: a 400 (which a vanished client never reads)
        raise bad_request(f"the request body could not be read: {exc}") from None
    return b"".join(chunks)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1")


def _int_param(request: web.Request, name: str) -> int | None:
    """An int64 query parameter (`limit`, `timeoutSeconds`, `gracePeriodSeconds`), as upstream
    parses them (strconv.ParseInt); anything else is a 400."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return parse_int64(name, raw)


def parse_int64(name: str, raw: str) -> int:
    if _INT64_TEXT.fullmatch(raw) is None or not INT64[0] <= int(raw) <= INT64[1]:
        raise bad_request(f"invalid value for {name}: {raw[:64]!r} is not a 64-bit integer")
    return int(raw)


def list_options(request: web.Request, res: Resource, name: str | None = None) -> ListOptions:
    label_text = request.query.get("labelSelector", "")
    field_text = request.query.get("fieldSelector", "")
    if name is not None:  # legacy /watch/<plural>/<name>
        field_text = f"metadata.name={name}" + (f",{field_text}" if field_text else "")
    return ListOptions(
        label_selector=LabelSelector.parse(label_text) if label_text else None,
        field_selector=FieldSelector.parse(field_text, res) if field_text else None,
        limit=_int_param(request, "limit"),
        continue_token=request.query.get("continue") or None,
    )


async def delete_options(request: web.Request) -> DeleteOptions:
    """The DELETE body, with the query parameters filling in what it leaves out."""
    body: Any = {}
    data = await read_body(request)
    if data.strip():
        body = parse_document(data, request.content_type)
        if not isinstance(body, dict):
            raise bad_request("the DeleteOptions body must be a JSON object")
        check_types("DeleteOptions", "v1", body)
    merged = dict(body)
    if merged.get("gracePeriodSeconds") is None:
        merged["gracePeriodSeconds"] = _int_param(request, "gracePeriodSeconds")
    if not merged.get("propagationPolicy"):
        merged["propagationPolicy"] = request.query.get("propagationPolicy")
    if merged.get("orphanDependents") is None and "orphanDependents" in request.query:
        merged["orphanDependents"] = _flag(request, "orphanDependents")
    if not merged.get("dryRun"):
        merged["dryRun"] = request.query.getall("dryRun", [])
    return DeleteOptions.from_json(merged)


def _field_validation(request: web.Request) -> str:
    # upstream's default when the parameter is absent is Warn; kubectl sends Strict
    return request.query.get("fieldValidation") or "Warn"


MAX_WARNINGS = 20
MAX_WARNING_CHARS = 256


def _with_warnings(response: web.Response, warnings: list[str]) -> web.Response:
    """`Warning: 299 - "text"` headers. The text is quoted and escaped as Go's strconv.Quote
    does (a field name may hold a newline or a quote) and, like upstream's warning recorder,
    bounded in length and number."""
    for warning in warnings[:MAX_WARNINGS]:
        if len(warning) > MAX_WARNING_CHARS:
            warning = warning[: MAX_WARNING_CHARS - 3] + "..."
        response.headers.add("Warning", f"299 - {json.dumps(warning)}")
    if len(warnings) > MAX_WARNINGS:
        more = len(warnings) - MAX_WARNINGS
        response.headers.add("Warning", f'299 - "{more} more warnings were not sent"')
    return response


def _dry_run(request: web.Request) -> bool:
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise bad_request(f'invalid dryRun value {value!r}: the only supported value is "All"')
    return bool(values)


# -- routing ---------------------------------------------------------------------------------


def split_path(raw_path: str) -> list[str]:
    path = raw_path.split("?", 1)[0]
    parts = [unquote(p) for p in path.split("/") if p]
    for part in parts:
        if "/" in part or part in (".", ".."):
            raise bad_request(f"invalid path segment {part!r}")
    return parts


_BY_GROUP_VERSION: dict[str, dict[str, Resource]] = {}
for _res in RESOURCES:
    _BY_GROUP_VERSION.setdefault(_res.group_version, {})[_res.plural] = _res
del _res


def parse_target(group_version: str, rest: list[str]) -> Target | None:
    # the resources are fixed: one dict per group version, not one made per request
    resources = _BY_GROUP_VERSION.get(group_version, {})
    legacy_watch = False
    if rest and rest[0] == "watch":
        legacy_watch, rest = True, rest[1:]
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in resources:
        namespace, rest = rest[1], rest[2:]
    if not rest or rest[0] not in resources or len(rest) > 3:
        return None
    res = resources[rest[0]]
    if res.namespaced is False and namespace is not None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and res.subresource(sub) is None:
        return None
    return Target(res, namespace, name, sub, legacy_watch)


async def dispatch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    parts = split_path(request.raw_path)
    head = parts[0] if parts else ""
    if not (head in ("api", "apis") and len(parts) > (2 if head == "api" else 3)):
        await authorize_path(request, state)  # not a resource: discovery, health, version
    if head in ("healthz", "livez", "readyz"):
        if head == "readyz":
            try:
                await asyncio.wait_for(state.registry.store.current_revision(), 5)
            except (StoreUnavailable, TimeoutError) as exc:
                text = (
                    f"[-]etcd failed: store unavailable: {exc or 'timed out'}\nreadyz check failed"
                )
                return web.Response(status=500, text=text, content_type="text/plain")
        return web.Response(text="ok", content_type="text/plain")
    if (request.method != "GET" and head in ("version", "openapi")) or (
        head in ("api", "apis")
        and len(parts) <= (2 if head == "api" else 3)
        and request.method != "GET"
    ):
        raise method_not_allowed(f"{request.method} is not allowed on {request.path}")
    if parts == ["version"]:
        return json_response(discovery.version_info())
    if request.path == bootstrap_auth.CREDENTIAL_PATH:  # podnet join's exchange (auth/bootstrap)
        if request.method != "POST":
            raise method_not_allowed(f"{request.method} is not allowed on {request.path}")
        body = parse_document(await read_body(request), "application/json")
        user = user_of(request)
        existing = None
        if BOOTSTRAPPERS in user.groups:  # nothing read for anyone else
            name = bootstrap_auth.requested_node_name(body)
            existing = await bootstrap_auth.node_named(state.registry, name)
        answer = bootstrap_auth.issue_node_credential(
            user, body, state.auth.signer, state.kubelet_serving, existing
        )
        return json_response(answer, 201)
    if head == "openapi":
        return openapi_document(parts, request.headers.get("Accept", ""))
    if parts == ["api"]:
        return json_response(discovery.api_versions(state.server_address))
    if parts == ["apis"]:
        return json_response(discovery.api_group_list())
    if head == "api" and len(parts) >= 2:
        group_version, rest = parts[1], parts[2:]
    elif head == "apis" and len(parts) == 2:
        group = discovery.api_group(parts[1])
        if group is None:
            raise not_found_path(request)
        return json_response(group)
    elif head == "apis" and len(parts) >= 3:
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise not_found_path(request)
    if not rest:
        doc = discovery.api_resource_list(group_version)
        if doc is None:
            raise not_found_path(request)
        return json_response(doc)
    target = parse_target(group_version, rest)
    if target is None:
        raise not_found_path(request)
    return await serve_resource(request, state, target)


def not_found_path(request: web.Request) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        "the server could not find the requested resource",
        {
            "causes": [
                {
                    "reason": "UnexpectedServerResponse",
                    "message": f"404 page not found: {request.path}",
                }
            ]
        },
    )


def openapi_document(parts: list[str], accept: str = "") -> web.Response:
    if parts == ["openapi", "v2"]:
        if "protobuf" in accept:
            return web.Response(body=openapi.v2_protobuf(), content_type=openapi.V2_PROTOBUF_TYPE)
        return json_response(openapi.v2_document())
    if parts == ["openapi", "v3"]:
        return json_response(openapi.v3_index())
    if len(parts) >= 3 and parts[1] == "v3":
        path = "/".join(parts[2:])  # "api/v1" or "apis/apps/v1", the index's keys
        doc = openapi.v3_document(path)
        if doc is not None:
            return json_response(doc)
    raise ApiError(
        404,
        "NotFound",
        f"the OpenAPI document {'/'.join(parts)} does not exist; "
        "podnet serves /openapi/v3 and a bare /openapi/v2",
    )


# -- resource handlers -----------------------------------------------------------------------


async def serve_resource(
    request: web.Request, state: ServerState, target: Target
) -> web.StreamResponse:
    registry = state.registry
    res, ns, name, sub = target.res, target.namespace, target.name, target.subresource
    method = request.method
    watching = target.legacy_watch or (method == "GET" and name is None and _flag(request, "watch"))
    attrs = await authorize_resource(request, state, target, watching)
    if res.plural in reviews.PLURALS:
        if method != "POST" or name is not None:
            raise method_not_allowed(f"{res.plural} only supports POST (create)")
        body = parse_document(await read_body(request), request.content_type)
        return json_response(await reviews.serve(state.auth, attrs.user, res.plural, ns, body), 201)
    if sub == "token" and res.plural == "serviceaccounts" and ns is not None and name is not None:
        if method != "POST":
            raise method_not_allowed("serviceaccounts/token only supports POST (create)")
        body = parse_document(await read_body(request), request.content_type)
        issued = await reviews.token_request(
            state.auth, attrs.user, ns, name, body, registry.clock()
        )
        return json_response(issued, 201)
    if watching:
        if method != "GET" or sub is not None:
            raise method_not_allowed("watch is only served with GET on a collection")
        return await serve_watch(request, state, res, ns, name)
    if sub in streams.SUBRESOURCES and res.plural == "pods":
        if name is None or ns is None:
            raise not_found_path(request)
        return await streams.serve(request, registry, state.session, state.agent_tls, sub, ns, name)
    if res.namespaced and ns is None and method != "GET":
        raise not_found_path(request)

    if name is None:
        if method == "GET":
            selection = list_options(request, res)
            if selection == ListOptions() and not _table_wanted(request):
                return await stream_list(request, registry, res, ns)
            listed = await registry.list(res, ns, selection)
            return respond(request, registry, res, listed, is_list=True)
        if method == "POST":
            body = parse_document(await read_body(request), request.content_type)
            node_auth.admit_create(attrs.user, res.plural, body)
            warnings: list[str] = []
            created = await registry.create(
                res,
                ns,
                body,
                dry_run=_dry_run(request),
                field_validation=_field_validation(request),
                warnings=warnings,
                manager=_manager(request),
            )
            return _with_warnings(json_response(created, 201), warnings)
        if method == "DELETE":
            if "deletecollection" not in res.verbs:
                raise method_not_supported(res.plural, "deletecollection", res.group)
            opts = await delete_options(request)
            deleted = await registry.delete_collection(res, ns, list_options(request, res), opts)
            return json_response(deleted)
        raise method_not_allowed(f"{method} is not allowed on a {res.plural} collection")

    if sub == "binding":
        if method != "POST" or ns is None:
            raise method_not_allowed("pods/binding only supports POST")
        body = parse_document(await read_body(request), request.content_type)
        return json_response(await registry.bind(ns, name, body), 201)
    if sub == "eviction":
        if method != "POST" or ns is None:
            raise method_not_allowed("pods/eviction only supports POST")
        body = parse_document(await read_body(request), request.content_type)
        return json_response(await eviction.evict(registry, ns, name, body), 201)
    if sub == "scale":
        if method == "GET":
            return json_response(await registry.get_scale(res, ns, name))
        if method == "PUT":
            body = parse_document(await read_body(request), request.content_type)
            return json_response(
                await registry.update_scale(res, ns, name, body, _manager(request))
            )
        if method == "PATCH":
            patch_type = _patch_type(request)
            body = parse_document(await read_body(request), "json")
            scaled = await registry.patch_scale(res, ns, name, patch_type, body, _manager(request))
            return json_response(scaled)
        raise method_not_allowed(f"{method} is not allowed on {res.plural}/scale")

    if sub == "finalize" and method != "PUT":
        raise method_not_allowed(f"{method} is not allowed on namespaces/finalize: PUT a Namespace")
    if method == "GET":
        obj = await registry.get(res, ns, name)
        return respond(request, registry, res, obj, is_list=False)
    if method == "PUT":
        body = parse_document(await read_body(request), request.content_type)
        warnings = []
        updated = await registry.update(
            res,
            ns,
            name,
            body,
            sub,
            dry_run=_dry_run(request),
            field_validation=_field_validation(request),
            warnings=warnings,
            manager=_manager(request),
            encoded=True,
        )
        return _with_warnings(encoded_response(updated), warnings)
    if method == "PATCH":
        patch_type = _patch_type(request)
        force = _force(request, patch_type)
        body = parse_document(await read_body(request), request.content_type)
        warnings = []
        patched = await registry.patch(
            res,
            ns,
            name,
            patch_type,
            body,
            sub,
            dry_run=_dry_run(request),
            field_validation=_field_validation(request),
            warnings=warnings,
            manager=_manager(request) if patch_type != "apply" else _apply_manager(request),
            force=force,
            encoded=True,
        )
        return _with_warnings(encoded_response(patched), warnings)
    if method == "DELETE" and sub is None:
        opts = await delete_options(request)
        return json_response(await registry.delete(res, ns, name, opts))
    raise method_not_allowed(f"{method} is not allowed on {request.path}")


def _patch_type(request: web.Request) -> str:
    content_type = request.content_type
    patch_type = _PATCH_TYPES.get(content_type)
    if patch_type is None:
        raise unsupported_media_type(
            f"the body of the request was in an unknown format ({content_type!r}); PATCH accepts "
            "application/merge-patch+json, application/strategic-merge-patch+json, "
            "application/json-patch+json and application/apply-patch+yaml"
        )
    if content_type == "application/apply-patch+cbor":
        raise unsupported_media_type(
            "the body of the request was in an unknown format (application/apply-patch+cbor); "
            "send application/apply-patch+yaml"
        )
    return patch_type


def _manager(request: web.Request) -> str:
    """The field manager of a write: `fieldManager`, else the User-Agent's product."""
    return managed.manager_name(
        request.query.get("fieldManager"), request.headers.get("User-Agent", "")
    )


def _apply_manager(request: web.Request) -> str:
    """An apply names its manager (no User-Agent fallback: upstream refuses it without)."""
    given = request.query.get("fieldManager", "")
    return managed.manager_name(given, "") if given else ""


def _force(request: web.Request, patch_type: str) -> bool:
    text = request.query.get("force")
    if text is None:
        return False
    if patch_type != "apply":
        raise invalid(
            "PatchOptions",
            "",
            [
                Cause(
                    "force",
                    "FieldValueForbidden",
                    "Forbidden: may not be specified for non-apply patch",
                )
            ],
            "meta.k8s.io",
        )
    # Go's strconv.ParseBool, as upstream decodes the parameter
    if text not in (
        "1",
        "t",
        "T",
        "TRUE",
        "true",
        "True",
        "0",
        "f",
        "F",
        "FALSE",
        "false",
        "False",
    ):
        raise bad_request(f"invalid force value {text!r}: use true or false")
    return text in ("1", "t", "T", "TRUE", "true", "True")


def _table_wanted(request: web.Request) -> bool:
    return bool(tables.is_table_request(request.headers.get("Accept", "")))


def respond(
    request: web.Request, registry: Registry, res: Resource, obj: Obj, is_list: bool
) -> web.Response:
    if not _table_wanted(request):
        return json_response(obj)
    include = request.query.get("includeObject") or "Metadata"
    items = obj["items"] if is_list else [obj]
    table = tables.to_table(res, items, registry.clock(), include)
    if is_list:
        table["metadata"] = dict(obj["metadata"])
    else:
        table["metadata"] = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
    return json_response(table)


MAX_WATCH_SECONDS = 2**31 - 1  # an int64 timeoutSeconds, clamped so every event loop's timers fit


async def serve_watch(
    request: web.Request, state: ServerState, res: Resource, ns: str | None, name: str | None
) -> web.StreamResponse:
    if request.query.get("continue"):
        raise bad_request("continue is not allowed with watch=true")
    opts = list_options(request, res, name)
    timeout = _int_param(request, "timeoutSeconds")
    effective = (
        float(min(timeout, MAX_WATCH_SECONDS))
        if timeout and timeout > 0
        else (DEFAULT_WATCH_TIMEOUT * (1 + random.random()))  # noqa: S311 - jitter, not security
    )
    resource_version = request.query.get("resourceVersion")
    if resource_version and resource_version != "0":
        parse_resource_version(resource_version)  # a bad one is a 400 before the 200 is sent
    wants_table = _table_wanted(request)
    include = request.query.get("includeObject") or "Metadata"
    events = state.registry.watch_stream(
        res,
        ns,
        resource_version,
        opts,
        bookmarks=_flag(request, "allowWatchBookmarks"),
        duration=effective,
        stop=state.shutdown,
    )
    response = streamed_response(
        request, {"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
    )
    await response.prepare(request)
    try:
        async with contextlib.aclosing(events):
            try:
                async for item in events:
                    if wants_table and item.type in ("ADDED", "MODIFIED", "DELETED"):
                        obj = item.as_dict()["object"]
                        table = tables.to_table(res, [obj], state.registry.clock(), include)
                        table["metadata"] = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                        event = {"type": item.type, "object": table}
                        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
                    else:
                        line = item.line()  # the cached bytes, no JSON round trip per watcher
                    await response.write(line)
            except (ConnectionResetError, ConnectionError):
                raise
            except Exception as exc:  # after the 200, a failure is an ERROR event (upstream)
                error = _as_api_error(exc, request)
                await response.write(
                    json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n"
                )
    except (ConnectionResetError, ConnectionError):
        return response
    with contextlib.suppress(ConnectionResetError, ConnectionError):
        await response.write_eof()
    return response


# -- the HTTP server: every error a Status, even the HTTP parser's -----------------------------

# upstream (Go net/http, MaxHeaderBytes = 1 MiB) accepts request lines and headers up to 1 MiB
# in all; aiohttp's defaults (8190 bytes per line) refused long selectors with plain text
MAX_REQUEST_LINE_BYTES = 1024 * 1024
MAX_HEADER_FIELD_BYTES = 64 * 1024
MAX_HEADERS = 128
LINGERING_SECONDS = 1.0


class _StatusRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors (a request line, header or body
    framing the HTTP parser refuses; a failure outside the middlewares) with a Status."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp's: the connection is broken
            raise ConnectionError("the response is already being sent; cannot send an error")
        if status >= 500:
            log.error("HTTP error %d serving a request", status, exc_info=exc)
            error = internal(f"{type(exc).__name__}: {exc}") if exc else internal(str(message))
        elif isinstance(exc, LineTooLong):
            log.info("refused a request: %s", exc.message)
            error = ApiError(
                431,
                "RequestHeaderFieldsTooLarge",
                f"the request line or a header is too long: {exc.message}; the limits are "
                f"{MAX_REQUEST_LINE_BYTES} bytes for the request line and "
                f"{MAX_HEADER_FIELD_BYTES} bytes per header",
            )
        else:
            detail = exc.message if isinstance(exc, HttpProcessingError) else message or ""
            log.info("refused a malformed request: %s", detail)
            error = ApiError(status, "BadRequest", f"malformed HTTP request: {detail}")
        response = status_response(error)
        response.force_close()
        return response


class _StatusServer(web.Server):
    def __call__(self) -> RequestHandler:
        # aiohttp's Server.__call__, with our handler class (kwargs are the handler's options)
        return _StatusRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """`web.AppRunner` for the API: HTTP parser limits like upstream's, request bodies never
    decompressed (`read_body` refuses a Content-Encoding), every error a Status."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(
            app,
            max_line_size=MAX_REQUEST_LINE_BYTES,
            max_field_size=MAX_HEADER_FIELD_BYTES,
            max_headers=MAX_HEADERS,
            auto_decompress=False,
            # after answering before a body was read whole (413, a refused Content-Encoding)
            # aiohttp reads and drops the rest so the client gets the answer, not a reset;
            # a client that vanishes meanwhile is noticed only when this ends, and shutdown
            # waits for it: keep it short (aiohttp's default is 10 s)
            lingering_time=LINGERING_SECONDS,
            # a request whose client is gone is cancelled, as upstream's request context is:
            # otherwise an abandoned watch lived (with its store subscription) until its
            # timeout, 30-60 minutes, and a client could pile them up without bound
            handler_cancellation=True,
            **kwargs,
        )

    async def _make_server(self) -> web.Server:
        # the documented extension point of BaseRunner; aiohttp has no option for the class
        # of connection handler, so the server the app built is rebuilt as a _StatusServer
        built = await super()._make_server()
        return _StatusServer(
            built.request_handler,
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **built._kwargs,
        )


async def stream_list(
    request: web.Request, registry: Registry, res: Resource, ns: str | None
) -> web.StreamResponse:
    """An unfiltered LIST, sent a store page at a time (`Registry.list_json_pieces`) as a
    streamed body (`api.streamedbody`), so its size (106 MB for 30,000 pods) is never in memory
    at once.
    The store's first page is read before the headers go out: a store that cannot answer is a
    Status as for any request. One that fails later (an etcd member lost mid-list) can only cut
    the response short; the client sees a truncated body and lists again."""
    pieces = registry.list_json_pieces(res, ns)
    async with contextlib.aclosing(pieces):
        first = await anext(pieces)
        response = streamed_response(request, {"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(first)
        del first
        async for piece in pieces:
            await response.write(piece)
        await response.write_eof()
    return response


def build_app(state: ServerState) -> web.Application:
    # the body limit is enforced by read_body (413 as a Status), so aiohttp's own is lifted
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES * 4
    )
    app[STATE_KEY] = state
    # [\s\S]: a decoded path may hold any character (a name with %0A must reach the API's own
    # 404, not the router's plain-text one)
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)
    return app
