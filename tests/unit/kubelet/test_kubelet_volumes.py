"""hostPath volumes: which mounts a container gets, and the settings refused (volumes.py)."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.agent.kubelet.volumes import HostMount, VolumeError, host_path_mounts


def pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "volumes": volumes,
            "containers": [{"name": "c", "image": "busybox", "volumeMounts": mounts}],
        },
    }


def test_host_path_mounts_in_order_with_read_only() -> None:
    p = pod(
        [
            {"name": "creds", "hostPath": {"path": "/var/lib/podnet/lab/dns", "type": "Directory"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "conf", "hostPath": {"path": "/etc/podnet.conf", "type": "File"}},
        ],
        [
            {"name": "creds", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
             "readOnly": True},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "conf", "mountPath": "/etc/app.conf"},
        ],
    )  # fmt: skip
    container = p["spec"]["containers"][0]
    assert host_path_mounts(container, p) == (
        HostMount("/var/lib/podnet/lab/dns", "/var/run/secrets/kubernetes.io/serviceaccount", True),
        HostMount("/etc/podnet.conf", "/etc/app.conf", False),
    )
    assert host_path_mounts({"name": "other"}, p) == ()


@pytest.mark.parametrize(
    ("host_path", "mount", "message"),
    [
        ({"path": "relative"}, {}, "must be absolute"),
        ({"path": "/x", "type": "DirectoryOrCreate"}, {}, "type 'DirectoryOrCreate'"),
        ({"path": "/x"}, {"subPath": "y"}, "subPath is not supported"),
        ({"path": "/x"}, {"mountPath": "x"}, "mountPath 'x' must be absolute"),
    ],
)
def test_unsupported_settings_are_refused_by_name(
    host_path: dict[str, Any], mount: dict[str, Any], message: str
) -> None:
    p = pod([{"name": "v", "hostPath": host_path}], [{"name": "v", "mountPath": "/m", **mount}])
    with pytest.raises(VolumeError, match=message) as refused:
        host_path_mounts(p["spec"]["containers"][0], p)
    assert "volume 'v'" in str(refused.value)
