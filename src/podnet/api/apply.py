"""Server-side apply and `metadata.managedFields`, as structured-merge-diff (SMD) and
kube-apiserver's field manager define them.

What belongs here: the typed walks over an object and its schema (`api.schema` nodes) —
`field_set` (the fields an object sets), `compare` (added/modified/removed between two
objects), `merge` (an applied configuration onto the live object), `remove` (prune) — and the
two operations built from them: `apply` (PATCH application/apply-patch+yaml) and `update`
(every other write, which makes its manager the owner of what it changed). Also the
managedFields entries' encoding and the 409 a conflict is. Storage and requests are the
registry's.

Semantics (SMD `typed/` and `merge/update.go`, kube `managedfields/internal/`):
- Lists follow their schema: atomic lists, atomic maps/structs and scalars are leaves (owned
  whole); `set` lists own items by value (`v:`), `map` lists by their keys (`k:{...}`), a map
  or struct field by name (`f:`). A key field that is missing takes the schema's default
  (`protocol: TCP`), else the item is refused. Free-form objects (no schema) are maps of
  leaves with atomic lists (SMD's "deduced" type).
- apply: merged = live ⊕ config (config wins on leaves; list order follows the config where it
  speaks); the manager's set becomes the config's field set; fields it applied last time and no
  longer does are pruned unless another applier owns them; then every *other* manager owning a
  field whose value the apply adds or changes is a conflict (409, upstream's wording), unless
  `force`, which takes the fields over.
- update: the manager gains every field the write added or changed, others lose them; fields
  the write removed leave every set. Empty sets are dropped.
- Never tracked: apiVersion, kind, metadata's system fields (name, namespace, uid,
  resourceVersion, generation, creationTimestamp, managedFields, selfLink); for a kind with a
  status subresource, `status` on the main resource and `spec` on the status subresource.
- One known simplification: upstream's Go decoding makes value structs (`spec`,
  `spec.strategy`) present in a create's "empty" object, so only pointer structs are *added*
  (`f:rollingUpdate: {.: {}}`); the Go field kinds are not in the OpenAPI schemas, so here no
  declared struct is recorded as a member by itself (their fields are).
- Entries are sorted like upstream (Apply before Update, then time, manager, apiVersion); only
  the writing manager's `time` moves, and only when its write changed something.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from podnet.api import fieldpath
from podnet.api.errors import ApiError
from podnet.api.fieldpath import FieldSet, Path
from podnet.api.schema import Array, Map, Raw, Scalar, Schema, Struct

DEDUCED: Schema = Raw("deduced")
ABSENT: Any = object()  # a field that is not there (JSON null is None)

# Defaults of list-map key fields (`+default=` in upstream's types); the generated schemas do
# not carry them and SMD needs them to key `ports: [{containerPort: 80}]` as the live TCP item.
_KEY_DEFAULTS: dict[tuple[str, str], Any] = {
    ("v1.ContainerPort", "protocol"): "TCP",
    ("v1.ServicePort", "protocol"): "TCP",
    ("v1.EndpointPort", "protocol"): "TCP",
    ("v1.HostAlias", "ip"): "",
}


class ApplyError(ValueError):
    """A value that cannot be walked with its schema (a list item without its key, a
    duplicate key in an applied configuration)."""


# --- typed walks ---------------------------------------------------------------------------


def _child(node: Schema, name: str) -> tuple[Schema, bool]:
    """The schema of a map entry and whether it is a declared (struct) field."""
    if isinstance(node, Struct) and node.fields is not None:
        found = node.fields.get(name)
        return (found, True) if found is not None else (DEDUCED, False)
    if isinstance(node, Map):
        return node.value, False
    return DEDUCED, False


def _shape(node: Schema, *values: Any) -> str:
    """ "leaf", "map" or "list": how the walks treat `node` holding `values` (ABSENT/None
    allowed). Empty or absent containers on every side are leaves (SMD keeps {} vs null)."""
    present = [v for v in values if v is not ABSENT and v is not None]
    if isinstance(node, Scalar):
        return "leaf"
    if isinstance(node, Array):
        if node.list_type == "atomic" or not all(isinstance(v, list) for v in present):
            return "leaf"
        return "list" if any(present) else "leaf"
    if isinstance(node, Map | Struct) and node.atomic:
        return "leaf"
    if not present or not all(isinstance(v, dict) for v in present):
        return "leaf"
    return "map" if any(present) else "leaf"


def item_element(node: Array, item: Any) -> str:
    """The path element of a list item (`k:{...}` or `v:...`)."""
    if node.list_type == "set":
        return fieldpath.value(item)
    if not isinstance(item, dict):
        raise ApplyError(f"expected an object with keys {list(node.keys)}, got {_kind(item)}")
    keys: dict[str, Any] = {}
    for name in node.keys:
        if name in item and item[name] is not None:
            keys[name] = item[name]
        elif (node.item.go, name) in _KEY_DEFAULTS:
            keys[name] = _KEY_DEFAULTS[(node.item.go, name)]
        else:
            raise ApplyError(
                f'associative list with keys has an element that omits key field "{name}" '
                "(and doesn't have default value)"
            )
    return fieldpath.key(keys)


def _kind(value: Any) -> str:
    return {dict: "map", list: "list", str: "string", bool: "bool"}.get(type(value), "number")


def _items(node: Array, values: list[Any], path: Path, strict: bool) -> dict[str, Any]:
    """List items by path element, first occurrence kept (in order)."""
    out: dict[str, Any] = {}
    for item in values:
        try:
            element = item_element(node, item)
        except ApplyError as exc:
            raise ApplyError(f"{fieldpath.path_string(path)}: {exc}") from None
        if element in out:
            if strict:
                raise ApplyError(
                    f"{fieldpath.path_string(path)}: duplicate entries for key "
                    f"{fieldpath.path_string((element,))}"
                )
            continue
        out[element] = item
    return out


def field_set(obj: Any, node: Schema, strict: bool = False) -> FieldSet:
    """Every leaf and item `obj` sets (SMD `ToFieldSet`). `strict` refuses duplicate keys."""
    found: set[Path] = set()

    def walk(value: Any, schema: Schema, path: Path) -> None:
        shape = _shape(schema, value)
        if shape == "leaf":
            if path:
                found.add(path)
        elif shape == "map":
            for name, child in value.items():
                sub, declared = _child(schema, name)
                p = (*path, fieldpath.field(name))
                walk(child, sub, p)
                if child is None or child == {} or not declared:
                    found.add(p)
        else:
            assert isinstance(schema, Array)
            for element, item in _items(schema, value, path, strict).items():
                p = (*path, element)
                walk(item, schema.item, p)
                found.add(p)

    walk(obj, node, ())
    return frozenset(found)


def undeclared(obj: Any, node: Schema) -> list[Path]:
    """Paths of fields the schema does not declare (SMD refuses them in an applied
    configuration: `.spec.foo: field not declared in schema`)."""
    found: list[Path] = []

    def walk(value: Any, schema: Schema, path: Path) -> None:
        shape = _shape(schema, value)
        if shape == "map":
            declared = isinstance(schema, Struct) and schema.fields is not None
            for name, child in value.items():
                sub, known = _child(schema, name)
                if declared and not known:
                    found.append((*path, fieldpath.field(name)))
                else:
                    walk(child, sub, (*path, fieldpath.field(name)))
        elif shape == "list":
            assert isinstance(schema, Array)
            for element, item in _items(schema, value, path, False).items():
                walk(item, schema.item, (*path, element))

    walk(obj, node, ())
    return found


def typed_errors(messages: list[str]) -> str:
    """SMD's ValidationErrors text: one error as is, several as an indented list."""
    if len(messages) == 1:
        return messages[0]
    return "errors:\n" + "\n".join(f"  {m}" for m in messages)


