"""Upstream defaulting for the kinds podnet serves (k8s.io/kubernetes `pkg/apis/*/v1/defaults.go`
plus the few create-time normalisations upstream does in registry strategies).

What belongs here: `apply_defaults(res, obj)` — fill in what the API server fills in before
validation, so `kubectl get -o yaml` shows the same fields as on a real cluster — and
`qos_class`, the pod's QoS class, which the Pod strategy records at create. Keeping
server-allocated values across updates (clusterIP, nodePorts) and resetting status are not
defaulting; the API server's per-kind strategies (`apiserver/strategies/`) do them after
defaulting and before `validation.validate`.

Invariants:
- Pure and total: returns a new dict, never mutates the input, never raises. A field of the
  wrong JSON type is left alone for `validation` to report.
- Only missing (absent or null) fields are set; a value the user gave is never overwritten.
- Server-owned metadata (uid, resourceVersion, creationTimestamp, generation) is not set here;
  that is the API server's job because it needs the clock and the store.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

from podnet.api.interface import Obj
from podnet.api.resources import Resource

DEFAULT_TERMINATION_GRACE_SECONDS = 30
DEFAULT_SCHEDULER = "default-scheduler"
CLIENT_IP_TIMEOUT_DEFAULT = 10800  # 3 hours, upstream DefaultClientIPServiceAffinitySeconds
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def apply_defaults(res: Resource, obj: Obj, in_place: bool = False) -> Obj:
    """A copy of `obj` with upstream defaults for `res` filled in; with `in_place` (the
    caller owns `obj` and shares none of it with anything it still needs) `obj` itself."""
    out = obj if in_place else copy.deepcopy(obj)
    fill = _DEFAULTERS.get(res.kind)
    if fill is not None:
        fill(out)
    return out


# --- small total helpers -------------------------------------------------------------------


def _dict(parent: Obj, key: str) -> Obj:
    """parent[key] as a dict, created when absent or null; a wrong-typed value is left in place
    and a throwaway dict returned so defaulting silently skips it."""
    value = parent.get(key)
    if value is None:
        value = {}
        parent[key] = value
    return value if isinstance(value, dict) else {}


def _dicts(parent: Obj, key: str) -> list[Obj]:
    value = parent.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _sub_dict(parent: Obj, key: str) -> Obj:
    """parent[key] if it is a dict, else an empty dict (read-only use)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _default(obj: Obj, key: str, value: Any) -> None:
    if obj.get(key) is None:
        obj[key] = copy.deepcopy(value)


# --- Pod -----------------------------------------------------------------------------------


def image_pull_policy_for(image: object) -> str:
    """Always for `:latest` or an untagged image, else IfNotPresent (a digest counts as a tag)."""
    if not isinstance(image, str):
        return "IfNotPresent"
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_probe(probe: Obj) -> None:
    _default(probe, "timeoutSeconds", 1)
    _default(probe, "periodSeconds", 10)
    _default(probe, "successThreshold", 1)
    _default(probe, "failureThreshold", 3)
    http = probe.get("httpGet")
    if isinstance(http, dict):
        _default(http, "path", "/")
        _default(http, "scheme", "HTTP")


def _default_container(ctr: Obj) -> None:
    _default(ctr, "imagePullPolicy", image_pull_policy_for(ctr.get("image")))
    _default(ctr, "terminationMessagePath", "/dev/termination-log")
    _default(ctr, "terminationMessagePolicy", "File")
    _default(ctr, "resources", {})
    for port in _dicts(ctr, "ports"):
        _default(port, "protocol", "TCP")
    for env in _dicts(ctr, "env"):
        value_from = env.get("valueFrom")
        if isinstance(value_from, dict) and isinstance(value_from.get("fieldRef"), dict):
            _default(value_from["fieldRef"], "apiVersion", "v1")
    for probe_field in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = ctr.get(probe_field)
        if isinstance(probe, dict):
            _default_probe(probe)


