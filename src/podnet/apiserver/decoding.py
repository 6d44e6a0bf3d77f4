"""Request bodies to JSON values that every later layer can trust.

What belongs here: `parse_document(data, content_type)` — JSON, YAML or kubectl's protobuf
bytes to a plain JSON value — and the bounds it enforces before and while parsing. The HTTP
layer reads at most `MAX_BODY_BYTES` and hands the bytes here; what the value *means* (its
kind's Go types, its validity) is `api.schema`'s and `api.validation`'s.

Invariants (what upstream's Go decoder gives kube-apiserver for free):
- Bounded: at most `MAX_BODY_BYTES` (3 MiB, upstream's request limit) and `MAX_DEPTH` levels
  of nesting, checked on the bytes *before* the parser recurses; a YAML document's aliases,
  expanded, must fit the same byte limit (no "billion laughs").
- Plain JSON values only: dicts with string keys, lists, strings, bools, None, ints within
  int64 and finite floats. YAML timestamps stay strings and YAML-only types (`!!binary`,
  `!!set`, `.inf`) are refused, as sigs.k8s.io/yaml's YAML-to-JSON conversion does.
- Valid Unicode: a lone UTF-16 surrogate escape (`"\\ud800"`) becomes U+FFFD, as Go's decoder
  does, so no later `str.encode()` can fail.
- Every failure is a 400 BadRequest `ApiError` (415 for a media type podnet does not decode);
  nothing else escapes.

Why 100 levels: no object of a kind podnet serves nests deeper than ~20 (managedFields
included); the bound keeps every recursive walk after decoding (defaulting, validation, patch,
deepcopy, encoding) far below Python's recursion limit.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

import yaml

from podnet.api.errors import ApiError, bad_request, unsupported_media_type
from podnet.api.schema import INT64
from podnet.apiserver import protobuf

MAX_BODY_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 100

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = [0] * 256
_BRACKET_STEP[ord("[")] = _BRACKET_STEP[ord("{")] = 1
_BRACKET_STEP[ord("]")] = _BRACKET_STEP[ord("}")] = -1
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def too_deep() -> ApiError:
    return bad_request(
        f"the request body is nested more than {MAX_DEPTH} levels deep; no Kubernetes object "
        "needs that many"
    )


def json_depth(data: bytes) -> int:
    """How deeply the JSON text nests arrays and objects (brackets inside strings ignored).
    Linear in C: strings are cut out by a regex, brackets counted by a running sum."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return MAX_DEPTH  # cannot be deeper than the number of openers: no need to count
    skeleton = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, skeleton)), default=0)


class _BadNumber(ValueError):
    pass


def _json_int(text: str) -> int:
    # int64 has at most 19 digits: longer text never reaches int() (CPython caps str->int at
    # 4300 digits with a ValueError of its own)
    value = int(text) if len(text) <= 20 else INT64[1] + 1
    if not INT64[0] <= value <= INT64[1]:
        raise _BadNumber(f"the number {text[:40]} does not fit in a 64-bit integer")
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]} is out of range for a 64-bit float")
    return value


def _json_constant(text: str) -> Any:
    raise _BadNumber(f"{text} is not a JSON value")


def parse_json(data: bytes) -> Any:
    if json_depth(data) > MAX_DEPTH:
        raise too_deep()
    try:
        value = json.loads(
            data, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except _BadNumber as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(data):
        value = plain_json(value)
    return value


# --- YAML ------------------------------------------------------------------------------------


class _Loader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader without the YAML 1.1 timestamp type: `2024-01-01` stays a string, as in
    sigs.k8s.io/yaml."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _check_yaml_events(data: bytes) -> None:
    """Depth and alias-expanded size from the event stream (PyYAML's parser is iterative; its
    composer is recursive, so this runs first)."""
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    stack: list[list[Any]] = [[0, None]]  # [expanded size so far, anchor] per open collection
    total = 0
    for event in yaml.parse(data, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([1, event.anchor])
            if len(stack) - 1 > MAX_DEPTH:
                raise too_deep()
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = size
        elif isinstance(event, yaml.ScalarEvent):
            size = 1 + len(event.value)
            if event.anchor is not None:
                sizes[event.anchor] = size
        elif isinstance(event, yaml.AliasEvent):
            size = sizes.get(event.anchor or "", 1)
        else:
            continue
        stack[-1][0] += size
        total += size
        if total > MAX_BODY_BYTES:
            raise bad_request(
                f"the YAML request body, with its aliases expanded, exceeds the limit of "
                f"{MAX_BODY_BYTES} bytes (3 MiB)"
            )


def parse_yaml(data: bytes) -> Any:
    try:
        _check_yaml_events(data)
        value = yaml.load(data, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise bad_request(f"the request body is not valid YAML: {exc}") from None
    except ValueError:  # int() of a number longer than CPython's 4300-digit cap
        raise bad_request(
            "the request body is not valid YAML: a number does not fit in a 64-bit integer"
        ) from None
    return plain_json(value)


# --- plain JSON values -------------------------------------------------------------------------


def _key(key: Any) -> str:
    """A YAML mapping key as sigs.k8s.io/yaml writes it into JSON."""
    if isinstance(key, str):
        return _SURROGATE.sub("\ufffd", key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int | float):
        return json.dumps(plain_json(key))
    raise bad_request(f"a mapping key in the request body is a {type(key).__name__}, not a string")


def plain_json(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON (see the module invariants), or a 400 naming what is not."""
    if depth > MAX_DEPTH:
        raise too_deep()
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise bad_request(f"the number {value} does not fit in a 64-bit integer")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad_request(f"the number {value} cannot be represented in JSON")
        return value
    if isinstance(value, list):
        return [plain_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_key(k): plain_json(v, depth + 1) for k, v in value.items()}
    raise bad_request(
        f"the request body holds a value of YAML type {type(value).__name__}; "
        "Kubernetes objects hold only JSON values (strings, numbers, booleans, lists, maps)"
    )


# --- entry point -------------------------------------------------------------------------------


def parse_document(data: bytes, content_type: str) -> Any:
    """A JSON (or YAML, or kubectl protobuf) request body as a plain JSON value; malformed
    input is a 400 that says what is wrong."""
    if len(data) > MAX_BODY_BYTES:
        raise ApiError(
            413,
            "RequestEntityTooLarge",
            f"the request body exceeds the limit of {MAX_BODY_BYTES} bytes (3 MiB)",
        )
    if content_type == protobuf.CONTENT_TYPE:
        return protobuf.decode_object(data)
    if "protobuf" in content_type or "cbor" in content_type:
        raise unsupported_media_type(
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json, application/yaml (got {content_type})"
        )
    if not data.strip():
        raise bad_request("the request body is empty; send a JSON object")
    if "yaml" in content_type:
        return parse_yaml(data)
    return parse_json(data)
