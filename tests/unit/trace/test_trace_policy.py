"""A packet the NetworkPolicy table drops: the trace names the pod isolated and the policies
that isolate it, in the API's terms (`plan.policy_reason`, from `PolicyView.verdict`), and a
snapshot carries the lab's NetworkPolicies for that."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from podnet.trace.netfilter import Packet
from podnet.trace.plan import policy_reason
from podnet.trace.snapshot import RESOURCES, Snapshot, _trim

Snapshots = Callable[[str], Snapshot]


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec}


DENY_ALL = _policy("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
ONLY_BETA = _policy(
    "only-beta",
    {
        "podSelector": {"matchLabels": {"app": "gamma"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"app": "beta"}}}],
                "ports": [{"port": 8080}],
            }
        ],
    },
)


def _with(snap: Snapshot, *policies: dict[str, Any]) -> Snapshot:
    return replace(snap, api={**snap.api, "networkpolicies": list(policies)})


# vxlan-iptables: alpha 10.244.1.4 and beta 10.244.1.3 on node1, gamma 10.244.0.3 on node2
ALPHA_TO_GAMMA = Packet("tcp", "10.244.1.4", "10.244.0.3", 40000, 8080)


def test_an_ingress_drop_names_the_isolated_pod_and_its_policy(snapshots: Snapshots) -> None:
    snap = _with(snapshots("vxlan-iptables"), ONLY_BETA)
    assert policy_reason(snap, ALPHA_TO_GAMMA) == (
        ": pod default/gamma is isolated for ingress by NetworkPolicy default/only-beta and "
        "none of its rules admits tcp/8080 from 10.244.1.4"
    )
    beta = replace(ALPHA_TO_GAMMA, src="10.244.1.3")
    assert policy_reason(snap, beta) == ""  # allowed: nothing to explain
    assert policy_reason(snap, replace(beta, dport=9090)).endswith(
        "admits tcp/9090 from 10.244.1.3"
    )


def test_egress_is_judged_first_and_every_isolating_policy_is_named(snapshots: Snapshots) -> None:
    snap = _with(snapshots("vxlan-iptables"), ONLY_BETA, DENY_ALL)
    assert policy_reason(snap, replace(ALPHA_TO_GAMMA, proto="icmp", sport=None, dport=None)) == (
        ": pod default/alpha is isolated for egress by NetworkPolicy default/default-deny and "
        "none of its rules admits icmp to 10.244.0.3"
    )
    only_ingress = _with(snapshots("vxlan-iptables"), ONLY_BETA, replace_types(DENY_ALL))
    assert policy_reason(only_ingress, ALPHA_TO_GAMMA) == (
        ": pod default/gamma is isolated for ingress by NetworkPolicies default/default-deny, "
        "default/only-beta and none of their rules admits tcp/8080 from 10.244.1.4"
    )


def replace_types(policy: dict[str, Any]) -> dict[str, Any]:
    return {**policy, "spec": {**policy["spec"], "policyTypes": ["Ingress"]}}


def test_without_policies_in_the_snapshot_nothing_is_added(snapshots: Snapshots) -> None:
    """A snapshot file saved before snapshots carried policies."""
    assert policy_reason(snapshots("vxlan-iptables"), ALPHA_TO_GAMMA) == ""


def test_a_snapshot_reads_the_policies_spec() -> None:
    assert "networkpolicies" in RESOURCES
    kept = _trim("networkpolicies", {**ONLY_BETA, "metadata": {**ONLY_BETA["metadata"], "x": 1}})
    assert kept == ONLY_BETA
