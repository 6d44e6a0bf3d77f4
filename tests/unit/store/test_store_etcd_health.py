"""Which etcd member leads, from the members' `Maintenance.Status` (store/etcd_health.py):
the lab's `podnet status` and the test harness's `EtcdCluster.leader` both ask it."""

from __future__ import annotations

from typing import Any

from podnet.store.etcd_health import leading_member


def status(member_id: str, leader: str) -> dict[str, Any]:
    return {"header": {"member_id": member_id}, "leader": leader}


def test_the_member_the_answering_members_name() -> None:
    assert leading_member([status("a", "b"), status("b", "b"), status("c", "b")]) == 1
    assert leading_member([None, status("b", "c"), status("c", "c")]) == 2


def test_a_leader_that_does_not_answer_is_not_named() -> None:
    # member 1 still names the dead leader 0; member 2 already follows the new leader 2
    assert leading_member([None, status("b", "a"), status("c", "c")]) == 2
    assert leading_member([None, status("b", "a")]) is None
    assert leading_member([None, None]) is None
    assert leading_member([]) is None
