"""Label selectors (query grammar and LabelSelector objects) and field selectors."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.api.resources import resource
from podnet.api.selectors import FieldSelector, LabelSelector

WEB = {"app": "web", "tier": "front", "version": "3"}
DB = {"app": "db"}
NONE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "web", "db", "none"),
    [
        ("", True, True, True),
        ("app=web", True, False, False),
        ("app==web", True, False, False),
        ("app!=web", False, True, True),  # != also matches objects without the key
        ("app in (web,db)", True, True, False),
        ("app notin (web)", False, True, True),
        ("tier", True, False, False),
        ("!tier", False, True, True),
        ("app=web,tier=front", True, False, False),
        ("app in (web), !debug", True, False, False),
        ("version>2", True, False, False),
        ("version<3", False, False, False),
        ("app=", False, False, False),
        ("  app = web  ", True, False, False),
    ],
)
def test_label_selector_parse_and_match(text: str, web: bool, db: bool, none: bool) -> None:
    sel = LabelSelector.parse(text)
    assert (sel.matches(WEB), sel.matches(DB), sel.matches(NONE)) == (web, db, none)


def test_label_selector_canonical_string_is_sorted() -> None:
    sel = LabelSelector.parse("tier in (b,a), app=web,!debug, env")
    assert str(sel) == "app=web,!debug,env,tier in (a,b)"
    assert str(LabelSelector.parse("a==b,c!=d,n>4")) == "a==b,c!=d,n>4"


def test_empty_value_in_set_and_empty_equality() -> None:
    assert LabelSelector.parse("a in (x,)").matches({"a": ""})
    assert LabelSelector.parse("a=").matches({"a": ""})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("app in web", "expected: '('"),
        ("app in ()", "values set can't be empty"),
        ("=web", "expected: label key"),
        ("app=web,", "expected: label key"),
        ("app=(x)", "expected: label value"),
        ("app web", "found 'web', expected: '=', '==', '!='"),
        ("bad key!=x", "found 'key', expected: '='"),
        ("-bad=x", "invalid label key '-bad'"),
        ("app=va lue", "expected: ',' or end of input"),
        ("app=-x", "invalid value '-x' for label 'app'"),
        ("n>x", "must be an integer"),
        ("a in (b", "expected: label value, ',' or ')'"),
    ],
)
def test_label_selector_errors_name_the_bad_part(text: str, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        LabelSelector.parse(text)
    assert info.value.code == 400
    assert info.value.reason == "BadRequest"
    assert fragment in info.value.message
    assert repr(text) in info.value.message


def test_from_spec_none_matches_nothing_and_empty_matches_everything() -> None:
    assert not LabelSelector.from_spec(None).matches(WEB)
    assert not LabelSelector.from_spec(None).is_empty()
    assert LabelSelector.from_spec({}).matches(WEB)
    assert LabelSelector.from_spec({}).matches(NONE)
    assert LabelSelector.from_spec({}).is_empty()


def test_from_spec_match_labels_and_expressions() -> None:
    sel = LabelSelector.from_spec(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "debug", "operator": "DoesNotExist"},
                {"key": "version", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
            ],
        }
    )
    assert sel.matches(WEB)
    assert not sel.matches({**WEB, "debug": "1"})
    assert not sel.matches({**WEB, "tier": "mid"})
    assert str(sel) == "app=web,!debug,tier in (back,front),version,zone notin (b)"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]},
            "'Like' is not a valid label selector operator",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "values set can't be empty"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "values set must be empty",
        ),
        ({"matchLabels": {"a": 1}}, "matchLabels[a] must be a string"),
        ({"matchLabels": "a=b"}, "matchLabels must be an object"),
    ],
)
def test_from_spec_rejects_malformed_selectors(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        LabelSelector.from_spec(spec)
    assert info.value.code == 400
    assert fragment in info.value.message


def test_from_labels_is_equality_on_each_pair() -> None:
    sel = LabelSelector.from_labels({"app": "web", "tier": "front"})
    assert sel.matches(WEB) and not sel.matches(DB)
    assert LabelSelector.from_labels({}).is_empty()


POD = {
    "metadata": {"name": "web-0", "namespace": "prod"},
    "spec": {"nodeName": "node-1", "restartPolicy": "Always", "schedulerName": "default-scheduler"},
    "status": {"phase": "Running", "podIP": "10.244.1.5"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.name=web-0", True),
        ("metadata.name==web-0,metadata.namespace=prod", True),
        ("metadata.name!=web-0", False),
        ("spec.nodeName=node-1,status.phase=Running", True),
        ("spec.nodeName=", False),
        ("status.podIP=10.244.1.5", True),
        ("spec.restartPolicy!=Never", True),
        ("spec.schedulerName=default-scheduler", True),
        ("", True),
    ],
)
def test_pod_field_selectors(text: str, expected: bool) -> None:
    assert FieldSelector.parse(text, resource("pods")).matches(POD) is expected


def test_unscheduled_pod_matches_empty_node_name() -> None:
    unscheduled = {"metadata": {"name": "p"}, "spec": {}}
    assert FieldSelector.parse("spec.nodeName=", resource("pods")).matches(unscheduled)


def test_event_field_selectors_from_kubectl_describe() -> None:
    event = {
        "metadata": {"name": "e1", "namespace": "prod"},
        "reason": "Pulled",
        "type": "Normal",
        "source": {"component": "kubelet"},
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "prod", "uid": "u1"},
    }
    sel = FieldSelector.parse(
        "involvedObject.name=web-0,involvedObject.namespace=prod,"
        "involvedObject.kind=Pod,involvedObject.uid=u1",
        resource("events"),
    )
    assert sel.matches(event)
    assert FieldSelector.parse(
        "source=kubelet,type=Normal,reason=Pulled", resource("events")
    ).matches(event)
    assert not FieldSelector.parse("involvedObject.uid=u2", resource("events")).matches(event)


def test_zero_values_for_missing_bool_and_int_fields() -> None:
    node = {"metadata": {"name": "n"}, "spec": {}}
    assert FieldSelector.parse("spec.unschedulable=false", resource("nodes")).matches(node)
    rs = {"metadata": {"name": "r"}, "status": {"replicas": 3}}
    assert FieldSelector.parse("status.replicas=3", resource("replicasets")).matches(rs)
    assert FieldSelector.parse("status.replicas!=0", resource("replicasets")).matches(rs)
    secret = {"metadata": {"name": "s"}, "type": "kubernetes.io/tls"}
    assert FieldSelector.parse("type=kubernetes.io/tls", resource("secrets")).matches(secret)


def test_escaped_values() -> None:
    sel = FieldSelector.parse(r"metadata.name=a\,b\=c", resource("configmaps"))
    assert sel.matches({"metadata": {"name": "a,b=c"}})
    assert str(sel) == r"metadata.name=a\,b\=c"


def test_unsupported_field_is_400_like_upstream() -> None:
    with pytest.raises(ApiError) as info:
        FieldSelector.parse("spec.nodeName=x", resource("services"))
    assert info.value.code == 400
    assert info.value.message.startswith("field label not supported: spec.nodeName")
    assert "metadata.name" in info.value.message


@pytest.mark.parametrize("text", ["metadata.name", "metadata.name~x", r"metadata.name=a\q"])
def test_malformed_field_selectors(text: str) -> None:
    with pytest.raises(ApiError) as info:
        FieldSelector.parse(text, resource("pods"))
    assert info.value.code == 400


def test_exact_value_for_single_object_watch() -> None:
    sel = FieldSelector.parse("metadata.name=web,spec.nodeName!=n1", resource("pods"))
    assert sel.exact_value("metadata.name") == "web"
    assert sel.exact_value("spec.nodeName") is None
    assert FieldSelector.parse("", resource("pods")).is_empty()
