"""userspace mode's pure parts: round robin with ClientIP affinity, and the portal rules."""

from __future__ import annotations

import random

from podnet.agent.proxy.model import ServicePort, ServicePortName
from podnet.agent.proxy.relay import RoundRobin
from podnet.agent.proxy.trace_iptables import consistency_errors
from podnet.agent.proxy.userspace import render_portal_rules

SPN = ServicePortName("ns", "web", "http", "tcp")
EPS = ["10.244.1.10:8080", "10.244.1.11:8080", "10.244.1.12:8080"]


def test_round_robin_visits_every_endpoint_in_turn() -> None:
    rr = RoundRobin(random.Random(1))
    rr.update(SPN, EPS, 0)
    picks = [rr.next(SPN, "10.0.0.1", 0.0) for _ in range(6)]
    assert sorted(picks[:3]) == sorted(EPS) and picks[3:] == picks[:3]


def test_affinity_sticks_until_the_timeout_and_survives_unrelated_changes() -> None:
    rr = RoundRobin(random.Random(2))
    rr.update(SPN, EPS, 60)
    first = rr.next(SPN, "10.0.0.1", 0.0)
    assert all(rr.next(SPN, "10.0.0.1", t) == first for t in (1.0, 30.0, 89.0))
    other = rr.next(SPN, "10.0.0.2", 90.0)
    assert other != first or len(EPS) == 1
    assert rr.next(SPN, "10.0.0.1", 200.0) is not None  # expired: round robin again
    rr.update(SPN, [e for e in EPS if e != first] + ["10.244.1.13:8080"], 60)
    assert rr.next(SPN, "10.0.0.1", 201.0) != first  # its endpoint went away


def test_no_endpoints_gives_none() -> None:
    rr = RoundRobin()
    rr.update(SPN, [], 0)
    assert rr.next(SPN, "10.0.0.1", 0.0) is None


def test_portal_rules_redirect_pods_and_dnat_the_node() -> None:
    sp = ServicePort(SPN, "10.96.0.10", 80, node_port=30080)
    text = render_portal_rules({SPN: (sp, 41234)}, "10.244.1.1")
    assert not consistency_errors(text)
    assert (
        "-A KUBE-PORTALS-CONTAINER -m comment --comment ns/web:http -m tcp -p tcp "
        "-d 10.96.0.10/32 --dport 80 -j REDIRECT --to-ports 41234"
    ) in text
    assert (
        "-A KUBE-PORTALS-HOST -m comment --comment ns/web:http -m tcp -p tcp "
        "-d 10.96.0.10/32 --dport 80 -j DNAT --to-destination 10.244.1.1:41234"
    ) in text
    assert "--dport 30080 -j REDIRECT --to-ports 41234" in text
    assert "--dport 41234 -j ACCEPT" in text
