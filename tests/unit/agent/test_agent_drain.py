"""Endpoint drain's condition (agent/drain.py): SIGTERM waits for the endpoints controller and
then for every Ready node's proxy to have programmed past the pod's removal."""

from __future__ import annotations

from typing import Any

from podnet.agent.drain import PROXY_REVISION, drained

IP = "10.244.1.7"


def slice_(rv: int, ready: bool | None, ip: str = IP) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    return {
        "metadata": {"resourceVersion": str(rv)},
        "endpoints": [{"addresses": [ip], "conditions": conditions}],
    }


def node(name: str, published: int | None, ready: bool = True) -> dict[str, Any]:
    annotations = {} if published is None else {PROXY_REVISION: str(published)}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}]},
    }


def test_waits_for_the_controller_then_for_every_ready_proxy() -> None:
    nodes = [node("n1", 40), node("n2", 41)]
    assert drained(IP, [slice_(41, True)], nodes) == (
        "the endpoints controller to mark the pod's endpoint not ready"
    )
    assert drained(IP, [slice_(41, None)], nodes) is not None  # no condition: ready
    assert drained(IP, [slice_(41, False)], nodes) == "the proxies of n1 (revision 41)"
    assert drained(IP, [slice_(41, False)], [node("n1", 41), node("n2", 50)]) is None


def test_unready_nodes_and_pods_outside_services_do_not_hold_it() -> None:
    assert drained(IP, [slice_(41, False)], [node("n1", 41), node("n2", None, ready=False)]) is None
    assert drained(IP, [slice_(41, True, ip="10.244.1.8")], [node("n1", None)]) is None
    assert drained(IP, [], [node("n1", None)]) is None
