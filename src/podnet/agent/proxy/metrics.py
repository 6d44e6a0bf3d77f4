"""kube-proxy's metrics in the Prometheus text format, and the aiohttp app that serves them.

What belongs here: tiny `Counter` / `LabeledCounter` / `Gauge` / `Histogram` types,
`ProxyMetrics` (the metric set of kube-proxy.md §5.5 that podnet implements, with upstream's
names and buckets) and
`metrics_app(*registries)`, an aiohttp application serving `/metrics`.

Decision: the proxy component serves `/metrics` itself on `ctx.metrics_port` (kube-proxy's
port 10249). Other components that want their metrics on the same endpoint pass an object with
a `render() -> str` method to `metrics_app`; nothing else is shared.

Invariants: metric names carry the `kubeproxy_` subsystem; histograms are cumulative with a
`+Inf` bucket, `_sum` and `_count`; rendering never blocks (plain in-memory numbers).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass(slots=True)
class Counter:
    name: str
    help: str
    value: float = 0.0

    def inc(self, by: float = 1.0) -> None:
        self.value += by

    def render(self) -> str:
        return (
            f"# HELP {self.name} {self.help}\n# TYPE {self.name} counter\n"
            f"{self.name} {_fmt(self.value)}\n"
        )


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(slots=True)
class LabeledCounter:
    """A counter family: one series per combination of label values."""

    name: str
    help: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, label_values: tuple[str, ...], by: float = 1.0) -> None:
        self.values[label_values] = self.values.get(label_values, 0.0) + by

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for values in sorted(self.values):
            pairs = ",".join(
                f'{k}="{_label_value(v)}"' for k, v in zip(self.labels, values, strict=True)
            )
            lines.append(f"{self.name}{{{pairs}}} {_fmt(self.values[values])}")
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Gauge:
    name: str
    help: str
    value: float = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def render(self) -> str:
        return (
            f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n"
            f"{self.name} {_fmt(self.value)}\n"
        )


@dataclass(slots=True)
class Histogram:
    name: str
    help: str
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.count += 1

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{_fmt(bound)}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {_fmt(self.total)}")
        lines.append(f"{self.name}_count {self.count}")
        return "\n".join(lines) + "\n"


SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))  # exponential 1 ms x2, 15 buckets
PROGRAMMING_BUCKETS = (0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 301, 30))


class Renderable(Protocol):
    def render(self) -> str: ...


class ProxyMetrics:
    def __init__(self) -> None:
        p = "kubeproxy_"
        self.sync_duration = Histogram(
            p + "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            SYNC_BUCKETS,
        )
        self.sync_full_duration = Histogram(
            p + "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            SYNC_BUCKETS,
        )
        self.sync_partial_duration = Histogram(
            p + "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            SYNC_BUCKETS,
        )
        self.network_programming = Histogram(
            p + "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            PROGRAMMING_BUCKETS,
        )
        self.last_sync = Gauge(
            p + "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
        )
        self.last_queued = Gauge(
            p + "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
        )
        self.service_changes_total = Counter(
            p + "sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"
        )
        self.endpoint_changes_total = Counter(
            p + "sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"
        )
        self.service_changes_pending = Gauge(
            p + "sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes"
        )
        self.endpoint_changes_pending = Gauge(
            p + "sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes"
        )
        self.sync_failures_total = Counter(
            p + "sync_proxy_rules_failures_total",
            "Cumulative proxy rules syncs that failed (any mode)",
        )
        self.conntrack_deleted_total = Counter(
            p + "sync_proxy_rules_stale_udp_flows_deleted_total",
            "Stale UDP conntrack entries deleted after endpoint changes",
        )
        self.bypassing_flows_deleted_total = Counter(
            p + "sync_proxy_rules_bypassing_flows_deleted_total",
            "Conntrack entries to service addresses that no rule translated (created before "
            "the rules were in), deleted after a sync",
        )

    def all(self) -> list[Renderable]:
        return [
            self.sync_duration,
            self.sync_full_duration,
            self.sync_partial_duration,
            self.network_programming,
            self.last_sync,
            self.last_queued,
            self.service_changes_total,
            self.endpoint_changes_total,
            self.service_changes_pending,
            self.endpoint_changes_pending,
            self.sync_failures_total,
            self.conntrack_deleted_total,
            self.bypassing_flows_deleted_total,
        ]

    def render(self) -> str:
        return "".join(m.render() for m in self.all())


def metrics_app(*registries: Renderable) -> web.Application:
    """An aiohttp app answering GET /metrics with every registry's text, in order."""

    async def handle(_request: web.Request) -> web.Response:
        body = "".join(r.render() for r in registries)
        return web.Response(
            text=body,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
