"""The three PATCH flavours the Kubernetes API accepts, applied to plain JSON objects.

What belongs here:
- `apply_merge_patch` — RFC 7386 JSON merge patch (`application/merge-patch+json`);
  `merge_patch_sharing`, the same merge copying only what the patch reaches.
- `apply_json_patch` — RFC 6902 JSON patch (`application/json-patch+json`) via `jsonpatch`.
- `apply_strategic_merge_patch` — upstream strategic merge patch
  (`application/strategic-merge-patch+json`, apimachinery `util/strategicpatch`), which
  `kubectl apply` (client-side, 3-way computed by kubectl), `kubectl edit`, `kubectl set image`
  and `kubectl label` send. Its list semantics come from Go struct tags; `PATCH_META` below
  transcribes the tags of the fields podnet serves (`patchStrategy`/`patchMergeKey`).

Invariants:
- Pure: inputs are never mutated; every function returns a new object (`merge_patch_sharing`'s
  shares the target's parts the patch does not reach, as its docstring says).
- Malformed patches raise `ApiError`: 400 for a patch that cannot be read or used (wrong JSON
  type, unknown directive, list item without its merge key), 422 for a JSON patch whose
  operation does not apply to the object (missing path, failed `test`).
- Fields without transcribed metadata behave as upstream's "no tag" fields: objects merge
  key by key, lists are replaced atomically.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from podnet.api import errors
from podnet.api.interface import Obj

# --- RFC 7386 -------------------------------------------------------------------------------


def apply_merge_patch(target: Any, patch: Any, in_place: bool = False) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces.

    `in_place`: the caller owns `target` and no longer needs it as it was, so an object
    `target` is merged where it is (and returned) instead of being copied first. The patch's
    values are copied either way: the result never shares anything with `patch`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = {} if not isinstance(target, dict) else target if in_place else copy.deepcopy(target)
    _merge_into(result, patch)
    return result


def merge_patch_sharing(target: Any, patch: Any) -> Any:
    """`apply_merge_patch(target, patch)` without copying `target` whole: every object the
    patch reaches is a new dict (its members that the patch names replaced), every part of
    `target` it does not reach is shared as it is. So `target` is never written into, but the
    caller must not write into the result's unpatched parts while `target` is in use (the
    registry's status writes: only the patched `status` survives `prepare_for_status_update`).
    The patch's values are copied: the result never shares anything with `patch`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            result[k] = merge_patch_sharing(result.get(k), v)
        else:
            result[k] = copy.deepcopy(v)
    return result


def _merge_into(result: Obj, patch: Obj) -> None:
    """Merge `patch` into `result` in place; `result` is already the caller's own copy, so a
    nested object is merged where it is instead of being copied again at every level."""
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            child = result.get(k)
            if not isinstance(child, dict):
                child = result[k] = {}
            _merge_into(child, v)
        else:
            result[k] = copy.deepcopy(v)


# --- RFC 6902 -------------------------------------------------------------------------------


def apply_json_patch(target: Obj, ops: Any) -> Obj:
    """Apply a JSON patch (a list of operations). Bad documents → 400, inapplicable ops → 422,
    with upstream's messages (evanphx/json-patch's), which name the operation and the path:
    never the library's, which quote the object's contents in Python syntax."""
    if not isinstance(ops, list):
        raise errors.bad_request(
            "invalid JSON patch: the body must be a JSON array of operations, e.g. "
            '[{"op": "replace", "path": "/spec/replicas", "value": 3}]'
        )
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise errors.bad_request(
                f'invalid JSON patch: operation {i} must be an object with an "op" string'
            )
        for key in ("path", "from"):
            pointer = op.get(key)
            if pointer is not None and not (
                isinstance(pointer, str) and (pointer == "" or pointer.startswith("/"))
            ):
                raise errors.bad_request(
                    f"invalid JSON patch: operation {i}: {key} {json.dumps(pointer)} must be a "
                    'JSON pointer ("" or starting with "/")'
                )
    result: Any = copy.deepcopy(target)
    for op in ops:
        try:
            result = jsonpatch.JsonPatch([op]).apply(result, in_place=True)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise errors.ApiError(
                422, "Invalid", f"testing value {op.get('path')} failed: test failed"
            ) from exc
        except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException) as exc:
            raise errors.ApiError(422, "Invalid", _not_applicable(result, op)) from exc
        except (jsonpatch.InvalidJsonPatch, TypeError, KeyError) as exc:
            raise errors.bad_request(f"invalid JSON patch: {exc}") from exc
    if not isinstance(result, dict):
        raise errors.ApiError(
            422, "Invalid", "JSON patch must leave a JSON object at the document root"
        )
    return dict(result)


