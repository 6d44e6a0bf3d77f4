"""Label and field selectors: parsing the query-string forms and matching objects.

What belongs here: `LabelSelector` (the `labelSelector=` grammar of apimachinery `labels.Parse`
and the `metav1.LabelSelector` object form used by Deployments/ReplicaSets) and
`FieldSelector` (the `fieldSelector=` grammar with the per-resource field table of the
upstream registries). Pure: no I/O.

Invariants:
- A parsed selector is immutable; its requirements are sorted by key, and `str()` renders the
  canonical upstream text (`app=web,tier in (a,b),!debug`), which is what `kubectl get -o wide`
  shows in Selector columns.
- `LabelSelector.from_spec(None)` matches **nothing** and `from_spec({})` matches **everything**
  (upstream `LabelSelectorAsSelector`). A Service's `spec.selector` map is a different thing:
  use `LabelSelector.from_labels`, and note that the endpoints controller treats a Service with
  no selector as "endpoints managed by someone else", not as "select every pod".
- Bad input raises `ApiError` 400 whose message names the offending part; matching never raises.
- `!=` and `notin` match objects that lack the key (upstream semantics).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from podnet.api import errors
from podnet.api.interface import Obj
from podnet.api.meta import label_value_errors, qualified_name_errors
from podnet.api.resources import Resource

Operator = Literal["=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"]

_POSITIVE_MATCH: frozenset[str] = frozenset({"=", "==", "in"})
_NEGATIVE_MATCH: frozenset[str] = frozenset({"!=", "notin"})


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()  # sorted and de-duplicated for in/notin

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in _POSITIVE_MATCH:
            return present and labels[self.key] in self.values
        if self.operator in _NEGATIVE_MATCH:
            return not present or labels[self.key] not in self.values
        # gt / lt: both sides must be integers
        if not present:
            return False
        try:
            have = int(labels[self.key])
        except ValueError:
            return False
        bound = int(self.values[0])
        return have > bound if self.operator == "gt" else have < bound

    def __str__(self) -> str:
        op = self.operator
        if op == "exists":
            return self.key
        if op == "!":
            return f"!{self.key}"
        if op in ("in", "notin"):
            return f"{self.key} {op} ({','.join(self.values)})"
        symbol = {"gt": ">", "lt": "<"}.get(op, op)
        return f"{self.key}{symbol}{self.values[0]}"


def _bad_selector(text: str, problem: str) -> errors.ApiError:
    return errors.bad_request(f"unable to parse label selector {text!r}: {problem}")


def _check_key(text: str, key: str) -> None:
    problems = qualified_name_errors(key)
    if problems:
        raise _bad_selector(text, f"invalid label key {key!r}: {'; '.join(problems)}")


def _check_value(text: str, key: str, value: str) -> None:
    problems = label_value_errors(value)
    if problems:
        raise _bad_selector(
            text, f"invalid value {value!r} for label {key!r}: {'; '.join(problems)}"
        )


def _requirement(text: str, key: str, op: Operator, values: list[str]) -> Requirement:
    """Build a requirement after upstream's NewRequirement checks."""
    _check_key(text, key)
    if op in ("in", "notin"):
        if not values:
            raise _bad_selector(
                text, f"for 'in', 'notin' operators, values set can't be empty (key {key!r})"
            )
    elif op in ("=", "==", "!="):
        if len(values) != 1:
            raise _bad_selector(text, f"exact-match operators need exactly one value (key {key!r})")
    elif op in ("gt", "lt"):
        if len(values) != 1 or not _is_integer(values[0]):
            raise _bad_selector(
                text, f"for 'Gt', 'Lt' operators, the value must be an integer (key {key!r})"
            )
        return Requirement(key, op, (values[0],))
    for value in values:
        _check_value(text, key, value)
    return Requirement(key, op, tuple(sorted(set(values))))


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# --- the labelSelector= grammar (apimachinery labels/selector.go) --------------------------