def _default_pod_spec(spec: Obj) -> None:
    _default(spec, "restartPolicy", "Always")
    _default(spec, "dnsPolicy", "ClusterFirst")
    _default(spec, "terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECONDS)
    _default(spec, "schedulerName", DEFAULT_SCHEDULER)
    _default(spec, "securityContext", {})
    _default(spec, "enableServiceLinks", True)
    for ctr in _dicts(spec, "containers") + _dicts(spec, "initContainers"):
        _default_container(ctr)
    for volume in _dicts(spec, "volumes"):
        for source in ("configMap", "secret"):
            if isinstance(volume.get(source), dict):
                _default(volume[source], "defaultMode", 0o644)
        if volume.keys() == {"name"}:
            volume["emptyDir"] = {}


_QOS_RESOURCES = ("cpu", "memory")  # upstream isSupportedQoSComputeResource


def qos_class(spec: Obj) -> str:
    """The pod's QoS class (upstream ComputePodQOS), over containers and initContainers alike:
    BestEffort when none requests or limits cpu or memory, Guaranteed when every one has cpu
    and memory limits equal to its requests (a missing request defaults to the limit),
    Burstable otherwise. Quantities compare as written (`1` and `1000m` differ)."""
    containers = _dicts(spec, "containers") + _dicts(spec, "initContainers")
    any_set = False
    guaranteed = bool(containers)
    for ctr in containers:
        resources = _sub_dict(ctr, "resources")
        requests, limits = _sub_dict(resources, "requests"), _sub_dict(resources, "limits")
        if any(name in requests or name in limits for name in _QOS_RESOURCES):
            any_set = True
        for name in _QOS_RESOURCES:
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _default_pod(pod: Obj) -> None:
    spec = _dict(pod, "spec")
    _default_pod_spec(spec)
    status = _dict(pod, "status")
    _default(status, "phase", "Pending")
    _default(status, "qosClass", qos_class(spec))


def _default_pod_template(owner_spec: Obj) -> None:
    template = _dict(owner_spec, "template")
    _default_pod_spec(_dict(template, "spec"))


# --- Service -------------------------------------------------------------------------------


def _default_service(svc: Obj) -> None:
    spec = _dict(svc, "spec")
    _default(spec, "type", "ClusterIP")
    _default(spec, "sessionAffinity", "None")
    svc_type = spec.get("type")
    for port in _dicts(spec, "ports"):
        _default(port, "protocol", "TCP")
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if spec.get("sessionAffinity") == "None":
        # upstream SetDefaults_Service: the config belongs to ClientIP affinity only, so
        # switching a service back to None drops it (else validation would refuse the update)
        spec.pop("sessionAffinityConfig", None)
    if spec.get("sessionAffinity") == "ClientIP":
        client_ip = _dict(_dict(spec, "sessionAffinityConfig"), "clientIP")
        _default(client_ip, "timeoutSeconds", CLIENT_IP_TIMEOUT_DEFAULT)
    if svc_type in ("NodePort", "LoadBalancer"):
        _default(spec, "externalTrafficPolicy", "Cluster")
    if svc_type == "LoadBalancer":
        _default(spec, "allocateLoadBalancerNodePorts", True)
    if svc_type != "ExternalName":
        _default(spec, "internalTrafficPolicy", "Cluster")
        _default(spec, "ipFamilies", ["IPv4"])
        _default(spec, "ipFamilyPolicy", "SingleStack")
        # clusterIP and clusterIPs mirror each other (upstream normalizeClusterIPs).
        cluster_ip, cluster_ips = spec.get("clusterIP"), spec.get("clusterIPs")
        if isinstance(cluster_ip, str) and cluster_ip and cluster_ips is None:
            spec["clusterIPs"] = [cluster_ip]
        elif (
            not cluster_ip
            and isinstance(cluster_ips, list)
            and cluster_ips
            and isinstance(cluster_ips[0], str)
        ):
            spec["clusterIP"] = cluster_ips[0]
    _dict(svc, "status").setdefault("loadBalancer", {})


# --- apps ----------------------------------------------------------------------------------


def _default_deployment(dep: Obj) -> None:
    spec = _dict(dep, "spec")
    _default(spec, "replicas", 1)
    strategy = _dict(spec, "strategy")
    _default(strategy, "type", "RollingUpdate")
    if strategy.get("type") == "RollingUpdate":
        rolling = _dict(strategy, "rollingUpdate")
        _default(rolling, "maxUnavailable", "25%")
        _default(rolling, "maxSurge", "25%")
    _default(spec, "revisionHistoryLimit", 10)
    _default(spec, "progressDeadlineSeconds", 600)
    _default_pod_template(spec)


def _default_replica_set(rs: Obj) -> None:
    spec = _dict(rs, "spec")
    _default(spec, "replicas", 1)
    _default_pod_template(spec)


def _default_daemon_set(ds: Obj) -> None:
    spec = _dict(ds, "spec")
    strategy = _dict(spec, "updateStrategy")
    _default(strategy, "type", "RollingUpdate")
    if strategy.get("type") == "RollingUpdate":
        rolling = _dict(strategy, "rollingUpdate")
        _default(rolling, "maxUnavailable", 1)
        _default(rolling, "maxSurge", 0)
    _default(spec, "revisionHistoryLimit", 10)
    _default_pod_template(spec)


def _default_stateful_set(ss: Obj) -> None:
    spec = _dict(ss, "spec")
    _default(spec, "replicas", 1)
    _default(spec, "podManagementPolicy", "OrderedReady")
    strategy = _dict(spec, "updateStrategy")
    _default(strategy, "type", "RollingUpdate")
    if strategy.get("type") == "RollingUpdate":
        _default(_dict(strategy, "rollingUpdate"), "partition", 0)
    _default(spec, "revisionHistoryLimit", 10)
    retention = _dict(spec, "persistentVolumeClaimRetentionPolicy")
    _default(retention, "whenDeleted", "Retain")
    _default(retention, "whenScaled", "Retain")
    for claim in _dicts(spec, "volumeClaimTemplates"):  # as a real server returns them
        _default(claim, "apiVersion", "v1")
        _default(claim, "kind", "PersistentVolumeClaim")
        _default_pvc(claim)
        _default(_dict(claim, "status"), "phase", "Pending")
    _default_pod_template(spec)


def _default_replication_controller(rc: Obj) -> None:
    """Upstream `SetDefaults_ReplicationController`: selector and labels from the template."""
    spec = _dict(rc, "spec")
    labels = _sub_dict(_sub_dict(spec, "template"), "metadata").get("labels")
    if isinstance(labels, dict) and labels:
        if not spec.get("selector") and isinstance(spec.get("selector", {}), dict):
            spec["selector"] = dict(labels)
        meta = _dict(rc, "metadata")
        if not meta.get("labels"):
            meta["labels"] = dict(labels)
    _default(spec, "replicas", 1)
    _default_pod_template(spec)


# --- endpoints, namespaces, secrets --------------------------------------------------------


def _default_endpoints(ep: Obj) -> None:
    for subset in _dicts(ep, "subsets"):
        for port in _dicts(subset, "ports"):
            _default(port, "protocol", "TCP")


def _default_endpoint_slice(slice_: Obj) -> None:
    for port in _dicts(slice_, "ports"):
        _default(port, "protocol", "TCP")
        _default(port, "name", "")


def _default_namespace(ns: Obj) -> None:
    name = _dict(ns, "metadata").get("name")
    if isinstance(name, str) and name:
        labels = _dict(_dict(ns, "metadata"), "labels")
        labels[NAMESPACE_NAME_LABEL] = name  # upstream always sets it, even over user input
    _dict(ns, "spec")  # spec.finalizers is the strategy's: ["kubernetes"] on create only
    _default(_dict(ns, "status"), "phase", "Active")


def _default_secret(secret: Obj) -> None:
    _default(secret, "type", "Opaque")
    string_data = secret.get("stringData")
    if isinstance(string_data, dict):
        # stringData is write-only: folded into data (base64) and dropped, like upstream.
        data = _dict(secret, "data")
        for k, v in string_data.items():
            if isinstance(v, str):
                data[k] = base64.b64encode(v.encode()).decode()
        del secret["stringData"]


def _default_network_policy(policy: Obj) -> None:
    """Upstream `SetDefaults_NetworkPolicy` / `_NetworkPolicyPort`; podSelector is not
    omitempty upstream, so an absent one reads back as `{}` (select every pod)."""
    spec = _dict(policy, "spec")
    _default(spec, "podSelector", {})
    egress = spec.get("egress")
    if not spec.get("policyTypes") and isinstance(spec.get("policyTypes", []), list):
        spec["policyTypes"] = ["Ingress", "Egress"] if egress else ["Ingress"]
    for direction in ("ingress", "egress"):
        for rule in _dicts(spec, direction):
            for port in _dicts(rule, "ports"):
                _default(port, "protocol", "TCP")


# --- batch ---------------------------------------------------------------------------------


def _default_job_spec(spec: Obj) -> None:
    """Upstream `SetDefaults_Job` (the spec part; a CronJob's jobTemplate gets it too)."""
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    _default(spec, "parallelism", 1)
    _default(spec, "backoffLimit", 6)
    _default(spec, "completionMode", "NonIndexed")
    _default(spec, "suspend", False)
    _default(spec, "podReplacementPolicy", "TerminatingOrFailed")
    _default_pod_template(spec)


def _default_job(job: Obj) -> None:
    spec = _dict(job, "spec")
    _default_job_spec(spec)
    labels = _sub_dict(_sub_dict(spec, "template"), "metadata").get("labels")
    meta = _dict(job, "metadata")
    if isinstance(labels, dict) and labels and not meta.get("labels"):
        meta["labels"] = dict(labels)


def _default_cron_job(cj: Obj) -> None:
    spec = _dict(cj, "spec")
    _default(spec, "concurrencyPolicy", "Allow")
    _default(spec, "suspend", False)
    _default(spec, "successfulJobsHistoryLimit", 3)
    _default(spec, "failedJobsHistoryLimit", 1)
    _default_job_spec(_dict(_dict(spec, "jobTemplate"), "spec"))


# --- stored kinds: rbac, networking, autoscaling, apiregistration, core -------------------

RBAC_GROUP = "rbac.authorization.k8s.io"


def _default_binding(binding: Obj) -> None:
    """Upstream `SetDefaults_(Cluster)RoleBinding` and `SetDefaults_Subject`."""
    _default(_dict(binding, "roleRef"), "apiGroup", RBAC_GROUP)
    for subject in _dicts(binding, "subjects"):
        # a ServiceAccount's group is "" — which Go omits, so nothing is written for it
        if not subject.get("apiGroup") and subject.get("kind") in ("User", "Group"):
            subject["apiGroup"] = RBAC_GROUP


def _default_ingress_class(ic: Obj) -> None:
    params = _sub_dict(_sub_dict(ic, "spec"), "parameters")
    if params:
        _default(params, "scope", "Cluster")


DEFAULT_CPU_UTILIZATION = 80  # upstream autoscaling.DefaultCPUUtilization


def _default_hpa(hpa: Obj) -> None:
    spec = _dict(hpa, "spec")
    _default(spec, "minReplicas", 1)
    if not spec.get("metrics") and isinstance(spec.get("metrics", []), list):
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": DEFAULT_CPU_UTILIZATION,
                    },
                },
            }
        ]


def _default_api_service(svc: Obj) -> None:
    service = _sub_dict(_sub_dict(svc, "spec"), "service")
    if service:
        _default(service, "port", 443)


def _default_pvc(pvc: Obj) -> None:
    _default(_dict(pvc, "spec"), "volumeMode", "Filesystem")


_DEFAULTERS: dict[str, Callable[[Obj], None]] = {
    "Pod": _default_pod,
    "Service": _default_service,
    "Deployment": _default_deployment,
    "ReplicaSet": _default_replica_set,
    "Endpoints": _default_endpoints,
    "EndpointSlice": _default_endpoint_slice,
    "Namespace": _default_namespace,
    "Secret": _default_secret,
    "NetworkPolicy": _default_network_policy,
    "RoleBinding": _default_binding,
    "ClusterRoleBinding": _default_binding,
    "IngressClass": _default_ingress_class,
    "HorizontalPodAutoscaler": _default_hpa,
    "APIService": _default_api_service,
    "PersistentVolumeClaim": _default_pvc,
    "Job": _default_job,
    "DaemonSet": _default_daemon_set,
    "StatefulSet": _default_stateful_set,
    "ReplicationController": _default_replication_controller,
    "CronJob": _default_cron_job,
}
