"""The DNS server's metrics, with CoreDNS's names and labels, in the Prometheus text format.

What belongs here: labelled counter and histogram families (CoreDNS's metrics all carry
labels, unlike kube-proxy's in `agent/proxy/metrics.py`) and `DnsMetrics`, the set the server
keeps: requests by protocol and type, responses by rcode and by the plugin that wrote them,
the request latency histogram, the cache's hits and misses and the forwarder's requests.

Invariants: recording is a dict update (the hot path pays no more); rendering never blocks;
histograms are cumulative with a `+Inf` bucket, `_sum` and `_count`, per label set.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

SERVER = "dns://:53"
# CoreDNS's plugin/pkg/metrics/vars: 0.00025 s doubling 16 times
DURATION_BUCKETS = tuple(0.00025 * 2**i for i in range(16))

Labels = tuple[str, ...]


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(names: Sequence[str], values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{v}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class CounterFamily:
    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def total(self) -> float:
        return sum(self.values.values())

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


class HistogramFamily:
    def __init__(
        self, name: str, help_text: str, label_names: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self.buckets = tuple(buckets)
        # per label set: [count per bucket (+Inf last)], sum
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        series[0][bisect.bisect_left(self.buckets, value)] += 1
        series[1][0] += value

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                label_text = _labels(self.label_names, labels, f'le="{_number(bound)}"')
                lines.append(f"{self.name}_bucket{label_text} {running}")
            plain = _labels(self.label_names, labels)
            lines.append(f"{self.name}_sum{plain} {_number(total[0])}")
            lines.append(f"{self.name}_count{plain} {running}")
        return "\n".join(lines) + "\n"


class DnsMetrics:
    """What the server counts; label values are CoreDNS's."""

    def __init__(self) -> None:
        self.requests = CounterFamily(
            "coredns_dns_requests_total",
            "Counter of DNS requests made per zone, protocol and family.",
            ("server", "zone", "view", "proto", "family", "type"),
        )
        self.responses = CounterFamily(
            "coredns_dns_responses_total",
            "Counter of response status codes.",
            ("server", "zone", "view", "rcode", "plugin"),
        )
        self.duration = HistogramFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            ("server", "zone", "view", "type"),
            DURATION_BUCKETS,
        )
        self.cache_hits = CounterFamily(
            "coredns_cache_hits_total",
            "The count of cache hits.",
            ("server", "type", "zones", "view"),
        )
        self.cache_misses = CounterFamily(
            "coredns_cache_misses_total",
            "The count of cache misses.",
            ("server", "zones", "view"),
        )
        self.forward_requests = CounterFamily(
            "coredns_forward_requests_total",
            "Counter of requests made per upstream.",
            ("to",),
        )
        self.forward_responses = CounterFamily(
            "coredns_forward_responses_total",
            "Counter of responses received per upstream.",
            ("rcode", "to"),
        )

    def request(self, proto: str, qtype: str, rcode: str, plugin: str, seconds: float) -> None:
        self.requests.inc((SERVER, ".", "", proto, "1", qtype))
        self.responses.inc((SERVER, ".", "", rcode, plugin))
        self.duration.observe((SERVER, ".", "", qtype), seconds)

    def cache_hit(self, denial: bool) -> None:
        self.cache_hits.inc((SERVER, "denial" if denial else "success", ".", ""))

    def cache_miss(self) -> None:
        self.cache_misses.inc((SERVER, ".", ""))

    def render(self) -> str:
        families = (
            self.requests,
            self.responses,
            self.duration,
            self.cache_hits,
            self.cache_misses,
            self.forward_requests,
            self.forward_responses,
        )
        return "".join(f.render() for f in families)
