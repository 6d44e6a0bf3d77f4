"""volumes.py: which mounts a container gets, what the kubelet-filled volumes need and which
files they hold; atomicwriter.py: a volume's files replaced as one set."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from podnet.agent.kubelet.atomicwriter import current_files, write_volume
from podnet.agent.kubelet.volumes import (
    Fetched,
    HostMount,
    TokenNeed,
    VolumeError,
    VolumeFile,
    VolumeNeeds,
    container_mounts,
    render_volume,
    volume_needs,
)
from podnet.apiserver.auth.serviceaccount import token_volume

VOLUMES = "/var/lib/podnet/node1/pod-volumes/u1"


def pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "team",
            "uid": "u1",
            "labels": {"app": "web", "tier": 'say "hi"'},
            "annotations": {"note": "x"},
        },
        "spec": {
            "volumes": volumes,
            "containers": [{"name": "c", "image": "busybox", "volumeMounts": mounts}],
        },
    }


def mounts_of(p: dict[str, Any]) -> tuple[HostMount, ...]:
    return container_mounts(p["spec"]["containers"][0], p, VOLUMES)


def test_host_path_and_filled_volumes_mount_in_order() -> None:
    p = pod(
        [
            {"name": "creds", "hostPath": {"path": "/var/lib/podnet/lab/dns", "type": "Directory"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "conf", "hostPath": {"path": "/etc/podnet.conf", "type": "File"}},
            token_volume("kube-api-access-x2x4z"),
            {"name": "cm", "configMap": {"name": "settings"}},
        ],
        [
            {"name": "creds", "mountPath": "/creds", "readOnly": True},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "conf", "mountPath": "/etc/app.conf"},
            {"name": "kube-api-access-x2x4z",
             "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            {"name": "cm", "mountPath": "/etc/app/one.conf", "subPath": "one.conf"},
        ],
    )  # fmt: skip
    assert mounts_of(p) == (
        HostMount("/var/lib/podnet/lab/dns", "/creds", True),
        HostMount("/etc/podnet.conf", "/etc/app.conf", False),
        # filled volumes are read-only whatever the mount says, as upstream mounts them
        HostMount(
            f"{VOLUMES}/kube-api-access-x2x4z",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            True,
        ),
        HostMount(f"{VOLUMES}/cm/one.conf", "/etc/app/one.conf", True),
    )
    assert container_mounts({"name": "other"}, p, VOLUMES) == ()


@pytest.mark.parametrize(
    ("volume", "mount", "message"),
    [
        ({"hostPath": {"path": "relative"}}, {}, "must be absolute"),
        ({"hostPath": {"path": "/x", "type": "DirectoryOrCreate"}}, {}, "type 'DirectoryOrCreate'"),
        ({"hostPath": {"path": "/x"}}, {"subPath": "y"}, "subPath is not supported"),
        ({"hostPath": {"path": "/x"}}, {"mountPath": "x"}, "mountPath 'x' must be absolute"),
        ({"configMap": {"name": "c"}}, {"subPath": "../etc"}, "subPath '../etc' must be a rel"),
        ({"configMap": {"name": "c"}}, {"subPathExpr": "$(X)"}, "subPathExpr is not supported"),
    ],
)
def test_unsupported_settings_are_refused_by_name(
    volume: dict[str, Any], mount: dict[str, Any], message: str
) -> None:
    p = pod([{"name": "v", **volume}], [{"name": "v", "mountPath": "/m", **mount}])
    with pytest.raises(VolumeError, match=message) as refused:
        mounts_of(p)
    assert "volume 'v'" in str(refused.value)


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_service_account_volume_holds_token_ca_and_namespace() -> None:
    volume = token_volume("kube-api-access-x2x4z")
    p = pod([volume], [])
    need = TokenNeed("", 3607)
    assert volume_needs(p) == VolumeNeeds(frozenset({"kube-root-ca.crt"}), frozenset(), {need})
    fetched = Fetched({"kube-root-ca.crt": {"data": {"ca.crt": "PEM"}}}, {}, {need: "jwt"})
    assert render_volume(volume, p, fetched) == {
        "token": VolumeFile(b"jwt", 0o644),
        "ca.crt": VolumeFile(b"PEM", 0o644),
        "namespace": VolumeFile(b"team", 0o644),
    }


def test_config_maps_secrets_and_the_downward_api_by_upstreams_rules() -> None:
    volumes = [
        {"name": "all", "configMap": {"name": "cm", "defaultMode": 0o600}},
        {"name": "some", "secret": {"secretName": "s", "items": [
            {"key": "password", "path": "db/password", "mode": 0o400}]}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}}]}},
        {"name": "maybe", "configMap": {"name": "absent", "optional": True}},
    ]  # fmt: skip
    p = pod(volumes, [])
    fetched = Fetched(
        {"cm": {"data": {"a": "1"}, "binaryData": {"b": encoded("\x00\x01")}}, "absent": None},
        {"s": {"data": {"password": encoded("hunter2"), "user": encoded("admin")}}},
        {},
    )
    files = {v["name"]: render_volume(v, p, fetched) for v in volumes}
    assert files == {
        "all": {"a": VolumeFile(b"1", 0o600), "b": VolumeFile(b"\x00\x01", 0o600)},
        "some": {"db/password": VolumeFile(b"hunter2", 0o400)},
        "info": {
            "labels": VolumeFile(b'app="web"\ntier="say \\"hi\\""', 0o644),
            "app": VolumeFile(b"web", 0o644),
            "uid": VolumeFile(b"u1", 0o644),
        },
        "maybe": {},
    }


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"configMap": {"name": "absent"}}, 'configmap "absent" not found'),
        ({"configMap": {"name": "cm", "items": [{"key": "nope", "path": "x"}]}},
         'configmap "cm" has no key "nope"'),
        ({"configMap": {"name": "cm", "items": [{"key": "a", "path": "/abs"}]}},
         "path '/abs' must be a relative path"),
        ({"secret": {"secretName": "bad"}}, "data key 'k' is not valid base64"),
        ({"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "spec.nodeName"}}]}},
         "fieldPath 'spec.nodeName' is not supported in a volume"),
        ({"downwardAPI": {"items": [{"path": "c", "resourceFieldRef": {"resource": "cpu"}}]}},
         "does not serve resourceFieldRef"),
        ({"projected": {"sources": [{"emptyDir": {}}]}}, "needs exactly one of secret"),
        ({"projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 60}}]}},
         "expirationSeconds 60 must be at least 600"),
        ({"configMap": {"name": "cm", "defaultMode": 0o1777}}, "mode 0o1777 must be between"),
    ],
)  # fmt: skip
def test_volumes_that_cannot_be_filled_say_why(volume: dict[str, Any], message: str) -> None:
    volume = {"name": "v", **volume}
    p = pod([volume], [])
    fetched = Fetched(
        {"cm": {"data": {"a": "1"}}, "absent": None}, {"bad": {"data": {"k": "!"}}}, {}
    )
    with pytest.raises(VolumeError, match=message) as refused:
        volume_needs(p)
        render_volume(volume, p, fetched)
    assert "volume 'v'" in str(refused.value)


def test_a_volume_is_replaced_as_one_set(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    first = {"token": VolumeFile(b"one", 0o644), "dir/ca.crt": VolumeFile(b"PEM", 0o600)}
    assert write_volume(target, first)
    assert (target / "token").read_bytes() == b"one"
    assert os.readlink(target / "token") == "..data/token"
    assert (target / "dir" / "ca.crt").stat().st_mode & 0o777 == 0o600
    assert current_files(target) == first
    version = os.readlink(target / "..data")
    assert not write_volume(target, first)  # unchanged: nothing written
    assert os.readlink(target / "..data") == version
    second = {"token": VolumeFile(b"two", 0o644), "namespace": VolumeFile(b"team", 0o644)}
    assert write_volume(target, second)
    assert (target / "token").read_bytes() == b"two"
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith("..")) == [
        "namespace",
        "token",
    ]
    versions = [p.name for p in target.iterdir() if p.name.startswith("..2")]
    assert versions == [os.readlink(target / "..data")] != [version]
    with pytest.raises(ValueError, match="must be relative"):
        write_volume(target, {"../escape": VolumeFile(b"", 0o644)})
