"""Kubernetes API errors as values: every failure the API returns is one of these.

What belongs here: `ApiError` (an exception that carries a `meta/v1 Status`) and one constructor
per upstream reason, with upstream's exact message shapes (apimachinery `api/errors`). The API
server turns any `ApiError` into its Status JSON and HTTP code; clients (`api.client`) raise the
same type from a Status body, so code on both sides handles one error type.

Rules: NotFound / AlreadyExists / Conflict name the *resource* (plural) in `details.kind`;
Invalid names the *Kind* and lists `details.causes` with field, reason and message.

Invariants of the wire form (`ApiError.status_bytes`), byte for byte what kube-apiserver writes
(Go's `json.Encoder` over `metav1.Status`): fields in the struct's order (`kind, apiVersion,
metadata, status, message, reason, details, code`; details `name, group, kind, uid, causes,
retryAfterSeconds`; a cause `reason, message, field`), empty ones left out (`omitempty`) except
`metadata`, compact separators, `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c` ...,
other non-ASCII text as UTF-8, and a trailing newline. `details` is None when upstream sends
none and `{}` when it sends an empty one (a Forbidden on a non-resource path does).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Cause:
    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, ...
    message: str

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


@dataclass(slots=True)
class ApiError(Exception):
    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None

    def __str__(self) -> str:
        return self.message

    def status(self) -> dict[str, Any]:
        """The `meta/v1 Status` object, keys in upstream's order, empty fields left out."""
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
        body["status"] = "Failure"
        if self.message:
            body["message"] = self.message
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = _ordered_details(self.details)
        if self.code:
            body["code"] = self.code
        return body

    def status_bytes(self) -> bytes:
        """The Status as kube-apiserver sends it (see the module invariants)."""
        return go_json(self.status())

    @classmethod
    def from_status(cls, status: dict[str, Any], http_code: int) -> ApiError:
        details = status.get("details")
        return cls(
            code=int(status.get("code") or http_code),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or f"HTTP {http_code}"),
            details=dict(details) if isinstance(details, dict) else None,
        )


_DETAILS_ORDER = ("name", "group", "kind", "uid", "causes", "retryAfterSeconds")
_CAUSE_ORDER = ("reason", "message", "field")


def _ordered_details(details: dict[str, Any]) -> dict[str, Any]:
    out = {k: details[k] for k in _DETAILS_ORDER if details.get(k)}
    if "causes" in out:
        out["causes"] = [
            {k: c[k] for k in _CAUSE_ORDER if c.get(k)} if isinstance(c, dict) else c
            for c in out["causes"]
        ]
    out.update({k: v for k, v in details.items() if k not in _DETAILS_ORDER and v})
    return out


_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json(value: Any) -> bytes:
    """`value` encoded as Go's `json.NewEncoder(w).Encode` does (HTML-safe escapes, UTF-8,
    compact, a trailing newline). Keys keep the dict's order. The escaped characters only
    ever occur inside JSON strings, so replacing them in the encoded text is exact."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = _GO_ESCAPED.sub(lambda m: _GO_ESCAPES[m.group()], text)
    # a lone surrogate (from a "\\ud800" escape in a request) is invalid UTF-8: Go writes U+FFFD
    text = _LONE_SURROGATE.sub("\ufffd", text)
    return text.encode() + b"\n"


def _details(name: str, resource: str, group: str) -> dict[str, Any]:
    """upstream's StatusDetails for a resource: empty members are left out."""
    d = {"name": name, "group": group, "kind": resource}
    return {k: v for k, v in d.items() if v}


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(resource, group)} "{name}" not found',
        _details(name, resource, group),
    )


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(resource, group)} "{name}" already exists',
        _details(name, resource, group),
    )


def conflict(resource: str, name: str, group: str = "", why: str = "") -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        _details(name, resource, group),
    )


def invalid(kind: str, name: str, causes: list[Cause], group: str = "") -> ApiError:
    summary = ", ".join(f"{c.field}: {c.message}" for c in causes)
    if len(causes) > 1:
        summary = f"[{summary}]"
    details = _details(name, kind, group) | {"causes": [c.to_json() for c in causes]}
    return ApiError(
        422,
        "Invalid",
        f'{kind}{"." + group if group else ""} "{name}" is invalid: {summary}',
        details,
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(message: str, resource: str = "", name: str = "", group: str = "") -> ApiError:
    """upstream `NewForbidden`: `message` is the whole text (`pods "x" is forbidden: ...`);
    details name the resource when there is one and are `{}` otherwise, as upstream's are."""
    return ApiError(403, "Forbidden", message, _details(name, resource, group))


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def method_not_supported(resource: str, action: str, group: str = "") -> ApiError:
    """upstream `NewMethodNotSupported`: an action the resource does not offer."""
    return ApiError(
        405,
        "MethodNotAllowed",
        f'{action} is not supported on resources of kind "{_qualified(resource, group)}"',
        _details("", resource, group),
    )


def gone(message: str) -> ApiError:
    """410 for a compacted resourceVersion (watch or list continue): upstream
    `NewResourceExpired`."""
    return ApiError(410, "Expired", message)


def too_many_requests(
    message: str, retry_after: int = 0, causes: list[dict[str, str]] | None = None
) -> ApiError:
    """upstream `NewTooManyRequests` (details always sent; the handler turns
    retryAfterSeconds into the Retry-After header)."""
    details: dict[str, Any] = {}
    if causes:
        details["causes"] = causes
    if retry_after:
        details["retryAfterSeconds"] = retry_after
    return ApiError(429, "TooManyRequests", message, details)


def too_large(message: str) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def internal(message: str) -> ApiError:
    return ApiError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        {"causes": [{"message": message}]},
    )


def service_unavailable(message: str) -> ApiError:
    return ApiError(503, "ServiceUnavailable", message)


def timeout(message: str) -> ApiError:
    return ApiError(504, "Timeout", message)


def go_sprint(value: Any) -> str:
    """A decoded JSON value as Go's `fmt.Sprintf("%+v", v)` prints it (maps with sorted keys
    as `map[k:v]`, lists as `[a b]`, numbers as the float64 they decode to, null as `<nil>`):
    how upstream quotes a patch in its `Invalid value` messages."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_sprint(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_sprint(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _go_float(float(value))
    return str(value)


def _go_float(number: float) -> str:
    """%v of a float64 (strconv 'g' with the shortest digits): %e form when the decimal
    exponent is < -4 or >= 6, as `fmt.Println(1000000.0)` prints `1e+06`."""
    if number == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    exp10 = point - 1
    out = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{out}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{out}0.{'0' * -point}{text}"
    if point >= len(text):
        return out + text + "0" * (point - len(text))
    return f"{out}{text[:point]}.{text[point:]}"
