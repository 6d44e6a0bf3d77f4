"""The automatic compactor's planner: time window, revision floor, never backwards."""

from __future__ import annotations

import pytest

from podnet.store import CompactionPlanner, CompactionPolicy


def test_nothing_is_compacted_inside_the_retention_window() -> None:
    planner = CompactionPlanner(CompactionPolicy(retention_seconds=300, retained_revisions=0))
    assert planner.observe(0.0, 100) is None
    assert planner.observe(60.0, 200) is None
    assert planner.observe(299.0, 300) is None
    # the t=0 sample (revision 100) is now 5 minutes old
    assert planner.observe(300.0, 400) == 100
    # the t=60 sample (revision 200) becomes old enough only at t=360
    assert planner.observe(330.0, 450) is None
    assert planner.observe(360.0, 500) == 200


def test_at_least_the_retained_revisions_are_kept() -> None:
    planner = CompactionPlanner(CompactionPolicy(retention_seconds=10, retained_revisions=1000))
    planner.observe(0.0, 5000)
    assert planner.observe(20.0, 5500) == 4500  # 5000 is old enough, but 1000 must remain
    assert planner.observe(40.0, 5600) == 4600  # the sample at t=20 (5500) is capped to 4600


def test_the_planned_revision_never_goes_backwards() -> None:
    planner = CompactionPlanner(CompactionPolicy(retention_seconds=0, retained_revisions=10))
    assert planner.observe(0.0, 100) == 90
    assert planner.observe(1.0, 95) is None  # a lower answer is never planned again
    assert planner.observe(2.0, 100) is None
    assert planner.observe(3.0, 101) == 91


def test_negative_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        CompactionPolicy(retained_revisions=-1)