@dataclass(frozen=True, slots=True)
class Comparison:
    added: FieldSet
    modified: FieldSet
    removed: FieldSet


def compare(old: Any, new: Any, node: Schema) -> Comparison:
    """What changed from `old` to `new` (SMD `Compare`)."""
    added: set[Path] = set()
    modified: set[Path] = set()
    removed: set[Path] = set()

    def mark(lhs: Any, rhs: Any, path: Path, leaf: bool) -> None:
        if not path:
            return
        if lhs is ABSENT:
            added.add(path)
        elif rhs is ABSENT:
            removed.add(path)
        elif leaf and lhs != rhs:
            modified.add(path)

    def walk(lhs: Any, rhs: Any, schema: Schema, path: Path) -> None:
        if lhs is not ABSENT and rhs is not ABSENT and lhs == rhs:
            return  # an equal subtree changes nothing (one C-speed comparison)
        shape = _shape(schema, lhs, rhs)
        if shape == "leaf":
            mark(lhs, rhs, path, True)
            return
        # a child equal on both sides is skipped here, before its schema and path are made
        # (what `walk` would return at once: most of a status write's object is unchanged)
        if shape == "map":
            left = lhs if isinstance(lhs, dict) else {}
            right = rhs if isinstance(rhs, dict) else {}
            for name in [*left, *(k for k in right if k not in left)]:
                old_value, new_value = left.get(name, ABSENT), right.get(name, ABSENT)
                if old_value is not ABSENT and new_value is not ABSENT and old_value == new_value:
                    continue
                sub, _ = _child(schema, name)
                walk(old_value, new_value, sub, (*path, f"f:{name}"))
        else:
            assert isinstance(schema, Array)
            left = _items(schema, lhs if isinstance(lhs, list) else [], path, False)
            right = _items(schema, rhs if isinstance(rhs, list) else [], path, False)
            for element in [*left, *(k for k in right if k not in left)]:
                old_value, new_value = left.get(element, ABSENT), right.get(element, ABSENT)
                if old_value is not ABSENT and new_value is not ABSENT and old_value == new_value:
                    continue
                walk(old_value, new_value, schema.item, (*path, element))
        if not (isinstance(schema, Struct) and schema.fields):
            mark(lhs, rhs, path, False)  # see the module docstring on declared structs

    walk(old, new, node, ())
    return Comparison(frozenset(added), frozenset(modified), frozenset(removed))


