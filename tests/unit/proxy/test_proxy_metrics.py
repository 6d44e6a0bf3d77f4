"""Prometheus text of the proxy metrics: cumulative histogram buckets, counters, gauges."""

from __future__ import annotations

from podnet.agent.proxy.metrics import Counter, Histogram, ProxyMetrics


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    h = Histogram("x_seconds", "help text", (0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 7.0):
        h.observe(v)
    assert h.render() == (
        "# HELP x_seconds help text\n# TYPE x_seconds histogram\n"
        'x_seconds_bucket{le="0.1"} 1\nx_seconds_bucket{le="1"} 3\n'
        'x_seconds_bucket{le="+Inf"} 4\nx_seconds_sum 8.05\nx_seconds_count 4\n'
    )


def test_counter_text() -> None:
    c = Counter("y_total", "things")
    c.inc(3)
    assert c.render() == "# HELP y_total things\n# TYPE y_total counter\ny_total 3\n"


def test_upstream_names_and_buckets() -> None:
    m = ProxyMetrics()
    text = m.render()
    for name in (
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    ):
        assert f"# TYPE {name} " in text
    assert len(m.sync_duration.buckets) == 15 and m.sync_duration.buckets[0] == 0.001
    assert m.network_programming.buckets[:3] == (0.25, 0.5, 1)
    assert m.network_programming.buckets[-1] == 300
