"""Endpoints and EndpointSlice planners: upstream semantics, table-driven, plus golden output."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from podnet.api.defaults import apply_defaults
from podnet.api.resources import BY_PLURAL
from podnet.controllers.endpoints import plan_endpoints, resolve_target_port
from podnet.controllers.endpointslices import (
    CONTROLLER_NAME,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    plan_endpoint_slices,
    ports_key,
)
from podnet.controllers.mirroring import plan_mirrored_slices

Obj = dict[str, Any]
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def svc(selector: dict[str, str] | None = None, ports: list[Obj] | None = None, **spec: Any) -> Obj:
    body: Obj = {
        "clusterIP": "10.96.0.20",
        "ports": ports
        if ports is not None
        else [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}],
    }
    if selector is not None:
        body["selector"] = selector
    body.update(spec)
    return {
        "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "labels": {"team": "a"}},
        "spec": body,
    }


def pod(
    name: str,
    ip: str | None = "10.244.1.5",
    ready: bool = True,
    node: str = "n1",
    labels: dict[str, str] | None = None,
    port: int = 8080,
    phase: str = "Running",
    deleting: bool = False,
    ns: str = "ns",
    port_name: str = "web",
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": ns,
        "uid": f"uid-{name}",
        "labels": labels if labels is not None else {"app": "web"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: Obj = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
                }
            ],
        },
        "status": status,
    }


SEL = {"app": "web"}


def addresses(writes: list[Any]) -> tuple[list[str], list[str]]:
    assert len(writes) == 1
    subsets = writes[0].obj["subsets"]
    ready = [a["ip"] for s in subsets for a in s.get("addresses", [])]
    not_ready = [a["ip"] for s in subsets for a in s.get("notReadyAddresses", [])]
    return ready, not_ready


@pytest.mark.parametrize(
    ("case", "service", "pods", "ready", "not_ready"),
    [
        ("ready pod", svc(SEL), [pod("a")], ["10.244.1.5"], []),
        ("not ready pod", svc(SEL), [pod("a", ready=False)], [], ["10.244.1.5"]),
        (
            "publishNotReady",
            svc(SEL, publishNotReadyAddresses=True),
            [pod("a", ready=False)],
            ["10.244.1.5"],
            [],
        ),
        ("no IP yet", svc(SEL), [pod("a", ip=None)], [], []),
        ("terminal pod", svc(SEL), [pod("a", phase="Failed")], [], []),
        ("terminating pod", svc(SEL), [pod("a", deleting=True)], [], []),
        (
            "terminating + publishNotReady",
            svc(SEL, publishNotReadyAddresses=True),
            [pod("a", deleting=True)],
            ["10.244.1.5"],
            [],
        ),
        ("label mismatch", svc(SEL), [pod("a", labels={"app": "other"})], [], []),
        ("other namespace", svc(SEL), [pod("a", ns="elsewhere")], [], []),
        ("unresolvable named port", svc(SEL), [pod("a", port_name="other")], [], []),
        (
            "sorted by IP",
            svc(SEL),
            [pod("b", ip="10.244.1.10"), pod("a", ip="10.244.1.9")],
            ["10.244.1.9", "10.244.1.10"],
            [],
        ),
    ],
)
def test_endpoints_addresses(
    case: str, service: Obj, pods: list[Obj], ready: list[str], not_ready: list[str]
) -> None:
    writes = plan_endpoints(service, pods, None, T0)
    assert addresses(writes) == (ready, not_ready), case


def test_endpoints_golden() -> None:
    writes = plan_endpoints(
        svc(SEL), [pod("a"), pod("b", ip="10.244.2.7", node="n2", ready=False)], None, T0
    )
    assert [w.verb for w in writes] == ["create"]
    golden = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": "web",
            "namespace": "ns",
            "labels": {"team": "a"},
            "annotations": {TRIGGER: "2026-01-02T03:04:05.123456000Z"},
        },
        "subsets": [
            {
                "addresses": [
                    {
                        "ip": "10.244.1.5",
                        "nodeName": "n1",
                        "targetRef": {
                            "kind": "Pod",
                            "namespace": "ns",
                            "name": "a",
                            "uid": "uid-a",
                        },
                    }
                ],
                "notReadyAddresses": [
                    {
                        "ip": "10.244.2.7",
                        "nodeName": "n2",
                        "targetRef": {
                            "kind": "Pod",
                            "namespace": "ns",
                            "name": "b",
                            "uid": "uid-b",
                        },
                    }
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        ],
    }
    assert json.dumps(writes[0].obj, indent=1, sort_keys=True) == json.dumps(
        golden, indent=1, sort_keys=True
    )


def test_named_ports_resolving_differently_make_separate_subsets() -> None:
    pods = [pod("a", port=8080), pod("b", ip="10.244.1.6", port=9090)]
    subsets = plan_endpoints(svc(SEL), pods, None, T0)[0].obj["subsets"]
    assert [(s["ports"][0]["port"], [a["ip"] for a in s["addresses"]]) for s in subsets] == [
        (8080, ["10.244.1.5"]),
        (9090, ["10.244.1.6"]),
    ]


def test_headless_without_ports_gets_address_only_subsets() -> None:
    service = svc(SEL, ports=[], clusterIP="None")
    w = plan_endpoints(service, [pod("a")], None, T0)[0]
    assert w.obj["subsets"] == [
        {
            "addresses": [
                {
                    "ip": "10.244.1.5",
                    "nodeName": "n1",
                    "targetRef": {"kind": "Pod", "namespace": "ns", "name": "a", "uid": "uid-a"},
                }
            ]
        }
    ]
    assert w.obj["metadata"]["labels"]["service.kubernetes.io/headless"] == ""


def test_unchanged_endpoints_are_not_written_again() -> None:
    first = plan_endpoints(svc(SEL), [pod("a")], None, T0)[0].obj
    first["metadata"]["resourceVersion"] = "7"
    assert plan_endpoints(svc(SEL), [pod("a")], first, T0) == []
    changed = plan_endpoints(svc(SEL), [pod("a", ready=False)], first, T0)
    assert [w.verb for w in changed] == ["update"]
    assert changed[0].obj["metadata"]["resourceVersion"] == "7"


def test_selectorless_and_external_name_services_are_left_alone() -> None:
    user_written = {
        "metadata": {"name": "web", "namespace": "ns"},
        "subsets": [{"addresses": [{"ip": "192.0.2.1"}]}],
    }
    assert plan_endpoints(svc(None), [pod("a")], user_written, T0) == []
    assert plan_endpoints(svc(SEL, type="ExternalName"), [pod("a")], user_written, T0) == []


def test_deleted_service_deletes_its_endpoints() -> None:
    current = {"metadata": {"name": "web", "namespace": "ns", "uid": "e"}}
    assert [w.verb for w in plan_endpoints(None, [], current, T0)] == ["delete"]
    assert plan_endpoints(None, [], None, T0) == []


def test_over_capacity_truncates_ready_first() -> None:
    pods = [
        pod(f"p{i}", ip=f"10.244.{i // 250}.{i % 250 + 1}", ready=i % 2 == 0) for i in range(1100)
    ]
    obj = plan_endpoints(svc(SEL), pods, None, T0)[0].obj
    ready, not_ready = addresses([type("W", (), {"obj": obj})()])
    assert len(ready) == 550 and len(not_ready) == 450
    assert obj["metadata"]["annotations"]["endpoints.kubernetes.io/over-capacity"] == "truncated"


@pytest.mark.parametrize(
    ("target", "expected"),
    [(8080, 8080), ("9000", 9000), ("web", 8080), ("missing", None)],
)
def test_resolve_target_port(target: Any, expected: int | None) -> None:
    assert resolve_target_port(pod("a"), {"port": 80, "targetPort": target}) == expected


# --- EndpointSlices --------------------------------------------------------------------------


def conditions(writes: list[Any]) -> dict[str, dict[str, bool]]:
    return {
        e["targetRef"]["name"]: e["conditions"] for w in writes for e in w.obj.get("endpoints", [])
    }


@pytest.mark.parametrize(
    ("case", "service", "pod_obj", "expected"),
    [
        ("ready", svc(SEL), pod("a"), {"ready": True, "serving": True, "terminating": False}),
        (
            "not ready",
            svc(SEL),
            pod("a", ready=False),
            {"ready": False, "serving": False, "terminating": False},
        ),
        (
            "terminating ready",
            svc(SEL),
            pod("a", deleting=True),
            {"ready": False, "serving": True, "terminating": True},
        ),
        (
            "publishNotReady",
            svc(SEL, publishNotReadyAddresses=True),
            pod("a", ready=False),
            {"ready": True, "serving": False, "terminating": False},
        ),
    ],
)
def test_slice_conditions(case: str, service: Obj, pod_obj: Obj, expected: dict[str, bool]) -> None:
    assert conditions(plan_endpoint_slices(service, [pod_obj], [], T0)) == {"a": expected}, case


def test_slice_golden() -> None:
    writes = plan_endpoint_slices(svc(SEL), [pod("a")], [], T0)
    assert [w.verb for w in writes] == ["create"]
    golden = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "generateName": "web-",
            "namespace": "ns",
            "labels": {"team": "a", SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: CONTROLLER_NAME},
            "annotations": {TRIGGER: "2026-01-02T03:04:05.123456000Z"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": "web",
                    "uid": "svc-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "endpoints": [
            {
                "addresses": ["10.244.1.5"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": "n1",
                "targetRef": {"kind": "Pod", "namespace": "ns", "name": "a", "uid": "uid-a"},
            }
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    assert json.dumps(writes[0].obj, indent=1, sort_keys=True) == json.dumps(
        golden, indent=1, sort_keys=True
    )


def materialize(writes: list[Any], current: list[Obj]) -> list[Obj]:
    """Apply planned writes to a list of slices the way the API would."""
    by_name = {s["metadata"]["name"]: s for s in current}
    for i, w in enumerate(writes):
        if w.verb == "delete":
            by_name.pop(w.obj["metadata"]["name"])
        else:
            obj = json.loads(json.dumps(w.obj))
            obj["metadata"].setdefault("name", f"web-gen{len(by_name)}-{i}")
            by_name[obj["metadata"]["name"]] = obj
    return list(by_name.values())


def test_slices_hold_at_most_100_endpoints_and_stay_stable() -> None:
    pods = [pod(f"p{i:03}", ip=f"10.244.{i // 200}.{i % 200 + 1}") for i in range(250)]
    writes = plan_endpoint_slices(svc(SEL), pods, [], T0)
    assert [w.verb for w in writes] == ["create"] * 3
    assert sorted(len(w.obj["endpoints"]) for w in writes) == [50, 100, 100]
    slices = materialize(writes, [])
    # nothing changed: no writes at all
    assert plan_endpoint_slices(svc(SEL), pods, slices, T0) == []
    # one pod goes away: exactly one slice is rewritten, nothing else moves
    writes = plan_endpoint_slices(svc(SEL), pods[1:], slices, T0)
    assert [w.verb for w in writes] == ["update"]
    # a new pod fills the slice with room instead of creating one
    more = [*pods, pod("zz", ip="10.244.9.9")]
    writes = plan_endpoint_slices(svc(SEL), more, slices, T0)
    assert [w.verb for w in writes] == ["update"]
    assert len(writes[0].obj["endpoints"]) == 51


def test_named_ports_resolving_differently_make_separate_slices() -> None:
    writes = plan_endpoint_slices(
        svc(SEL), [pod("a"), pod("b", ip="10.244.1.6", port=9090)], [], T0
    )
    assert sorted(w.obj["ports"][0]["port"] for w in writes) == [8080, 9090]


def test_service_without_endpoints_keeps_one_placeholder_slice() -> None:
    writes = plan_endpoint_slices(svc(SEL), [], [], T0)
    assert [w.verb for w in writes] == ["create"]
    assert writes[0].obj["endpoints"] == [] and writes[0].obj["ports"] == []
    slices = materialize(writes, [])
    assert plan_endpoint_slices(svc(SEL), [], slices, T0) == []
    # endpoints appear: a real slice is created, then the placeholder is deleted
    writes = plan_endpoint_slices(svc(SEL), [pod("a")], slices, T0)
    assert [w.verb for w in writes] == ["create", "delete"]


def test_deleted_service_deletes_its_slices_and_selectorless_ones_are_skipped() -> None:
    slices = materialize(plan_endpoint_slices(svc(SEL), [pod("a")], [], T0), [])
    assert [w.verb for w in plan_endpoint_slices(None, [], slices, T0)] == ["delete"]
    assert plan_endpoint_slices(svc(None), [pod("a")], [], T0) == []
    # a Service whose selector is removed loses the slices this controller made
    assert [w.verb for w in plan_endpoint_slices(svc(None), [pod("a")], slices, T0)] == ["delete"]


def test_terminating_pods_stay_in_slices_but_leave_endpoints() -> None:
    p = pod("a", deleting=True)
    assert addresses(plan_endpoints(svc(SEL), [p], None, T0)) == ([], [])
    assert conditions(plan_endpoint_slices(svc(SEL), [p], [], T0))["a"]["terminating"] is True


# --- mirroring of selector-less Endpoints ----------------------------------------------------


def user_endpoints(**labels: str) -> Obj:
    return {
        "metadata": {"name": "web", "namespace": "ns", "uid": "ep-uid", "labels": labels},
        "subsets": [
            {
                "addresses": [{"ip": "192.0.2.1"}, {"ip": "192.0.2.2", "nodeName": "n1"}],
                "notReadyAddresses": [{"ip": "192.0.2.3"}],
                "ports": [{"name": "db", "port": 5432, "protocol": "TCP"}],
            }
        ],
    }


def test_mirroring_copies_user_endpoints_into_a_slice() -> None:
    writes = plan_mirrored_slices(user_endpoints(), svc(None), [])
    assert [w.verb for w in writes] == ["create"]
    s = writes[0].obj
    assert s["metadata"]["labels"] == {
        SERVICE_NAME_LABEL: "web",
        MANAGED_BY_LABEL: "endpointslicemirroring-controller.k8s.io",
    }
    assert s["metadata"]["ownerReferences"][0]["kind"] == "Endpoints"
    assert s["ports"] == [{"name": "db", "port": 5432, "protocol": "TCP"}]
    assert [
        (e["addresses"][0], e["conditions"]["ready"], e.get("nodeName")) for e in s["endpoints"]
    ] == [("192.0.2.1", True, None), ("192.0.2.2", True, "n1"), ("192.0.2.3", False, None)]
    slices = materialize(writes, [])
    assert plan_mirrored_slices(user_endpoints(), svc(None), slices) == []


@pytest.mark.parametrize(
    ("case", "endpoints", "service"),
    [
        ("service has a selector", user_endpoints(), svc(SEL)),
        ("no service", user_endpoints(), None),
        (
            "skip-mirror label",
            user_endpoints(**{"endpointslice.kubernetes.io/skip-mirror": "true"}),
            svc(None),
        ),
        ("endpoints deleted", None, svc(None)),
    ],
)
def test_mirroring_removes_slices_when_not_mirrored(
    case: str, endpoints: Obj | None, service: Obj | None
) -> None:
    slices = materialize(plan_mirrored_slices(user_endpoints(), svc(None), []), [])
    writes = plan_mirrored_slices(endpoints, service, slices)
    assert [w.verb for w in writes] == ["delete"], case


def stored(res: str, obj: Obj, rv: str) -> Obj:
    """`obj` as the API server stores and serves it: defaults filled in, through JSON."""
    out = apply_defaults(BY_PLURAL[res], json.loads(json.dumps(obj)))
    out["metadata"].setdefault("name", "web-abcde")
    out["metadata"]["resourceVersion"] = rv
    return out


THREE = [
    pod("c", ip="10.244.1.30"),
    pod("a", ip="10.244.1.4", ready=False),
    pod("b", ip="10.244.1.200"),
]


def test_endpoints_as_stored_are_not_written_again_and_reordered_ones_once() -> None:
    current = stored("endpoints", plan_endpoints(svc(SEL), THREE, None, T0)[0].obj, "7")
    assert plan_endpoints(svc(SEL), list(reversed(THREE)), current, T0) == []
    # someone else wrote the same addresses in another order: rewritten once, repacked
    current["subsets"][0]["addresses"].reverse()
    rewrite = plan_endpoints(svc(SEL), THREE, current, T0)
    assert [w.verb for w in rewrite] == ["update"]
    again = stored("endpoints", rewrite[0].obj, "8")
    assert plan_endpoints(svc(SEL), THREE, again, T0) == []


def test_slices_as_stored_are_not_written_again_and_reordered_ones_once() -> None:
    current = [stored("endpointslices", plan_endpoint_slices(svc(SEL), THREE, [], T0)[0].obj, "7")]
    assert plan_endpoint_slices(svc(SEL), list(reversed(THREE)), current, T0) == []
    current[0]["endpoints"].reverse()
    rewrite = plan_endpoint_slices(svc(SEL), THREE, current, T0)
    assert [w.verb for w in rewrite] == ["update"]
    assert [e["addresses"][0] for e in rewrite[0].obj["endpoints"]] == [
        "10.244.1.4",
        "10.244.1.30",
        "10.244.1.200",
    ]
    again = [stored("endpointslices", rewrite[0].obj, "8")]
    assert plan_endpoint_slices(svc(SEL), THREE, again, T0) == []


def test_ports_key_is_the_set_of_ports_with_defaults() -> None:
    http = {"name": "http", "port": 80, "protocol": "TCP"}
    dns = {"name": "dns", "port": 53, "protocol": "UDP", "appProtocol": "dns"}
    assert ports_key([http, dns]) == ports_key([dns, {"name": "http", "port": 80}])
    assert ports_key([http]) != ports_key([{**http, "port": "80"}])
    assert ports_key([http]) != ports_key([{**http, "appProtocol": "h2c"}])
    assert ports_key([]) != ports_key([{"port": 80}])
