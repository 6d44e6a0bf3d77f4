"""Merge patch, JSON patch and strategic merge patch against upstream's documented behaviour
and against patches captured from kubectl 1.32 (`apply`, `set image`, `label`, `patch`)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.api.patch import (
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
    merge_patch_sharing,
)


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "a",
                            "image": "nginx:1.25",
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        },
                        {
                            "name": "b",
                            "image": "busybox:1.36",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        },
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "tolerations": [{"key": "x", "operator": "Exists"}],
                },
            },
        },
    }


# --- RFC 7386 -------------------------------------------------------------------------------


def test_merge_patch_rfc7386_examples() -> None:
    # RFC 7386 appendix A, a representative subset
    assert apply_merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert apply_merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert apply_merge_patch({"a": "b"}, {"a": None}) == {}
    assert apply_merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert apply_merge_patch({"a": "c"}, {"a": ["b"]}) == {"a": ["b"]}
    assert apply_merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert apply_merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert apply_merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert apply_merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}
    assert apply_merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_merge_patch_in_place_merges_into_the_target_and_shares_nothing_with_the_patch() -> None:
    target = deployment()
    body = {"spec": {"replicas": 5, "template": {"metadata": {"labels": {"x": "y"}}}}}
    out = apply_merge_patch(target, body, in_place=True)
    assert out is target and target["spec"]["replicas"] == 5
    assert out == apply_merge_patch(deployment(), body)  # the same result as a copying merge
    body["spec"]["template"]["metadata"]["labels"]["x"] = "changed"
    assert out["spec"]["template"]["metadata"]["labels"]["x"] == "y"
    assert apply_merge_patch("not an object", {"a": 1}, in_place=True) == {"a": 1}


def test_merge_patch_sharing_is_the_merge_copying_only_what_the_patch_reaches() -> None:
    cases: list[tuple[Any, Any]] = [
        ({"a": "b"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}),
        ({"a": "b"}, {"a": None}),
        ({"a": ["b"]}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}),
        ({"e": None}, {"a": 1}),
        ([1, 2], {"a": "b", "c": None}),
        ({}, {"a": {"bb": {"ccc": None}}}),
        ({"a": 1}, ["x"]),
        (deployment(), {"spec": {"replicas": 5, "template": {"metadata": {"labels": {"x": "y"}}}}}),
    ]
    for target, body in cases:
        before = copy.deepcopy(target)
        assert merge_patch_sharing(target, body) == apply_merge_patch(before, body)
        assert target == before
    target = deployment()
    body = {"spec": {"replicas": 5, "template": {"metadata": {"labels": {"x": "y"}}}}}
    out = merge_patch_sharing(target, body)
    # new dicts along the patch's paths; what it does not reach is the target's own
    assert out is not target and out["spec"] is not target["spec"]
    assert out["spec"]["template"] is not target["spec"]["template"]
    assert out["metadata"] is target["metadata"]
    assert out["spec"]["selector"] is target["spec"]["selector"]
    assert out["spec"]["template"]["spec"] is target["spec"]["template"]["spec"]
    assert (
        target["spec"]["replicas"] == 2
        and "x" not in target["spec"]["template"]["metadata"]["labels"]
    )
    # nothing is shared with the patch
    body["spec"]["template"]["metadata"]["labels"]["x"] = "changed"
    listed = {"status": {"conditions": [{"type": "Ready"}]}}
    patched = merge_patch_sharing({}, listed)
    listed["status"]["conditions"][0]["type"] = "changed"
    assert out["spec"]["template"]["metadata"]["labels"]["x"] == "y"
    assert patched["status"]["conditions"] == [{"type": "Ready"}]


def test_merge_patch_scale_and_does_not_mutate_input() -> None:
    target = deployment()
    before = copy.deepcopy(target)
    out = apply_merge_patch(target, {"spec": {"replicas": 5}})
    assert out["spec"]["replicas"] == 5
    assert out["spec"]["template"] == before["spec"]["template"]
    assert target == before
    patch = {"status": {"conditions": [{"type": "Ready"}], "podIP": "10.0.0.1"}}
    patched = apply_merge_patch(target, patch)
    patched["status"]["conditions"][0]["type"] = "changed"
    assert patch["status"]["conditions"] == [{"type": "Ready"}]  # the result shares nothing
    assert target == before


# --- RFC 6902 -------------------------------------------------------------------------------


def test_json_patch_replace_add_remove() -> None:
    out = apply_json_patch(
        deployment(),
        [
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/metadata/labels/env", "value": "prod"},
            {"op": "remove", "path": "/spec/template/spec/containers/1"},
            {"op": "test", "path": "/metadata/name", "value": "web"},
        ],
    )
    assert out["spec"]["replicas"] == 3
    assert out["metadata"]["labels"]["env"] == "prod"
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["a"]


@pytest.mark.parametrize(
    ("ops", "code", "fragment"),
    [
        ({"op": "add"}, 400, "JSON array"),
        ([{"path": "/a"}], 400, "operation 0"),
        ([{"op": "explode", "path": "/a"}], 400, "invalid JSON patch"),
        ([{"op": "replace", "path": "", "value": [1]}], 422, "JSON object"),
        ([{"op": "add", "path": "spec", "value": 1}], 400, '"spec" must be a JSON pointer'),
    ],
)
def test_json_patch_errors(ops: Any, code: int, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        apply_json_patch(deployment(), ops)
    assert info.value.code == code
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("op", "message"),
    [
        # `kubectl patch --type json` answers "The request is invalid: <message>"
        (
            {"op": "test", "path": "/spec/replicas", "value": 7},
            "testing value /spec/replicas failed: test failed",
        ),
        (
            {"op": "remove", "path": "/spec/nope"},
            'remove operation does not apply: doc is missing path: "/spec/nope"',
        ),
        (
            {"op": "replace", "path": "/spec/nope", "value": 1},
            'replace operation does not apply: doc is missing path: "/spec/nope"',
        ),
        (
            {"op": "add", "path": "/spec/x/y", "value": 1},
            'add operation does not apply: doc is missing path: "/spec/x/y"',
        ),
        (
            {"op": "remove", "path": "/metadata/labels/5"},
            'remove operation does not apply: doc is missing path: "/metadata/labels/5"',
        ),
        (
            {"op": "move", "from": "/spec/zz", "path": "/spec/y"},
            "move operation does not apply: doc is missing from path: /spec/zz",
        ),
    ],
)
def test_json_patch_that_does_not_apply_names_the_operation_and_path(
    op: dict[str, Any], message: str
) -> None:
    """The library's own messages quoted the object in Python syntax ("member 'x' not found in
    {'replicas': 3, ...}", "3 (<class 'int'>) is not equal to tested value 7")."""
    with pytest.raises(ApiError) as info:
        apply_json_patch(
            deployment(), [{"op": "test", "path": "/metadata/name", "value": "web"}, op]
        )
    assert (info.value.code, info.value.message) == (422, message)