def _resolves(doc: Any, pointer: str) -> bool:
    try:
        jsonpointer.resolve_pointer(doc, pointer)
    except (jsonpointer.JsonPointerException, TypeError, KeyError, IndexError):
        return False
    return True


def _not_applicable(doc: Any, op: Obj) -> str:
    """Why one operation does not apply, as upstream words it: the missing path, or the
    missing `from` of a move or copy."""
    name, path, source = op.get("op"), op.get("path"), op.get("from")
    if name in ("move", "copy") and isinstance(source, str) and not _resolves(doc, source):
        return f"{name} operation does not apply: doc is missing from path: {source}"
    return f'{name} operation does not apply: doc is missing path: "{path}"'


# --- strategic merge patch: field metadata ------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldMeta:
    """Struct-tag metadata of one field: `strategy` as in `patchStrategy` ("merge",
    "retainKeys", "merge,retainKeys", "replace" or "" for none), the list's `merge_key`, and the
    metadata of the field's own fields (for objects, or for the items of a list of objects)."""

    strategy: str = ""
    merge_key: str = ""
    fields: Mapping[str, FieldMeta] = field(default_factory=dict)

    @property
    def merges_lists(self) -> bool:
        return "merge" in self.strategy.split(",")


_NO_META = FieldMeta()


def _struct(**fields: FieldMeta) -> FieldMeta:
    return FieldMeta(fields=fields)


def _merge_list(merge_key: str = "", item: FieldMeta = _NO_META, retain: bool = False) -> FieldMeta:
    return FieldMeta("merge,retainKeys" if retain else "merge", merge_key, item.fields)


_CONDITIONS = _merge_list("type")
_OBJECT_META = _struct(finalizers=_merge_list(), ownerReferences=_merge_list("uid"))
_CONTAINER = _struct(
    ports=_merge_list("containerPort"),
    env=_merge_list("name"),
    volumeMounts=_merge_list("mountPath"),
    volumeDevices=_merge_list("devicePath"),
)
_POD_SPEC = _struct(
    containers=_merge_list("name", _CONTAINER),
    initContainers=_merge_list("name", _CONTAINER),
    ephemeralContainers=_merge_list("name", _CONTAINER),
    volumes=_merge_list("name", retain=True),
    imagePullSecrets=_merge_list("name"),
    hostAliases=_merge_list("ip"),
    topologySpreadConstraints=_merge_list("topologyKey"),
    schedulingGates=_merge_list("name"),
    resourceClaims=_merge_list("name", retain=True),
)
_POD_STATUS = _struct(
    conditions=_CONDITIONS,
    podIPs=_merge_list("ip"),
    hostIPs=_merge_list("ip"),
    resourceClaimStatuses=_merge_list("name", retain=True),
)
_POD_TEMPLATE = _struct(metadata=_OBJECT_META, spec=_POD_SPEC)
_STATUS_WITH_CONDITIONS = _struct(conditions=_CONDITIONS)


def _kind(**fields: FieldMeta) -> FieldMeta:
    return FieldMeta(fields={"metadata": _OBJECT_META, **fields})