def merge(live: Any, config: Any, node: Schema) -> Any:
    """`config` merged onto `live` (SMD `Merge`: the config wins on leaves)."""

    def walk(lhs: Any, rhs: Any, schema: Schema, path: Path) -> Any:
        shape = _shape(schema, lhs, rhs)
        if shape == "leaf":
            return rhs if rhs is not ABSENT else lhs
        if shape == "map":
            left = lhs if isinstance(lhs, dict) else {}
            right = rhs if isinstance(rhs, dict) else {}
            out: dict[str, Any] = {}
            for name in [*left, *(k for k in right if k not in left)]:
                sub, _ = _child(schema, name)
                value = walk(
                    left.get(name, ABSENT), right.get(name, ABSENT), sub, (*path, f"f:{name}")
                )
                if value is not ABSENT:
                    out[name] = value
            return out
        assert isinstance(schema, Array)
        left = _items(schema, lhs if isinstance(lhs, list) else [], path, False)
        right = _items(schema, rhs if isinstance(rhs, list) else [], path, True)
        return [
            walk(left.get(e, ABSENT), right.get(e, ABSENT), schema.item, (*path, e))
            for e in _merged_order(list(left), list(right))
        ]

    return walk(live, config, node, ())


def _merged_order(lhs: list[str], rhs: list[str]) -> Iterator[str]:
    """SMD's order of a merged list: the config's items in its order, live-only items kept
    where they were relative to the shared ones."""
    right, left = set(rhs), set(lhs)
    shared = [e for e in rhs if e in left]
    next_shared = shared.pop(0) if shared else None
    li = ri = 0
    while li < len(lhs) or ri < len(rhs):
        if li < len(lhs) and ri < len(rhs):
            if lhs[li] == rhs[ri]:
                yield lhs[li]
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if lhs[li] in right and next_shared is not None and next_shared != lhs[li]:
                li += 1
                continue
        if li < len(lhs) and lhs[li] not in right:
            yield lhs[li]
            li += 1
            continue
        if ri < len(rhs):
            element = rhs[ri]
            yield element
            ri += 1
            if next_shared is not None and next_shared == element:
                next_shared = shared.pop(0) if shared else None
        else:
            li += 1  # a shared item already merged out of order


