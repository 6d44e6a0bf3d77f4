"""The OpenAPI v3 documents kubectl downloads before `create -f` and `apply -f`.

What belongs here: `v3_index()` (`GET /openapi/v3`), `v3_document(gv)` /
`v3_document_bytes(gv)` (`GET /openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`, ...), built from
the resource table so a new resource appears here by itself.

Why the documents look like this (peers.md §2.5, kubectl 1.32 `apply/patcher.go`, `explain`,
cli-runtime `query_param_verifier_v3.go`):
- `components.schemas` holds upstream's own schemas (`schema.upstream_schemas()`, generated from
  the 1.32 spec): every served kind with its descriptions, `required`, formats,
  `x-kubernetes-group-version-kind`, list types and map keys, patch strategies and merge keys.
  Each document carries the schemas its operations reach (a kind, its list, its subresources'
  kinds such as autoscaling/v1 Scale, and meta/v1 Status, DeleteOptions, Patch, WatchEvent).
  `kubectl explain` reads them; `kubectl apply` computes its strategic merge patch from the same
  patch metadata its compiled-in Go types carry, so nothing differs from a real server.
- Every PATCH operation carries `x-kubernetes-group-version-kind` and lists the `fieldValidation`
  query parameter, so kubectl's verifier chooses **server-side validation** (`--validate=strict`
  sends fieldValidation=Strict and the server answers `strict decoding error: unknown field`).
- Operations list the upstream media types, parameters and `x-kubernetes-action` values, and
  reference their kind's schema for bodies and answers.
- `/openapi/v2` is a bare gnostic protobuf document (`swagger: "2.0"`, `info`, no paths, no
  definitions): kubectl 1.27 and 1.28 fetch it for client-side validation and fail without it;
  with no definitions they find no schema for any kind and skip validating, and with no paths
  their fieldValidation verifier falls back to that (empty) client-side check. kubectl from
  1.29 reads v3 only.

Invariants: pure and deterministic; the `?hash=` in the index is the SHA-512 of the exact bytes
`v3_document_bytes` returns, so clients may cache by URL (upstream serves these with
`Cache-Control: public, immutable` when the hash matches).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from podnet.api.interface import Obj
from podnet.api.resources import GROUP_VERSIONS, Resource, Subresource, for_group_version
from podnet.api.schema import REF_PREFIX, schema_name, upstream_schemas

KUBERNETES_VERSION = "v1.32.0"

PATCH_MEDIA_TYPES = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_PATCH_SCHEMA = _META + "Patch"
_STATUS_SCHEMA = _META + "Status"
_META_SCHEMAS = (_STATUS_SCHEMA, _META + "DeleteOptions", _PATCH_SCHEMA, _META + "WatchEvent")


def _path_key(group_version: str) -> str:
    """`v1` → `api/v1`, `apps/v1` → `apis/apps/v1` (the index's keys)."""
    return f"apis/{group_version}" if "/" in group_version else f"api/{group_version}"


def _group_version(path_or_gv: str) -> str:
    text = path_or_gv.strip("/")
    if text.startswith("apis/"):
        return text[len("apis/") :]
    if text.startswith("api/"):
        return text[len("api/") :]
    return text


def _query(name: str, description: str) -> Obj:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "string", "uniqueItems": True},
    }


def _path_param(name: str, description: str) -> Obj:
    return {
        "name": name,
        "in": "path",
        "description": description,
        "required": True,
        "schema": {"type": "string", "uniqueItems": True},
    }


_PRETTY = _query("pretty", "If 'true', then the output is pretty printed.")
_DRY_RUN = _query(
    "dryRun",
    "When present, indicates that modifications should not be "
    "persisted. Valid values are: - All: all dry run stages will be "
    "processed",
)
_FIELD_MANAGER = _query(
    "fieldManager",
    "fieldManager is a name associated with the actor or entity that is making these changes.",
)
_FIELD_VALIDATION = _query(
    "fieldValidation",
    "fieldValidation instructs the server on how to handle objects in the request "
    "(POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn "
    "- Strict",
)
_FORCE = _query(
    "force",
    'Force is going to "force" Apply requests. It means user will '
    "re-acquire conflicting fields owned by other people.",
)
_LIST_PARAMS = [
    _query(
        "allowWatchBookmarks", 'allowWatchBookmarks requests watch events with type "BOOKMARK".'
    ),
    _query(
        "continue",
        "The continue option should be set when retrieving more results from the server.",
    ),
    _query(
        "fieldSelector",
        "A selector to restrict the list of returned objects by their "
        "fields. Defaults to everything.",
    ),
    _query(
        "labelSelector",
        "A selector to restrict the list of returned objects by their "
        "labels. Defaults to everything.",
    ),
    _query("limit", "limit is a maximum number of responses to return for a list call."),
    _query(
        "resourceVersion",
        "resourceVersion sets a constraint on what resource versions a request may be served from.",
    ),
    _query(
        "resourceVersionMatch",
        "resourceVersionMatch determines how resourceVersion is applied to list calls.",
    ),
    _query("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`."),
    _query("timeoutSeconds", "Timeout for the list/watch call."),
    _query(
        "watch",
        "Watch for changes to the described resources and return them as a stream "
        "of add, update, and remove notifications.",
    ),
]
_DELETE_PARAMS = [
    _DRY_RUN,
    _query("gracePeriodSeconds", "The duration in seconds before the object should be deleted."),
    _query("propagationPolicy", "Whether and how garbage collection will be performed."),
]