# --- strategic merge patch ------------------------------------------------------------------


def test_smp_kubectl_apply_change_image_and_remove_label() -> None:
    # captured from `kubectl apply` (1.32) after editing the image of container "a" and
    # deleting the label tier from the manifest
    patch = json.loads("""{
      "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "new"},
                   "labels": {"tier": null}},
      "spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
        "containers": [{"image": "nginx:1.26", "name": "a"}]}}}}""")
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    containers = out["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a", "b"]
    assert containers[0]["image"] == "nginx:1.26"
    # merged, not replaced: fields the patch did not mention survive
    assert containers[0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert containers[0]["imagePullPolicy"] == "IfNotPresent"
    assert out["metadata"]["labels"] == {"app": "web"}
    assert (
        out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] == "new"
    )


def test_smp_add_port_merges_by_container_port_and_keeps_order() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                    "containers": [
                        {
                            "name": "a",
                            "$setElementOrder/ports": [
                                {"containerPort": 80},
                                {"containerPort": 443},
                            ],
                            "ports": [{"containerPort": 443}],
                        }
                    ],
                }
            }
        }
    }
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    ports = out["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert ports == [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}]


def test_smp_set_element_order_reorders_containers() -> None:
    patch = {
        "spec": {
            "template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}
        }
    }
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["b", "a"]


def test_smp_new_list_item_without_order_goes_first_like_upstream() -> None:
    # upstream mergeSortedSlice puts patch items before server-only items when there is no
    # $setElementOrder (kubectl apply always sends one; `kubectl patch` users do not)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["c", "a", "b"]


def test_smp_delete_directive_removes_one_container() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}}}
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["a"]


