"""Protobuf bodies exactly as kubectl 1.32 sends them (captured with `kubectl -v=9`)."""

from __future__ import annotations

import pytest

from podnet.api.errors import ApiError
from podnet.apiserver.protobuf import decode_object

# kubectl create deployment d7 --image=nginx --port=80 --replicas=2
DEPLOYMENT = bytes.fromhex(
    "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412b4010a1d0a02643712001a0022002a"
    "003200380042005a090a03617070120264371284010802120b0a090a03617070120264371a6b0a1b0a0012"
    "001a0022002a003200380042005a090a0361707012026437124c122e0a056e67696e7812056e67696e782a"
    "00320a0a001000185022002a0042006a007200800100880100900100a201001a00320042004a0052005800"
    "600068008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200"
)
# kubectl create service nodeport s7 --tcp=80:8080 --node-port=30998
SERVICE = bytes.fromhex(
    "6b3873000a0d0a02763112075365727669636512670a1d0a02733712001a0022002a003200380042005a09"
    "0a036170701202733712420a1d0a0738302d38303830120354435018502207080010903f1a002896f20112"
    "090a03617070120273371a0022084e6f6465506f72743a00420052005a00600068001a020a001a002200"
)
# kubectl create secret generic s7 --from-literal=a=b
SECRET = bytes.fromhex(
    "6b3873000a0c0a0276311206536563726574121e0a120a02733712001a0022002a00320038004200120"
    "60a01611201621a001a002200"
)

# kubectl create job j11 --image=busybox -- date
JOB = bytes.fromhex(
    "6b3873000a0f0a0862617463682f763112034a6f621282010a130a036a313112001a0022002a003200380042"
    "001261325f0a100a0012001a0022002a00320038004200124b12280a036a3131120762757379626f781a0464"
    "6174652a0042006a007200800100880100900100a201001a054e65766572320042004a0052005800600068"
    "008201008a01009a0100c201001a082000280030003a001a002200"
)


def test_job() -> None:
    assert decode_object(JOB) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j11"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "j11", "image": "busybox", "command": ["date"], "resources": {}}
                    ],
                    "restartPolicy": "Never",
                }
            }
        },
    }


def test_deployment() -> None:
    assert decode_object(DEPLOYMENT) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d7", "labels": {"app": "d7"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "d7"}},
            "template": {
                "metadata": {"labels": {"app": "d7"}},
                "spec": {
                    "containers": [
                        {
                            "name": "nginx",
                            "image": "nginx",
                            "ports": [{"containerPort": 80}],
                            "resources": {},
                        }
                    ]
                },
            },
        },
    }


def test_service() -> None:
    assert decode_object(SERVICE) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s7", "labels": {"app": "s7"}},
        "spec": {
            "ports": [
                {
                    "name": "80-8080",
                    "protocol": "TCP",
                    "port": 80,
                    "targetPort": 8080,
                    "nodePort": 30998,
                }
            ],
            "selector": {"app": "s7"},
            "type": "NodePort",
        },
    }


def test_secret_data_is_base64() -> None:
    assert decode_object(SECRET) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s7"},
        "data": {"a": "Yg=="},
    }


def test_unknown_field_with_a_value_is_refused() -> None:
    # ConfigMap with an unknown field 9 carrying a string
    raw = bytes.fromhex("0a040a02636d") + bytes([0x4A, 0x01, 0x78])
    body = (
        b"k8s\x00"
        + bytes([0x0A, 0x0F, 0x0A, 0x02])
        + b"v1"
        + bytes([0x12, 0x09])
        + b"ConfigMap"
        + bytes([0x12, len(raw)])
        + raw
    )
    with pytest.raises(ApiError) as info:
        decode_object(body)
    assert info.value.code == 415 and "field 9 of ConfigMap" in info.value.message


def test_malformed_and_unsupported_bodies() -> None:
    for body in (b"not protobuf", DEPLOYMENT[:40]):
        with pytest.raises(ApiError) as info:
            decode_object(body)
        assert info.value.code == 415
    pod = b"k8s\x00" + bytes([0x0A, 0x09, 0x0A, 0x02]) + b"v1" + bytes([0x12, 0x03]) + b"Pod"
    with pytest.raises(ApiError) as info:
        decode_object(pod)
    assert "not v1 Pod" in info.value.message
