"""NetworkPolicy at the API: defaults, upstream validation (paths, reasons, messages), the
`kubectl get netpol` columns, and the namespace label that namespaceSelectors rely on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from podnet.api.defaults import apply_defaults
from podnet.api.errors import Cause
from podnet.api.resources import resource
from podnet.api.tables import to_table
from podnet.api.validation import unknown_fields, validate

NETPOL = resource("networkpolicies")
PORT_RANGE = "must be between 1 and 65535, inclusive"


def policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-web", "namespace": "x"},
        "spec": spec,
    }


def check(obj: dict[str, Any]) -> list[Cause]:
    return validate(NETPOL, apply_defaults(NETPOL, obj), None)


def test_served_as_networking_v1_with_short_name() -> None:
    assert (NETPOL.group_version, NETPOL.kind, NETPOL.short_names) == (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        ("netpol",),
    )
    assert NETPOL.namespaced


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, ["Ingress"]),
        ({"ingress": [{}]}, ["Ingress"]),
        ({"egress": [{}]}, ["Ingress", "Egress"]),
        ({"egress": [], "policyTypes": []}, ["Ingress"]),
        ({"egress": [{}], "policyTypes": ["Egress"]}, ["Egress"]),
    ],
)
def test_policy_types_default_as_upstream(spec: dict[str, Any], types: list[str]) -> None:
    out = apply_defaults(NETPOL, policy(**spec))
    assert out["spec"]["policyTypes"] == types
    assert out["spec"]["podSelector"] == {}


def test_ports_default_to_tcp_and_keep_given_protocols() -> None:
    out = apply_defaults(
        NETPOL,
        policy(
            ingress=[{"ports": [{"port": 80}, {"protocol": "UDP", "port": 53}]}],
            egress=[{"ports": [{"port": "dns"}]}],
        ),
    )
    assert [p["protocol"] for p in out["spec"]["ingress"][0]["ports"]] == ["TCP", "UDP"]
    assert out["spec"]["egress"][0]["ports"] == [{"port": "dns", "protocol": "TCP"}]


def test_a_full_policy_is_valid() -> None:
    obj = policy(
        podSelector={"matchLabels": {"app": "db"}},
        ingress=[
            {
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "p"}}},
                    {
                        "namespaceSelector": {"matchLabels": {"team": "t"}},
                        "podSelector": {"matchLabels": {"role": "frontend"}},
                    },
                ],
                "ports": [{"protocol": "TCP", "port": 6379}, {"port": 32000, "endPort": 32768}],
            }
        ],
        egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": "dns"}]}],
        policyTypes=["Ingress", "Egress"],
    )
    assert check(obj) == []
    assert unknown_fields(NETPOL, obj) == []


@pytest.mark.parametrize(
    ("port", "causes"),
    [
        (
            {"protocol": "ICMP", "port": 1},
            [
                Cause(
                    "spec.ingress[0].ports[0].protocol",
                    "FieldValueNotSupported",
                    'Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"',
                )
            ],
        ),
        (
            {"port": 0},
            [
                Cause(
                    "spec.ingress[0].ports[0].port",
                    "FieldValueInvalid",
                    f"Invalid value: 0: {PORT_RANGE}",
                )
            ],
        ),
        (
            {"port": 90, "endPort": 80},
            [
                Cause(
                    "spec.ingress[0].ports[0].endPort",
                    "FieldValueInvalid",
                    "Invalid value: 90: must be greater than or equal to `port`",
                )
            ],
        ),
        (
            {"port": 80, "endPort": 70000},
            [
                Cause(
                    "spec.ingress[0].ports[0].endPort",
                    "FieldValueInvalid",
                    f"Invalid value: 70000: {PORT_RANGE}",
                )
            ],
        ),
        (
            {"port": "http", "endPort": 90},
            [
                Cause(
                    "spec.ingress[0].ports[0].endPort",
                    "FieldValueInvalid",
                    "Invalid value: 90: may not be specified when `port` is non-numeric",
                )
            ],
        ),
        (
            {"endPort": 90},
            [
                Cause(
                    "spec.ingress[0].ports[0].endPort",
                    "FieldValueInvalid",
                    "Invalid value: 90: may not be specified when `port` is not specified",
                )
            ],
        ),
        (
            {"port": "Web_1"},
            [
                Cause(
                    "spec.ingress[0].ports[0].port",
                    "FieldValueInvalid",
                    'Invalid value: "Web_1": must contain only alpha-numeric characters '
                    "(a-z, 0-9), and hyphens (-)",
                )
            ],
        ),
        (
            {"port": 1.5},
            [
                Cause(
                    "spec.ingress[0].ports[0].port",
                    "FieldValueTypeInvalid",
                    "Invalid value: 1.5: expected an integer or a string",
                )
            ],
        ),
    ],
)
def test_port_rules(port: dict[str, Any], causes: list[Cause]) -> None:
    assert check(policy(ingress=[{"ports": [port]}])) == causes


@pytest.mark.parametrize(
    ("peer", "causes"),
    [
        (
            {},
            [
                Cause(
                    "spec.egress[0].to[0]",
                    "FieldValueRequired",
                    "Required value: must specify a peer",
                )
            ],
        ),
        (
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
            [
                Cause(
                    "spec.egress[0].to[0]",
                    "FieldValueForbidden",
                    "Forbidden: may not specify both ipBlock and another peer",
                )
            ],
        ),
        (
            {"ipBlock": {}},
            [Cause("spec.egress[0].to[0].ipBlock.cidr", "FieldValueRequired", "Required value")],
        ),
        (
            {"ipBlock": {"cidr": "10.0.0.0"}},
            [
                Cause(
                    "spec.egress[0].to[0].ipBlock.cidr",
                    "FieldValueInvalid",
                    'Invalid value: "10.0.0.0": must be a valid CIDR value, '
                    "(e.g. 10.9.8.0/24 or 2001:db8::/64)",
                )
            ],
        ),
        (
            {
                "ipBlock": {
                    "cidr": "10.0.0.0/16",
                    "except": ["10.1.0.0/24", "10.0.0.0/16", "10.0.1.0/24"],
                }
            },
            [
                Cause(
                    "spec.egress[0].to[0].ipBlock.except[0]",
                    "FieldValueInvalid",
                    'Invalid value: "10.1.0.0/24": must be a strict subset of `cidr`',
                ),
                Cause(
                    "spec.egress[0].to[0].ipBlock.except[1]",
                    "FieldValueInvalid",
                    'Invalid value: "10.0.0.0/16": must be a strict subset of `cidr`',
                ),
            ],
        ),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            [
                Cause(
                    "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values",
                    "FieldValueRequired",
                    "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                )
            ],
        ),
    ],
)
def test_peer_rules(peer: dict[str, Any], causes: list[Cause]) -> None:
    assert check(policy(egress=[{"to": [peer]}])) == causes


def test_policy_types_are_ingress_or_egress_at_most_two() -> None:
    assert check(policy(policyTypes=["Ingress", "Sideways"])) == [
        Cause(
            "spec.policyTypes[1]",
            "FieldValueNotSupported",
            'Unsupported value: "Sideways": supported values: "Ingress", "Egress"',
        )
    ]
    assert [c.field for c in check(policy(policyTypes=["Ingress", "Egress", "Ingress"]))] == [
        "spec.policyTypes"
    ]


def test_unknown_fields_are_reported_with_their_path() -> None:
    obj = policy(ingress=[{"from": [{"podSelecter": {}}], "ports": [{"prot": "TCP"}]}])
    assert unknown_fields(NETPOL, obj) == [
        "spec.ingress[0].from[0].podSelecter",
        "spec.ingress[0].ports[0].prot",
    ]


def test_table_shows_the_pod_selector_like_kubectl_get_netpol() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    objs = [
        {
            **policy(podSelector={}),
            "metadata": {"name": "deny-all", "creationTimestamp": "2024-05-01T11:00:00Z"},
        },
        policy(
            podSelector={
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}],
            }
        ),
    ]
    table = to_table(NETPOL, objs, now)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Pod-Selector", "Age"]
    assert [row["cells"] for row in table["rows"]] == [
        ["deny-all", "<none>", "60m"],
        ["allow-web", "app=web,tier in (a,b)", "<unknown>"],
    ]


@pytest.mark.parametrize(
    "labels", [None, {}, {"kubernetes.io/metadata.name": "spoof", "team": "t"}]
)
def test_namespaces_always_carry_their_name_label(labels: dict[str, str] | None) -> None:
    ns: dict[str, Any] = {"metadata": {"name": "y"}}
    if labels is not None:
        ns["metadata"]["labels"] = labels
    out = apply_defaults(resource("namespaces"), ns)
    assert out["metadata"]["labels"]["kubernetes.io/metadata.name"] == "y"
