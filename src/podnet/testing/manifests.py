"""Ordinary user manifests of the kinds podnet serves beyond pods, services and deployments.

What belongs here: `deployment(...)`, the Deployment the controller tests roll out;
`user_manifests(namespace)`, one realistic object per kind — what a chart
or a tutorial applies (RBAC for an operator, an Ingress, a PodDisruptionBudget, an HPA, a
claim, ...) — and `as_yaml`, the multi-document form `kubectl apply -f` and
`kubernetes.utils.create_from_yaml` read. The unit tests validate every one of them, the
compat suite applies them with kubectl and with the Python client; keeping them in one place
means a kind added to podnet is added to both by adding it here.

Invariants: every object is valid as written (apply succeeds unchanged), names are fixed
(tests isolate themselves by namespace), cluster-scoped objects carry the namespace in their
name so parallel runs do not collide.
"""

from __future__ import annotations

from typing import Any

import yaml

Obj = dict[str, Any]


def deployment(
    name: str, replicas: int, image: str = "busybox:1.36", namespace: str = "default"
) -> Obj:
    """A Deployment of `replicas` pods labelled `app=<name>`, one container `main` with port
    `http` (8080)."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


def user_manifests(namespace: str) -> list[Obj]:
    """One object of every kind below, in an order that applies cleanly top to bottom."""
    app = {"app": "shop"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "operator", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader", "namespace": namespace},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "operator-reads-pods", "namespace": namespace},
            "subjects": [
                {"kind": "ServiceAccount", "name": "operator", "namespace": namespace},
                {"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"},
            ],
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"{namespace}:node-watcher"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{namespace}:node-watcher"},
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}],
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{namespace}:node-watcher",
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": f"{namespace}-nginx"},
            "spec": {"controller": "k8s.io/ingress-nginx"},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {
                "ingressClassName": f"{namespace}-nginx",
                "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                "rules": [
                    {
                        "host": "shop.example.com",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {"name": "shop", "port": {"number": 80}}
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": app}},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop"},
                "minReplicas": 2,
                "maxReplicas": 10,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "defaults", "namespace": namespace},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "500m", "memory": "256Mi"},
                        "defaultRequest": {"cpu": "100m", "memory": "64Mi"},
                        "max": {"cpu": "2", "memory": "1Gi"},
                    }
                ]
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "compute", "namespace": namespace},
            "spec": {"hard": {"pods": "20", "requests.cpu": "4", "limits.memory": "8Gi"}},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "node-probe", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "node-probe"}},
                "updateStrategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": {
                    "metadata": {"labels": {"app": "node-probe"}},
                    "spec": {
                        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                        "containers": [{"name": "probe", "image": "busybox:1.36"}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": namespace},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": namespace},
            "spec": {
                "serviceName": "db",
                "replicas": 2,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "db",
                                "image": "busybox:1.36",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ]
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ReplicationController",
            "metadata": {"name": "legacy", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "template": {
                    "metadata": {"labels": {"app": "legacy"}},
                    "spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]},
                },
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "migrate", "namespace": namespace},
            "spec": {
                "completions": 3,
                "parallelism": 3,
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 600,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {"name": "migrate", "image": "busybox:1.36", "command": ["true"]}
                        ],
                    }
                },
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "report", "namespace": namespace},
            "spec": {
                "schedule": "*/15 * * * *",
                "timeZone": "Europe/Berlin",
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "spec": {
                                "restartPolicy": "OnFailure",
                                "containers": [
                                    {"name": "report", "image": "busybox:1.36", "command": ["date"]}
                                ],
                            }
                        }
                    }
                },
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": f"v1beta1.{namespace}.example.com"},
            "spec": {
                "group": f"{namespace}.example.com",
                "version": "v1beta1",
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
                "service": {"name": "shop-api", "namespace": namespace},
            },
        },
    ]


def as_yaml(objects: list[Obj]) -> str:
    """A multi-document YAML stream (`---` between objects), as users keep manifests."""
    return yaml.safe_dump_all(objects, sort_keys=False)
