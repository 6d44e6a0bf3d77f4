"""The change tracker: previous/current per object, cancel-out, updated services, triggers."""

from __future__ import annotations

from podnet.agent.proxy.tracker import ChangeTracker, ProxyState, parse_trigger_time
from podnet.testing.proxy import endpoint_slice, service


def test_change_that_is_undone_disappears() -> None:
    applied: dict[str, int] = {"a": 1}
    tracker = ChangeTracker(applied)
    assert tracker.record("a", 2)
    assert not tracker.record("a", 1)  # back to the applied value: nothing pending
    assert tracker.apply() == {}
    assert tracker.record("b", 5) and not tracker.record("b", None)


def test_apply_merges_changes_and_reports_updated_services() -> None:
    state = ProxyState(node_name="n")
    state.on_service(service("ns", "a", "10.96.0.1"))
    state.on_slice(endpoint_slice("ns", "a", ["10.1.0.1"]))
    state.on_service(service("ns", "b", "10.96.0.2", protocol="UDP"))
    applied = state.apply()
    assert applied.updated_services == {"ns/a", "ns/b"}
    assert applied.udp_changed
    assert not state.has_pending()
    state.on_slice(endpoint_slice("ns", "a", ["10.1.0.1", "10.1.0.2"]))
    applied = state.apply()
    assert applied.updated_services == {"ns/a"} and not applied.udp_changed
    (eps,) = state.endpoints_of("ns/a").values()
    assert [e.ip for e in eps] == ["10.1.0.1", "10.1.0.2"]
    state.on_slice(endpoint_slice("ns", "a", []), deleted=True)
    state.apply()
    assert state.endpoints_of("ns/a") == {}


def test_trigger_times_are_collected_once_and_old_ones_ignored() -> None:
    state = ProxyState(node_name="n", started_at=parse_trigger_time("2026-01-01T00:00:00Z") or 0)
    state.on_slice(
        endpoint_slice("ns", "a", ["10.1.0.1"], trigger_time="2026-01-01T00:00:01.123456789Z")
    )
    state.on_slice(endpoint_slice("ns", "b", ["10.1.0.2"], trigger_time="2025-12-31T23:00:00Z"))
    applied = state.apply()
    assert applied.trigger_times == (parse_trigger_time("2026-01-01T00:00:01.123456Z"),)
    assert state.apply().trigger_times == ()


def test_parse_trigger_time_handles_nanoseconds_and_garbage() -> None:
    assert parse_trigger_time("1970-01-01T00:00:01.5Z") == 1.5
    assert parse_trigger_time("yesterday") is None
