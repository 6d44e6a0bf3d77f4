"""Per-kind strategies: each hook on its own, and the registry calling them where it should."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL, RESOURCES
from podnet.apiserver.registry import DeleteOptions, Registry
from podnet.apiserver.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    Context,
    Strategy,
    strategy_for,
)
from podnet.apiserver.strategies.namespaces import PROTECTED_NAMESPACES
from podnet.apiserver.strategies.services import (
    carry_allocated_values,
    drop_type_dependent_fields,
)

Obj = dict[str, Any]
PODS = BY_PLURAL["pods"]
SERVICES = BY_PLURAL["services"]
NAMESPACES = BY_PLURAL["namespaces"]
DEPLOYMENTS = BY_PLURAL["deployments"]
CONFIGMAPS = BY_PLURAL["configmaps"]


def ctx(registry: Registry, plural: str) -> tuple[Strategy, Context]:
    res = BY_PLURAL[plural]
    return strategy_for(res), Context(res, registry)


def test_every_strategy_belongs_to_a_served_kind_and_scale_agrees_with_the_table() -> None:
    assert set(STRATEGIES) <= set(BY_PLURAL)
    for res in RESOURCES:
        declared = res.subresource("scale") is not None
        assert (strategy_for(res).scale is not None) == declared, res.plural
    assert strategy_for(CONFIGMAPS) is DEFAULT_STRATEGY


# -- create --------------------------------------------------------------------------------


def test_default_strategy_resets_status_only_for_kinds_with_a_status_subresource(
    registry: Registry,
) -> None:
    strategy, c = ctx(registry, "deployments")
    dep: Obj = {"metadata": {"name": "d"}, "status": {"replicas": 9}}
    strategy.prepare_for_create(c, dep)
    assert dep["spec"] == {} and dep["status"] == {}
    strategy, c = ctx(registry, "configmaps")
    cm: Obj = {"metadata": {"name": "c"}, "data": {"k": "v"}}
    strategy.prepare_for_create(c, cm)
    assert cm == {"metadata": {"name": "c"}, "data": {"k": "v"}}


def test_initial_status_per_kind(registry: Registry) -> None:
    guaranteed = {"limits": {"cpu": "1", "memory": "1Gi"}}
    cases: list[tuple[str, Obj, Obj]] = [
        (
            "pods",
            {
                "spec": {
                    "containers": [{"name": "c", "resources": guaranteed}],
                    "initContainers": [{"name": "i"}],  # counts: the pod is not Guaranteed
                },
                "status": {"phase": "Running"},
            },
            {"phase": "Pending", "qosClass": "Burstable"},
        ),
        ("services", {"spec": {}, "status": {"x": 1}}, {"loadBalancer": {}}),
        ("namespaces", {"status": {"phase": "Terminating"}}, {"phase": "Active"}),
        # a kubelet registers its node with the status it observed
        ("nodes", {"status": {"capacity": {"cpu": "2"}}}, {"capacity": {"cpu": "2"}}),
    ]
    for plural, obj, status in cases:
        strategy, c = ctx(registry, plural)
        obj = {"metadata": {"name": "x"}, **obj}
        strategy.prepare_for_create(c, obj)
        assert obj["status"] == status, plural
        assert isinstance(obj["spec"], dict), plural


def test_pod_with_a_malformed_spec_gets_a_status_and_is_left_for_validation(
    registry: Registry,
) -> None:
    strategy, c = ctx(registry, "pods")
    pod: Obj = {"metadata": {"name": "p"}, "spec": "nonsense"}
    strategy.prepare_for_create(c, pod)
    assert pod["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    assert strategy.validate(c, pod)  # validation, not the strategy, reports the bad spec


# -- update --------------------------------------------------------------------------------


def test_main_resource_update_keeps_status_and_status_update_keeps_the_rest(
    registry: Registry,
) -> None:
    strategy, c = ctx(registry, "pods")
    old: Obj = {
        "metadata": {"name": "p", "labels": {"a": "1"}},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Running", "qosClass": "BestEffort"},
    }
    new = copy.deepcopy(old)
    new["spec"]["activeDeadlineSeconds"] = 5
    new["status"] = {"phase": "Failed"}
    strategy.prepare_for_update(c, new, old)
    assert new["status"] == old["status"] and new["spec"]["activeDeadlineSeconds"] == 5

    status_write: Obj = {"metadata": {"name": "p", "labels": {}}, "status": {"phase": "Failed"}}
    strategy.prepare_for_status_update(c, status_write, old)
    assert status_write["metadata"] == old["metadata"] and status_write["spec"] == old["spec"]
    # a status writer that drops the QoS class does not clear it (fixed at create)
    assert status_write["status"] == {"phase": "Failed", "qosClass": "BestEffort"}


def test_service_update_carries_allocated_ips() -> None:
    old: Obj = {
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]}
    }
    new: Obj = {"spec": {"type": "ClusterIP"}}
    carry_allocated_values(new, old)
    assert new["spec"] == old["spec"]
    external: Obj = {"spec": {"type": "ExternalName", "externalName": "example.com"}}
    carry_allocated_values(external, old)
    assert "clusterIP" not in external["spec"]


@pytest.mark.parametrize(
    ("old_spec", "new_spec", "expected"),
    [
        # NodePort -> ClusterIP: the node ports and the traffic policy the user left go
        (
            {
                "type": "NodePort",
                "ports": [{"port": 80, "nodePort": 30080}],
                "externalTrafficPolicy": "Cluster",
            },
            {
                "type": "ClusterIP",
                "ports": [{"port": 80, "nodePort": 30080}],
                "externalTrafficPolicy": "Cluster",
            },
            {"type": "ClusterIP", "ports": [{"port": 80}]},
        ),
        # ... but a node port the user changed in the same update stays (validation refuses it)
        (
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]},
            {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30081}]},
            {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30081}]},
        ),
        # ClusterIP -> ExternalName: the unchanged cluster IP goes
        (
            {"type": "ClusterIP", "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]},
            {"type": "ExternalName", "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]},
            {"type": "ExternalName"},
        ),
        # no type change: nothing dropped
        (
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]},
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]},
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]},
        ),
    ],
)
def test_service_type_change_drops_what_only_the_old_type_needed(
    old_spec: Obj, new_spec: Obj, expected: Obj
) -> None:
    new = {"spec": copy.deepcopy(new_spec)}
    drop_type_dependent_fields(new, {"spec": old_spec})
    assert new["spec"] == expected


# -- delete --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "phase", "requested", "grace"),
    [
        ({}, None, 30, 0),  # never scheduled: no kubelet would confirm
        ({"nodeName": "n1"}, "Succeeded", None, 0),  # finished: nothing to wait for
        ({"nodeName": "n1"}, "Running", None, 30),  # upstream default
        ({"nodeName": "n1", "terminationGracePeriodSeconds": 5}, "Running", None, 5),
        ({"nodeName": "n1", "terminationGracePeriodSeconds": 5}, "Running", 2, 2),
        ({"nodeName": "n1"}, "Running", -3, 0),
    ],
)
def test_pod_grace_period(
    registry: Registry, spec: Obj, phase: str | None, requested: int | None, grace: int
) -> None:
    strategy, c = ctx(registry, "pods")
    pod: Obj = {"metadata": {"name": "p"}, "spec": spec, "status": {"phase": phase}}
    assert strategy.grace_period(c, pod, requested) == grace


def test_other_kinds_are_deleted_at_once_whatever_grace_was_asked(registry: Registry) -> None:
    strategy, c = ctx(registry, "deployments")
    assert strategy.grace_period(c, {"metadata": {"name": "d"}}, 30) == 0


def test_namespace_deletion_rules(registry: Registry) -> None:
    strategy, c = ctx(registry, "namespaces")
    for name in PROTECTED_NAMESPACES:
        with pytest.raises(ApiError) as info:
            strategy.check_delete(c, {"metadata": {"name": name}})
        assert info.value.code == 403
    strategy.check_delete(c, {"metadata": {"name": "team-a"}})
    ns: Obj = {
        "metadata": {"name": "team-a", "deletionTimestamp": "2024-05-01T12:00:00Z"},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
    strategy.prepare_for_delete(c, ns)
    assert ns["status"]["phase"] == "Terminating"
    assert not strategy.ready_to_remove(c, ns)  # the namespace finalizer has not run yet
    ns["spec"]["finalizers"] = []
    assert strategy.ready_to_remove(c, ns)


def test_ready_to_remove_waits_for_grace_and_finalizers(registry: Registry) -> None:
    _, c = ctx(registry, "configmaps")
    deleting = {"deletionTimestamp": "2024-05-01T12:00:00Z", "deletionGracePeriodSeconds": 0}
    assert DEFAULT_STRATEGY.ready_to_remove(c, {"metadata": deleting})
    assert not DEFAULT_STRATEGY.ready_to_remove(c, {"metadata": {}})
    assert not DEFAULT_STRATEGY.ready_to_remove(
        c, {"metadata": {**deleting, "deletionGracePeriodSeconds": 30}}
    )
    assert not DEFAULT_STRATEGY.ready_to_remove(c, {"metadata": {**deleting, "finalizers": ["x"]}})


# -- through the registry ------------------------------------------------------------------


def _pod(name: str, **spec: Any) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


@pytest.mark.asyncio
async def test_warnings_reach_the_client_on_create_and_update(registry: Registry) -> None:
    warnings: list[str] = []
    selector = {"beta.kubernetes.io/arch": "amd64"}
    await registry.create(PODS, "default", _pod("w", nodeSelector=selector), warnings=warnings)
    assert warnings == [
        "spec.nodeSelector[beta.kubernetes.io/arch]: deprecated since v1.14; "
        'use "kubernetes.io/arch" instead'
    ]

    svc: Obj = {
        "metadata": {"name": "w"},
        "spec": {"ports": [{"port": 80}], "externalName": "example.com"},
    }
    warnings = []
    await registry.create(SERVICES, "default", svc, warnings=warnings)
    assert warnings == ['spec.externalName is ignored when spec.type is not "ExternalName"']
    warnings = []
    await registry.patch(
        SERVICES, "default", "w", "merge", {"metadata": {"labels": {"a": "b"}}}, warnings=warnings
    )
    assert warnings == ['spec.externalName is ignored when spec.type is not "ExternalName"']

    dep: Obj = {
        "metadata": {"name": "w"},
        "spec": {
            "selector": {"matchLabels": {"app": "w"}},
            "template": {
                "metadata": {"labels": {"app": "w"}},
                "spec": {
                    "containers": [{"name": "c", "image": "busybox"}],
                    "nodeSelector": {"failure-domain.beta.kubernetes.io/zone": "a"},
                },
            },
        },
    }
    warnings = []
    await registry.create(DEPLOYMENTS, "default", dep, warnings=warnings)
    assert warnings == [
        "spec.template.spec.nodeSelector[failure-domain.beta.kubernetes.io/zone]: deprecated "
        'since v1.17; use "topology.kubernetes.io/zone" instead'
    ]


@pytest.mark.asyncio
async def test_scale_is_served_only_for_kinds_that_declare_it(registry: Registry) -> None:
    await registry.create(PODS, "default", _pod("noscale"))
    with pytest.raises(ApiError) as info:
        await registry.get_scale(PODS, "default", "noscale")
    assert info.value.code == 404


@pytest.mark.asyncio
async def test_service_removed_by_its_last_finalizer_releases_everything_it_held(
    registry: Registry,
) -> None:
    svc: Obj = {
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]},
    }
    created = await registry.create(SERVICES, "default", svc)
    await registry.delete(SERVICES, "default", "held", DeleteOptions())
    # dropping the finalizer and the node port in one update: both the port the old object held
    # and the IP the removed object held are released
    await registry.patch(
        SERVICES,
        "default",
        "held",
        "merge",
        {"metadata": {"finalizers": None}, "spec": {"type": "ClusterIP"}},
    )
    listed = await registry.store.list("/registry/allocations/")
    held = {kv.key.rsplit("/", 1)[1] for kv in listed.items}
    assert created["spec"]["clusterIP"] not in held
    assert str(created["spec"]["ports"][0]["nodePort"]) not in held