PATCH_META: dict[str, FieldMeta] = {
    "Pod": _kind(spec=_POD_SPEC, status=_POD_STATUS),
    "Service": _kind(spec=_struct(ports=_merge_list("port")), status=_STATUS_WITH_CONDITIONS),
    "Deployment": _kind(
        spec=_struct(template=_POD_TEMPLATE, strategy=FieldMeta("retainKeys")),
        status=_STATUS_WITH_CONDITIONS,
    ),
    "ReplicaSet": _kind(spec=_struct(template=_POD_TEMPLATE), status=_STATUS_WITH_CONDITIONS),
    "Node": _kind(
        spec=_struct(podCIDRs=_merge_list()),
        status=_struct(conditions=_CONDITIONS, addresses=_merge_list("type")),
    ),
    "Namespace": _kind(status=_STATUS_WITH_CONDITIONS),
    "ServiceAccount": _kind(secrets=_merge_list("name")),
    "Endpoints": _kind(),
    "EndpointSlice": _kind(),
    "ConfigMap": _kind(),
    "Secret": _kind(),
    "Event": _kind(),
    "Lease": _kind(),
    "NetworkPolicy": _kind(),  # networking/v1 types carry no patch strategies
    "Ingress": _kind(),
    "IngressClass": _kind(),
    "PersistentVolumeClaim": _kind(status=_STATUS_WITH_CONDITIONS),
    "LimitRange": _kind(),
    "ResourceQuota": _kind(),
    "ControllerRevision": _kind(),
    "ReplicationController": _kind(
        spec=_struct(template=_POD_TEMPLATE), status=_STATUS_WITH_CONDITIONS
    ),
    "StatefulSet": _kind(
        spec=_struct(template=_POD_TEMPLATE, updateStrategy=FieldMeta("retainKeys")),
        status=_STATUS_WITH_CONDITIONS,
    ),
    "DaemonSet": _kind(spec=_struct(template=_POD_TEMPLATE), status=_STATUS_WITH_CONDITIONS),
    "Job": _kind(spec=_struct(template=_POD_TEMPLATE), status=_STATUS_WITH_CONDITIONS),
    "CronJob": _kind(spec=_struct(jobTemplate=_struct(spec=_struct(template=_POD_TEMPLATE)))),
    "PodDisruptionBudget": _kind(status=_STATUS_WITH_CONDITIONS),
    "HorizontalPodAutoscaler": _kind(status=_STATUS_WITH_CONDITIONS),
    "APIService": _kind(status=_STATUS_WITH_CONDITIONS),
    # rbac/v1 lists (rules, subjects) carry no patch strategy: they are replaced whole
    "Role": _kind(),
    "ClusterRole": _kind(),
    "RoleBinding": _kind(),
    "ClusterRoleBinding": _kind(),
    # The scale subresource's object (PATCH .../deployments/x/scale).
    "Scale": _kind(),
}

# --- strategic merge patch: the algorithm (apimachinery strategicpatch/patch.go) -----------

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"
_SET_ELEMENT_ORDER = "$setElementOrder/"


def apply_strategic_merge_patch(target: Obj, patch: Obj, kind: str) -> Obj:
    """Apply a strategic merge patch to an object of `kind` (one podnet serves)."""
    meta = PATCH_META.get(kind)
    if meta is None:
        raise errors.unsupported_media_type(
            f"strategic merge patch is not supported for kind {kind!r}; use "
            "application/merge-patch+json or application/json-patch+json"
        )
    if not isinstance(patch, dict):
        raise errors.bad_request("invalid strategic merge patch: the body must be a JSON object")
    try:
        merged = _merge_map(copy.deepcopy(target), copy.deepcopy(patch), meta)
    except _PatchError as exc:
        raise errors.bad_request(f"invalid strategic merge patch: {exc}") from exc
    return merged


class _PatchError(Exception):
    pass


def _merge_map(original: dict[str, Any], patch: dict[str, Any], meta: FieldMeta) -> dict[str, Any]:
    """Merge `patch` into `original` (both owned by us; `original` is modified and returned)."""
    if _DIRECTIVE in patch:
        directive = patch.pop(_DIRECTIVE)
        if directive == "replace":
            return _merge_map({}, patch, meta)
        if directive == "delete":
            return {}
        raise _PatchError(f"unknown patch type {directive!r} in map (use replace or delete)")
    _apply_retain_keys(original, patch)
    _apply_element_orders(original, patch, meta)
    for raw_key, patch_value in patch.items():
        key = raw_key
        is_delete_list = raw_key.startswith(_DELETE_FROM_PRIMITIVE_LIST)
        if is_delete_list:
            key = raw_key[len(_DELETE_FROM_PRIMITIVE_LIST) :]
        if patch_value is None:
            original.pop(key, None)
            continue
        sub = meta.fields.get(key, _NO_META)
        current = original.get(key)
        if isinstance(current, dict) and isinstance(patch_value, dict):
            if sub.strategy == "replace":
                original[key] = _fresh(patch_value, sub)
            else:
                original[key] = _merge_map(current, patch_value, sub)
        elif isinstance(current, list) and isinstance(patch_value, list) and sub.merges_lists:
            original[key] = _merge_list_values(current, patch_value, sub, is_delete_list)
        elif not is_delete_list:
            if isinstance(patch_value, dict) and _DIRECTIVE in patch_value:
                # upstream removeDirectives: a new value that is itself a directive is dropped
                original.pop(key, None)
            else:
                original[key] = _fresh(patch_value, sub)
    return original