def test_smp_replace_directive_in_list_and_map() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"$patch": "replace"}, {"name": "z", "image": "zz"}]}
            }
        },
        "metadata": {"labels": {"$patch": "replace", "only": "this"}},
    }
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "z", "image": "zz"}]
    assert out["metadata"]["labels"] == {"only": "this"}


def test_smp_delete_directive_on_map_empties_it() -> None:
    out = apply_strategic_merge_patch(
        deployment(), {"metadata": {"labels": {"$patch": "delete"}}}, "Deployment"
    )
    assert out["metadata"]["labels"] == {}


def test_smp_env_merges_by_name_and_null_deletes_field() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "a",
                            "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
                            "imagePullPolicy": None,
                        }
                    ]
                }
            }
        }
    }
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    ctr = out["spec"]["template"]["spec"]["containers"][0]
    assert ctr["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
    ]
    assert "imagePullPolicy" not in ctr


def test_smp_tolerations_are_replaced_atomically() -> None:
    patch = {"spec": {"template": {"spec": {"tolerations": [{"key": "y", "operator": "Exists"}]}}}}
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert out["spec"]["template"]["spec"]["tolerations"] == [{"key": "y", "operator": "Exists"}]


def test_smp_retain_keys_switches_strategy_to_recreate() -> None:
    # what kubectl apply sends when the manifest switches to Recreate
    patch = {
        "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}}
    }
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_smp_retain_keys_rejects_unlisted_field() -> None:
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}}
    with pytest.raises(ApiError) as info:
        apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert info.value.code == 400
    assert "retainKeys" in info.value.message


def test_smp_finalizers_set_merge_and_delete_from_primitive_list() -> None:
    pod = {"metadata": {"name": "p", "finalizers": ["a.io/x", "b.io/y"]}, "spec": {}}
    added = apply_strategic_merge_patch(
        pod, {"metadata": {"finalizers": ["c.io/z", "a.io/x"]}}, "Pod"
    )
    assert sorted(added["metadata"]["finalizers"]) == ["a.io/x", "b.io/y", "c.io/z"]
    removed = apply_strategic_merge_patch(
        pod, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.io/x"]}}, "Pod"
    )
    assert removed["metadata"]["finalizers"] == ["b.io/y"]


def test_smp_pod_status_conditions_merge_by_type() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False"},
            ],
        },
    }
    patch = {
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIPs": [{"ip": "10.244.1.5"}],
        }
    }
    out = apply_strategic_merge_patch(pod, patch, "Pod")
    assert out["status"]["conditions"] == [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Ready", "status": "True"},
    ]
    assert out["status"]["podIPs"] == [{"ip": "10.244.1.5"}]


def test_smp_service_ports_merge_by_port() -> None:
    svc = {
        "metadata": {"name": "s"},
        "spec": {
            "ports": [
                {
                    "name": "http",
                    "port": 80,
                    "targetPort": 8080,
                    "protocol": "TCP",
                    "nodePort": 30080,
                }
            ]
        },
    }
    patch = {
        "spec": {
            "$setElementOrder/ports": [{"port": 80}, {"port": 443}],
            "ports": [
                {"port": 80, "targetPort": 9090},
                {"name": "https", "port": 443, "targetPort": 8443},
            ],
        }
    }
    out = apply_strategic_merge_patch(svc, patch, "Service")
    assert out["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP", "nodePort": 30080},
        {"name": "https", "port": 443, "targetPort": 8443},
    ]


