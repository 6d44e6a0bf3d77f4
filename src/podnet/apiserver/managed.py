"""The registry's field manager: `metadata.managedFields` on every write, and server-side
apply's request rules, over the pure algorithm in `api.apply`.

What belongs here: choosing the schema and the never-tracked fields of a resource, reading the
managedFields a client sent or the stored ones, the apply request's checks (fieldManager,
force, no managedFields in the body) and kube-apiserver's two kubectl interplay rules:
- an apply by the manager `kubectl` on an object that carries the client-side
  `last-applied-configuration` annotation keeps that annotation equal to what it applied
  (upstream's lastAppliedUpdater), so a later client-side `kubectl apply` diffs against it;
- such an apply does not conflict over fields the annotation says were client-side applied
  with the value they still have (upstream's lastAppliedManager: the client-side → server-side
  upgrade without --force-conflicts).

Invariants: pure functions of their inputs (the registry passes the time); never mutates its
arguments' nested values it does not return.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from podnet.api import apply, fieldpath
from podnet.api.apply import Actor, ApplyConflict, ApplyError, Entry
from podnet.api.errors import ApiError, Cause, bad_request, invalid
from podnet.api.interface import Obj
from podnet.api.resources import Resource
from podnet.api.schema import KINDS, Schema

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MAX_MANAGER_CHARS = 128


def schema_of(res: Resource) -> Schema:
    return KINDS.get(res.kind, apply.DEDUCED)


def manager_name(field_manager: str | None, user_agent: str) -> str:
    """The request's manager: `fieldManager`, else the User-Agent's product (upstream's
    `managerOrUserAgent`). A fieldManager that is not short printable text is a 422."""
    if field_manager:
        if len(field_manager) > MAX_MANAGER_CHARS or not field_manager.isprintable():
            raise invalid(
                "PatchOptions",
                "",
                [
                    Cause(
                        "fieldManager",
                        "FieldValueInvalid",
                        f"Invalid value: {json.dumps(field_manager[:MAX_MANAGER_CHARS])}: must "
                        f"be printable text of at most {MAX_MANAGER_CHARS} characters",
                    )
                ],
                "meta.k8s.io",
            )
        return field_manager
    product = user_agent.split("/", 1)[0]
    return "".join(c for c in product if c.isprintable())[:MAX_MANAGER_CHARS]


def _actor(res: Resource, manager: str, now: str, subresource: str | None) -> Actor:
    has_status = res.subresource("status") is not None
    sub = subresource or ""
    return Actor(manager, res.api_version, now, sub, apply.stripper(has_status, sub))


def _without_managed(obj: Obj) -> Obj:
    out = dict(obj)
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and "managedFields" in metadata:
        out["metadata"] = {k: v for k, v in metadata.items() if k != "managedFields"}
    return out


def _entries(raw: Any) -> list[Entry]:
    try:
        return apply.decode_entries(raw)
    except ValueError:
        return []


def _stored_entries(obj: Obj) -> list[Entry]:
    return _entries(obj.get("metadata", {}).get("managedFields"))


def _set_entries(obj: Obj, entries: list[Entry]) -> Obj:
    metadata = obj.setdefault("metadata", {})
    encoded = apply.encode_entries(entries)
    if encoded:
        metadata["managedFields"] = encoded
    else:
        metadata.pop("managedFields", None)
    return obj


def track_write(
    res: Resource,
    old: Obj | None,
    new: Obj,
    sent: Any,
    manager: str,
    now: str,
    subresource: str | None = None,
) -> Obj:
    """`new` (to be stored over `old`, None on create) with its managedFields after a
    non-apply write by `manager`; never an error of its own. A client that sent managedFields
    of its own (not on a subresource) replaces the stored ones with them, as upstream
    allows; `[{}]` clears them."""
    if sent == [{}] and not subresource:
        return _set_entries(new, [])  # upstream's documented reset: [{}] strips them all
    base = [] if old is None else _stored_entries(old)
    if sent and not subresource:
        given = _entries(sent)
        base = given or base
    before = {} if old is None else _without_managed(old)
    after = _without_managed(new)
    if before == after:
        return _set_entries(new, base)  # nothing changed: nothing to take (and no walk)
    try:
        entries = apply.update(
            schema_of(res), before, after, base, _actor(res, manager, now, subresource)
        )
    except ApplyError:
        # a list item without its key: validation refuses the object with a better message
        # than ownership could (upstream's UpdateNoErrors likewise never fails a write)
        entries = base
    return _set_entries(new, entries)


def check_apply_request(res: Resource, config: Any, field_manager: str | None) -> Obj:
    """The apply body and parameters as upstream requires them."""
    if not field_manager:
        raise invalid(
            "PatchOptions",
            "",
            [
                Cause(
                    "fieldManager",
                    "FieldValueRequired",
                    "Required value: is required for apply patch",
                )
            ],
            "meta.k8s.io",
        )
    if not isinstance(config, dict):
        raise bad_request("the apply patch must be a YAML or JSON object")
    if not config.get("apiVersion") or not config.get("kind"):
        missing = "apiVersion" if not config.get("apiVersion") else "kind"
        raise bad_request(f"invalid object type: {missing} must be set in an apply patch")
    metadata = config.get("metadata")
    if isinstance(metadata, dict) and metadata.get("managedFields") is not None:
        raise bad_request("metadata.managedFields must be nil")
    return config


def _typed_patch_error(res: Resource, config: Obj, detail: str) -> ApiError:
    """upstream's 400 for an applied configuration that does not fit the schema."""
    metadata = config.get("metadata") or {}
    where = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
    gvk = f"{res.group}/{res.version}, Kind={res.kind}"
    return bad_request(f"failed to create typed patch object ({where}; {gvk}): {detail}")


