"""Server-side Tables: column sets, golden rows per kind, pod STATUS cases, ages, Accept."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.api.resources import RESOURCES, resource
from podnet.api.tables import human_duration, is_table_request, pod_status_reason, to_table

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CREATED = "2024-05-01T11:56:40Z"  # 3m20s before NOW


def render(plural: str, objs: list[dict[str, Any]], wide: bool = True) -> str:
    """The table as kubectl would print it (tab-separated), for golden comparisons."""
    table = to_table(resource(plural), objs, NOW)
    cols = table["columnDefinitions"]
    keep = [i for i, c in enumerate(cols) if wide or c["priority"] == 0]
    lines = ["\t".join(cols[i]["name"].upper() for i in keep)]
    for row in table["rows"]:
        assert len(row["cells"]) == len(cols), "every row carries every column"
        lines.append("\t".join(str(row["cells"][i]) for i in keep))
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (2 * 86400 + 3 * 3600, "2d3h"),
        (7 * 86400, "7d"),
        (30 * 86400, "30d"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration_matches_upstream(seconds: int, text: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
            "g=meta.k8s.io,application/json",
            True,
        ),
        ("application/json; as=Table; g=meta.k8s.io; v=v1", True),
        ("application/json", False),
        ("application/json, application/json;as=Table;v=v1;g=meta.k8s.io", False),
        ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", False),
        ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io", False),
        ("", False),
    ],
)
def test_is_table_request(accept: str, expected: bool) -> None:
    assert is_table_request(accept) is expected


def pod(name: str, status: dict[str, Any], **extra: Any) -> dict[str, Any]:
    md: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "creationTimestamp": CREATED,
        "uid": f"uid-{name}",
        "labels": {"app": "web"},
    }
    md.update(extra.pop("metadata", {}))
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "node-1"}
    spec.update(extra)
    return {"metadata": md, "spec": spec, "status": status}


RUNNING = {
    "phase": "Running",
    "podIP": "10.244.1.5",
    "podIPs": [{"ip": "10.244.1.5"}],
    "conditions": [{"type": "Ready", "status": "True"}],
    "containerStatuses": [
        {
            "name": "c",
            "ready": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": CREATED}},
        }
    ],
}


def test_pod_table_golden() -> None:
    restarted = dict(
        RUNNING,
        containerStatuses=[
            {
                "name": "c",
                "ready": True,
                "restartCount": 2,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:59:00Z"}},
            }
        ],
    )
    pending = {"phase": "Pending"}
    creating = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "c",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
        ],
    }
    crash = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "c",
                "ready": False,
                "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:58:00Z"}},
            }
        ],
    }
    done = {
        "phase": "Succeeded",
        "containerStatuses": [
            {
                "name": "c",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }
        ],
    }
    failed = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": "c",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 2, "reason": "Error"}},
            }
        ],
    }
    terminating = pod("web-7", RUNNING, metadata={"deletionTimestamp": "2024-05-01T11:59:59Z"})
    got = render(
        "pods",
        [
            pod("web-0", RUNNING),
            pod("web-1", restarted),
            pod("web-2", pending, nodeName=None),
            pod("web-3", creating),
            pod("web-4", crash),
            pod("job-5", done),
            pod("job-6", failed),
            terminating,
        ],
    )
    assert got == "\n".join(
        [
            "NAME\tREADY\tSTATUS\tRESTARTS\tAGE\tIP\tNODE\tNOMINATED NODE\tREADINESS GATES",
            "web-0\t1/1\tRunning\t0\t3m20s\t10.244.1.5\tnode-1\t<none>\t<none>",
            "web-1\t1/1\tRunning\t2 (60s ago)\t3m20s\t10.244.1.5\tnode-1\t<none>\t<none>",
            "web-2\t0/1\tPending\t0\t3m20s\t<none>\t<none>\t<none>\t<none>",
            "web-3\t0/1\tContainerCreating\t0\t3m20s\t<none>\tnode-1\t<none>\t<none>",
            "web-4\t0/1\tCrashLoopBackOff\t5 (2m ago)\t3m20s\t<none>\tnode-1\t<none>\t<none>",
            "job-5\t0/1\tCompleted\t0\t3m20s\t<none>\tnode-1\t<none>\t<none>",
            "job-6\t0/1\tError\t0\t3m20s\t<none>\tnode-1\t<none>\t<none>",
            "web-7\t1/1\tTerminating\t0\t3m20s\t10.244.1.5\tnode-1\t<none>\t<none>",
        ]
    )


@pytest.mark.parametrize(
    ("status", "init", "expected"),
    [
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "i", "state": {"waiting": {"reason": "PodInitializing"}}}
                ],
            },
            1,
            "Init:0/1",
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "i", "state": {"terminated": {"exitCode": 0}}},
                    {"name": "j", "state": {"running": {}}},
                ],
            },
            2,
            "Init:1/2",
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "i", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
                ],
            },
            1,
            "Init:ImagePullBackOff",
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [{"name": "i", "state": {"terminated": {"exitCode": 3}}}],
            },
            1,
            "Init:ExitCode:3",
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "i", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
                ],
            },
            1,
            "Init:Error",
        ),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "c", "state": {"waiting": {"reason": "ErrImagePull"}}}
                ],
            },
            0,
            "ErrImagePull",
        ),
        (
            {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "c", "state": {"terminated": {"exitCode": 0, "signal": 9}}}
                ],
            },
            0,
            "Signal:9",
        ),
        ({"phase": "Running", "reason": "Evicted"}, 0, "Evicted"),
        (
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
                ],
            },
            0,
            "SchedulingGated",
        ),
    ],
)
def test_pod_status_reasons(status: dict[str, Any], init: int, expected: str) -> None:
    names = ["i", "j"][:init]
    obj = pod("p", status, initContainers=[{"name": n, "image": "x"} for n in names])
    assert pod_status_reason(obj) == expected


def test_completed_with_running_sidecar_container_is_running_or_not_ready() -> None:
    status = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "a", "ready": True, "state": {"running": {}}},
            {
                "name": "b",
                "ready": False,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            },
        ],
    }
    obj = pod("p", status, containers=[{"name": "a"}, {"name": "b"}])
    assert pod_status_reason(obj) == "NotReady"
    status["conditions"] = [{"type": "Ready", "status": "True"}]
    assert pod_status_reason(obj) == "Running"


def test_pod_rows_carry_completed_conditions_and_partial_metadata() -> None:
    table = to_table(resource("pods"), [pod("a", {"phase": "Succeeded"})], NOW)
    row = table["rows"][0]
    assert row["conditions"] == [
        {
            "type": "Completed",
            "status": "True",
            "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        }
    ]
    assert row["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": pod("a", {})["metadata"],
    }
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    full = to_table(resource("pods"), [pod("a", {})], NOW, include_object="Object")
    assert full["rows"][0]["object"]["spec"]["nodeName"] == "node-1"
    none = to_table(resource("pods"), [pod("a", {})], NOW, include_object="None")
    assert "object" not in none["rows"][0]
    with pytest.raises(ApiError):
        to_table(resource("pods"), [], NOW, include_object="Everything")


def test_column_definitions_shape() -> None:
    cols = to_table(resource("pods"), [], NOW)["columnDefinitions"]
    assert cols[0] == {
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": cols[0]["description"],
        "priority": 0,
    }
    assert [(c["name"], c["priority"]) for c in cols] == [
        ("Name", 0),
        ("Ready", 0),
        ("Status", 0),
        ("Restarts", 0),
        ("Age", 0),
        ("IP", 1),
        ("Node", 1),
        ("Nominated Node", 1),
        ("Readiness Gates", 1),
    ]


def meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "creationTimestamp": CREATED, **extra}


def test_service_table_golden() -> None:
    svcs = [
        {
            "metadata": meta("kubernetes"),
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "10.96.0.1",
                "clusterIPs": ["10.96.0.1"],
                "ports": [{"port": 443, "protocol": "TCP"}],
            },
        },
        {
            "metadata": meta("web"),
            "spec": {
                "type": "NodePort",
                "clusterIPs": ["10.96.0.20"],
                "selector": {"tier": "f", "app": "w"},
                "ports": [
                    {"port": 80, "nodePort": 30080, "protocol": "TCP"},
                    {"port": 53, "protocol": "UDP"},
                ],
            },
        },
        {
            "metadata": meta("lb"),
            "spec": {
                "type": "LoadBalancer",
                "clusterIPs": ["10.96.0.30"],
                "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}],
            },
        },
        {
            "metadata": meta("ext"),
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        },
        {
            "metadata": meta("headless"),
            "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]},
        },
    ]
    assert render("services", svcs) == "\n".join(
        [
            "NAME\tTYPE\tCLUSTER-IP\tEXTERNAL-IP\tPORT(S)\tAGE\tSELECTOR",
            "kubernetes\tClusterIP\t10.96.0.1\t<none>\t443/TCP\t3m20s\t<none>",
            "web\tNodePort\t10.96.0.20\t<none>\t80:30080/TCP,53/UDP\t3m20s\tapp=w,tier=f",
            "lb\tLoadBalancer\t10.96.0.30\t<pending>\t80:31000/TCP\t3m20s\t<none>",
            "ext\tExternalName\t<none>\tdb.example.com\t<none>\t3m20s\t<none>",
            "headless\tClusterIP\tNone\t<none>\t<none>\t3m20s\t<none>",
        ]
    )


def test_deployment_and_replica_set_golden() -> None:
    template = {
        "spec": {
            "containers": [{"name": "a", "image": "nginx:1.25"}, {"name": "b", "image": "busybox"}]
        }
    }
    dep = {
        "metadata": meta("web"),
        "spec": {
            "replicas": 3,
            "selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "Exists"}],
            },
            "template": template,
        },
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    }
    assert render("deployments", [dep]) == (
        "NAME\tREADY\tUP-TO-DATE\tAVAILABLE\tAGE\tCONTAINERS\tIMAGES\tSELECTOR\n"
        "web\t2/3\t3\t2\t3m20s\ta,b\tnginx:1.25,busybox\tapp=web,tier"
    )
    rs = {
        "metadata": meta("web-5d8f"),
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web", "hash": "5d8f"}},
            "template": template,
        },
        "status": {"replicas": 3, "readyReplicas": 1},
    }
    assert render("replicasets", [rs], wide=False) == (
        "NAME\tDESIRED\tCURRENT\tREADY\tAGE\nweb-5d8f\t3\t3\t1\t3m20s"
    )


def test_node_table_golden() -> None:
    node = {
        "metadata": {
            "name": "node-1",
            "creationTimestamp": CREATED,
            "labels": {
                "node-role.kubernetes.io/control-plane": "",
                "node-role.kubernetes.io/worker": "",
            },
        },
        "spec": {"unschedulable": True},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "172.31.0.2"}],
            "nodeInfo": {
                "kubeletVersion": "v1.32.0-podnet",
                "kernelVersion": "6.18.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
            },
        },
    }
    bare = {"metadata": {"name": "node-2"}}
    assert render("nodes", [node, bare]) == "\n".join(
        [
            "NAME\tSTATUS\tROLES\tAGE\tVERSION\tINTERNAL-IP\tEXTERNAL-IP\tOS-IMAGE\tKERNEL-VERSION"
            "\tCONTAINER-RUNTIME",
            "node-1\tReady,SchedulingDisabled\tcontrol-plane,worker\t3m20s\tv1.32.0-podnet"
            "\t172.31.0.2\t<none>\tDebian GNU/Linux 12 (bookworm)\t6.18.0\t<unknown>",
            "node-2\tUnknown\t<none>\t<unknown>\t\t<none>\t<none>\t<unknown>\t<unknown>\t<unknown>",
        ]
    )


def test_endpoints_and_endpoint_slices_golden() -> None:
    ep = {
        "metadata": meta("web"),
        "subsets": [
            {
                "addresses": [{"ip": f"10.244.1.{i}"} for i in range(1, 4)],
                "ports": [{"port": 80}, {"port": 443}],
            }
        ],
    }
    empty = {"metadata": meta("none")}
    headless = {"metadata": meta("h"), "subsets": [{"addresses": [{"ip": "10.244.2.9"}]}]}
    assert render("endpoints", [ep, empty, headless]) == "\n".join(
        [
            "NAME\tENDPOINTS\tAGE",
            "web\t10.244.1.1:80,10.244.1.2:80,10.244.1.3:80 + 3 more...\t3m20s",
            "none\t<none>\t3m20s",
            "h\t10.244.2.9\t3m20s",
        ]
    )
    es = {
        "metadata": meta("web-abcde"),
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80}, {"name": "named"}],
        "endpoints": [{"addresses": ["10.244.1.1"]}, {"addresses": ["10.244.1.2"]}],
    }
    bare = {"metadata": meta("web-empty"), "addressType": "IPv4"}
    assert render("endpointslices", [es, bare]) == "\n".join(
        [
            "NAME\tADDRESSTYPE\tPORTS\tENDPOINTS\tAGE",
            "web-abcde\tIPv4\t80,named\t10.244.1.1,10.244.1.2\t3m20s",
            "web-empty\tIPv4\t<unset>\t<unset>\t3m20s",
        ]
    )


def test_small_kinds_golden() -> None:
    assert render("namespaces", [{"metadata": meta("default"), "status": {"phase": "Active"}}]) == (
        "NAME\tSTATUS\tAGE\ndefault\tActive\t3m20s"
    )
    assert render(
        "configmaps", [{"metadata": meta("kube-root-ca.crt"), "data": {"ca.crt": "x"}}]
    ) == ("NAME\tDATA\tAGE\nkube-root-ca.crt\t1\t3m20s")
    assert render(
        "secrets", [{"metadata": meta("s"), "type": "Opaque", "data": {"a": "", "b": ""}}]
    ) == ("NAME\tTYPE\tDATA\tAGE\ns\tOpaque\t2\t3m20s")
    assert render("serviceaccounts", [{"metadata": meta("default")}]) == (
        "NAME\tSECRETS\tAGE\ndefault\t0\t3m20s"
    )
    assert render(
        "leases", [{"metadata": meta("node-1"), "spec": {"holderIdentity": "node-1"}}]
    ) == ("NAME\tHOLDER\tAGE\nnode-1\tnode-1\t3m20s")


def test_event_table_golden() -> None:
    ev = {
        "metadata": meta("web-0.17a"),
        "type": "Normal",
        "reason": "Pulled",
        "message": 'Container image "busybox" already present on machine\n',
        "involvedObject": {"kind": "Pod", "name": "web-0", "fieldPath": "spec.containers{c}"},
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2024-05-01T11:50:00Z",
        "lastTimestamp": "2024-05-01T11:59:30Z",
        "count": 4,
    }
    assert render("events", [ev]) == (
        "LAST SEEN\tTYPE\tREASON\tOBJECT\tSUBOBJECT\tSOURCE\tMESSAGE\tFIRST SEEN\tCOUNT\tNAME\n"
        "30s\tNormal\tPulled\tpod/web-0\tspec.containers{c}\tkubelet, node-1\t"
        'Container image "busybox" already present on machine\t10m\t4\tweb-0.17a'
    )


def _garbage(obj: Any, rng: random.Random) -> Any:
    junk: list[Any] = [None, 0, "x", [], {}, [1], True]
    if isinstance(obj, dict):
        return {
            k: rng.choice(junk) if rng.random() < 0.3 else _garbage(v, rng) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [rng.choice(junk) if rng.random() < 0.3 else _garbage(v, rng) for v in obj]
    return obj


@pytest.mark.parametrize("seed", range(25))
def test_tables_never_raise_on_malformed_objects(seed: int) -> None:
    rng = random.Random(seed)
    sample = pod(
        "p",
        dict(RUNNING, initContainerStatuses=[{"name": "i", "state": {}}]),
        initContainers=[{"name": "i"}],
        readinessGates=[{"conditionType": "x"}],
    )
    sample.update(
        {
            "subsets": [{"addresses": [{"ip": "1"}], "ports": [{"port": 1}]}],
            "endpoints": [{"addresses": ["a"]}],
            "ports": [{"port": 1}],
            "involvedObject": {"kind": "Pod"},
            "series": {"count": 2},
        }
    )
    for res in RESOURCES:
        table = to_table(res, [_garbage(sample, rng) for _ in range(3)], NOW)
        assert len(table["rows"]) == 3
