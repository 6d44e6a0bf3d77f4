"""Leases from Node objects, the publish patch, and the pure snapshot diff (LeaseWatcher)."""

from __future__ import annotations

import json
from typing import Any

from podnet.agent.flannel.leases import (
    Lease,
    LeaseWatcher,
    lease_from_node,
    own_lease_patch,
    slim_node,
    stored_backend_data,
)


def node(
    name: str, cidr: str | None, ip: str, backend: str = "vxlan", mac: str = "02:00:00:00:00:01"
) -> dict[str, Any]:
    data = json.dumps({"VNI": 1, "VtepMAC": mac}) if backend == "vxlan" else "null"
    return {
        "metadata": {
            "name": name,
            "annotations": own_lease_patch(backend, json.loads(data), ip)["metadata"][
                "annotations"
            ],
        },
        "spec": {"podCIDR": cidr} if cidr else {},
    }


def lease(n: dict[str, Any]) -> Lease:
    found = lease_from_node(n)
    assert found is not None
    return found


def test_flannel_publish_patch_has_flannels_annotations() -> None:
    patch = own_lease_patch("vxlan", {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}, "172.31.1.11")
    assert patch == {
        "metadata": {
            "annotations": {
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}',
                "flannel.alpha.coreos.com/public-ip": "172.31.1.11",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            }
        }
    }
    assert (
        own_lease_patch("host-gw", None, "10.0.0.1")["metadata"]["annotations"][
            "flannel.alpha.coreos.com/backend-data"
        ]
        == "null"
    )


def test_flannel_lease_from_node() -> None:
    found = lease(node("node2", "10.244.2.0/24", "172.31.1.12", mac="02:00:00:00:00:02"))
    assert str(found.subnet) == "10.244.2.0/24"
    assert str(found.public_ip) == "172.31.1.12"
    assert str(found.gateway) == "10.244.2.0"
    assert found.backend_type == "vxlan"
    assert found.data("VtepMAC") == "02:00:00:00:00:02"
    assert found.data("VNI") == 1


def test_flannel_nodes_that_are_not_leases() -> None:
    assert lease_from_node(node("a", None, "172.31.1.12")) is None  # no podCIDR yet
    assert (
        lease_from_node({"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.1.0/24"}}) is None
    )
    manual = node("c", "10.244.3.0/24", "172.31.1.13")
    manual["metadata"]["annotations"]["flannel.alpha.coreos.com/kube-subnet-manager"] = "false"
    assert lease_from_node(manual) is None


def test_flannel_public_ip_overwrite_wins() -> None:
    n = node("a", "10.244.1.0/24", "172.31.1.11")
    n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip-overwrite"] = "203.0.113.9"
    assert str(lease(n).public_ip) == "203.0.113.9"


def test_flannel_stored_backend_data_for_mac_reuse() -> None:
    assert stored_backend_data(node("a", "10.244.1.0/24", "1.2.3.4", mac="02:aa:00:00:00:01")) == {
        "VNI": 1,
        "VtepMAC": "02:aa:00:00:00:01",
    }
    assert stored_backend_data({"metadata": {}}) == {}


def test_flannel_watcher_reset_diffs_snapshots_and_skips_own_lease() -> None:
    watcher = LeaseWatcher("node1")
    n1 = lease(node("node1", "10.244.1.0/24", "172.31.1.11"))
    n2 = lease(node("node2", "10.244.2.0/24", "172.31.1.12"))
    n3 = lease(node("node3", "10.244.3.0/24", "172.31.1.13"))
    first = watcher.reset([n3, n1, n2])
    assert first.removed == ()
    assert [x.node for x in first.added] == ["node2", "node3"]
    assert not watcher.reset([n1, n2, n3])  # nothing changed: no events

    # node3 leaves, node4 joins, node2's VtepMAC changes (e.g. its device was rebuilt)
    n2b = lease(node("node2", "10.244.2.0/24", "172.31.1.12", mac="02:00:00:00:00:22"))
    n4 = lease(node("node4", "10.244.4.0/24", "172.31.1.14"))
    events = watcher.reset([n1, n2b, n4])
    assert events.removed == (n2, n3)
    assert events.added == (n2b, n4)
    assert watcher.snapshot() == [n2b, n4]


def test_flannel_watcher_update_one_node() -> None:
    watcher = LeaseWatcher("node1")
    n2 = lease(node("node2", "10.244.2.0/24", "172.31.1.12"))
    assert watcher.update("node2", n2).added == (n2,)
    assert not watcher.update("node2", n2)
    assert not watcher.update("node1", lease(node("node1", "10.244.1.0/24", "1.1.1.1")))
    gone = watcher.update("node2", None)
    assert gone.removed == (n2,) and gone.added == ()
    assert watcher.snapshot() == []


def test_flannel_overlapping_leases_are_never_programmed() -> None:
    import ipaddress

    from podnet.agent.flannel.leases import drop_overlapping

    own = ipaddress.IPv4Network("10.244.1.0/24")
    n2 = lease(node("node2", "10.244.2.0/24", "172.31.1.12"))
    thief = lease(node("node9", "10.244.1.0/24", "172.31.1.19"))
    twin = lease(node("node7", "10.244.2.0/25", "172.31.1.17"))
    me = lease(node("node1", "10.244.1.0/24", "172.31.1.11"))
    kept, problems = drop_overlapping("node1", own, [thief, twin, n2, me])
    assert kept == [n2]
    assert problems == [
        "node node7 claims 10.244.2.0/25, which overlaps 10.244.2.0/24 of node node2; "
        "ignoring its lease",
        "node node9 claims 10.244.1.0/24, which overlaps this node's 10.244.1.0/24 (node1); "
        "ignoring its lease",
    ]


def test_flannel_keeps_of_a_node_what_its_lease_is_made_of() -> None:
    whole = node("node2", "10.244.2.0/24", "172.31.1.12", mac="02:00:00:00:00:02")
    whole["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = "0"
    whole["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip-overwrite"] = "10.9.9.9"
    whole["metadata"].update(labels={"kubernetes.io/hostname": "node2"}, uid="u-1")
    whole["spec"]["taints"] = [{"key": "k", "effect": "NoSchedule"}]
    whole["status"] = {"conditions": [{"type": "Ready", "status": "True"}], "capacity": {}}
    slim = slim_node(whole)
    assert slim == {
        "metadata": {
            "name": "node2",
            "annotations": {
                k: v
                for k, v in whole["metadata"]["annotations"].items()
                if k.startswith("flannel.alpha.coreos.com/")
            },
        },
        "spec": {"podCIDR": "10.244.2.0/24"},
    }
    assert lease_from_node(slim) == lease_from_node(whole)
    assert stored_backend_data(slim) == stored_backend_data(whole)
    # a node without podCIDR or annotations yet: no lease either way
    bare = {"metadata": {"name": "node3"}, "status": {}}
    assert lease_from_node(slim_node(bare)) is None and stored_backend_data(slim_node(bare)) == {}