def test_smp_owner_references_merge_by_uid() -> None:
    rs = {"metadata": {"name": "r", "ownerReferences": [{"uid": "1", "name": "d1"}]}}
    out = apply_strategic_merge_patch(
        rs, {"metadata": {"ownerReferences": [{"uid": "2", "name": "d2"}]}}, "ReplicaSet"
    )
    assert {r["uid"] for r in out["metadata"]["ownerReferences"]} == {"1", "2"}


def test_smp_kubectl_label_and_set_image_shapes() -> None:
    # `kubectl label deploy web env=prod` and `kubectl set image deploy/web b=busybox:1.37`
    out = apply_strategic_merge_patch(
        deployment(), {"metadata": {"labels": {"env": "prod"}}}, "Deployment"
    )
    assert out["metadata"]["labels"] == {"app": "web", "tier": "front", "env": "prod"}
    out = apply_strategic_merge_patch(
        out,
        {"spec": {"template": {"spec": {"containers": [{"image": "busybox:1.37", "name": "b"}]}}}},
        "Deployment",
    )
    assert [c["image"] for c in out["spec"]["template"]["spec"]["containers"]] == [
        "nginx:1.25",
        "busybox:1.37",
    ]


def test_smp_new_field_drops_nulls_and_directives_like_upstream() -> None:
    # upstream discardNullValuesFromPatch + removeDirectives on values the target lacks
    out = apply_strategic_merge_patch(
        {"metadata": {"name": "p"}},
        {
            "spec": {
                "nodeSelector": {"a": "b", "gone": None},
                "affinity": {"$patch": "replace", "nodeAffinity": {}},
                "containers": [
                    {"name": "x", "image": "i", "$patch": "delete"},
                    {"name": "y", "image": "j"},
                ],
                "tolerations": [{"key": "t", "$patch": "delete"}, {"key": "u"}],
            }
        },
        "Pod",
    )
    assert out["spec"] == {
        "nodeSelector": {"a": "b"},
        "containers": [{"name": "y", "image": "j"}],
        "tolerations": [{"key": "u"}],
    }


def test_smp_set_element_order_must_agree_with_patch_list() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                    "containers": [{"name": "b", "image": "x"}, {"name": "a", "image": "y"}],
                }
            }
        }
    }
    with pytest.raises(ApiError) as info:
        apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert info.value.code == 400
    assert "doesn't match $setElementOrder/containers" in info.value.message


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        (
            {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}},
            "does not contain declared merge key: name",
        ),
        (
            {"spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "merge"}]}}}},
            "merging lists cannot yet be specified",
        ),
        ({"metadata": {"labels": {"$patch": "explode"}}}, "unknown patch type"),
        ({"spec": {"template": {"spec": {"containers": ["a"]}}}}, "mismatched element types"),
    ],
)
def test_smp_bad_patches_are_400(patch: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert info.value.code == 400
    assert fragment in info.value.message


def test_smp_unknown_kind_is_415_and_non_object_is_400() -> None:
    with pytest.raises(ApiError) as info:
        apply_strategic_merge_patch({}, {}, "Widget")
    assert info.value.code == 415
    with pytest.raises(ApiError) as info:
        apply_strategic_merge_patch({}, [], "Pod")  # type: ignore[arg-type]
    assert info.value.code == 400


def test_smp_does_not_mutate_inputs() -> None:
    target = deployment()
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "q"}]}}}}
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    apply_strategic_merge_patch(target, patch, "Deployment")
    assert target == target_before
    assert patch == patch_before


def test_smp_volume_source_switch_with_retain_keys() -> None:
    # kubectl apply after changing volume "data" from emptyDir to a configMap
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/volumes": [{"name": "data"}],
                    "volumes": [
                        {
                            "$retainKeys": ["configMap", "name"],
                            "configMap": {"name": "settings"},
                            "name": "data",
                        }
                    ],
                }
            }
        }
    }
    out = apply_strategic_merge_patch(deployment(), patch, "Deployment")
    assert out["spec"]["template"]["spec"]["volumes"] == [
        {"name": "data", "configMap": {"name": "settings"}}
    ]
