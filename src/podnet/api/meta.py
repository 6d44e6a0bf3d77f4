"""Object-metadata helpers shared by the API server, the controllers and the agents.

What belongs here: pure functions over the wire shape of Kubernetes objects (plain JSON dicts)
that more than one component needs — timestamps, uids, owner references, conditions, pod
readiness, cache keys — and the upstream *syntax* rules for names, label keys and label values
(apimachinery `util/validation`), because both `validation` and `selectors` need them and neither
should import the other for it.

Invariants:
- No I/O and no clock: every function that needs the time takes `now`. `new_uid` is the one
  exception that draws randomness (uuid4), like upstream.
- Syntax checkers return upstream's detail messages (a list; empty means valid), never raise,
  and accept any JSON value: a non-string is reported, not crashed on.
- Timestamps are RFC 3339 in UTC with second precision (`2024-05-01T12:00:00Z`), as
  `metav1.Time` serialises them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from podnet.api.interface import Obj

# --- time -----------------------------------------------------------------------------------


def now_rfc3339(now: datetime) -> str:
    """`now` as metav1.Time JSON: UTC, whole seconds, `Z` suffix. Naive datetimes are UTC."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: object) -> datetime | None:
    """Parse a metav1.Time / MicroTime string; None for missing or malformed values."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def new_uid() -> str:
    return str(uuid.uuid4())


# --- identity and ownership ----------------------------------------------------------------


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    md = obj.get("metadata")
    return md if isinstance(md, Mapping) else {}


def key(obj: Mapping[str, Any]) -> str:
    """The cache key `namespace/name`, or `name` for cluster-scoped objects (client-go's
    MetaNamespaceKeyFunc)."""
    md = _metadata(obj)
    name = str(md.get("name") or "")
    namespace = md.get("namespace")
    return f"{namespace}/{name}" if namespace else name


def owner_reference(obj: Mapping[str, Any], controller: bool = True, block: bool = True) -> Obj:
    """An ownerReference pointing at `obj` (which must carry apiVersion, kind, name and uid)."""
    md = _metadata(obj)
    for needed, value in (
        ("apiVersion", obj.get("apiVersion")),
        ("kind", obj.get("kind")),
        ("metadata.name", md.get("name")),
        ("metadata.uid", md.get("uid")),
    ):
        if not value:
            raise ValueError(f"cannot reference an owner without {needed}: {key(obj)!r}")
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": md["name"],
        "uid": md["uid"],
        "controller": controller,
        "blockOwnerDeletion": block,
    }


def controller_of(obj: Mapping[str, Any]) -> Obj | None:
    """The ownerReference with `controller: true`, if any (there is at most one)."""
    refs = _metadata(obj).get("ownerReferences")
    if not isinstance(refs, list):
        return None
    for ref in refs:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None


def is_controlled_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == owner_uid


# --- conditions ----------------------------------------------------------------------------


def get_condition(obj: Mapping[str, Any], condition_type: str) -> Obj | None:
    """The condition of `condition_type` in `obj["status"]["conditions"]`, or None."""
    status = obj.get("status")
    if not isinstance(status, Mapping):
        return None
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return None
    for cond in conditions:
        if isinstance(cond, dict) and cond.get("type") == condition_type:
            return cond
    return None


def set_condition(status: Obj, cond: Mapping[str, Any], now: datetime) -> bool:
    """Upsert `cond` (by type) into `status["conditions"]`, in place.

    `lastTransitionTime` moves to `now` only when the condition is new or its `status` changes
    (a bare reason/message change keeps the old transition time), matching upstream's
    SetStatusCondition. Returns whether anything changed.
    """
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        conditions = []
        status["conditions"] = conditions
    stamp = now_rfc3339(now)
    for i, existing in enumerate(conditions):
        if not isinstance(existing, dict) or existing.get("type") != cond.get("type"):
            continue
        updated = dict(existing)
        updated.update(cond)
        if existing.get("status") != cond.get("status"):
            updated["lastTransitionTime"] = cond.get("lastTransitionTime") or stamp
        else:
            updated["lastTransitionTime"] = existing.get("lastTransitionTime") or stamp
        if updated == existing:
            return False
        conditions[i] = updated
        return True
    added = dict(cond)
    added.setdefault("lastTransitionTime", stamp)
    conditions.append(added)
    return True


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    cond = get_condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_is_terminal(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status")
    return isinstance(status, Mapping) and status.get("phase") in ("Succeeded", "Failed")


# --- name and label syntax (apimachinery util/validation) ----------------------------------

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _QUALIFIED_NAME_FMT + ")?"
_CONFIG_KEY_FMT = "[-._a-zA-Z0-9]+"

_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = re.compile(_DNS1035_LABEL_FMT)
_QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME_FMT)
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)
_CONFIG_KEY_RE = re.compile(_CONFIG_KEY_FMT)


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """Upstream's RegexError text, including its `',  or '` spacing."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    text = msg + " (e.g. "
    for i, example in enumerate(examples):
        if i > 0:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


