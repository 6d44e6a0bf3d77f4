"""Node labels, status and Lease as the kubelet writes them (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from podnet.agent.kubelet.node import (
    MachineFacts,
    Readiness,
    go_arch,
    node_labels,
    node_resources,
    render_lease,
    render_node_status,
)

FACTS = MachineFacts(2, 4000000, "6.18.0", "Debian GNU/Linux 12 (bookworm)", "amd64", "mid", "bid")
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)


def test_arch_names() -> None:
    assert [go_arch(m) for m in ("x86_64", "aarch64", "riscv64")] == ["amd64", "arm64", "riscv64"]


def test_labels() -> None:
    labels = node_labels("node1", FACTS)
    assert labels["kubernetes.io/hostname"] == "node1"
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/arch"] == "amd64"


def render(
    ready: Readiness, previous: dict[str, object] | None, now: datetime
) -> dict[str, object]:
    return render_node_status(
        node_name="node1",
        node_ip="172.31.0.11",
        kubelet_port=10250,
        facts=FACTS,
        readiness=ready,
        previous=previous,
        now=now,
    )


def test_node_status_golden() -> None:
    status = render(Readiness(True, "KubeletReady", "kubelet is posting ready status"), None, T0)
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "172.31.0.11"},
        {"type": "Hostname", "address": "node1"},
    ]
    assert status["capacity"] == {"cpu": "2", "memory": "4000000Ki", "pods": "110"}
    assert status["allocatable"] == status["capacity"]
    # what a container's resourceFieldRef to an unset limit resolves to (PodSync)
    assert node_resources(FACTS) == status["allocatable"]
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    info = status["nodeInfo"]
    assert isinstance(info, dict)
    assert info["kubeletVersion"] == "v1.32.0-podnet"
    assert info["containerRuntimeVersion"] == "podnet://0.1"
    assert (info["operatingSystem"], info["architecture"]) == ("linux", "amd64")
    conditions = status["conditions"]
    assert isinstance(conditions, list)
    assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    assert all(c["lastHeartbeatTime"] == "2026-01-01T12:00:00Z" for c in conditions)


def test_transition_time_moves_only_on_change() -> None:
    first = render(Readiness(False, "KubeletNotReady", "network"), None, T0)
    same = render(Readiness(False, "KubeletNotReady", "network"), first, T1)
    ready_same = next(c for c in same["conditions"] if c["type"] == "Ready")  # type: ignore[union-attr, attr-defined]
    assert ready_same["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert ready_same["lastHeartbeatTime"] == "2026-01-01T12:00:10Z"
    flipped = render(Readiness(True, "KubeletReady", "ok"), first, T1)
    ready = next(c for c in flipped["conditions"] if c["type"] == "Ready")  # type: ignore[union-attr, attr-defined]
    assert ready["lastTransitionTime"] == "2026-01-01T12:00:10Z"


def test_lease_golden() -> None:
    assert render_lease("node1", "uid-1", 40, T0) == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "node1",
            "namespace": "kube-node-lease",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "node1", "uid": "uid-1"}
            ],
        },
        "spec": {
            "holderIdentity": "node1",
            "leaseDurationSeconds": 40,
            "renewTime": "2026-01-01T12:00:00.000000Z",
        },
    }
