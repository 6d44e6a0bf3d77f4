"""Field paths and field sets as server-side apply names them (structured-merge-diff's
`fieldpath`): the `fieldsV1` of `metadata.managedFields` and the `.spec.replicas` of a 409.

What belongs here: the path element texts (`f:name`, `k:{"name":"c"}`, `v:"x"`, `i:0`), sets of
paths (`FieldSet`, a plain `frozenset` of tuples of those texts), `to_fields_v1` /
`from_fields_v1` and `path_string`. Which paths an object has is `api.apply`'s concern.

Invariants:
- A path element *is* its fieldsV1 key, so a set round-trips through fieldsV1 unchanged:
  `from_fields_v1(to_fields_v1(s)) == s`.
- Keys of `k:` elements are compact JSON with the key fields sorted by name, values of `v:`
  compact JSON, as upstream serialises them.
- `to_fields_v1` orders keys like upstream's serialiser: `.` (the path itself is a member)
  first, then field names, keys, values and indexes, each sorted; a member without children is
  `{}`.
- `path_string` is upstream's `Path.String()`: `.spec.containers[name="c"].image`,
  `[=\"x\"]` for a set item, `[0]` for an index.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from typing import Any

Path = tuple[str, ...]
FieldSet = frozenset[Path]

_RANK = {"f": 0, "k": 1, "v": 2, "i": 3}


def field(name: str) -> str:
    return "f:" + name


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def key(fields: Mapping[str, Any]) -> str:
    return "k:" + _compact(dict(fields))


def value(item: Any) -> str:
    return "v:" + _compact(item)


def index(i: int) -> str:
    return f"i:{i}"


def _order(element: str) -> tuple[int, str]:
    return _RANK.get(element[:1], 4), element[2:]


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """The fieldsV1 JSON object of a set of paths."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for element in path:
            node = node.setdefault(element, {})
        node["."] = {}
    return _render(tree)


def _render(node: dict[str, Any]) -> dict[str, Any]:
    member = "." in node
    children = sorted((k for k in node if k != "."), key=_order)
    if not children:
        return {}
    out: dict[str, Any] = {".": {}} if member else {}
    for child in children:
        out[child] = _render(node[child])
    return out


def from_fields_v1(tree: Any) -> FieldSet:
    """The paths of a fieldsV1 object; anything that is not one is a ValueError."""
    return from_fields_v1_canonical(tree)[0]


def from_fields_v1_canonical(tree: Any) -> tuple[FieldSet, bool]:
    """`from_fields_v1`, and whether `tree` is exactly what `to_fields_v1` makes of its paths
    (same keys in the same order, a member without children `{}`), so a writer whose set did not
    change may keep `tree` instead of rendering it again."""
    found: set[Path] = set()
    canonical = True

    def walk(node: Any, prefix: Path) -> None:
        nonlocal canonical
        if not isinstance(node, dict):
            raise ValueError(f"fieldsV1 at {path_string(prefix) or '.'} is not an object")
        member = "." in node
        if prefix and (not node or member):
            found.add(prefix)
        if member and (not prefix or len(node) == 1 or next(iter(node)) != "." or node["."] != {}):
            canonical = False  # rendered: `.` first, `{}`, beside children (else `{}` alone)
        if len(node) > 1 + member and canonical:
            names = [element for element in node if element != "."]
            plain = sorted(names)  # the rendered order unless `i:` elements are among them
            first_index = bisect.bisect_left(plain, "i:")
            indexed = first_index < len(plain) and plain[first_index].startswith("i:")
            if (names != plain or indexed) and names != sorted(names, key=_order):
                canonical = False
        for element, child in node.items():
            if element == ".":
                continue
            if element[:2] not in ("f:", "k:", "v:", "i:"):
                raise ValueError(f"fieldsV1 has an unknown path element {element!r}")
            walk(child, (*prefix, element))

    walk(tree, ())
    return frozenset(found), canonical


def path_string(path: Path) -> str:
    """upstream's `Path.String()` of a path."""
    out: list[str] = []
    for element in path:
        kind, text = element[:1], element[2:]
        if kind == "f":
            out.append("." + text)
        elif kind == "k":
            fields = json.loads(text)
            out.append("[" + ",".join(f"{k}={_compact(v)}" for k, v in fields.items()) + "]")
        elif kind == "v":
            out.append(f"[={text}]")
        else:
            out.append(f"[{text}]")
    return "".join(out)


def sort_paths(paths: Iterable[Path]) -> list[Path]:
    """Paths in upstream's set iteration order (element by element, `.`-members first)."""
    return sorted(paths, key=lambda p: [_order(e) for e in p])


def under(paths: Iterable[Path], prefix: Path) -> bool:
    """Whether any of `paths` is `prefix` or lies below it."""
    n = len(prefix)
    return any(p[:n] == prefix for p in paths)
