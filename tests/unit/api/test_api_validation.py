"""Validation: upstream field paths, reasons and messages per kind, update rules, and totality
(no JSON input makes it raise)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from podnet.api.defaults import apply_defaults
from podnet.api.errors import ApiError, Cause, invalid
from podnet.api.resources import RESOURCES, resource
from podnet.api.schema import check_types
from podnet.api.validation import (
    drop_unknown_fields,
    strict_decoding_error,
    unknown_fields,
    validate,
    validate_name,
)
from podnet.testing.manifests import user_manifests

LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def check(plural: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Cause]:
    """Validate after defaulting, as the API server does."""
    res = resource(plural)
    obj = apply_defaults(res, obj)
    if old is not None:
        old = apply_defaults(res, old)
    return validate(res, obj, old)


def fields(causes: list[Cause]) -> list[tuple[str, str]]:
    return [(c.field, c.reason) for c in causes]


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    base.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
        "spec": base,
    }


def service(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    base.update(spec)
    return {"metadata": {"name": "web", "namespace": "default"}, "spec": base}


def deployment(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]},
        },
    }
    base.update(spec)
    return {"metadata": {"name": "web", "namespace": "default"}, "spec": base}


# --- names ---------------------------------------------------------------------------------


def test_validate_name_upstream_message() -> None:
    assert validate_name("web-1") == []
    causes = validate_name("Web_1")
    assert causes == [
        Cause("metadata.name", "FieldValueInvalid", f'Invalid value: "Web_1": {LABEL_MSG}')
    ]
    assert validate_name("", "metadata.name") == [
        Cause("metadata.name", "FieldValueRequired", "Required value")
    ]


def test_name_rules_per_kind_follow_upstream() -> None:
    dotted = "web.v1"
    assert validate_name(dotted, res=resource("pods")) == []
    assert validate_name(dotted, res=resource("configmaps")) == []
    assert validate_name(dotted, res=resource("namespaces")) != []
    assert validate_name(dotted, res=resource("services")) != []
    assert validate_name("1web", res=resource("services")) != []  # DNS-1035
    assert validate_name("1web", res=resource("namespaces")) == []


def test_status_message_for_the_invalid_pod_of_peers_doc() -> None:
    obj = {"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": []}}
    causes = check("pods", obj)
    err = invalid("Pod", "p", causes)
    assert err.code == 422
    assert err.message == 'Pod "p" is invalid: spec.containers: Required value'
    assert err.details["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers"}
    ]


# --- metadata ------------------------------------------------------------------------------


def test_metadata_rules() -> None:
    obj = pod()
    obj["metadata"] = {"namespace": "default"}
    assert fields(check("pods", obj)) == [("metadata.name", "FieldValueRequired")]
    obj["metadata"] = {"generateName": "web-", "namespace": "default"}
    assert check("pods", obj) == []
    obj["metadata"] = {"generateName": "Web-", "namespace": "default"}
    assert fields(check("pods", obj)) == [("metadata.generateName", "FieldValueInvalid")]
    obj["metadata"] = {"name": "p"}
    assert fields(check("pods", obj)) == [("metadata.namespace", "FieldValueRequired")]
    node = {"metadata": {"name": "n1", "namespace": "default"}}
    assert fields(check("nodes", node)) == [("metadata.namespace", "FieldValueForbidden")]


def test_label_and_annotation_keys_and_values() -> None:
    obj = pod()
    obj["metadata"]["labels"] = {"bad key": "v", "ok": "-bad", "n": 5}
    obj["metadata"]["annotations"] = {"a/b/c": "x", "Example.COM/ok": "fine"}
    causes = check("pods", obj)
    assert fields(causes) == [
        ("metadata.labels[n]", "FieldValueTypeInvalid"),
        ("metadata.annotations", "FieldValueInvalid"),
    ]
    obj["metadata"]["labels"] = {"bad key": "v", "ok": "-bad"}
    causes = check("pods", obj)
    assert [(c.field, c.message.split(":")[0]) for c in causes[:2]] == [
        ("metadata.labels", "Invalid value"),
        ("metadata.labels", "Invalid value"),
    ]
    assert causes[0].message.startswith('Invalid value: "bad key": name part must consist of')


def test_owner_references_at_most_one_controller() -> None:
    obj = pod()
    obj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "a",
            "uid": "1",
            "controller": True,
        },
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "b",
            "uid": "2",
            "controller": True,
        },
        {"apiVersion": "v1", "kind": "Node", "name": "n"},
    ]
    assert fields(check("pods", obj)) == [
        ("metadata.ownerReferences[2].uid", "FieldValueRequired"),
        ("metadata.ownerReferences", "FieldValueInvalid"),
    ]


def test_metadata_immutable_on_update() -> None:
    old = pod()
    old["metadata"]["uid"] = "u1"
    new = copy.deepcopy(old)
    new["metadata"]["uid"] = "u2"
    new["metadata"]["namespace"] = "other"
    assert fields(check("pods", new, old)) == [
        ("metadata.namespace", "FieldValueInvalid"),
        ("metadata.uid", "FieldValueInvalid"),
    ]


# --- Pod -----------------------------------------------------------------------------------


def test_valid_pod_has_no_causes() -> None:
    obj = pod(
        containers=[
            {
                "name": "web",
                "image": "nginx:1.25",
                "command": ["nginx"],
                "args": ["-g", "x"],
                "ports": [
                    {"name": "http", "containerPort": 80},
                    {"containerPort": 53, "protocol": "UDP"},
                ],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                ],
                "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
                "livenessProbe": {"exec": {"command": ["true"]}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
            }
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
        tolerations=[
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
        ],
    )
    assert check("pods", obj) == []


def test_pod_container_rules_with_upstream_messages() -> None:
    obj = pod(
        containers=[
            {"name": "c", "image": ""},
            {"name": "c", "image": "x", "ports": [{"containerPort": 70000, "protocol": "ICMP"}]},
        ],
        restartPolicy="Sometimes",
    )
    causes = check("pods", obj)
    assert [(c.field, c.message) for c in causes] == [
        ("spec.containers[0].image", "Required value"),
        (
            "spec.containers[1].ports[0].containerPort",
            "Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "spec.containers[1].ports[0].protocol",
            'Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"',
        ),
        ("spec.containers[1].name", 'Duplicate value: "c"'),
        (
            "spec.restartPolicy",
            'Unsupported value: "Sometimes": supported values: "Always", "Never", "OnFailure"',
        ),
    ]


def test_pod_probe_shapes() -> None:
    obj = pod(
        containers=[
            {
                "name": "c",
                "image": "x",
                "livenessProbe": {
                    "periodSeconds": 5,
                    "successThreshold": 2,
                    "httpGet": {"port": 0},
                    "tcpSocket": {"port": 80},
                },
                "readinessProbe": {"initialDelaySeconds": -1},
                "startupProbe": {"exec": {"command": []}, "timeoutSeconds": "1"},
            }
        ]
    )
    got = fields(check("pods", obj))
    assert got == [
        ("spec.containers[0].livenessProbe.tcpSocket", "FieldValueForbidden"),
        ("spec.containers[0].livenessProbe.httpGet.port", "FieldValueInvalid"),
        ("spec.containers[0].livenessProbe.successThreshold", "FieldValueInvalid"),
        ("spec.containers[0].readinessProbe", "FieldValueRequired"),
        ("spec.containers[0].readinessProbe.initialDelaySeconds", "FieldValueInvalid"),
        ("spec.containers[0].startupProbe.exec.command", "FieldValueRequired"),
        ("spec.containers[0].startupProbe.timeoutSeconds", "FieldValueTypeInvalid"),
    ]


def test_pod_volume_mount_must_name_a_volume_and_port_name_rules() -> None:
    obj = pod(
        containers=[
            {
                "name": "c",
                "image": "x",
                "volumeMounts": [{"name": "missing", "mountPath": "/m"}],
                "ports": [{"containerPort": 80, "name": "8080"}],
            }
        ]
    )
    causes = check("pods", obj)
    assert fields(causes) == [
        ("spec.containers[0].ports[0].name", "FieldValueInvalid"),
        ("spec.containers[0].volumeMounts[0].name", "FieldValueNotFound"),
    ]
    assert causes[0].message == 'Invalid value: "8080": must contain at least one letter (a-z)'
    assert causes[1].message == 'Not found: "missing"'


def test_wrong_json_types_are_causes_not_exceptions() -> None:
    obj = pod(
        containers=[{"name": 3, "image": ["x"], "ports": "80"}], terminationGracePeriodSeconds="30"
    )
    causes = check("pods", obj)
    assert ("spec.containers[0].name", "FieldValueTypeInvalid") in fields(causes)
    assert ("spec.containers[0].ports", "FieldValueTypeInvalid") in fields(causes)
    assert ("spec.terminationGracePeriodSeconds", "FieldValueTypeInvalid") in fields(causes)
    assert causes[0].message == "Invalid value: 3: expected a string"
    assert validate(resource("pods"), [], None) == [  # type: ignore[arg-type]
        Cause("", "FieldValueTypeInvalid", "Invalid value: []: expected an object")
    ]


def test_pod_update_only_allows_upstream_fields() -> None:
    old = pod(activeDeadlineSeconds=100)
    new = copy.deepcopy(old)
    new["spec"]["containers"][0]["image"] = "busybox:1.37"
    new["spec"]["activeDeadlineSeconds"] = 50
    new["spec"]["tolerations"] = [{"key": "k", "operator": "Exists"}]
    assert check("pods", new, old) == []
    new["spec"]["containers"][0]["command"] = ["sleep"]
    new["spec"]["restartPolicy"] = "Never"
    causes = check("pods", new, old)
    assert fields(causes) == [("spec", "FieldValueForbidden")]
    assert causes[0].message.startswith(
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    )
    assert "changed: spec.containers[0].command, spec.restartPolicy" in causes[0].message


def test_pod_update_active_deadline_may_only_shrink() -> None:
    old = pod(activeDeadlineSeconds=100)
    new = copy.deepcopy(old)
    new["spec"]["activeDeadlineSeconds"] = 200
    assert [c.message for c in check("pods", new, old)] == [
        "Invalid value: 200: must be less than or equal to previous value"
    ]


# --- Service -------------------------------------------------------------------------------


def test_valid_services() -> None:
    assert check("services", service()) == []
    assert check("services", service(clusterIP="None", ports=[])) == []
    assert (
        check(
            "services",
            service(
                type="NodePort",
                ports=[
                    {"name": "http", "port": 80, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                ],
            ),
        )
        == []
    )
    assert (
        check("services", service(type="ExternalName", externalName="db.example.com", ports=[]))
        == []
    )


def test_service_rules_with_upstream_messages() -> None:
    svc = service(
        type="Magic",
        clusterIP="10.96.0.300",
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 90000}},
        ports=[{"port": 0}, {"name": "b", "port": 80, "targetPort": 70000, "nodePort": 30001}],
    )
    causes = check("services", svc)
    assert [(c.field, c.message) for c in causes] == [
        (
            "spec.type",
            'Unsupported value: "Magic": supported values: "ClusterIP", '
            '"ExternalName", "LoadBalancer", "NodePort"',
        ),
        (
            "spec.clusterIP",
            'Invalid value: "10.96.0.300": must be a valid IP address, '
            "(e.g. 10.9.8.7 or 2001:db8::ffff)",
        ),
        ("spec.ports[0].name", "Required value"),
        ("spec.ports[0].port", "Invalid value: 0: must be between 1 and 65535, inclusive"),
        ("spec.ports[0].targetPort", "Invalid value: 0: must be between 1 and 65535, inclusive"),
        (
            "spec.ports[1].targetPort",
            "Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "Invalid value: 90000: must be greater than 0 and less than 86400",
        ),
    ]


def test_service_nodeport_forbidden_for_clusterip_and_headless_nodeport() -> None:
    causes = check("services", service(ports=[{"port": 80, "nodePort": 30000}]))
    assert [(c.field, c.message) for c in causes] == [
        ("spec.ports[0].nodePort", "Forbidden: may not be used when `type` is 'ClusterIP'")
    ]
    causes = check("services", service(type="NodePort", clusterIP="None"))
    assert fields(causes) == [("spec.clusterIP", "FieldValueInvalid")]


def test_service_ports_required_and_duplicates() -> None:
    assert fields(check("services", service(ports=[]))) == [("spec.ports", "FieldValueRequired")]
    dup = service(ports=[{"name": "a", "port": 80}, {"name": "a", "port": 80}])
    assert fields(check("services", dup)) == [
        ("spec.ports[1].name", "FieldValueDuplicate"),
        ("spec.ports[1]", "FieldValueDuplicate"),
    ]


def test_service_affinity_config_without_client_ip() -> None:
    svc = service(sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10}})
    # through the API the defaults drop the config first (upstream SetDefaults_Service) ...
    assert check("services", svc) == []
    # ... so only an undefaulted object can carry it, and validation still refuses that
    svc["spec"]["sessionAffinity"] = "None"
    causes = validate(resource("services"), svc, None)
    assert ("spec.sessionAffinityConfig", "FieldValueInvalid") in fields(causes)


def test_service_cluster_ip_is_immutable() -> None:
    old = service(clusterIP="10.96.0.10")
    new = service(clusterIP="10.96.0.11")
    causes = check("services", new, old)
    assert [(c.field, c.message) for c in causes] == [
        ("spec.clusterIP", 'Invalid value: "10.96.0.11": field is immutable')
    ]
    assert check("services", service(clusterIP="10.96.0.10"), old) == []


# --- Deployment, ReplicaSet ----------------------------------------------------------------


def test_valid_deployment() -> None:
    assert check("deployments", deployment()) == []


def test_deployment_selector_must_match_template() -> None:
    dep = deployment(selector={"matchLabels": {"app": "other"}})
    causes = check("deployments", dep)
    assert [(c.field, c.message) for c in causes] == [
        (
            "spec.template.metadata.labels",
            'Invalid value: {"app":"web"}: `selector` does not match template `labels`',
        )
    ]


def test_deployment_rules() -> None:
    dep = deployment(
        replicas=-1,
        selector=None,
        strategy={
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"},
        },
    )
    dep["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    causes = check("deployments", dep)
    assert fields(causes) == [
        ("spec.replicas", "FieldValueInvalid"),
        ("spec.selector", "FieldValueRequired"),
        ("spec.template.spec.restartPolicy", "FieldValueNotSupported"),
        ("spec.strategy.rollingUpdate.maxUnavailable", "FieldValueInvalid"),
    ]
    assert causes[0].message == "Invalid value: -1: must be greater than or equal to 0"
    assert causes[3].message == 'Invalid value: "0%": may not be 0 when `maxSurge` is 0'


def test_deployment_strategy_shapes() -> None:
    bad = deployment(
        strategy={
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "a lot", "maxUnavailable": "150%"},
        }
    )
    assert fields(check("deployments", bad)) == [
        ("spec.strategy.rollingUpdate.maxSurge", "FieldValueInvalid"),
        ("spec.strategy.rollingUpdate.maxUnavailable", "FieldValueInvalid"),
    ]
    recreate = deployment(strategy={"type": "Recreate", "rollingUpdate": {}})
    assert fields(check("deployments", recreate)) == [
        ("spec.strategy.rollingUpdate", "FieldValueForbidden")
    ]
    empty = deployment(selector={})
    assert fields(check("deployments", empty)) == [("spec.selector", "FieldValueInvalid")]


def test_selector_expression_rules() -> None:
    dep = deployment(
        selector={
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In"},
                {"key": "x", "operator": "Exists", "values": ["a"]},
                {"key": "y", "operator": "Near", "values": ["a"]},
            ],
        }
    )
    assert fields(check("deployments", dep)) == [
        ("spec.selector.matchExpressions[0].values", "FieldValueRequired"),
        ("spec.selector.matchExpressions[1].values", "FieldValueForbidden"),
        ("spec.selector.matchExpressions[2].operator", "FieldValueNotSupported"),
    ]


def test_selector_immutable_on_update() -> None:
    old = deployment()
    new = deployment(selector={"matchLabels": {"app": "web", "v": "2"}})
    new["spec"]["template"]["metadata"]["labels"]["v"] = "2"
    assert fields(check("deployments", new, old)) == [("spec.selector", "FieldValueInvalid")]
    rs = {"metadata": {"name": "r", "namespace": "d"}, "spec": copy.deepcopy(old["spec"])}
    assert check("replicasets", rs) == []


# --- the other kinds -----------------------------------------------------------------------


def test_endpoints_rules() -> None:
    ok = {
        "metadata": {"name": "web", "namespace": "d"},
        "subsets": [
            {
                "addresses": [
                    {
                        "ip": "10.244.1.5",
                        "nodeName": "n1",
                        "targetRef": {"kind": "Pod", "name": "p"},
                    }
                ],
                "ports": [{"port": 80, "name": "http"}],
            }
        ],
    }
    assert check("endpoints", ok) == []
    bad = {
        "metadata": {"name": "web", "namespace": "d"},
        "subsets": [
            {"addresses": [{"ip": "nope"}], "ports": [{"port": 80}, {"port": 99999, "name": "b"}]}
        ],
    }
    assert fields(check("endpoints", bad)) == [
        ("subsets[0].addresses[0].ip", "FieldValueInvalid"),
        ("subsets[0].ports[1].port", "FieldValueInvalid"),
        ("subsets[0].ports[0].name", "FieldValueRequired"),
    ]


def test_endpoint_slice_rules() -> None:
    ok = {
        "metadata": {"name": "web-abc", "namespace": "d"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }
    assert check("endpointslices", ok) == []
    bad = {
        "metadata": {"name": "web-abc", "namespace": "d"},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["fd00::1"]},
            {"addresses": []},
            {"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}},
        ],
        "ports": [{"port": 0}],
    }
    assert fields(check("endpointslices", bad)) == [
        ("endpoints[0].addresses[0]", "FieldValueInvalid"),
        ("endpoints[1].addresses", "FieldValueRequired"),
        ("endpoints[2].conditions.ready", "FieldValueTypeInvalid"),
        ("ports[0].port", "FieldValueInvalid"),
    ]
    missing = {"metadata": {"name": "x", "namespace": "d"}}
    assert fields(check("endpointslices", missing)) == [("addressType", "FieldValueRequired")]
    changed = copy.deepcopy(ok)
    changed["addressType"] = "IPv6"
    changed["endpoints"] = []
    assert fields(check("endpointslices", changed, ok)) == [("addressType", "FieldValueInvalid")]


def test_node_rules() -> None:
    ok = {
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.2"}]},
    }
    assert check("nodes", ok) == []
    bad = {
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0", "taints": [{"key": "k", "effect": "Sometimes"}]},
    }
    assert fields(check("nodes", bad)) == [
        ("spec.podCIDR", "FieldValueInvalid"),
        ("spec.taints[0].effect", "FieldValueNotSupported"),
    ]
    moved = copy.deepcopy(ok)
    moved["spec"] = {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}
    assert fields(check("nodes", moved, ok)) == [
        ("spec.podCIDR", "FieldValueForbidden"),
        ("spec.podCIDRs", "FieldValueForbidden"),
    ]


def test_namespace_config_map_secret_rules() -> None:
    assert check("namespaces", {"metadata": {"name": "team-a"}}) == []
    ns = {"metadata": {"name": "team-a"}, "spec": {"finalizers": ["custom"]}}
    assert fields(check("namespaces", ns)) == [("spec.finalizers[0]", "FieldValueInvalid")]
    cm = {"metadata": {"name": "c", "namespace": "d"}, "data": {"ok.key": "v", "bad/key": "v"}}
    assert fields(check("configmaps", cm)) == [("data[bad/key]", "FieldValueInvalid")]
    secret = {
        "metadata": {"name": "s", "namespace": "d"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "!!notbase64"},
    }
    assert fields(check("secrets", secret)) == [
        ("data[tls.crt]", "FieldValueInvalid"),
        ("data[tls.key]", "FieldValueRequired"),
    ]


def test_immutable_config_map_and_secret_type() -> None:
    old = {"metadata": {"name": "c", "namespace": "d"}, "data": {"a": "1"}, "immutable": True}
    new = copy.deepcopy(old)
    new["data"]["a"] = "2"
    assert fields(check("configmaps", new, old)) == [("data", "FieldValueForbidden")]
    s_old = {"metadata": {"name": "s", "namespace": "d"}, "type": "Opaque"}
    s_new = {
        "metadata": {"name": "s", "namespace": "d"},
        "type": "kubernetes.io/basic-auth",
        "data": {"username": "YQ=="},
    }
    assert fields(check("secrets", s_new, s_old)) == [("type", "FieldValueInvalid")]


def test_event_lease_service_account_rules() -> None:
    ev = {
        "metadata": {"name": "e", "namespace": "d"},
        "type": "Info",
        "count": -1,
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"},
    }
    assert fields(check("events", ev)) == [
        ("involvedObject.namespace", "FieldValueInvalid"),
        ("type", "FieldValueNotSupported"),
        ("count", "FieldValueInvalid"),
    ]
    lease = {
        "metadata": {"name": "l", "namespace": "d"},
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 0,
            "renewTime": "2024-05-01T12:00:00.000000Z",
        },
    }
    assert fields(check("leases", lease)) == [("spec.leaseDurationSeconds", "FieldValueInvalid")]
    sa = {"metadata": {"name": "default", "namespace": "d"}, "secrets": [{"name": "t"}]}
    assert check("serviceaccounts", sa) == []


# --- totality ------------------------------------------------------------------------------

_JUNK: list[Any] = [None, 0, -1, 70000, "", "x", "-", [], [1], {}, {"a": 1}, True, 1.5]


def _mutations(obj: Any, rng: random.Random, depth: int = 0) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k] = rng.choice(_JUNK) if rng.random() < 0.3 else _mutations(v, rng, depth + 1)
        return out
    if isinstance(obj, list):
        return [
            rng.choice(_JUNK) if rng.random() < 0.3 else _mutations(v, rng, depth + 1) for v in obj
        ]
    return obj


@pytest.mark.parametrize("seed", range(40))
def test_validation_and_defaults_never_raise_on_garbage(seed: int) -> None:
    rng = random.Random(seed)
    samples = [
        pod(livenessProbe=None),
        service(sessionAffinity="ClientIP"),
        deployment(),
        {
            "metadata": {"name": "e"},
            "subsets": [{"addresses": [{"ip": "1.2.3.4"}], "ports": [{"port": 1}]}],
        },
        {
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["1.2.3.4"]}],
            "ports": [{"port": 1}],
        },
        *user_manifests("d"),
    ]
    for res in RESOURCES:
        for sample in samples:
            mutated = _mutations(sample, rng)
            old = _mutations(sample, rng)
            defaulted = apply_defaults(res, mutated)
            causes = validate(res, defaulted, old)
            assert isinstance(unknown_fields(res, mutated), list)
            pruned, dropped = drop_unknown_fields(res, mutated)
            assert (pruned is mutated) == (not dropped)  # a copy only when something goes
            assert all(isinstance(c, Cause) for c in causes)


# --- unknown fields (fieldValidation) -------------------------------------------------------


def test_unknown_fields_paths_like_upstream_strict_decoding() -> None:
    dep = deployment()
    dep["spec"]["template"]["spec"]["contaners"] = []
    dep["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    dep["spec"]["strategy"] = {"type": "Recreate", "recreate": {}}
    dep["metadata"]["labelz"] = {}
    dep["status"] = {"anything": {"goes": 1}}  # status is written by controllers: not checked
    paths = unknown_fields(resource("deployments"), dep)
    assert paths == [
        "metadata.labelz",
        "spec.template.spec.containers[0].imagee",
        "spec.template.spec.contaners",
        "spec.strategy.recreate",
    ]
    err = strict_decoding_error(paths[:2])
    assert (err.code, err.reason) == (400, "BadRequest")
    assert err.message == (
        'strict decoding error: unknown field "metadata.labelz", unknown field '
        '"spec.template.spec.containers[0].imagee"'
    )


def test_full_upstream_shaped_objects_have_no_unknown_fields() -> None:
    full_pod = pod(
        containers=[
            {
                "name": "c",
                "image": "x",
                "resources": {"limits": {"cpu": "1"}},
                "securityContext": {"runAsUser": 1},
                "lifecycle": {"preStop": {}},
                "envFrom": [{"configMapRef": {"name": "c"}}],
                "stdin": True,
                "tty": False,
                "ports": [{"containerPort": 80, "hostIP": "0.0.0.0", "hostPort": 8080}],
                "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}],
                "startupProbe": {
                    "grpc": {"port": 9090, "service": "s"},
                    "terminationGracePeriodSeconds": 5,
                },
            }
        ],
        volumes=[{"name": "v", "hostPath": {"path": "/x", "type": ""}}],
        affinity={"nodeAffinity": {}},
        os={"name": "linux"},
        hostUsers=True,
        dnsConfig={"nameservers": ["1.1.1.1"]},
        readinessGates=[{"conditionType": "x"}],
    )
    full_pod["status"] = {"phase": "Running", "hostIPs": [{"ip": "1.2.3.4"}]}
    assert unknown_fields(resource("pods"), apply_defaults(resource("pods"), full_pod)) == []
    svc = apply_defaults(
        resource("services"),
        service(
            type="LoadBalancer",
            loadBalancerClass="x",
            trafficDistribution="PreferClose",
            publishNotReadyAddresses=True,
        ),
    )
    assert unknown_fields(resource("services"), svc) == []
    es = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "e"},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["1.2.3.4"], "zone": "a", "hints": {"forZones": [{"name": "a"}]}}
        ],
        "ports": [{"port": 80, "appProtocol": "http"}],
    }
    assert unknown_fields(resource("endpointslices"), es) == []


def test_drop_unknown_fields_returns_pruned_copy() -> None:
    svc = service()
    svc["spec"]["ports"][0]["prot"] = "TCP"
    svc["spec"]["selektor"] = {"a": "b"}
    pruned, dropped = drop_unknown_fields(resource("services"), svc)
    assert dropped == ["spec.ports[0].prot", "spec.selektor"]
    assert pruned["spec"] == {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    assert "selektor" in svc["spec"], "input must not be mutated"
    assert drop_unknown_fields(resource("services"), pruned) == (pruned, [])  # nothing to copy


def test_pod_update_with_the_stored_spec_does_not_validate_it_again() -> None:
    # upstream's status update does not look at the spec: a spec stored before a rule came
    # (here: written past validation) does not fail a kubelet's status write; a changed spec
    # and the status still are validated
    bad = pod(containers=[{"name": "Bad_Name", "image": "busybox"}])
    assert ("spec.containers[0].name", "FieldValueInvalid") in fields(check("pods", bad))
    new = copy.deepcopy(bad)
    new["status"] = {"phase": "Running", "podIP": "not-an-ip"}
    assert fields(check("pods", new, bad)) == [("status.podIP", "FieldValueInvalid")]
    new["spec"]["containers"][0]["image"] = "busybox:1.37"
    assert ("spec.containers[0].name", "FieldValueInvalid") in fields(check("pods", new, bad))


def test_type_and_unknown_field_walks_can_be_limited_to_top_level_fields() -> None:
    # a patch's untouched fields are the stored object's, already walked: `only` names the
    # others; what they hold is normalised and reported exactly as the whole walk does
    def deployment() -> dict[str, Any]:
        return {
            "metadata": {"name": "d", "labelz": {}},
            "spec": {"replicas": "three", "paused": None},
            "status": {"replicas": None, "conditions": [None]},
        }

    whole = deployment()
    with pytest.raises(ApiError) as info:
        check_types("Deployment", "v1", whole)
    assert "Go struct field DeploymentSpec.spec.replicas of type int32" in info.value.message
    limited = deployment()
    check_types("Deployment", "v1", limited, only={"status", "kind"})
    assert limited == {  # spec left as it was; status normalised; order kept
        "metadata": {"name": "d", "labelz": {}},
        "spec": {"replicas": "three", "paused": None},
        "status": {"conditions": [{}]},
    }
    with pytest.raises(ApiError):
        check_types("Deployment", "v1", deployment(), only={"spec"})
    nulled = {"metadata": {"name": "d"}, "status": None}
    check_types("Deployment", "v1", nulled, only={"status"})
    assert nulled == {"metadata": {"name": "d"}}
    res = resource("deployments")
    assert unknown_fields(res, deployment()) == ["metadata.labelz"]
    assert unknown_fields(res, deployment(), only={"spec", "status"}) == []
    pruned, dropped = drop_unknown_fields(res, deployment(), only={"metadata"})
    assert dropped == ["metadata.labelz"] and pruned["metadata"] == {"name": "d"}


def test_ip_checks_answer_the_same_every_time() -> None:
    # the IP checks are memoised: a second write of the same addresses gets the same causes,
    # and a garbage (unhashable) value where an IP belongs is a cause, not a crash
    bad = pod()
    bad["status"] = {"podIP": "10.0.0.300"}
    first = check("pods", bad)
    assert ("status.podIP", "FieldValueInvalid") in fields(first)
    first.clear()
    assert ("status.podIP", "FieldValueInvalid") in fields(check("pods", bad))
    good = pod()
    good["status"] = {"podIP": "10.0.0.3"}
    assert check("pods", good) == check("pods", good) == []
    bad["status"] = {"podIP": ["10.0.0.3"]}
    assert ("status.podIP", "FieldValueTypeInvalid") in fields(check("pods", bad))
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "s", "namespace": "default"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.300"], "conditions": {}}],
    }
    for address, reason in (
        ("10.0.0.300", "FieldValueInvalid"),
        ({"x": 1}, "FieldValueTypeInvalid"),
    ):
        slice_["endpoints"][0]["addresses"] = [address]
        causes = validate(resource("endpointslices"), slice_, None)
        assert fields(causes) == [("endpoints[0].addresses[0]", reason)]
