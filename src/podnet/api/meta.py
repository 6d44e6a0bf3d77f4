"""Metadata helpers every component shares: RFC 3339 timestamps, uids, and the upstream *syntax*
rules for names, label keys and label values.

What belongs here: `rfc3339` / `parse_rfc3339`, the one way podnet writes and reads API
timestamps (the server, the controllers, the kubelet and the proxy all call them); `new_uid`;
and apimachinery `util/validation`'s name and label checkers, because both `validation` and
`selectors` need them and neither should import the other for it. Readers of object shapes
(keys, owner references, conditions, pod readiness) are the control loops' and live in
`podnet.controllers.objects`.

Invariants:
- No I/O and no clock: every function that needs the time takes it. `new_uid` is the one
  exception that draws randomness (uuid4), like upstream.
- Syntax checkers return upstream's detail messages (a list; empty means valid), never raise,
  and accept any JSON value: a non-string is reported, not crashed on.
- Timestamps are written in UTC with a `Z` suffix: whole seconds for `metav1.Time`
  (`2024-05-01T12:00:00Z`), 6 digits for `metav1.MicroTime`, 9 for RFC3339Nano.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

# --- time -----------------------------------------------------------------------------------

_FRACTION_DIGITS = (0, 6, 9)


def rfc3339(when: datetime, digits: int = 0) -> str:
    """`when` as RFC 3339 in UTC with `digits` fractional-second digits: 0 for metav1.Time,
    6 for metav1.MicroTime (Lease renewTime), 9 for RFC3339Nano (annotations such as
    `endpoints.kubernetes.io/last-change-trigger-time`; Python keeps microseconds, so the last
    three digits are 0). Naive datetimes are taken as UTC."""
    if digits not in _FRACTION_DIGITS:
        raise ValueError(f"rfc3339: digits must be one of {_FRACTION_DIGITS}, not {digits}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # isoformat, not strftime: a third of the CPU (several stamps per pod status write and per
    # Endpoints write), and always a four-digit year as RFC 3339 wants (glibc's %Y pads none)
    text = when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    if digits:
        text += f".{when.microsecond:06d}".ljust(digits + 1, "0")
    return text + "Z"


def parse_rfc3339(text: object) -> datetime | None:
    """Parse metav1.Time / MicroTime / RFC3339Nano (any number of fractional digits; beyond
    microseconds they are dropped); None for missing or malformed values. A value without an
    offset is taken as UTC."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def new_uid() -> str:
    return str(uuid.uuid4())


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