def _fresh(patch_value: Any, meta: FieldMeta) -> Any:
    """A patch value that replaces (or adds) a field: directives inside it still apply and its
    nulls are dropped, as if merged into nothing."""
    if isinstance(patch_value, dict):
        return _merge_map({}, patch_value, meta)
    if isinstance(patch_value, list) and meta.merges_lists:
        return _merge_list_values([], patch_value, meta, False)
    return _drop_nulls(patch_value)


def _apply_retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    """`$retainKeys: [...]` drops every key of `original` not listed (after checking the patch
    itself only sets listed keys)."""
    if _RETAIN_KEYS not in patch:
        return
    retain = patch.pop(_RETAIN_KEYS)
    if not isinstance(retain, list):
        raise _PatchError("invalid patch format of retainKeys: $retainKeys must be a list")
    keep = set(retain)
    for k, v in patch.items():
        if v is None or k.startswith((_DELETE_FROM_PRIMITIVE_LIST, _SET_ELEMENT_ORDER)):
            continue
        if k not in keep:
            raise _PatchError(
                f"invalid patch format of retainKeys: {k!r} is set but not listed in $retainKeys"
            )
    for k in list(original):
        if k not in keep:
            del original[k]


def _apply_element_orders(original: dict[str, Any], patch: dict[str, Any], meta: FieldMeta) -> None:
    """Handle `$setElementOrder/<field>`: merge that field's patch list now and order the result
    by the directive, then by the patch, then by the live list."""
    for directive_key in [k for k in patch if k.startswith(_SET_ELEMENT_ORDER)]:
        order = patch.pop(directive_key)
        key = directive_key[len(_SET_ELEMENT_ORDER) :]
        if not isinstance(order, list):
            raise _PatchError(f"{directive_key} must be a list")
        sub = meta.fields.get(key, _NO_META)
        live = original.get(key)
        live_list = live if isinstance(live, list) else []
        patch_list = patch.pop(key, None)
        if isinstance(patch_list, list):
            _check_order_matches(patch_list, order, sub.merge_key, directive_key)
        if patch_list is None:
            merged = list(live_list)
        elif not isinstance(patch_list, list):
            raise _PatchError(f"{key} must be a list when {directive_key} is given")
        elif sub.merges_lists:
            merged = _merge_list_values(live_list, patch_list, sub, False, reorder=False)
        else:
            merged = patch_list
        if not merged and not order:
            if key in original or patch_list is not None:
                original[key] = merged
            continue
        mk = sub.merge_key
        if any(isinstance(item, dict) for item in order) and not mk:
            raise _PatchError(f"{directive_key} lists objects but {key} has no merge key")
        in_order, server_only = _partition(merged, order, mk)
        original[key] = _normalize_order(in_order, server_only, order, live_list, mk)


def _check_order_matches(
    patch_list: list[Any], order: list[Any], merge_key: str, directive_key: str
) -> None:
    """The patch list must be a subsequence of the `$setElementOrder` list, deletions aside
    (upstream validatePatchWithSetOrderList)."""
    items = [v for v in patch_list if not _is_directive(v)]
    pi = si = 0
    while pi < len(items) and si < len(order):
        if _identity(items[pi], merge_key) == _identity(order[si], merge_key):
            pi += 1
        si += 1
    if pi < len(items):
        raise _PatchError(
            f"the order in patch list {items!r} doesn't match {directive_key} list {order!r}"
        )