MUST_BE_STRING = "must be a string"


def dns1123_label_errors(value: object) -> list[str]:
    if not isinstance(value, str):
        return [MUST_BE_STRING]
    errs: list[str] = []
    if len(value) > DNS1123_LABEL_MAX:
        errs.append(max_len_error(DNS1123_LABEL_MAX))
    if not _DNS1123_LABEL_RE.fullmatch(value):
        errs.append(
            regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
                "'-', and must start and end with an alphanumeric character",
                _DNS1123_LABEL_FMT,
                "my-name",
                "123-abc",
            )
        )
    return errs


def dns1123_subdomain_errors(value: object) -> list[str]:
    if not isinstance(value, str):
        return [MUST_BE_STRING]
    errs: list[str] = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX))
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        errs.append(
            regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, "
                "'-' or '.', and must start and end with an alphanumeric character",
                _DNS1123_SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return errs


def dns1035_label_errors(value: object) -> list[str]:
    if not isinstance(value, str):
        return [MUST_BE_STRING]
    errs: list[str] = []
    if len(value) > DNS1123_LABEL_MAX:
        errs.append(max_len_error(DNS1123_LABEL_MAX))
    if not _DNS1035_LABEL_RE.fullmatch(value):
        errs.append(
            regex_error(
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
                "with an alphabetic character, and end with an alphanumeric character",
                _DNS1035_LABEL_FMT,
                "my-name",
                "abc-123",
            )
        )
    return errs


def qualified_name_errors(value: object) -> list[str]:
    """Label keys, annotation keys, finalizers: `[prefix/]name` (IsQualifiedName)."""
    if not isinstance(value, str):
        return [MUST_BE_STRING]
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in dns1123_subdomain_errors(prefix))
    else:
        return [
            "a qualified name "
            + regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                "end with an alphanumeric character",
                _QUALIFIED_NAME_FMT,
                "MyName",
                "my.name",
                "123-abc",
            )
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > QUALIFIED_NAME_MAX:
        errs.append("name part " + max_len_error(QUALIFIED_NAME_MAX))
    if name and not _QUALIFIED_NAME_RE.fullmatch(name):
        errs.append(
            "name part "
            + regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character",
                _QUALIFIED_NAME_FMT,
                "MyName",
                "my.name",
                "123-abc",
            )
        )
    return errs


def label_value_errors(value: object) -> list[str]:
    if not isinstance(value, str):
        return [MUST_BE_STRING]
    errs: list[str] = []
    if len(value) > LABEL_VALUE_MAX:
        errs.append(max_len_error(LABEL_VALUE_MAX))
    if not _LABEL_VALUE_RE.fullmatch(value):
        errs.append(
            regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', "
                "'_' or '.', and must start and end with an alphanumeric character",
                _LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errs


def config_key_errors(value: object) -> list[str]:
    """ConfigMap / Secret data keys (IsConfigMapKey)."""
    if not isinstance(value, str):
        return [MUST_BE_STRING]
    errs: list[str] = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX))
    if not _CONFIG_KEY_RE.fullmatch(value):
        errs.append(
            regex_error(
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                _CONFIG_KEY_FMT,
                "key.name",
                "KEY_NAME",
                "key-name",
            )
        )
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs
