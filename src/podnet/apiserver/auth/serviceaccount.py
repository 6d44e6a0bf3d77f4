"""ServiceAccount admission of pods (upstream `plugin/pkg/admission/serviceaccount`), pure.

`admit_pod(pod, account)`: a pod without `spec.serviceAccountName` gets `default`
(`spec.serviceAccount` mirrors it, as upstream); unless the pod or its ServiceAccount says
`automountServiceAccountToken: false` (the pod's word wins), the pod gets the
`kube-api-access-<5>` projected volume — a bound token (`expirationSeconds: 3607`, path `token`),
`ca.crt` from the `kube-root-ca.crt` ConfigMap and `namespace` from the downward API — mounted
read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in every container and init
container that does not mount something there already. The caller (the pod strategy) looks the
ServiceAccount up and refuses the pod when it does not exist.
"""

from __future__ import annotations

import secrets
from typing import Any

Obj = dict[str, Any]
MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
VOLUME_PREFIX = "kube-api-access-"
TOKEN_EXPIRATION = 3607
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # upstream's utilrand alphabet


def account_name(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def wants_token(pod: Obj, account: Obj) -> bool:
    pod_says = (pod.get("spec") or {}).get("automountServiceAccountToken")
    if pod_says is not None:
        return bool(pod_says)
    return account.get("automountServiceAccountToken") is not False


def token_volume(name: str) -> Obj:
    return {
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
                {
                    "configMap": {
                        "name": ROOT_CA_CONFIGMAP,
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }


def admit_pod(pod: Obj, account: Obj) -> None:
    spec = pod.setdefault("spec", {})
    name = account_name(pod)
    spec["serviceAccountName"] = name
    spec["serviceAccount"] = name
    if not wants_token(pod, account):
        return
    containers = [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]
    if all(
        any(m.get("mountPath") == MOUNT_PATH for m in c.get("volumeMounts") or ())
        for c in containers
    ):
        return
    volumes = spec.setdefault("volumes", [])
    taken = {v.get("name") for v in volumes}
    volume = ""
    while not volume or volume in taken:
        volume = VOLUME_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(5))
    volumes.append(token_volume(volume))
    for container in containers:
        mounts = container.setdefault("volumeMounts", [])
        if not any(m.get("mountPath") == MOUNT_PATH for m in mounts):
            mounts.append({"name": volume, "readOnly": True, "mountPath": MOUNT_PATH})