def _ref(name: str) -> Obj:
    return {"$ref": REF_PREFIX + name}


def _kind_schema(gvk: dict[str, str]) -> Obj:
    name = schema_name(gvk["group"], gvk["version"], gvk["kind"])
    return _ref(name) if name is not None else {"type": "object"}


def _json_response(schema: Obj, description: str = "OK") -> Obj:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(schema: Obj, *codes: str) -> Obj:
    named = {"200": "OK", "201": "Created", "202": "Accepted"}
    out: Obj = {code: _json_response(schema, named[code]) for code in codes}
    out["401"] = {"description": "Unauthorized"}
    return out


def _operation(
    action: str,
    op_id: str,
    tag: str,
    gvk: dict[str, str],
    parameters: list[Obj],
    responses: Obj,
    body: Obj | None = None,
) -> Obj:
    op: Obj = {
        "tags": [tag],
        "description": f"{action} {gvk['kind']}",
        "operationId": op_id,
        "parameters": parameters,
        "responses": responses,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": dict(gvk),
    }
    if body is not None:
        op["requestBody"] = body
    return op


def _object_body(gvk: dict[str, str]) -> Obj:
    return {"content": {"*/*": {"schema": _kind_schema(gvk)}}, "required": True}


def _patch_body() -> Obj:
    ref = _ref(_PATCH_SCHEMA)
    return {"content": {media: {"schema": ref} for media in PATCH_MEDIA_TYPES}, "required": True}


def _op_suffix(res: Resource, sub: Subresource | None) -> str:
    kind = res.kind + (sub.name.capitalize() if sub else "")
    return ("Namespaced" if res.namespaced else "") + kind


def _tag(res: Resource) -> str:
    group = res.group.split(".")[0] if res.group else "core"
    return f"{group}_{res.version}"


def _gvk(res: Resource, sub: Subresource | None = None) -> dict[str, str]:
    if sub is not None and sub.group:
        return {"group": sub.group, "version": sub.version or res.version, "kind": sub.kind}
    return {"group": res.group, "version": res.version, "kind": res.kind}


