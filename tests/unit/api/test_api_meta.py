"""Metadata helpers and the upstream name/label syntax checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from podnet.api import meta

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_rfc3339_round_trip_and_naive_is_utc() -> None:
    assert meta.rfc3339(T0) == "2024-05-01T12:00:00Z"
    assert meta.rfc3339(datetime(2024, 5, 1, 12, 0, 0)) == "2024-05-01T12:00:00Z"
    plus2 = datetime(2024, 5, 1, 14, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert meta.rfc3339(plus2) == "2024-05-01T12:00:00Z"
    assert meta.rfc3339(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0999-01-02T03:04:05Z"
    assert meta.parse_rfc3339("2024-05-01T12:00:00Z") == T0
    assert meta.parse_rfc3339("2024-05-01T12:00:00.123456Z") == T0 + timedelta(microseconds=123456)
    assert meta.parse_rfc3339("yesterday") is None
    assert meta.parse_rfc3339(None) is None
    assert meta.parse_rfc3339("") is None


def test_rfc3339_precisions_match_metav1_time_microtime_and_nano() -> None:
    when = T0 + timedelta(microseconds=123456)
    assert meta.rfc3339(when, 6) == "2024-05-01T12:00:00.123456Z"  # metav1.MicroTime
    assert meta.rfc3339(when, 9) == "2024-05-01T12:00:00.123456000Z"  # RFC3339Nano
    assert meta.rfc3339(T0, 6) == "2024-05-01T12:00:00.000000Z"
    # what the proxy reads back from a trigger-time annotation another writer set in nanoseconds
    assert meta.parse_rfc3339("2024-05-01T12:00:00.123456789Z") == when
    assert meta.parse_rfc3339("2024-05-01T14:00:00+02:00") == T0
    with pytest.raises(ValueError, match="digits"):
        meta.rfc3339(T0, 3)


def test_uids_are_unique_uuids() -> None:
    a, b = meta.new_uid(), meta.new_uid()
    assert a != b and len(a) == 36 and a.count("-") == 4


def test_dns1123_label_message_matches_upstream() -> None:
    assert meta.dns1123_label_errors("my-name") == []
    assert meta.dns1123_label_errors("My_Name") == [
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
        "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
        "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    ]
    assert meta.dns1123_label_errors("a" * 64)[0] == "must be no more than 63 characters"
    assert meta.dns1123_label_errors(5) == ["must be a string"]


def test_subdomain_and_dns1035() -> None:
    assert meta.dns1123_subdomain_errors("web.example.com") == []
    assert meta.dns1123_subdomain_errors("web..x") != []
    assert meta.dns1035_label_errors("web") == []
    assert "start with an alphabetic character" in meta.dns1035_label_errors("1web")[0]


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("app", True),
        ("app.kubernetes.io/name", True),
        ("A_b.c-D", True),
        ("/name", False),
        ("a/b/c", False),
        ("-app", False),
        ("Example.com/x", False),
        ("x" * 64, False),
        ("example.com/", False),
    ],
)
def test_qualified_names(key: str, ok: bool) -> None:
    assert (meta.qualified_name_errors(key) == []) is ok


def test_label_values_and_config_keys() -> None:
    assert meta.label_value_errors("") == []
    assert meta.label_value_errors("v1.2_x") == []
    assert meta.label_value_errors("-x") != []
    assert meta.config_key_errors("key.name") == []
    assert meta.config_key_errors("..") == ["must not be '..'"]
    assert meta.config_key_errors("a/b") != []
