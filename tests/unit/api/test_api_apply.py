"""Server-side apply's algorithm (api.apply, api.fieldpath) on upstream's schemas: golden
field sets as kube-apiserver writes them, merges of each list type, ownership transfer,
conflicts worded as upstream, prune with shared ownership."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from typing import Any

import pytest

from podnet.api import apply, fieldpath
from podnet.api.apply import Actor, ApplyConflict, ApplyError, Entry
from podnet.api.schema import KINDS

DEPLOYMENT = KINDS["Deployment"]
POD = KINDS["Pod"]
STRIP = apply.stripper(True, "")


def actor(manager: str, now: str = "T1") -> Actor:
    return Actor(manager, "apps/v1", now, strip=STRIP)


def deployment(replicas: int = 1, image: str = "busybox", **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": image, "ports": [{"containerPort": 80}]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container]},
            },
            **spec,
        },
    }


# kube-apiserver 1.32's managedFields for `kubectl apply --server-side` of deployment()
GOLDEN_APPLY_FIELDS = {
    "f:metadata": {"f:labels": {"f:app": {}}},
    "f:spec": {
        "f:replicas": {},
        "f:selector": {},
        "f:template": {
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:containers": {
                    'k:{"name":"c"}': {
                        ".": {},
                        "f:image": {},
                        "f:name": {},
                        "f:ports": {
                            'k:{"containerPort":80,"protocol":"TCP"}': {
                                ".": {},
                                "f:containerPort": {},
                            }
                        },
                    }
                }
            },
        },
    },
}


def test_fieldsv1_round_trip_order_and_path_strings() -> None:
    paths = apply.field_set(deployment(), DEPLOYMENT)
    assert fieldpath.to_fields_v1(STRIP(paths)) == GOLDEN_APPLY_FIELDS
    assert list(fieldpath.to_fields_v1(STRIP(paths))["f:spec"]) == [
        "f:replicas",
        "f:selector",
        "f:template",
    ]
    assert fieldpath.from_fields_v1(GOLDEN_APPLY_FIELDS) == STRIP(paths)
    port = (
        "f:spec",
        "f:template",
        "f:spec",
        "f:containers",
        'k:{"name":"c"}',
        "f:ports",
        'k:{"containerPort":80,"protocol":"TCP"}',
    )
    assert fieldpath.path_string(port) == (
        '.spec.template.spec.containers[name="c"].ports[containerPort=80,protocol="TCP"]'
    )
    assert fieldpath.path_string(("f:metadata", "f:finalizers", 'v:"a/b"')) == (
        '.metadata.finalizers[="a/b"]'
    )
    with pytest.raises(ValueError, match="unknown path element"):
        fieldpath.from_fields_v1({"x:y": {}})


def test_apply_creates_with_upstream_managed_fields() -> None:
    merged, entries = apply.apply(DEPLOYMENT, {}, deployment(), [], actor("kubectl"), False)
    assert merged == deployment()
    assert apply.encode_entries(entries) == [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "time": "T1",
            "fieldsType": "FieldsV1",
            "fieldsV1": GOLDEN_APPLY_FIELDS,
        }
    ]


def test_merge_follows_each_list_type() -> None:
    live = {
        "metadata": {"finalizers": ["a", "b"], "annotations": {"a": "1"}},  # set, granular map
        "spec": {
            "containers": [  # a map keyed by name
                {"name": "x", "image": "x:1", "command": ["sh", "-c", "old"]},
                {"name": "y", "image": "y:1"},
            ],
            "nodeSelector": {"disk": "ssd"},  # an atomic map: replaced whole
        },
    }
    config = {
        "metadata": {"finalizers": ["c", "a"], "annotations": {"b": "2"}},
        "spec": {
            "containers": [
                {"name": "z", "image": "z:1"},
                {"name": "x", "command": ["true"]},  # command is atomic: replaced whole
            ],
            "nodeSelector": {"zone": "b"},
        },
    }
    assert apply.merge(live, config, POD) == {
        "metadata": {"finalizers": ["c", "a", "b"], "annotations": {"a": "1", "b": "2"}},
        "spec": {
            "containers": [
                {"name": "z", "image": "z:1"},
                {"name": "x", "image": "x:1", "command": ["true"]},
                {"name": "y", "image": "y:1"},
            ],
            "nodeSelector": {"zone": "b"},
        },
    }
    # a missing key field takes its default: protocol TCP matches the live item
    ports_live = {
        "spec": {
            "containers": [
                {"name": "c", "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]}
            ]
        }
    }
    ports_config = {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}}
    assert apply.merge(ports_live, ports_config, POD) == ports_live


def test_config_errors_are_worded_as_upstream() -> None:
    twice = {"spec": {"containers": [{"name": "c"}, {"name": "c"}]}}
    with pytest.raises(
        ApplyError, match=r'\.spec\.containers: duplicate entries for key \[name="c"\]'
    ):
        apply.apply(POD, {}, twice, [], actor("m"), False)
    keyless = {"spec": {"containers": [{"image": "busybox"}]}}
    with pytest.raises(ApplyError, match='omits key field "name"'):
        apply.apply(POD, {}, keyless, [], actor("m"), False)


def test_update_takes_fields_and_apply_conflicts_until_forced() -> None:
    obj, entries = apply.apply(DEPLOYMENT, {}, deployment(), [], actor("kubectl"), False)
    scaled = copy.deepcopy(obj)
    scaled["spec"]["replicas"] = 3
    scaled["spec"]["minReadySeconds"] = 5
    entries = apply.update(DEPLOYMENT, obj, scaled, entries, actor("kubectl-edit", "T2"))
    by_manager = {e.manager: e for e in entries}
    assert by_manager["kubectl-edit"].fields == {
        ("f:spec", "f:replicas"),
        ("f:spec", "f:minReadySeconds"),
    }
    assert ("f:spec", "f:replicas") not in by_manager["kubectl"].fields
    assert by_manager["kubectl"].time == "T1"  # only the writer's time moves

    # re-applying the old value of a field another manager changed is a conflict
    with pytest.raises(ApplyConflict) as raised:
        apply.apply(DEPLOYMENT, scaled, deployment(), entries, actor("kubectl", "T3"), False)
    status = raised.value.error().status()
    assert status["code"] == 409 and status["reason"] == "Conflict"
    assert status["message"] == (
        'Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas'
    )
    assert status["details"] == {
        "causes": [
            {
                "reason": "FieldManagerConflict",
                "message": 'conflict with "kubectl-edit" using apps/v1',
                "field": ".spec.replicas",
            }
        ]
    }
    # applying the same value co-owns it without a conflict
    same, shared = apply.apply(
        DEPLOYMENT, scaled, deployment(replicas=3), entries, actor("kubectl", "T3"), False
    )
    assert same["spec"]["replicas"] == 3
    owners = [e.manager for e in shared if ("f:spec", "f:replicas") in e.fields]
    assert sorted(owners) == ["kubectl", "kubectl-edit"]
    # --force-conflicts takes the field over
    forced, after = apply.apply(
        DEPLOYMENT, scaled, deployment(), entries, actor("kubectl", "T3"), True
    )
    assert forced["spec"]["replicas"] == 1 and forced["spec"]["minReadySeconds"] == 5
    by_manager = {e.manager: e for e in after}
    assert by_manager["kubectl-edit"].fields == {("f:spec", "f:minReadySeconds")}
    assert ("f:spec", "f:replicas") in by_manager["kubectl"].fields


def test_conflicts_with_several_managers_are_listed_by_manager() -> None:
    a = Entry("a", "Update", "apps/v1", frozenset({("f:spec", "f:replicas")}))
    b = Entry(
        "b",
        "Apply",
        "apps/v1",
        frozenset({("f:spec", "f:minReadySeconds"), ("f:spec", "f:paused")}),
    )
    live = deployment(replicas=3, minReadySeconds=1, paused=True)
    config = deployment(replicas=1, minReadySeconds=2, paused=False)
    with pytest.raises(ApplyConflict) as raised:
        apply.apply(DEPLOYMENT, live, config, [a, b], actor("c"), False)
    assert raised.value.error().message == (
        'Apply failed with 3 conflicts: conflicts with "a" using apps/v1:\n'
        "- .spec.replicas\n"
        'conflicts with "b":\n'
        "- .spec.minReadySeconds\n"
        "- .spec.paused"
    )


def test_prune_removes_what_only_this_applier_owned() -> None:
    two = deployment()
    two["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "b"})
    obj, entries = apply.apply(DEPLOYMENT, {}, two, [], actor("ci"), False)
    # another applier co-owns the label; nobody else owns the side container
    obj, entries = apply.apply(
        DEPLOYMENT,
        obj,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"labels": {"app": "web"}}},
        entries,
        actor("ops"),
        False,
    )
    one = deployment()
    del one["metadata"]["labels"]
    pruned, entries = apply.apply(DEPLOYMENT, obj, one, entries, actor("ci", "T2"), False)
    assert [c["name"] for c in pruned["spec"]["template"]["spec"]["containers"]] == ["c"]
    assert pruned["metadata"]["labels"] == {"app": "web"}  # ops still applies it
    del one["spec"]["replicas"]
    pruned, entries = apply.apply(DEPLOYMENT, pruned, one, entries, actor("ci", "T3"), False)
    assert "replicas" not in pruned["spec"]
    # a field that was never this applier's stays (defaults, other writers)
    kept = copy.deepcopy(pruned)
    kept["spec"]["revisionHistoryLimit"] = 10
    again, _ = apply.apply(DEPLOYMENT, kept, one, entries, actor("ci", "T4"), False)
    assert again["spec"]["revisionHistoryLimit"] == 10


def test_no_change_keeps_times_and_removed_fields_leave_every_set() -> None:
    obj, entries = apply.apply(DEPLOYMENT, {}, deployment(), [], actor("kubectl"), False)
    same, unchanged = apply.apply(
        DEPLOYMENT, obj, deployment(), entries, actor("kubectl", "T9"), False
    )
    assert same == obj and unchanged == entries
    removed = copy.deepcopy(obj)
    del removed["metadata"]["labels"]
    after = apply.update(DEPLOYMENT, obj, removed, entries, actor("kubectl-edit", "T2"))
    assert [e.manager for e in after] == ["kubectl"]  # the editor changed nothing it keeps
    assert ("f:metadata", "f:labels", "f:app") not in after[0].fields


def test_status_and_system_metadata_are_never_owned() -> None:
    new = deployment()
    new["metadata"].update(name="web", uid="u", resourceVersion="5", generation=2)
    new["status"] = {"replicas": 1}
    entries = apply.update(DEPLOYMENT, {}, new, [], actor("kubectl-create"))
    assert fieldpath.to_fields_v1(entries[0].fields)["f:metadata"] == {
        "f:labels": {".": {}, "f:app": {}}
    }
    assert "f:status" not in fieldpath.to_fields_v1(entries[0].fields)
    status_writer = Actor("kubelet", "v1", "T1", "status", apply.stripper(True, "status"))
    only_status = apply.update(DEPLOYMENT, {}, new, [], status_writer)
    assert fieldpath.to_fields_v1(only_status[0].fields) == {
        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
        "f:status": {"f:replicas": {}},
    }
    assert apply.encode_entries(only_status)[0]["subresource"] == "status"


def test_entries_decode_and_sort_like_upstream() -> None:
    raw = [
        {"manager": "b", "operation": "Update", "apiVersion": "v1", "time": "T1",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:x": {}}}},
        {"manager": "a", "operation": "Apply", "apiVersion": "v1", "time": "T2",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:y": {}}}},
    ]  # fmt: skip
    entries = apply.decode_entries(raw)
    assert [e["manager"] for e in apply.encode_entries(entries)] == ["a", "b"]
    with pytest.raises(ValueError, match='Unsupported value: "Delete"'):
        apply.decode_entries([{"manager": "x", "operation": "Delete"}])


def _random_tree(rng: random.Random, depth: int) -> dict[str, Any]:
    """A fieldsV1-like object with keys in any order, `.` anywhere and with any value."""
    elements = ["f:a", "f:b", "f:z", 'k:{"name":"c"}', 'k:{"name":"d"}', 'v:"x"', "i:0", "i:10"]
    node: dict[str, Any] = {}
    children = rng.sample(elements, rng.randint(0, 3 if depth else 0))
    if rng.random() < 0.4:
        children.insert(rng.randint(0, len(children)), ".")
    for element in children:
        if element == ".":
            node["."] = {} if rng.random() < 0.9 else {"f:q": {}}
        else:
            node[element] = _random_tree(rng, depth - 1)
    return node


def test_fieldsv1_canonical_is_exactly_what_rendering_gives_back() -> None:
    rng = random.Random(17)
    seen = {True: 0, False: 0}
    for _ in range(1500):
        tree = _random_tree(rng, 3)
        fields, canonical = fieldpath.from_fields_v1_canonical(tree)
        assert fields == fieldpath.from_fields_v1(tree)
        rendered = fieldpath.to_fields_v1(fields)
        # order matters: the JSON text is what is stored
        assert canonical == (json.dumps(rendered) == json.dumps(tree)), tree
        seen[canonical] += 1
    assert min(seen.values()) > 200  # both kinds were exercised


def test_encode_keeps_a_canonical_fieldsv1_while_its_set_is_unchanged() -> None:
    canonical = fieldpath.to_fields_v1(apply.field_set(deployment(), DEPLOYMENT))
    reordered = dict(reversed(list(canonical.items())))
    raw = [
        {"manager": "a", "operation": "Update", "apiVersion": "v1", "time": "T1",
         "fieldsType": "FieldsV1", "fieldsV1": canonical},
        {"manager": "b", "operation": "Update", "apiVersion": "v1", "time": "T1",
         "fieldsType": "FieldsV1", "fieldsV1": reordered},
    ]  # fmt: skip
    first, second = apply.decode_entries(raw)
    encoded = apply.encode_entries([first, second])
    assert encoded[0]["fieldsV1"] is canonical  # kept, not rendered again
    assert encoded[1]["fieldsV1"] == canonical and encoded[1]["fieldsV1"] is not reordered
    assert list(encoded[1]["fieldsV1"]) == list(canonical)  # rendered in upstream's order
    # a changed set is rendered from the set, whatever it was decoded from
    dropped = replace(first, fields=first.fields - {("f:spec", "f:replicas")})
    again = apply.encode_entries([dropped])[0]["fieldsV1"]
    assert again is not canonical and "f:replicas" not in again["f:spec"]
    assert again == fieldpath.to_fields_v1(dropped.fields)