def _resource_paths(res: Resource) -> dict[str, Obj]:
    root = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
    ns_part = "/namespaces/{namespace}" if res.namespaced else ""
    collection = f"{root}{ns_part}/{res.plural}"
    item = f"{collection}/{{name}}"
    path_params = (
        [_path_param("namespace", "object name and auth scope, such as for teams and projects")]
        if res.namespaced
        else []
    )
    name_param = _path_param("name", f"name of the {res.kind}")
    tag = _tag(res)
    version = res.version.capitalize()
    group = "".join(p.capitalize() for p in res.group.split(".")[0:1]) if res.group else "Core"
    prefix = f"{group}{version}"
    gvk = _gvk(res)
    one = _kind_schema(gvk)
    many = _kind_schema({**gvk, "kind": res.kind + "List"})
    status = _ref(_STATUS_SCHEMA)
    paths: dict[str, Obj] = {}
    coll: Obj = {"parameters": [*path_params, _PRETTY]}
    if "list" in res.verbs:
        coll["get"] = _operation(
            "list",
            f"list{prefix}{_op_suffix(res, None)}",
            tag,
            gvk,
            list(_LIST_PARAMS),
            _responses(many, "200"),
        )
    if "create" in res.verbs:
        coll["post"] = _operation(
            "post",
            f"create{prefix}{_op_suffix(res, None)}",
            tag,
            gvk,
            [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
            _responses(one, "200", "201", "202"),
            _object_body(gvk),
        )
    if "deletecollection" in res.verbs:
        coll["delete"] = _operation(
            "deletecollection",
            f"deleteCollection{prefix}{_op_suffix(res, None)}",
            tag,
            gvk,
            [*_DELETE_PARAMS, *_LIST_PARAMS],
            _responses(status, "200"),
        )
    paths[collection] = coll
    paths[item] = _item_operations(res, None, prefix, tag, [name_param, *path_params, _PRETTY])
    for sub in res.subresources:
        if "patch" not in sub.verbs and "update" not in sub.verbs:
            continue  # log/exec/binding are not objects kubectl validates or patches
        paths[f"{item}/{sub.name}"] = _item_operations(
            res, sub, prefix, tag, [name_param, *path_params, _PRETTY]
        )
    return paths


def _item_operations(
    res: Resource, sub: Subresource | None, prefix: str, tag: str, path_params: list[Obj]
) -> Obj:
    verbs = sub.verbs if sub else res.verbs
    gvk = _gvk(res, sub)
    one = _kind_schema(gvk)
    suffix = _op_suffix(res, sub)
    ops: Obj = {"parameters": path_params}
    if "get" in verbs:
        ops["get"] = _operation(
            "get", f"read{prefix}{suffix}", tag, gvk, [], _responses(one, "200")
        )
    if "update" in verbs:
        ops["put"] = _operation(
            "put",
            f"replace{prefix}{suffix}",
            tag,
            gvk,
            [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
            _responses(one, "200", "201"),
            _object_body(gvk),
        )
    if "patch" in verbs:
        ops["patch"] = _operation(
            "patch",
            f"patch{prefix}{suffix}",
            tag,
            gvk,
            [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION, _FORCE],
            _responses(one, "200", "201"),
            _patch_body(),
        )
    if "delete" in verbs and sub is None:
        ops["delete"] = _operation(
            "delete",
            f"delete{prefix}{suffix}",
            tag,
            gvk,
            list(_DELETE_PARAMS),
            _responses(one, "200", "202"),
            {"content": {"*/*": {"schema": _ref(_META + "DeleteOptions")}}},
        )
    return ops


def _components(paths: Obj) -> Obj:
    """upstream's schemas the operations reach, with everything they reference in turn."""
    schemas = upstream_schemas()
    wanted = [*_META_SCHEMAS, *sorted(_references(paths))]
    out: Obj = {}
    while wanted:
        name = wanted.pop()
        if name in out:
            continue
        out[name] = schemas[name]
        wanted.extend(sorted(_references(schemas[name]) - set(out)))
    return {"schemas": dict(sorted(out.items()))}


def _references(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.add(ref[len(REF_PREFIX) :])
        for value in node.values():
            found |= _references(value)
    elif isinstance(node, list):
        for value in node:
            found |= _references(value)
    return found


@functools.cache
def _document(group_version: str) -> bytes | None:
    resources = for_group_version(group_version)
    if not resources:
        return None
    paths: dict[str, Any] = {}
    for res in resources:
        paths.update(_resource_paths(res))
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": _components(paths),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def v3_document_bytes(group_version: str) -> bytes | None:
    """The serialized document for `v1`/`apps/v1` (or `api/v1`/`apis/apps/v1`); None if podnet
    does not serve that group-version (→ 404)."""
    return _document(_group_version(group_version))


def v3_document(group_version: str) -> Obj | None:
    raw = v3_document_bytes(group_version)
    return None if raw is None else dict(json.loads(raw))


def v3_hash(group_version: str) -> str | None:
    raw = v3_document_bytes(group_version)
    return None if raw is None else hashlib.sha512(raw).hexdigest().upper()


@functools.cache
def _index() -> Obj:
    paths: Obj = {}
    for gv in GROUP_VERSIONS:
        paths[_path_key(gv)] = {
            "serverRelativeURL": f"/openapi/v3/{_path_key(gv)}?hash={v3_hash(gv)}",
        }
    return {"paths": paths}


def v3_index() -> Obj:
    """`GET /openapi/v3`: one entry per served group-version, with a content hash."""
    return copy.deepcopy(_index())


V2_PROTOBUF_TYPE = (
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"  # no "@": Go parses it
)


def _length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (string, bytes or message)."""
    tag, length, out = (field << 3) | 2, len(payload), bytearray()
    for value in (tag, length):
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def v2_document() -> Obj:
    """`GET /openapi/v2` as JSON: the same bare document as `v2_protobuf`."""
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION}}


def v2_protobuf() -> bytes:
    """`GET /openapi/v2` in gnostic's `openapi_v2.Document` protobuf (field 1 `swagger`,
    field 2 `info` with 1 `title` and 2 `version`)."""
    info = _length_delimited(1, b"Kubernetes") + _length_delimited(2, KUBERNETES_VERSION.encode())
    return _length_delimited(1, b"2.0") + _length_delimited(2, info)
