"""What the policy component keeps of a watched object (`_kept`): of pods, namespaces and nodes
only what its table is computed from, so that parsing what is kept gives what parsing the
whole object gives; policies whole."""

from __future__ import annotations

import json
from typing import Any

from podnet.agent.policy.component import LOG_ANNOTATION, _from_key, _kept, _key, _parse

POD: dict[str, Any] = {
    "metadata": {
        "name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
        "labels": {"app": "web"}, "ownerReferences": [{"kind": "ReplicaSet", "name": "web"}],
        "creationTimestamp": "2026-12-06T21:00:00Z",
    },
    "spec": {
        "nodeName": "node2",
        "containers": [
            {"name": "web", "image": "agnhost", "ports": [
                {"name": "http", "containerPort": 8080, "protocol": "TCP"}]},
            {"name": "sidecar", "image": "agnhost", "args": ["pause"]},
        ],
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
    },
    "status": {
        "phase": "Running", "podIP": "10.244.1.7", "hostIP": "172.31.1.12",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "web", "ready": True}],
    },
}  # fmt: skip

NODE: dict[str, Any] = {
    "metadata": {
        "name": "node2", "resourceVersion": "7", "labels": {"kubernetes.io/hostname": "node2"},
        "annotations": {LOG_ANNOTATION: "true", "flannel.alpha.coreos.com/public-ip": "172.31.1.2"},
    },
    "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
    "status": {"conditions": [{"type": "Ready", "status": "True"}], "images": [{"names": ["x"]}]},
}  # fmt: skip


def test_a_pod_is_kept_as_what_its_policy_view_reads() -> None:
    kept = _kept("pods", POD)
    assert kept == {
        "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": "42",
                     "labels": {"app": "web"}},
        "spec": {"nodeName": "node2", "hostNetwork": None, "containers": [
            {"ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"podIP": "10.244.1.7", "phase": "Running"},
    }  # fmt: skip
    assert _parse("pods", kept) == _parse("pods", POD) is not None
    # once parsed, only the key stays: what a re-list's deletion needs is made from it
    assert _from_key(_key(kept)) == {"metadata": {"name": "web-1", "namespace": "shop"}}
    assert _key(_from_key(_key(kept))) == _key(POD) == "shop/web-1"


def test_a_node_keeps_its_pod_cidr_and_log_flag_only() -> None:
    kept = _kept("nodes", NODE)
    assert kept == {
        "metadata": {"name": "node2", "resourceVersion": "7",
                     "labels": {"kubernetes.io/hostname": "node2"},
                     "annotations": {LOG_ANNOTATION: "true"}},
        "spec": {"podCIDR": "10.244.1.0/24"},
    }  # fmt: skip
    assert _parse("nodes", kept) == _parse("nodes", NODE) == ("10.244.1.0/24", "true")
    plain = {**NODE, "metadata": {"name": "node3", "resourceVersion": "8"}}
    assert "annotations" not in _kept("nodes", plain)["metadata"]


def test_namespaces_keep_their_labels_and_policies_stay_whole() -> None:
    ns = {"metadata": {"name": "shop", "resourceVersion": "3", "labels": {"team": "a"},
                       "uid": "n1"}, "spec": {"finalizers": ["kubernetes"]}}  # fmt: skip
    assert _parse("namespaces", _kept("namespaces", ns)) == _parse("namespaces", ns)
    assert _from_key(_key(ns)) == {"metadata": {"name": "shop"}}
    assert _kept("namespaces", ns) == {
        "metadata": {"name": "shop", "resourceVersion": "3", "labels": {"team": "a"}}
    }
    policy = {"metadata": {"name": "deny", "namespace": "shop"}, "spec": {"podSelector": {}}}
    assert _kept("networkpolicies", policy) is policy


def test_parsed_pods_share_the_strings_many_pods_repeat() -> None:
    """Each decoded pod brings its own copies; the parsed views keep one (sys.intern)."""
    first, second = (json.loads(json.dumps(POD)) for _ in range(2))
    second["metadata"]["name"] = "web-2"
    a, b = _parse("pods", first), _parse("pods", second)
    assert first["metadata"]["namespace"] is not second["metadata"]["namespace"]
    assert a is not None and b is not None and a.name != b.name
    assert a.namespace is b.namespace and a.node is b.node
    pairs = zip(a.labels, b.labels, strict=True)
    assert all(ka is kb and va is vb for (ka, va), (kb, vb) in pairs)
    assert a.ports[0].name is b.ports[0].name
