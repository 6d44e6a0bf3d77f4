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

# kubectl create rolebinding rb1 --clusterrole=view --serviceaccount=default:reader --user=alice
ROLE_BINDING = bytes.fromhex(
    "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b526f6c6542"
    "696e64696e671296010a130a0372623112001a0022002a00320038004200122a0a04557365721219726261"
    "632e617574686f72697a6174696f6e2e6b38732e696f1a05616c696365220012230a0e5365727669636541"
    "63636f756e7412001a06726561646572220764656661756c741a2e0a19726261632e617574686f72697a61"
    "74696f6e2e6b38732e696f120b436c7573746572526f6c651a04766965771a002200"
)
# kubectl create clusterrole cr1 --verb=get,list --resource=pods,deployments.apps --resource-name=x
CLUSTER_ROLE = bytes.fromhex(
    "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b436c757374"
    "6572526f6c6512500a130a0363723112001a0022002a0032003800420012160a036765740a046c69737412"
    "001a04706f647322017812210a036765740a046c6973741204617070731a0b6465706c6f796d656e747322"
    "01781a002200"
)

# kubectl auth whoami
SELF_SUBJECT_REVIEW = bytes.fromhex(
    "6b3873000a2d0a1861757468656e7469636174696f6e2e6b38732e696f2f7631121153656c665375626a"
    "656374526576696577121a0a100a0012001a0022002a0032003800420012060a040a0012001a002200"
)
# kubectl auth can-i delete nodes
CAN_I = bytes.fromhex(
    "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a65"
    "637441636365737352657669657712400a100a0012001a0022002a0032003800420012220a200a076465"
    "6661756c74120664656c6574651a0022002a056e6f64657332003a001a08080012001a0020001a002200"
)
# kubectl auth can-i get /healthz
CAN_I_PATH = bytes.fromhex(
    "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a65"
    "6374416363657373526576696577122f0a100a0012001a0022002a003200380042001211120f0a082f68"
    "65616c74687a12036765741a08080012001a0020001a002200"
)
# kubectl auth can-i --list
CAN_I_LIST = bytes.fromhex(
    "6b3873000a310a17617574686f72697a6174696f6e2e6b38732e696f2f7631121653656c665375626a65"
    "637452756c657352657669657712230a100a0012001a0022002a0032003800420012090a0764656661756c"
    "741a04180022001a002200"
)
# kubectl create token reader --audience=x --duration=20m
TOKEN_REQUEST = bytes.fromhex(
    "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e526571"
    "7565737412200a100a0012001a0022002a0032003800420012060a017820b0091a040a0012001a002200"
)


def test_auth_reviews_and_token_requests() -> None:
    authn, authz = "authentication.k8s.io/v1", "authorization.k8s.io/v1"
    assert decode_object(SELF_SUBJECT_REVIEW) == {"apiVersion": authn, "kind": "SelfSubjectReview"}
    assert decode_object(CAN_I)["spec"] == {
        "resourceAttributes": {"namespace": "default", "verb": "delete", "resource": "nodes"}
    }
    assert decode_object(CAN_I_PATH)["spec"] == {
        "nonResourceAttributes": {"path": "/healthz", "verb": "get"}
    }
    assert decode_object(CAN_I_LIST) == {
        "apiVersion": authz,
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": "default"},
    }
    assert decode_object(TOKEN_REQUEST) == {
        "apiVersion": authn,
        "kind": "TokenRequest",
        "spec": {"audiences": ["x"], "expirationSeconds": 1200},
    }


def test_rbac_objects() -> None:
    rbac = "rbac.authorization.k8s.io"
    assert decode_object(ROLE_BINDING) == {
        "apiVersion": f"{rbac}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "rb1"},
        "subjects": [
            {"kind": "User", "apiGroup": rbac, "name": "alice"},
            {"kind": "ServiceAccount", "name": "reader", "namespace": "default"},
        ],
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "view"},
    }
    assert decode_object(CLUSTER_ROLE)["rules"] == [  # the core group "" is kept
        {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"],
         "resourceNames": ["x"]},
        {"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["deployments"],
         "resourceNames": ["x"]},
    ]  # fmt: skip


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