def remove(obj: Any, paths: FieldSet, node: Schema) -> Any:
    """`obj` without the members of `paths` (SMD `RemoveItems`); a map or list left empty by
    a removal disappears with it."""
    if not paths:
        return obj

    def walk(value: Any, schema: Schema, todo: FieldSet) -> Any:
        shape = _shape(schema, value)
        if shape == "map":
            out: dict[str, Any] = {}
            for name, child in value.items():
                element = f"f:{name}"
                if (element,) in todo:
                    continue
                sub_paths = frozenset(p[1:] for p in todo if p[0] == element and len(p) > 1)
                if sub_paths:
                    child = walk(child, _child(schema, name)[0], sub_paths)
                    if child is ABSENT:
                        continue
                out[name] = child
            return out or ABSENT
        if shape == "list":
            assert isinstance(schema, Array)
            items: list[Any] = []
            for item in value:
                element = item_element(schema, item)
                if (element,) in todo:
                    continue
                sub_paths = frozenset(p[1:] for p in todo if p[0] == element and len(p) > 1)
                if sub_paths:
                    item = walk(item, schema.item, sub_paths)
                    if item is ABSENT:
                        item = {}
                items.append(item)
            return items or ABSENT
        return value

    result = walk(obj, node, paths)
    return {} if result is ABSENT else result


# --- managedFields entries -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One `metadata.managedFields` entry."""

    manager: str
    operation: str  # "Apply" | "Update"
    api_version: str
    fields: FieldSet
    time: str | None = None
    subresource: str = ""
    rendered: tuple[FieldSet, dict[str, Any]] | None = field(
        default=None, compare=False, repr=False
    )
    """(the decoded set, its fieldsV1 as decoded) when that fieldsV1 is exactly what
    `to_fields_v1` renders of the set: `encode_entries` gives it back as it is while
    `fields` is still that set, instead of rendering it again."""

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """upstream's manager identifier: appliers are one manager across versions."""
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)

    def describe(self) -> str:
        """How a 409 names the manager (`"kubectl-client-side-apply" using apps/v1`)."""
        text = json.dumps(self.manager, ensure_ascii=False)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text


