"""A user's multi-document manifest of every kind podnet serves beyond the basics (DaemonSet,
StatefulSet, ReplicationController, Job, CronJob, RBAC, Ingress, PDB, HPA, APIService,
claims, quotas, limits) applies unchanged with kubectl and with
`kubernetes.utils.create_from_yaml`, and reads back through get, describe and the typed
clients."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client, utils

from podnet.api.resources import BY_KIND
from podnet.testing.manifests import as_yaml, user_manifests

pytestmark = [
    pytest.mark.kubectl,
    # the client's own ApiException still calls urllib3's deprecated getheaders()
    pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning"),
]


def applied_name(obj: dict[str, Any]) -> str:
    """How kubectl names an object in its output: `role.rbac.authorization.k8s.io/x`."""
    res = BY_KIND[obj["kind"]]
    kind = res.kind.lower() + (f".{res.group}" if res.group else "")
    return f"{kind}/{obj['metadata']['name']}"


def test_kubectl_applies_gets_and_describes_every_kind(kubectl: Any) -> None:
    objects = user_manifests(kubectl.namespace)
    manifest = as_yaml(objects)
    try:
        out = kubectl("apply", "-f", "-", stdin=manifest).stdout
        for obj in objects:
            assert f"{applied_name(obj)} created" in out
        again = kubectl("apply", "-f", "-", stdin=manifest).stdout.splitlines()
        # kubectl always re-sends a PDB's selector (its Go tag says patchStrategy=replace) and
        # a StatefulSet's volumeClaimTemplates (an atomic list the server fills in), so it
        # reports both "configured" on a real cluster too; nothing else changes
        resent = {"PodDisruptionBudget", "StatefulSet"}
        expected = [
            f"{applied_name(o)} {'configured' if o['kind'] in resent else 'unchanged'}"
            for o in objects
        ]
        assert again == expected
        for obj in objects:
            res = BY_KIND[obj["kind"]]
            target = f"{res.plural}.{res.group}" if res.group else res.plural
            name = obj["metadata"]["name"]
            got = json.loads(kubectl("get", target, name, "-o", "json").stdout)
            assert (got["kind"], got["metadata"]["name"]) == (obj["kind"], name)
            table = kubectl("get", target, name).stdout.splitlines()
            assert table[0].startswith("NAME") and table[1].startswith(name)
            described = kubectl("describe", target, name).stdout
            assert name in described
        listed = kubectl(
            "get", "pdb,hpa,ingress,pvc,quota,limits,roles,rolebindings,ds,sts,rc,cj"
        ).stdout
        assert "poddisruptionbudget.policy/shop" in listed
        assert "horizontalpodautoscaler.autoscaling/shop" in listed
    finally:
        kubectl("delete", "-f", "-", "--wait=false", stdin=manifest, check=False)


def test_python_client_creates_from_yaml_and_reads_typed(api: client.ApiClient) -> None:
    namespace = f"py-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    objects = user_manifests(namespace)
    try:
        created = utils.create_from_yaml(api, yaml_objects=objects, namespace=namespace)
        assert len(created) == len(objects)
        rbac = client.RbacAuthorizationV1Api(api)
        role = rbac.read_namespaced_role("pod-reader", namespace)
        assert role.rules[0].verbs == ["get", "list"]
        binding = rbac.read_namespaced_role_binding("operator-reads-pods", namespace)
        assert [s.kind for s in binding.subjects] == ["ServiceAccount", "User"]
        assert rbac.read_cluster_role_binding(f"{namespace}:node-watcher").role_ref.kind == (
            "ClusterRole"
        )
        ingress = client.NetworkingV1Api(api).read_namespaced_ingress("shop", namespace)
        assert ingress.spec.rules[0].host == "shop.example.com"
        pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("shop", namespace)
        assert (pdb.spec.min_available, pdb.status.disruptions_allowed) == (1, 0)
        hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(
            "shop", namespace
        )
        assert (hpa.spec.max_replicas, hpa.status.desired_replicas) == (10, 0)
        apps = client.AppsV1Api(api)
        assert apps.read_namespaced_daemon_set("node-probe", namespace).status.number_ready == 0
        db = apps.read_namespaced_stateful_set("db", namespace)
        assert (db.spec.service_name, db.status.replicas) == ("db", 0)
        legacy = core.read_namespaced_replication_controller("legacy", namespace)
        assert legacy.spec.selector == {"app": "legacy"}  # defaulted from the template
        scale = core.read_namespaced_replication_controller_scale("legacy", namespace)
        assert scale.spec.replicas == 2
        batch = client.BatchV1Api(api)
        job = batch.read_namespaced_job("migrate", namespace)
        assert job.spec.selector.match_labels["batch.kubernetes.io/controller-uid"] == (
            job.metadata.uid
        )
        assert batch.read_namespaced_cron_job("report", namespace).spec.time_zone == (
            "Europe/Berlin"
        )
        claim = core.read_namespaced_persistent_volume_claim("data", namespace)
        assert (claim.status.phase, claim.spec.volume_mode) == ("Pending", "Filesystem")
        assert core.read_namespaced_limit_range("defaults", namespace).spec.limits[0].type == (
            "Container"
        )
        assert core.read_namespaced_resource_quota("compute", namespace).spec.hard["pods"] == "20"
        service = client.ApiregistrationV1Api(api).read_api_service(
            f"v1beta1.{namespace}.example.com"
        )
        assert service.spec.service.port == 443  # defaulted
    finally:
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.delete_cluster_role(f"{namespace}:node-watcher")
        rbac.delete_cluster_role_binding(f"{namespace}:node-watcher")
        client.NetworkingV1Api(api).delete_ingress_class(f"{namespace}-nginx")
        client.ApiregistrationV1Api(api).delete_api_service(f"v1beta1.{namespace}.example.com")
        core.delete_namespace(namespace)