def check_undeclared(res: Resource, config: Obj) -> None:
    """An applied configuration may only name declared fields (whatever fieldValidation
    says: upstream's apply types the configuration with the schema)."""
    try:
        found = apply.undeclared(config, schema_of(res))
    except ApplyError as exc:
        raise _typed_patch_error(res, config, str(exc)) from None
    if found:
        messages = [
            f"{fieldpath.path_string(p)}: field not declared in schema"
            for p in fieldpath.sort_paths(found)
        ]
        raise _typed_patch_error(res, config, apply.typed_errors(messages))


def apply_config(
    res: Resource,
    live: Obj | None,
    config: Obj,
    manager: str,
    now: str,
    force: bool,
    subresource: str | None = None,
) -> Obj:
    """The object to store after `manager` applies `config` to `live` (None: a create), with
    its managedFields; a conflict is upstream's 409."""
    node = schema_of(res)
    actor = _actor(res, manager, now, subresource)
    current = {} if live is None else _without_managed(live)
    entries = [] if live is None else _stored_entries(live)
    applied = _without_managed(config)
    try:
        try:
            merged, after = apply.apply(node, current, applied, entries, actor, force)
        except ApplyConflict as conflict:
            if not _upgrade_allowed(node, current, manager, conflict):
                raise
            merged, after = apply.apply(node, current, applied, entries, actor, True)
    except ApplyConflict as conflict:
        raise conflict.error() from None
    except ApplyError as exc:
        raise _typed_patch_error(res, config, str(exc)) from None
    if manager == "kubectl" and LAST_APPLIED in _annotations(current):
        merged.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = (
            last_applied(applied)
        )
    return _set_entries(merged, after)


def _annotations(obj: Obj) -> dict[str, Any]:
    found = obj.get("metadata", {}).get("annotations")
    return found if isinstance(found, dict) else {}


def last_applied(config: Obj) -> str:
    """The annotation value upstream writes: the applied object without the annotation, as
    Go encodes an unstructured object (sorted keys, compact, a newline)."""
    body = copy.deepcopy(config)
    annotations = body.get("metadata", {}).get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(LAST_APPLIED, None)
        if not annotations:
            del body["metadata"]["annotations"]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def _upgrade_allowed(node: Schema, live: Obj, manager: str, conflict: ApplyConflict) -> bool:
    """Whether every conflict is a field the last client-side apply set to its live value."""
    text = _annotations(live).get(LAST_APPLIED)
    if manager != "kubectl" or not isinstance(text, str):
        return False
    try:
        last = json.loads(text)
        fields = apply.field_set(last, node)
        changed = apply.compare(last, live, node).modified
    except (ValueError, ApplyError):
        return False
    allowed = fields - changed
    return all(c.path in allowed for c in conflict.conflicts)
