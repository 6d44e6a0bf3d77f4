"""Metadata helpers and the upstream name/label syntax checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from podnet.api import meta

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_rfc3339_round_trip_and_naive_is_utc() -> None:
    assert meta.now_rfc3339(T0) == "2024-05-01T12:00:00Z"
    assert meta.now_rfc3339(datetime(2024, 5, 1, 12, 0, 0)) == "2024-05-01T12:00:00Z"
    plus2 = datetime(2024, 5, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert meta.now_rfc3339(plus2) == "2024-05-01T12:00:00Z"
    assert meta.parse_rfc3339("2024-05-01T12:00:00Z") == T0
    assert meta.parse_rfc3339("2024-05-01T12:00:00.123456Z") == T0 + timedelta(microseconds=123456)
    assert meta.parse_rfc3339("yesterday") is None
    assert meta.parse_rfc3339(None) is None


def test_uids_are_unique_uuids() -> None:
    a, b = meta.new_uid(), meta.new_uid()
    assert a != b and len(a) == 36 and a.count("-") == 4


def test_key_namespaced_and_cluster_scoped() -> None:
    assert meta.key({"metadata": {"name": "web", "namespace": "prod"}}) == "prod/web"
    assert meta.key({"metadata": {"name": "node-1"}}) == "node-1"


def test_owner_reference_and_controlled_by() -> None:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "d", "uid": "u-1"},
    }
    ref = meta.owner_reference(dep)
    assert ref == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    rs = {"metadata": {"name": "web-1", "ownerReferences": [ref]}}
    assert meta.is_controlled_by(rs, "u-1")
    assert not meta.is_controlled_by(rs, "u-2")
    not_controller = {"metadata": {"ownerReferences": [meta.owner_reference(dep, False, False)]}}
    assert not meta.is_controlled_by(not_controller, "u-1")
    with pytest.raises(ValueError, match=r"metadata\.uid"):
        meta.owner_reference({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    status: dict[str, object] = {}
    assert meta.set_condition(status, {"type": "Ready", "status": "False", "reason": "A"}, T0)
    pod = {"status": status}
    cond = meta.get_condition(pod, "Ready")
    assert cond is not None and cond["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    later = T0 + timedelta(minutes=5)
    # same status, new reason: changed, but the transition time stays
    assert meta.set_condition(status, {"type": "Ready", "status": "False", "reason": "B"}, later)
    cond = meta.get_condition(pod, "Ready")
    assert cond is not None
    assert (cond["reason"], cond["lastTransitionTime"]) == ("B", "2024-05-01T12:00:00Z")
    # identical: no change reported
    assert not meta.set_condition(
        status, {"type": "Ready", "status": "False", "reason": "B"}, later
    )
    assert meta.set_condition(status, {"type": "Ready", "status": "True"}, later)
    cond = meta.get_condition(pod, "Ready")
    assert cond is not None and cond["lastTransitionTime"] == "2024-05-01T12:05:00Z"
    assert meta.pod_is_ready(pod)
    assert meta.get_condition(pod, "Initialized") is None


def test_pod_is_terminal() -> None:
    assert meta.pod_is_terminal({"status": {"phase": "Succeeded"}})
    assert meta.pod_is_terminal({"status": {"phase": "Failed"}})
    assert not meta.pod_is_terminal({"status": {"phase": "Running"}})
    assert not meta.pod_is_terminal({})


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
