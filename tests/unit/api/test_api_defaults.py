"""Upstream defaults, compared field by field with what a 1.32 apiserver stores."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podnet.api.defaults import apply_defaults, image_pull_policy_for, qos_class
from podnet.api.resources import resource

_GUARANTEED: dict[str, Any] = {
    "requests": {"cpu": "500m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "64Mi"},
}


def test_pod_defaults_match_upstream() -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "nginx",
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {"httpGet": {"port": 80}},
                    "livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 3},
                }
            ]
        },
    }
    before = copy.deepcopy(pod)
    out = apply_defaults(resource("pods"), pod)
    assert pod == before, "input must not be mutated"
    assert out["spec"] == {
        "containers": [
            {
                "name": "c",
                "image": "nginx",
                "imagePullPolicy": "Always",
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "resources": {},
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "readinessProbe": {
                    "httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                    "timeoutSeconds": 1,
                    "periodSeconds": 10,
                    "successThreshold": 1,
                    "failureThreshold": 3,
                },
                "livenessProbe": {
                    "tcpSocket": {"port": 80},
                    "timeoutSeconds": 1,
                    "periodSeconds": 3,
                    "successThreshold": 1,
                    "failureThreshold": 3,
                },
            }
        ],
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "terminationGracePeriodSeconds": 30,
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "enableServiceLinks": True,
    }
    assert out["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("nginx:1.25", "IfNotPresent"),
        ("localhost:5000/app", "Always"),
        ("localhost:5000/app:v2", "IfNotPresent"),
        ("busybox@sha256:abc", "IfNotPresent"),
        (None, "IfNotPresent"),
    ],
)
def test_image_pull_policy(image: Any, policy: str) -> None:
    assert image_pull_policy_for(image) == policy


def test_user_values_are_kept_and_volumes_default() -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "c",
                    "image": "x:1",
                    "imagePullPolicy": "Never",
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                }
            ],
            "volumes": [{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "c"}}],
        },
    }
    out = apply_defaults(resource("pods"), pod)
    assert out["spec"]["restartPolicy"] == "Never"
    assert out["spec"]["terminationGracePeriodSeconds"] == 0
    assert out["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert out["spec"]["volumes"] == [
        {"name": "scratch", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "c", "defaultMode": 420}},
    ]
    assert out["status"]["qosClass"] == "Guaranteed"


def test_service_defaults() -> None:
    svc = {"metadata": {"name": "s"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    out = apply_defaults(resource("services"), svc)
    assert out["spec"] == {
        "selector": {"app": "web"},
        "type": "ClusterIP",
        "sessionAffinity": "None",
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
    }
    assert out["status"] == {"loadBalancer": {}}


def test_nodeport_clientip_service_defaults() -> None:
    svc = {
        "metadata": {"name": "s"},
        "spec": {
            "type": "NodePort",
            "sessionAffinity": "ClientIP",
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 53, "protocol": "UDP", "targetPort": "dns"}],
        },
    }
    spec = apply_defaults(resource("services"), svc)["spec"]
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert spec["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert spec["ports"] == [{"port": 53, "protocol": "UDP", "targetPort": "dns"}]
    assert spec["clusterIPs"] == ["10.96.0.10"]


def test_external_name_service_gets_no_ip_family_fields() -> None:
    svc = {"metadata": {"name": "s"}, "spec": {"type": "ExternalName", "externalName": "a.b"}}
    spec = apply_defaults(resource("services"), svc)["spec"]
    assert "ipFamilies" not in spec and "internalTrafficPolicy" not in spec


def test_deployment_defaults_include_pod_template() -> None:
    dep = {
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "x:1"}]},
            },
        },
    }
    spec = apply_defaults(resource("deployments"), dep)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
    }
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
    assert spec["template"]["spec"]["restartPolicy"] == "Always"
    assert spec["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_recreate_deployment_gets_no_rolling_update() -> None:
    dep = {"metadata": {"name": "d"}, "spec": {"strategy": {"type": "Recreate"}}}
    assert apply_defaults(resource("deployments"), dep)["spec"]["strategy"] == {"type": "Recreate"}


def test_replica_set_endpoints_slice_namespace_secret() -> None:
    rs = apply_defaults(resource("replicasets"), {"metadata": {"name": "r"}, "spec": {}})
    assert rs["spec"]["replicas"] == 1
    ep = apply_defaults(resource("endpoints"), {"subsets": [{"ports": [{"port": 80}]}]})
    assert ep["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]
    es = apply_defaults(resource("endpointslices"), {"ports": [{"port": 80}]})
    assert es["ports"] == [{"port": 80, "protocol": "TCP", "name": ""}]
    ns = apply_defaults(resource("namespaces"), {"metadata": {"name": "team-a"}})
    assert ns["spec"] == {}  # the `kubernetes` finalizer is the strategy's, on create only
    assert ns["status"] == {"phase": "Active"}
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    secret = apply_defaults(
        resource("secrets"), {"metadata": {"name": "s"}, "stringData": {"user": "admin"}}
    )
    assert secret["type"] == "Opaque"
    assert secret["data"] == {"user": "YWRtaW4="}
    assert "stringData" not in secret


def test_wrong_types_are_left_for_validation() -> None:
    weird = {"metadata": {"name": "p"}, "spec": {"containers": "nope", "volumes": [1]}}
    out = apply_defaults(resource("pods"), weird)
    assert out["spec"]["containers"] == "nope"
    svc = apply_defaults(resource("services"), {"spec": "x"})
    assert svc["spec"] == "x"


def test_service_affinity_none_drops_client_ip_config() -> None:
    svc = {
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {
            "sessionAffinity": "None",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
            "ports": [{"port": 80}],
        },
    }
    out = apply_defaults(resource("services"), svc)
    assert "sessionAffinityConfig" not in out["spec"]


@pytest.mark.parametrize(
    ("containers", "init_containers", "expected"),
    [
        ([{}], [], "BestEffort"),
        # init containers count like any other container (upstream ComputePodQOS)
        ([{}], [{"limits": {"cpu": "1"}}], "Burstable"),
        ([_GUARANTEED], [_GUARANTEED], "Guaranteed"),
        ([_GUARANTEED], [{}], "Burstable"),
        # a missing request defaults to the limit
        ([{"limits": {"cpu": "1", "memory": "1Gi"}}], [], "Guaranteed"),
        ([{"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "1Gi"}}], [], "Burstable"),
        # only cpu and memory decide the class
        ([{"requests": {"ephemeral-storage": "1Gi"}}], [], "BestEffort"),
        (
            [{**_GUARANTEED, "limits": {**_GUARANTEED["limits"], "nvidia.com/gpu": "1"}}],
            [],
            "Guaranteed",
        ),
    ],
)
def test_qos_class(
    containers: list[dict[str, Any]], init_containers: list[dict[str, Any]], expected: str
) -> None:
    def spec_of(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]

    spec = {"containers": spec_of(containers), "initContainers": spec_of(init_containers)}
    assert qos_class(spec) == expected