def _identity(item: Any, merge_key: str) -> Any:
    if merge_key:
        if not isinstance(item, dict) or merge_key not in item:
            raise _PatchError(f"map: {item!r} does not contain declared merge key: {merge_key}")
        return _hashable(item[merge_key])
    return _hashable(item)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _merge_list_values(
    live: list[Any], patch: list[Any], meta: FieldMeta, is_delete_list: bool, reorder: bool = True
) -> list[Any]:
    if not live and not patch:
        return []
    kinds = {type(v) is dict for v in [*live, *patch]}
    if len(kinds) > 1 and not any(isinstance(v, dict) and _DIRECTIVE in v for v in patch):
        raise _PatchError("lists have mismatched element types (objects mixed with values)")
    if True not in kinds:
        if is_delete_list:
            remove = {_hashable(v) for v in patch}
            return [v for v in live if _hashable(v) not in remove]
        merged = _dedupe([*live, *patch])
        if not reorder:
            return merged
        in_patch, server_only = _partition(merged, patch, "")
        return _normalize_order(in_patch, server_only, patch, live, "")
    mk = meta.merge_key
    if not mk:
        raise _PatchError("cannot merge lists of objects without a merge key")
    item_meta = FieldMeta(fields=meta.fields)
    live, plain_patch = _apply_list_directives(live, patch, mk)
    merged = list(live)
    for item in plain_patch:
        ident = _identity(item, mk)
        for i, existing in enumerate(merged):
            if isinstance(existing, dict) and mk in existing and _hashable(existing[mk]) == ident:
                merged[i] = _merge_map(existing, item, item_meta)
                break
        else:
            merged.append(_drop_nulls(item))
    if not reorder:
        return merged
    in_patch, server_only = _partition(merged, plain_patch, mk)
    return _normalize_order(in_patch, server_only, plain_patch, live, mk)


def _apply_list_directives(
    live: list[Any], patch: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    """Handle `{"$patch": "delete", <key>: v}` and `{"$patch": "replace"}` list items."""
    plain: list[Any] = []
    replace = False
    for item in patch:
        if not isinstance(item, dict):
            raise _PatchError(f"list item {item!r} must be an object")
        if _DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[_DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise _PatchError(f"map: {item!r} does not contain declared merge key: {merge_key}")
            ident = _hashable(item[merge_key])
            live = [
                v
                for v in live
                if not (isinstance(v, dict) and _hashable(v.get(merge_key)) == ident)
            ]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise _PatchError("merging lists cannot yet be specified in the patch")
        else:
            raise _PatchError(f"unknown patch type {directive!r} in list item {item!r}")
    if replace:
        return [], plain
    return live, plain


def _dedupe(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    out: list[Any] = []
    for v in values:
        h = _hashable(v)
        if h not in seen:
            seen.add(h)
            out.append(v)
    return out


def _partition(
    items: list[Any], present_in: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    wanted = {
        _identity(v, merge_key) for v in present_in if not (isinstance(v, dict) and _DIRECTIVE in v)
    }
    inside = [v for v in items if _identity(v, merge_key) in wanted]
    outside = [v for v in items if _identity(v, merge_key) not in wanted]
    return inside, outside


def _index_of(order: list[Any], item: Any, merge_key: str) -> int:
    ident = _identity(item, merge_key)
    for i, v in enumerate(order):
        if isinstance(v, dict) and _DIRECTIVE in v:
            continue
        if _identity(v, merge_key) == ident:
            return i
    return -1


def _sort_by(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    known = [v for v in items if _index_of(order, v, merge_key) >= 0]
    unknown = [v for v in items if _index_of(order, v, merge_key) < 0]
    known.sort(key=lambda v: _index_of(order, v, merge_key))
    return known + unknown


def _normalize_order(
    in_patch: list[Any],
    server_only: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    merge_key: str,
) -> list[Any]:
    """Upstream normalizeElementOrder + mergeSortedSlice: patch items keep the patch's order,
    server-only items keep the live order and are slotted in before the first patch item that
    comes after them in the live list."""
    right = _sort_by(in_patch, patch_order, merge_key)
    left = _sort_by(server_only, server_order, merge_key)
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if i >= len(left):
            out.append(right[j])
            j += 1
        elif j >= len(right):
            out.append(left[i])
            i += 1
        else:
            li = _index_of(server_order, left[i], merge_key)
            ri = _index_of(server_order, right[j], merge_key)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _drop_nulls(value: Any) -> Any:
    """A value copied in from a patch loses its null members (upstream IgnoreUnmatchedNulls)
    and every object carrying a `$patch` directive (upstream removeDirectives)."""
    if isinstance(value, dict):
        return {
            k: _drop_nulls(v) for k, v in value.items() if v is not None and not _is_directive(v)
        }
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value if not _is_directive(v)]
    return value


def _is_directive(value: Any) -> bool:
    return isinstance(value, dict) and _DIRECTIVE in value
