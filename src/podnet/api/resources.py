"""The resources podnet serves: one table that discovery, routing, storage keys, the client and
the OpenAPI document all read, so a resource is added in exactly one place.

A resource is named by its plural (`pods`, `deployments`, `endpointslices`); plurals are unique
across the groups podnet serves, so code outside the API server passes plain plurals around.
"""

from __future__ import annotations

from dataclasses import dataclass

CRUD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True, slots=True)
class Subresource:
    name: str  # "status", "scale", "log", "exec", "binding"
    kind: str
    verbs: tuple[str, ...]
    group: str = ""  # set when the subresource's kind lives in another group (scale)
    version: str = ""


@dataclass(frozen=True, slots=True)
class Resource:
    group: str  # "" for core
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[Subresource, ...] = ()
    verbs: tuple[str, ...] = CRUD_VERBS

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_version(self) -> str:
        return self.group_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def subresource(self, name: str) -> Subresource | None:
        for s in self.subresources:
            if s.name == name:
                return s
        return None

    def base_path(self, namespace: str | None) -> str:
        """The collection URL path, e.g. /api/v1/namespaces/default/pods."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"

    def storage_key(self, namespace: str | None, name: str) -> str:
        """Keys follow kube-apiserver's etcd layout: /registry/<group/>plural/[ns/]name."""
        return f"{self.storage_prefix(namespace)}{name}"

    def storage_prefix(self, namespace: str | None) -> str:
        base = f"/registry/{self.group + '/' if self.group else ''}{self.plural}/"
        if self.namespaced and namespace:
            return f"{base}{namespace}/"
        return base


_STATUS_RW = ("get", "patch", "update")


def _status(kind: str) -> Subresource:
    return Subresource("status", kind, _STATUS_RW)


RESOURCES: tuple[Resource, ...] = (
    Resource(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        False,
        ("ns",),
        # finalize: PUT a Namespace to set its spec.finalizers (clearing a stuck namespace)
        subresources=(_status("Namespace"), Subresource("finalize", "Namespace", ("update",))),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    Resource(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        True,
        ("po",),
        ("all",),
        subresources=(
            _status("Pod"),
            Subresource("log", "Pod", ("get",)),
            Subresource("exec", "PodExecOptions", ("create", "get")),
            Subresource("attach", "PodAttachOptions", ("create", "get")),
            Subresource("portforward", "PodPortForwardOptions", ("create", "get")),
            # answered with a NotFound that explains (apiserver.streams.routes)
            Subresource("ephemeralcontainers", "Pod", ("get", "patch", "update")),
            Subresource("binding", "Binding", ("create",)),
            Subresource("eviction", "Eviction", ("create",), "policy", "v1"),
        ),
    ),
    Resource(
        "",
        "v1",
        "services",
        "service",
        "Service",
        True,
        ("svc",),
        ("all",),
        subresources=(_status("Service"),),
    ),
    Resource("", "v1", "endpoints", "endpoints", "Endpoints", True, ("ep",)),
    Resource(
        "",
        "v1",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        True,
        ("rc",),
        ("all",),
        subresources=(
            _status("ReplicationController"),
            Subresource("scale", "Scale", _STATUS_RW, "autoscaling", "v1"),
        ),
    ),
    Resource("", "v1", "nodes", "node", "Node", False, ("no",), subresources=(_status("Node"),)),
    Resource("", "v1", "events", "event", "Event", True, ("ev",)),
    Resource("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
    Resource("", "v1", "secrets", "secret", "Secret", True),
    Resource(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        True,
        ("sa",),
        subresources=(
            Subresource("token", "TokenRequest", ("create",), "authentication.k8s.io", "v1"),
        ),
    ),
    Resource(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        True,
        ("pvc",),
        subresources=(_status("PersistentVolumeClaim"),),
    ),
    Resource("", "v1", "limitranges", "limitrange", "LimitRange", True, ("limits",)),
    Resource(
        "",
        "v1",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        True,
        ("quota",),
        subresources=(_status("ResourceQuota"),),
    ),
    Resource(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        True,
        ("deploy",),
        ("all",),
        subresources=(
            _status("Deployment"),
            Subresource("scale", "Scale", _STATUS_RW, "autoscaling", "v1"),
        ),
    ),
    Resource(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        True,
        ("rs",),
        ("all",),
        subresources=(
            _status("ReplicaSet"),
            Subresource("scale", "Scale", _STATUS_RW, "autoscaling", "v1"),
        ),
    ),
    Resource(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        True,
        ("ds",),
        ("all",),
        subresources=(_status("DaemonSet"),),
    ),
    Resource(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        True,
        ("sts",),
        ("all",),
        subresources=(
            _status("StatefulSet"),
            Subresource("scale", "Scale", _STATUS_RW, "autoscaling", "v1"),
        ),
    ),
    Resource("apps", "v1", "controllerrevisions", "controllerrevision", "ControllerRevision", True),
    Resource(
        "batch",
        "v1",
        "jobs",
        "job",
        "Job",
        True,
        (),
        ("all",),
        subresources=(_status("Job"),),
    ),
    Resource(
        "batch",
        "v1",
        "cronjobs",
        "cronjob",
        "CronJob",
        True,
        ("cj",),
        ("all",),
        subresources=(_status("CronJob"),),
    ),
    Resource("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True),
    Resource("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
    Resource(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        True,
        ("netpol",),
    ),
    Resource(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "ingress",
        "Ingress",
        True,
        ("ing",),
        subresources=(_status("Ingress"),),
    ),
    Resource("networking.k8s.io", "v1", "ingressclasses", "ingressclass", "IngressClass", False),
    Resource(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        True,
        ("pdb",),
        subresources=(_status("PodDisruptionBudget"),),
    ),
    Resource(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        True,
        ("hpa",),
        ("all",),
        subresources=(_status("HorizontalPodAutoscaler"),),
    ),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", True),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", True),
    Resource(
        "rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", False
    ),
    Resource(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        False,
    ),
    # reviews: create-only, answered by `apiserver.auth.reviews`, never stored
    Resource(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        False,
        verbs=("create",),
    ),
    Resource(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        False,
        verbs=("create",),
    ),
    Resource(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        False,
        verbs=("create",),
    ),
    Resource(
        "authorization.k8s.io",
        "v1",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        True,
        verbs=("create",),
    ),
    Resource(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        False,
        verbs=("create",),
    ),
    Resource(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        False,
        verbs=("create",),
    ),
    Resource(
        "apiregistration.k8s.io",
        "v1",
        "apiservices",
        "apiservice",
        "APIService",
        False,
        categories=("api-extensions",),
        subresources=(_status("APIService"),),
    ),
)

BY_PLURAL: dict[str, Resource] = {r.plural: r for r in RESOURCES}
BY_KIND: dict[str, Resource] = {r.kind: r for r in RESOURCES}

GROUP_VERSIONS: tuple[str, ...] = tuple(dict.fromkeys(r.group_version for r in RESOURCES))


def resource(plural: str) -> Resource:
    """Look a resource up by plural; unknown names list the valid ones."""
    try:
        return BY_PLURAL[plural]
    except KeyError:
        valid = ", ".join(sorted(BY_PLURAL))
        raise KeyError(f"unknown resource {plural!r}; podnet serves: {valid}") from None


def for_group_version(group_version: str) -> list[Resource]:
    return [r for r in RESOURCES if r.group_version == group_version]