def decode_entries(raw: Any) -> list[Entry]:
    """managedFields as sent or stored; a malformed list is a ValueError naming the problem."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("metadata.managedFields must be a list")
    entries: dict[tuple[str, str, str, str], Entry] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"metadata.managedFields[{i}] must be an object")
        operation = item.get("operation", "")
        if operation not in ("Apply", "Update"):
            raise ValueError(
                f'metadata.managedFields[{i}].operation: Unsupported value: "{operation}": '
                'supported values: "Apply", "Update"'
            )
        fields_type = item.get("fieldsType", "FieldsV1")
        if fields_type != "FieldsV1":
            raise ValueError(
                f'metadata.managedFields[{i}].fieldsType: Unsupported value: "{fields_type}": '
                'supported values: "FieldsV1"'
            )
        tree = item.get("fieldsV1") or {}
        fields, canonical = fieldpath.from_fields_v1_canonical(tree)
        entry = Entry(
            manager=str(item.get("manager", "")),
            operation=str(operation),
            api_version=str(item.get("apiVersion", "")),
            fields=fields,
            time=item.get("time") if isinstance(item.get("time"), str) else None,
            subresource=str(item.get("subresource", "")),
            rendered=(fields, tree) if canonical else None,
        )
        if entry.identity in entries:
            previous = entries[entry.identity]
            entry = replace(previous, fields=previous.fields | entry.fields)
        entries[entry.identity] = entry
    return list(entries.values())


def encode_entries(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """The managedFields list as upstream writes it (its field order and entry order). An
    entry whose set is the one it was decoded with gives back the fieldsV1 object it was
    decoded from, not a copy, as rendering it again would make it (a pod status write: ~40 of
    ~180 us tracking it).

    Why sharing that object is safe (every caller read, session 12): nothing writes into a
    fieldsV1 after decoding, and every object one is decoded from is the registry's own for one
    request. The one caller is `managed._set_entries` (for `track_write` and
    `apply_config`), whose entries come from
    - the stored object: `Registry._guaranteed_update` decodes it afresh for each attempt
      (`decode_transient`: json.loads of the stored bytes; `recent` keeps bytes, not objects)
      and drops it when the attempt ends;
    - managedFields a client sent: that request's body (a PUT's `clone(body)`, or a merge
      patch's own parse, merged into the attempt's copy of the stored object by reference).
    So a dry run's answer shares fieldsV1 dicts only with its attempt's decode of the stored
    object; only `handlers.py` asks for dry runs, and it serializes the answer. A caller that
    keeps the decoded object, or edits an answer's fieldsV1 in place, must copy it first."""

    def order(e: Entry) -> tuple[str, str, str, str, str]:
        return (e.operation, e.time or "", e.manager, e.api_version, e.subresource)

    out: list[dict[str, Any]] = []
    for e in sorted(entries, key=order):
        item: dict[str, Any] = {"manager": e.manager, "operation": e.operation}
        item["apiVersion"] = e.api_version
        if e.time:
            item["time"] = e.time
        item["fieldsType"] = "FieldsV1"
        rendered = e.rendered
        if rendered is not None and rendered[0] == e.fields:
            item["fieldsV1"] = rendered[1]
        else:
            item["fieldsV1"] = fieldpath.to_fields_v1(e.fields)
        if e.subresource:
            item["subresource"] = e.subresource
        out.append(item)
    return out


# --- what is never tracked -----------------------------------------------------------------

_META_STRIPPED = frozenset(
    ("f:metadata", f"f:{name}")
    for name in (
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    )
) | {("f:apiVersion",), ("f:kind",), ("f:metadata",)}


def stripper(has_status: bool, subresource: str) -> Callable[[FieldSet], FieldSet]:
    """The filter every manager's set goes through (see the module docstring)."""
    reset = ""
    if has_status:
        reset = "f:spec" if subresource == "status" else "f:status"

    def strip(paths: FieldSet) -> FieldSet:
        return frozenset(
            p for p in paths if p not in _META_STRIPPED and (not reset or p[0] != reset)
        )

    return strip


# --- the two operations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """Who writes: the manager, its operation's apiVersion and subresource, and the time."""

    manager: str
    api_version: str
    now: str
    subresource: str = ""
    strip: Callable[[FieldSet], FieldSet] = frozenset


def _drop_removed(entries: list[Entry], removed: FieldSet) -> list[Entry]:
    return [_without(e, removed) for e in entries]


def _without(entry: Entry, paths: FieldSet) -> Entry:
    """`entry` without `paths` (itself when it has none of them)."""
    return replace(entry, fields=entry.fields - paths) if entry.fields & paths else entry


def _finish(entries: Iterable[Entry], me: Entry, renew: bool, now: str) -> list[Entry]:
    """Empty sets dropped; the acting manager's `time` renewed when `renew` (upstream: an
    update that took fields, an apply that changed anything); the others keep theirs."""
    out: list[Entry] = []
    for e in entries:
        if e.fields:
            out.append(replace(e, time=now) if renew and e.identity == me.identity else e)
    return out