_SPECIAL = frozenset("=!(),<>")
_Token = tuple[str, str]  # (kind, text); kinds: id in notin = != ! ( ) , > < end


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith(("==", "!="), i):
            tokens.append((text[i : i + 2], text[i : i + 2]))
            i += 2
        elif c in _SPECIAL:
            tokens.append((c, c))
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            word = text[start:i]
            kind = word if word in ("in", "notin") else "id"
            tokens.append((kind, word))
    tokens.append(("end", ""))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok[0] != "end":
            self.pos += 1
        return tok

    def fail(self, found: _Token, expected: str) -> errors.ApiError:
        shown = found[1] if found[0] != "end" else "end of input"
        return _bad_selector(self.text, f"found {shown!r}, expected: {expected}")

    def requirements(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            reqs.append(self.requirement())
            tok = self.take()
            if tok[0] == "end":
                return reqs
            if tok[0] != ",":
                raise self.fail(tok, "',' or end of input")

    def requirement(self) -> Requirement:
        tok = self.take()
        if tok[0] == "!":
            key_tok = self.take()
            if key_tok[0] != "id":
                raise self.fail(key_tok, "label key")
            return _requirement(self.text, key_tok[1], "!", [])
        if tok[0] != "id":
            raise self.fail(tok, "label key")
        key = tok[1]
        op_tok = self.peek()
        kind = op_tok[0]
        if kind in (",", "end"):
            return _requirement(self.text, key, "exists", [])
        self.take()
        if kind in ("in", "notin"):
            op: Operator = "in" if kind == "in" else "notin"
            return _requirement(self.text, key, op, self.value_set())
        if kind in ("=", "==", "!="):
            exact: Operator = "=" if kind == "=" else ("==" if kind == "==" else "!=")
            return _requirement(self.text, key, exact, [self.single_value()])
        if kind in (">", "<"):
            return _requirement(
                self.text, key, "gt" if kind == ">" else "lt", [self.single_value()]
            )
        raise self.fail(op_tok, "'=', '==', '!=', 'in', 'notin', '>' or '<'")

    def single_value(self) -> str:
        tok = self.peek()
        if tok[0] == "id":
            self.take()
            return tok[1]
        if tok[0] in (",", "end"):
            return ""  # `app=` selects the empty value
        raise self.fail(tok, "label value")

    def value_set(self) -> list[str]:
        tok = self.take()
        if tok[0] != "(":
            raise self.fail(tok, "'('")
        values: list[str] = []
        expect_value = True
        while True:
            tok = self.take()
            if tok[0] == "id" and expect_value:
                values.append(tok[1])
                expect_value = False
            elif tok[0] == ",":
                if expect_value:
                    values.append("")
                expect_value = True
            elif tok[0] == ")":
                if expect_value and values:
                    values.append("")
                return values
            else:
                raise self.fail(tok, "label value, ',' or ')'")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()
    matches_nothing: bool = False

    @classmethod
    def nothing(cls) -> LabelSelector:
        return cls((), True)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse `labelSelector=` text; blank text selects everything."""
        if not text.strip():
            return cls()
        reqs = _Parser(text).requirements()
        return cls(tuple(sorted(reqs, key=lambda r: r.key)))

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        """Equality on every pair (SelectorFromSet); an empty map selects everything."""
        reqs = [_requirement(str(dict(labels)), k, "=", [v]) for k, v in labels.items()]
        return cls(tuple(sorted(reqs, key=lambda r: r.key)))

    @classmethod
    def from_spec(cls, sel: Obj | None) -> LabelSelector:
        """A `metav1.LabelSelector` (matchLabels + matchExpressions).

        None matches nothing; `{}` matches everything. Malformed specs raise ApiError 400.
        """
        if sel is None:
            return cls.nothing()
        if not isinstance(sel, dict):
            raise errors.bad_request(f"invalid label selector {sel!r}: must be an object")
        text = _spec_text(sel)
        reqs: list[Requirement] = []
        match_labels = sel.get("matchLabels") or {}
        if not isinstance(match_labels, dict):
            raise _bad_selector(text, "matchLabels must be an object of string values")
        for k, v in match_labels.items():
            if not isinstance(v, str):
                raise _bad_selector(text, f"matchLabels[{k}] must be a string")
            reqs.append(_requirement(text, k, "=", [v]))
        expressions = sel.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise _bad_selector(text, "matchExpressions must be a list")
        for expr in expressions:
            reqs.append(_expression(text, expr))
        return cls(tuple(sorted(reqs, key=lambda r: r.key)))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.matches_nothing:
            return False
        present = labels or {}
        return all(r.matches(present) for r in self.requirements)

    def is_empty(self) -> bool:
        """True when the selector has no requirements and so selects everything."""
        return not self.matches_nothing and not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_EXPRESSION_OPERATORS: dict[str, Operator] = {
    "In": "in",
    "NotIn": "notin",
    "Exists": "exists",
    "DoesNotExist": "!",
}


def _expression(text: str, expr: Any) -> Requirement:
    if not isinstance(expr, dict):
        raise _bad_selector(text, "each matchExpressions entry must be an object")
    key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if not isinstance(key, str):
        raise _bad_selector(text, "matchExpressions key must be a string")
    op = _EXPRESSION_OPERATORS.get(operator) if isinstance(operator, str) else None
    if op is None:
        raise _bad_selector(
            text,
            f"{operator!r} is not a valid label selector operator "
            f"(valid: In, NotIn, Exists, DoesNotExist)",
        )
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _bad_selector(text, f"values for key {key!r} must be a list of strings")
    if op in ("exists", "!") and values:
        raise _bad_selector(
            text, f"values set must be empty for exists and does not exist (key {key!r})"
        )
    return _requirement(text, key, op, values)


def _spec_text(sel: Mapping[str, Any]) -> str:
    return str({k: sel[k] for k in ("matchLabels", "matchExpressions") if k in sel})


# --- field selectors -----------------------------------------------------------------------

FieldOperator = Literal["=", "==", "!="]


# field label -> where to read it in the object; values are compared as strings.
_COMMON_FIELDS: dict[str, tuple[str, ...]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
}
_RESOURCE_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "pods": {
        "spec.nodeName": ("spec", "nodeName"),
        "spec.restartPolicy": ("spec", "restartPolicy"),
        "spec.schedulerName": ("spec", "schedulerName"),
        "spec.serviceAccountName": ("spec", "serviceAccountName"),
        "spec.hostNetwork": ("spec", "hostNetwork"),
        "status.phase": ("status", "phase"),
        "status.podIP": ("status", "podIP"),
        "status.nominatedNodeName": ("status", "nominatedNodeName"),
    },
    "events": {
        "involvedObject.kind": ("involvedObject", "kind"),
        "involvedObject.namespace": ("involvedObject", "namespace"),
        "involvedObject.name": ("involvedObject", "name"),
        "involvedObject.uid": ("involvedObject", "uid"),
        "involvedObject.apiVersion": ("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": ("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": ("involvedObject", "fieldPath"),
        "reason": ("reason",),
        "reportingComponent": ("reportingComponent",),
        "source": ("source", "component"),
        "type": ("type",),
    },
    "nodes": {"spec.unschedulable": ("spec", "unschedulable")},
    "secrets": {"type": ("type",)},
    "replicasets": {"status.replicas": ("status", "replicas")},
    "namespaces": {"status.phase": ("status", "phase")},
}
# Fields whose absent value renders as something other than "" (Go zero values).
_ZERO_VALUES: dict[str, str] = {
    "spec.unschedulable": "false",
    "spec.hostNetwork": "false",
    "status.replicas": "0",
}


def supported_fields(res: Resource) -> list[str]:
    return sorted({**_COMMON_FIELDS, **_RESOURCE_FIELDS.get(res.plural, {})})


def _field_string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    operator: FieldOperator
    value: str
    path: tuple[str, ...]

    def value_of(self, obj: Mapping[str, Any]) -> str:
        """The field's value in `obj`, as a selector compares it."""
        node: Any = obj
        for part in self.path:
            node = node.get(part) if isinstance(node, Mapping) else None
        have = _field_string(node)
        if have is None:
            have = _ZERO_VALUES.get(self.field, "")
        if self.field == "source" and not have:
            # events written by the new API carry reportingController instead of source
            have = _field_string(obj.get("reportingController")) or ""
        return have

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (self.value_of(obj) == self.value) != (self.operator == "!=")

    def __str__(self) -> str:
        return f"{self.field}{self.operator}{_escape_field_value(self.value)}"


def _escape_field_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split on `sep` except where escaped with a backslash (the escapes stay in place)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape_field_value(text: str, whole: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if nxt not in ("\\", ",", "="):
                raise errors.bad_request(
                    f"invalid field selector {whole!r}: invalid escape sequence '\\{nxt}'"
                )
            out.append(nxt)
            i += 2
            continue
        if c in (",", "="):
            raise errors.bad_request(
                f"invalid field selector {whole!r}: unescaped {c!r} in value {text!r}"
            )
        out.append(c)
        i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str, res: Resource) -> FieldSelector:
        """Parse `fieldSelector=` text for `res`; unknown fields are a 400 like upstream."""
        if not text.strip():
            return cls()
        fields = {**_COMMON_FIELDS, **_RESOURCE_FIELDS.get(res.plural, {})}
        reqs: list[FieldRequirement] = []
        for part in _split_unescaped(text, ","):
            term = part.strip()
            op: FieldOperator | None = None
            for candidate in ("!=", "==", "="):
                idx = _find_unescaped(term, candidate)
                if idx >= 0:
                    op = "!=" if candidate == "!=" else ("==" if candidate == "==" else "=")
                    name, raw = term[:idx].strip(), term[idx + len(candidate) :]
                    break
            if op is None:
                raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            if name not in fields:
                raise errors.bad_request(
                    f"field label not supported: {name} (supported for {res.plural}: "
                    f"{', '.join(supported_fields(res))})"
                )
            value = _unescape_field_value(raw, text)
            reqs.append(FieldRequirement(name, op, value, fields[name]))
        return cls(tuple(reqs))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(r.matches(obj) for r in self.requirements)

    def is_empty(self) -> bool:
        return not self.requirements

    def exact_value(self, field: str) -> str | None:
        """The value `field` must equal (e.g. metadata.name for a single-object watch)."""
        for r in self.requirements:
            if r.field == field and r.operator != "!=":
                return r.value
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _find_unescaped(text: str, needle: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1
