"""`podnet status` of a lab started with `up --servers S --etcd E`: every API server (URL, pid,
/readyz, which one holds the controllers' Lease) and every etcd member (health, leader), as
text (golden; colours off)."""

from __future__ import annotations

import io

from rich.console import Console

from podnet.cli.lab import print_control_plane
from podnet.lab.ha import EtcdMemberState, ServerState

SERVERS = [
    ServerState(1, "https://172.31.7.1:6443", None, None, False, 2),  # held down by a fault
    ServerState(2, "https://172.31.7.2:6443", 4242, True, True, 0),
    ServerState(3, "https://172.31.7.3:6443", 4243, False, False, 0),  # running, not ready
]
MEMBERS = [
    EtcdMemberState(1, "http://172.31.7.6:2379", "podnet-t-etcd1", None, False, False, 1),
    EtcdMemberState(2, "http://172.31.7.7:2379", "podnet-t-etcd2", 5151, True, True, 0),
    EtcdMemberState(3, "http://172.31.7.8:2379", "podnet-t-etcd3", 5152, True, False, 0),
]

ONE_DOWN = """\
┏━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━┓
┃ server ┃ URL                     ┃ pid  ┃ /readyz     ┃ controllers ┃ restarts ┃
┡━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━┩
│ 1      │ https://172.31.7.1:6443 │ -    │ not running │ -           │ 2        │
│ 2      │ https://172.31.7.2:6443 │ 4242 │ ready       │ leader      │ 0        │
│ 3      │ https://172.31.7.3:6443 │ 4243 │ not ready   │ standby     │ 0        │
└────────┴─────────────────────────┴──────┴─────────────┴─────────────┴──────────┘
┏━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━┓
┃ etcd ┃ client URL             ┃ pid  ┃ health      ┃ role     ┃ restarts ┃
┡━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━┩
│ 1    │ http://172.31.7.6:2379 │ -    │ not running │ -        │ 1        │
│ 2    │ http://172.31.7.7:2379 │ 5151 │ healthy     │ leader   │ 0        │
│ 3    │ http://172.31.7.8:2379 │ 5152 │ healthy     │ follower │ 0        │
└──────┴────────────────────────┴──────┴─────────────┴──────────┴──────────┘
etcd members in namespaces podnet-t-etcd1, podnet-t-etcd2, podnet-t-etcd3; from the host:
  etcdctl --endpoints=http://172.31.7.6:2379,http://172.31.7.7:2379,http://172.31.7.8:2379 \
endpoint status -w table
control plane logs: /var/lib/podnet/t/{server.log, server-<i>.log, etcd-<i>.log}
"""

NO_LEADER = """\
┏━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━┓
┃ server ┃ URL                     ┃ pid  ┃ /readyz     ┃ controllers ┃ restarts ┃
┡━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━┩
│ 1      │ https://172.31.7.1:6443 │ -    │ not running │ -           │ 2        │
│ 3      │ https://172.31.7.3:6443 │ 4243 │ not ready   │ standby     │ 0        │
└────────┴─────────────────────────┴──────┴─────────────┴─────────────┴──────────┘
controllers: no running server holds their Lease (one takes it over 15 s after its holder stopped)
control plane logs: /var/lib/podnet/t/{server.log, server-<i>.log}
"""


def rendered(servers: list[ServerState], members: list[EtcdMemberState]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None)
    print_control_plane(console, servers, members, "/var/lib/podnet/t")
    return out.getvalue()


def test_every_server_and_etcd_member_with_the_leaders() -> None:
    got = rendered(SERVERS, MEMBERS)
    assert got == ONE_DOWN, got


def test_no_running_server_holds_the_controllers_lease() -> None:
    got = rendered([SERVERS[0], SERVERS[2]], [])
    assert got == NO_LEADER, got