def update(node: Schema, live: Any, new: Any, entries: list[Entry], actor: Actor) -> list[Entry]:
    """managedFields after a non-apply write of `new` over `live` ({} for a create)."""
    before = {e.identity: e for e in entries}
    diff = compare(live, new, node)
    changed = actor.strip(diff.added | diff.modified)
    removed = diff.removed
    me = Entry(
        actor.manager, "Update", actor.api_version, frozenset(), subresource=actor.subresource
    )
    mine = before.get(me.identity, me)
    others = [_without(e, changed) for e in entries if e.identity != me.identity]
    updated = replace(mine, fields=(mine.fields | changed) - removed, api_version=actor.api_version)
    return _finish([*_drop_removed(others, removed), updated], me, bool(changed), actor.now)


@dataclass(frozen=True, slots=True)
class Conflict:
    entry: Entry
    path: Path


def conflict_error(conflicts: list[Conflict]) -> ApiError:
    """upstream's 409 for an apply that would take fields others manage."""
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f"conflict with {c.entry.describe()}",
            "field": fieldpath.path_string(c.path),
        }
        for c in conflicts
    ]
    if len(conflicts) == 1:
        only = conflicts[0]
        text = f"conflict with {only.entry.describe()}: {fieldpath.path_string(only.path)}"
        message = f"Apply failed with 1 conflict: {text}"
    else:
        lines: list[str] = []
        by_manager: dict[str, list[Path]] = {}
        for c in conflicts:
            by_manager.setdefault(c.entry.describe(), []).append(c.path)
        for who in sorted(by_manager):
            lines.append(f"conflicts with {who}:")
            lines.extend(f"- {fieldpath.path_string(p)}" for p in by_manager[who])
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, {"causes": causes})


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[Conflict]) -> None:
        super().__init__("apply conflicts")
        self.conflicts = conflicts

    def error(self) -> ApiError:
        return conflict_error(self.conflicts)


def apply(
    node: Schema, live: Any, config: Any, entries: list[Entry], actor: Actor, force: bool
) -> tuple[Any, list[Entry]]:
    """The object and managedFields after `actor` applies `config` to `live` ({} when the
    object does not exist yet). Raises ApplyConflict, ApplyError."""
    before = {e.identity: e for e in entries}
    me = Entry(
        actor.manager, "Apply", actor.api_version, frozenset(), subresource=actor.subresource
    )
    last = before.get(me.identity)
    merged = merge(live, config, node)
    mine = replace(last or me, fields=actor.strip(field_set(config, node, strict=True)))
    current = [e for e in entries if e.identity != me.identity] + [mine]
    if last is not None and last.fields:
        merged = _prune(node, merged, current, last.fields)
    diff = compare(live, merged, node)
    touched = diff.added | diff.modified
    conflicts = [
        Conflict(e, p)
        for e in current
        if e.identity != me.identity
        for p in fieldpath.sort_paths(e.fields & touched)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    taken = frozenset(c.path for c in conflicts)
    result = [
        e if e.identity == me.identity else replace(e, fields=e.fields - taken) for e in current
    ]
    after = _drop_removed(result, diff.removed)
    same = merged == live and {e.identity: e.fields for e in after if e.fields} == {
        e.identity: e.fields for e in entries if e.fields
    }
    return merged, _finish(after, me, not same, actor.now)


def _prune(node: Schema, merged: Any, entries: list[Entry], last: FieldSet) -> Any:
    """SMD's prune: what the applier applied last time and no longer does goes, unless an
    applier (itself included, in its new configuration) still owns it."""
    pruned = remove(merged, last, node)
    applied = frozenset().union(*(e.fields for e in entries if e.operation == "Apply"))
    merged_set = field_set(merged, node)
    pruned = remove(merged, merged_set - (field_set(pruned, node) | applied), node)
    # only what the applier owned may go: anything else that prune took comes back
    return remove(merged, (merged_set - field_set(pruned, node)) & last, node)
