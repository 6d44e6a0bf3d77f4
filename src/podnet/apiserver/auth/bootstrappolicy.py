"""The default ClusterRoles and ClusterRoleBindings every cluster has (upstream
`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`, the subset podnet's components and users
need): cluster-admin (bound to `system:masters`), the aggregated admin/edit/view with their
`system:aggregate-to-*` parts, system:discovery, system:basic-user (can-i, whoami),
system:public-info-viewer (health and version, also for the unauthenticated),
system:node-proxier, system:kube-dns, system:auth-delegator and
system:service-account-issuer-discovery.

`ensure_policy` creates what is missing at every server start and leaves existing objects
alone (an operator's edit of a default role survives a restart; upstream reconciles only
roles marked autoupdate, podnet never overwrites).
"""

from __future__ import annotations

from typing import Any

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.registry import Registry

Obj = dict[str, Any]
READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Obj:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _nonresource(urls: list[str], verbs: list[str]) -> Obj:
    return {"nonResourceURLs": urls, "verbs": verbs}


def _meta(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(labels or {})},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    }


def _role(name: str, rules: list[Obj], labels: dict[str, str] | None = None) -> Obj:
    return {"metadata": _meta(name, labels), "rules": rules}


def _aggregated(name: str, *also: str) -> Obj:
    labels = {f"{AGGREGATE}{to}": "true" for to in also}
    return {
        "metadata": _meta(name, labels),
        "aggregationRule": {
            "clusterRoleSelectors": [{"matchLabels": {f"{AGGREGATE}{name}": "true"}}]
        },
        "rules": [],
    }


VIEW_RULES = [
    _rule(
        [""],
        ["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status",
         "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
         "services", "services/status"],
        READ,
    ),
    _rule(
        [""],
        ["bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status",
         "replicationcontrollers/status", "resourcequotas", "resourcequotas/status"],
        READ,
    ),
    _rule([""], ["namespaces"], READ),
    _rule(["discovery.k8s.io"], ["endpointslices"], READ),
    _rule(
        ["apps"],
        ["controllerrevisions", "daemonsets", "daemonsets/status", "deployments",
         "deployments/scale", "deployments/status", "replicasets", "replicasets/scale",
         "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"],
        READ,
    ),
    _rule(["autoscaling"], ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
    _rule(["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
    _rule(["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
    _rule(
        ["networking.k8s.io"], ["ingresses", "ingresses/status", "networkpolicies"], READ
    ),
]  # fmt: skip

EDIT_RULES = [
    _rule(
        [""],
        ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets",
         "services/proxy"],
        READ,
    ),
    _rule([""], ["serviceaccounts"], ["impersonate"]),
    _rule([""], ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
    _rule([""], ["pods/eviction"], ["create"]),
    _rule(
        [""],
        ["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers",
         "replicationcontrollers/scale", "secrets", "serviceaccounts", "services",
         "services/proxy"],
        WRITE,
    ),
    _rule([""], ["serviceaccounts/token"], ["create"]),
    _rule(
        ["apps"],
        ["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets",
         "replicasets/scale", "statefulsets", "statefulsets/scale"],
        WRITE,
    ),
    _rule(["autoscaling"], ["horizontalpodautoscalers"], WRITE),
    _rule(["batch"], ["cronjobs", "jobs"], WRITE),
    _rule(["networking.k8s.io"], ["ingresses", "networkpolicies"], WRITE),
    _rule(["policy"], ["poddisruptionbudgets"], WRITE),
]  # fmt: skip

ADMIN_RULES = [
    _rule(["authorization.k8s.io"], ["localsubjectaccessreviews"], ["create"]),
    _rule(["rbac.authorization.k8s.io"], ["rolebindings", "roles"], [*WRITE, *READ]),
]

CLUSTER_ROLES: list[Obj] = [
    _role("cluster-admin", [_rule(["*"], ["*"], ["*"]), _nonresource(["*"], ["*"])]),
    _aggregated("admin"),
    _aggregated("edit", "admin"),
    _aggregated("view", "edit"),
    _role("system:aggregate-to-admin", ADMIN_RULES, {f"{AGGREGATE}admin": "true"}),
    _role("system:aggregate-to-edit", EDIT_RULES, {f"{AGGREGATE}edit": "true"}),
    _role("system:aggregate-to-view", VIEW_RULES, {f"{AGGREGATE}view": "true"}),
    _role(
        "system:discovery",
        [
            _nonresource(
                [
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                ["get"],
            )
        ],
    ),
    _role(
        "system:basic-user",
        [
            _rule(
                ["authorization.k8s.io"],
                ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ["create"],
            ),
            _rule(["authentication.k8s.io"], ["selfsubjectreviews"], ["create"]),
        ],
    ),
    _role(
        "system:public-info-viewer",
        [_nonresource(["/healthz", "/livez", "/readyz", "/version", "/version/"], ["get"])],
    ),
    _role(
        "system:node-proxier",
        [
            _rule([""], ["endpoints", "services"], ["list", "watch"]),
            _rule([""], ["nodes"], ["get", "list", "watch"]),
            _rule(["", "events.k8s.io"], ["events"], ["create", "patch", "update"]),
            _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
        ],
    ),
    _role(
        "system:kube-dns",
        [
            _rule([""], ["endpoints", "services"], ["list", "watch"]),
            _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
            _rule([""], ["namespaces", "pods"], ["list", "watch"]),
        ],
    ),
    _role(
        "system:auth-delegator",
        [
            _rule(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
            _rule(["authorization.k8s.io"], ["subjectaccessreviews"], ["create"]),
        ],
    ),
    _role(
        "system:service-account-issuer-discovery",
        [_nonresource(["/.well-known/openid-configuration", "/openid/v1/jwks"], ["get"])],
    ),
]


def _binding(role: str, *subjects: tuple[str, str], name: str | None = None) -> Obj:
    out = []
    for kind, subject in subjects:
        if kind == "ServiceAccount":
            namespace, _, sa = subject.partition("/")
            out.append({"kind": kind, "name": sa, "namespace": namespace})
        else:
            out.append({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject})
    return {
        "metadata": _meta(name or role),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": out,
    }


CLUSTER_ROLE_BINDINGS: list[Obj] = [
    _binding("cluster-admin", ("Group", "system:masters")),
    _binding("system:discovery", ("Group", "system:authenticated")),
    _binding("system:basic-user", ("Group", "system:authenticated")),
    _binding(
        "system:public-info-viewer",
        ("Group", "system:authenticated"),
        ("Group", "system:unauthenticated"),
    ),
    _binding("system:node-proxier", ("User", "system:kube-proxy")),
    _binding("system:kube-dns", ("ServiceAccount", "kube-system/kube-dns")),
    _binding("system:service-account-issuer-discovery", ("Group", "system:serviceaccounts")),
]


async def ensure_policy(registry: Registry) -> None:
    for plural, objects in (
        ("clusterroles", CLUSTER_ROLES),
        ("clusterrolebindings", CLUSTER_ROLE_BINDINGS),
    ):
        res = BY_PLURAL[plural]
        for obj in objects:
            try:
                await registry.create(res, None, obj)
            except ApiError as exc:
                if exc.code != 409:
                    raise
