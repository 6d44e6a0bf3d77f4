"""ClientIP affinity in iptables mode as the trace reads it: the kernel clock and the
`-m recent` lists of /proc (sources with their age), and `--rcheck --seconds N`, which
matches only a source seen within N seconds — the list keeps older ones until reaped, so a
source listed is not a source remembered."""

from __future__ import annotations

import pytest

from podnet.agent.proxy.trace_iptables import Walk, parse_restore
from podnet.kernel.inventory import kernel_clock, parse_recent_list

TIMER_LIST = """\
Timer List Version: v0.10
HRTIMER_MAX_CLOCK_BASES: 8
now at 51981242772295 nsecs

cpu: 0
  .last_jiffies   : 4307887539
jiffies: 4307887541
"""

RECENT = (
    "src=10.244.0.3 ttl: 64 last_seen: 4307885041 oldest_pkt: 2 4307880041, 4307885041\n"
    "src=10.244.0.9 ttl: 63 last_seen: 4307887541 oldest_pkt: 1 4307887541\n"
)

NAT = """\
*nat
:KUBE-SVC-S - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-G - [0:0]
-A KUBE-SVC-S -m recent --name KUBE-SEP-B --rcheck --seconds 10800 --reap -j KUBE-SEP-B
-A KUBE-SVC-S -m recent --name KUBE-SEP-G --rcheck --seconds 10800 --reap -j KUBE-SEP-G
-A KUBE-SVC-S -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-B
-A KUBE-SVC-S -j KUBE-SEP-G
-A KUBE-SEP-B -s 10.244.0.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-B -p tcp -m recent --name KUBE-SEP-B --set -j DNAT --to-destination 10.244.0.2:8080
-A KUBE-SEP-G -s 10.244.1.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-G -p tcp -m recent --name KUBE-SEP-G --set -j DNAT --to-destination 10.244.1.2:8080
COMMIT
"""


def test_the_kernel_clock_tells_jiffies_and_hz() -> None:
    assert kernel_clock(TIMER_LIST) == (4307887541, 250)
    # a young kernel (60 s up): jiffies still below 2**32
    assert kernel_clock("now at 60000000000 nsecs\njiffies: 4294907296\n") == (4294907296, 250)
    assert kernel_clock("now at 5 nsecs\n") is None  # no jiffies line
    assert kernel_clock("now at 310000000000 nsecs\njiffies: 4294969796\n") is None


def test_a_recent_list_gives_each_source_its_seconds_since_last_seen() -> None:
    clock = (4307887541, 250)
    assert parse_recent_list(RECENT, clock) == {"10.244.0.3": 10.0, "10.244.0.9": 0.0}
    assert parse_recent_list(RECENT, None) == {"10.244.0.3": 0.0, "10.244.0.9": 0.0}
    assert parse_recent_list("", clock) == {}


@pytest.mark.parametrize(
    ("age", "reached"),
    [
        (None, ["10.244.0.2:8080", "10.244.1.2:8080"]),  # not listed: the random choice
        (30.0, ["10.244.1.2:8080"]),  # remembered: --rcheck sends it back to gamma
        (10801.0, ["10.244.0.2:8080", "10.244.1.2:8080"]),  # listed, but past --seconds
    ],
)
def test_rcheck_matches_a_source_seen_within_its_seconds(
    age: float | None, reached: list[str]
) -> None:
    recent = {"KUBE-SEP-G": {} if age is None else {"10.244.0.3": age}}
    walk = Walk(parse_restore(NAT)["nat"], "10.244.0.3", "10.96.0.9", 80, recent=recent)
    walk.walk("KUBE-SVC-S")
    assert walk.dnat == reached
