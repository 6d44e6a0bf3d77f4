"""The lab's control plane on etcd, with several API servers: `podnet up --servers S --etcd E`.

What belongs here: where the lab's etcd members and extra servers listen, their supervisor
units' command lines and logs, starting them in order (`start_etcd`, then the servers,
`wait_for_servers`), every server's URL for the clients' failover lists, and the unit a
`podnet fault kill server N|leader` or `kill etcd N` means. `lab.py` calls in here; a lab of
one server on SQLite (the default) has none of it.

Layout, as on real control hosts (docs/multi-machine.md): control host i (1..max(S, E)) has
addresses of the lab's own on its underlay (spec.py plans them; the nodes are at .11 and up):
- server i serves on 172.31.N.i:P, an address of the underlay bridge's host end (server 1 is the
  lab's usual server, also on 127.0.0.1:P); every server listens on the same port P, as
  upstream's servers behind one Service do;
- etcd member i runs in a network namespace of its own, `podnet-<lab>-etcd<i>`, on the underlay
  (`topology.py` builds it with the nodes' namespaces, `down` removes it by the lab's prefix):
  client http://172.31.N.(5+i):2379, peer :2380. The member's firewall (`member_firewall`)
  takes clients only from the servers' addresses and peers only from the other members, as an
  operator fences etcd off: the nodes and pods share the underlay, and the store holds the
  cluster's keys;
- the servers share the store under the key prefix `/podnet` and take the cluster's CA, admin
  token and signing key from it (`podnet server --share-credentials`): the first server to start
  stores them, so no file is copied between them;
- units `etcd-1`.., `server` (server 1), `server-2`..; the supervisor starts `etcd-i` inside its
  namespace (`unit_netns`); state: server i>1 in `servers/server-i/`, etcd member i in
  `etcd/etcd-i/`; logs `server-i.log`, `etcd-i.log` beside `server.log`.

The admin kubeconfig (server 1's) and every node's list every server
(`podnet.io/servers`): podnet's clients fail over between them by themselves.

`podnet status` shows every server (`ServerState`: URL, pid, whether it answers /readyz,
whether it holds the controllers' Lease) and every etcd member (`EtcdMemberState`: health,
leader), gathered by `control_plane`.
"""

from __future__ import annotations

import http.client
import ipaddress
import shutil
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from podnet.lab.spec import EtcdMemberPlan, LabError, LabPlan, server_argv
from podnet.store.etcd_health import leading_member, member_healthy, member_status

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
STORE_PREFIX = "/podnet"
ETCD_LABEL = "etcd-"
SERVER_LABEL = "server-"


def server_ip(plan: LabPlan, index: int) -> str:
    """Server `index`'s address (1-based): 172.31.N.index."""
    return str(ipaddress.IPv4Network(plan.subnet)[index])


def server_urls(plan: LabPlan) -> list[str]:
    """Every server's URL on the underlay, in order (what nodes fail over between)."""
    return [f"https://{server_ip(plan, i)}:{plan.port}" for i in range(1, plan.servers + 1)]


def admin_urls(plan: LabPlan) -> list[str]:
    """The admin kubeconfig's list: server 1 on loopback (as in every lab), then the others."""
    return [f"https://127.0.0.1:{plan.port}", *server_urls(plan)[1:]]


def etcd_member(plan: LabPlan, index: int) -> EtcdMemberPlan:
    """Member `index` (1-based) of the lab's plan."""
    return plan.etcd_members[index - 1]


def etcd_ip(plan: LabPlan, index: int) -> str:
    return etcd_member(plan, index).ip


def etcd_client_url(plan: LabPlan, index: int) -> str:
    return f"http://{etcd_ip(plan, index)}:{ETCD_CLIENT_PORT}"


def member_firewall(plan: LabPlan) -> str:
    """The filter table (iptables-restore) of every member's namespace: the client port for
    the servers (they all run on the host: its end of the bridge holds their addresses; `lo`
    for tools inside the namespace), client and peer ports for the members, a reset for
    anyone else on the underlay (nodes, pods behind them, a joined machine)."""
    servers = ",".join(server_ip(plan, i) for i in range(1, plan.servers + 1))
    members = ",".join(m.ip for m in plan.etcd_members)
    ports = f"{ETCD_CLIENT_PORT},{ETCD_PEER_PORT}"
    return (
        "*filter\n"
        ":INPUT ACCEPT [0:0]\n"
        "-A INPUT -i lo -j ACCEPT\n"
        f"-A INPUT -s {servers} -p tcp --dport {ETCD_CLIENT_PORT} -j ACCEPT\n"
        f"-A INPUT -s {members} -p tcp -m multiport --dports {ports} -j ACCEPT\n"
        f"-A INPUT -p tcp -m multiport --dports {ports} -j REJECT --reject-with tcp-reset\n"
        "COMMIT\n"
    )


def store_url(plan: LabPlan) -> str:
    members = ",".join(f"{etcd_ip(plan, i)}:{ETCD_CLIENT_PORT}" for i in range(1, plan.etcd + 1))
    return f"etcd://{members}{STORE_PREFIX}"


def extra_server_labels(plan: LabPlan) -> list[str]:
    return [f"{SERVER_LABEL}{i}" for i in range(2, plan.servers + 1)]


def etcd_labels(plan: LabPlan) -> list[str]:
    return [f"{ETCD_LABEL}{i}" for i in range(1, plan.etcd + 1)]


def labels(plan: LabPlan) -> list[str]:
    """The units this module adds to the lab's supervisor (none for a one-server SQLite lab)."""
    return [*etcd_labels(plan), *extra_server_labels(plan)]


def _index(label: str, prefix: str) -> int:
    return int(label.removeprefix(prefix))


def _with_flag(argv: Sequence[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def ha_server_argv(plan: LabPlan, index: int, python: str) -> list[str]:
    """Server `index`'s command line: the lab's server, on the lab's etcd when it has one."""
    argv = server_argv(plan, python)
    if not plan.etcd:
        return argv
    argv += ["--store", store_url(plan), "--share-credentials"]
    if index == 1:
        others = admin_urls(plan) if plan.servers > 1 else []
        return [*argv, *(f"--cluster-url={url}" for url in others)]
    ip = server_ip(plan, index)
    argv = _with_flag(argv, "--state-dir", str(server_dir(plan, index)))
    argv = _with_flag(argv, "--listen", f"{ip}:{plan.port}")
    return _with_flag(argv, "--advertise-address", ip)


def server_dir(plan: LabPlan, index: int) -> Path:
    return Path(plan.state_dir) / "servers" / f"server-{index}"


def etcd_argv(plan: LabPlan, index: int) -> list[str]:
    binary = shutil.which("etcd")
    if binary is None:
        raise LabError(
            "--etcd needs the etcd binary: install Debian's etcd-server (scripts/install.sh)"
        )
    member = etcd_member(plan, index)
    client, peer = etcd_client_url(plan, index), f"http://{member.ip}:{ETCD_PEER_PORT}"
    cluster = ",".join(f"{m.name}=http://{m.ip}:{ETCD_PEER_PORT}" for m in plan.etcd_members)
    return [
        binary,
        "--name", member.name,
        "--data-dir", member.data_dir,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", cluster,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", f"podnet-{plan.name}-{plan.index}",
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip


def unit_argv(plan: LabPlan, label: str, python: str) -> list[str] | None:
    """The command line of a unit of this module (`server` too); None: not one of them."""
    if label == "server":
        return ha_server_argv(plan, 1, python)
    if label in extra_server_labels(plan):
        return ha_server_argv(plan, _index(label, SERVER_LABEL), python)
    if label in etcd_labels(plan):
        return etcd_argv(plan, _index(label, ETCD_LABEL))
    return None


def unit_netns(plan: LabPlan, label: str) -> str | None:
    """The namespace the supervisor starts the unit in: an etcd member's own; None: the host's
    (the servers; an agent enters its node's namespace itself)."""
    if label in etcd_labels(plan):
        return etcd_member(plan, _index(label, ETCD_LABEL)).netns
    return None


def unit_log(plan: LabPlan, label: str) -> Path | None:
    if label in labels(plan):
        return Path(plan.state_dir) / f"{label}.log"
    return None


def add_server_addresses(plan: LabPlan) -> None:
    """Servers 2.. need their addresses on the bridge's host end (gone with the bridge)."""
    from podnet.kernel.links import Netlink

    prefixlen = ipaddress.IPv4Network(plan.subnet).prefixlen
    with Netlink() as host:
        for index in range(2, plan.servers + 1):
            host.ensure_address(plan.bridge, f"{server_ip(plan, index)}/{prefixlen}")


def etcd_healthy(plan: LabPlan, index: int) -> bool:
    return member_healthy(etcd_ip(plan, index), ETCD_CLIENT_PORT)


def wait_for_etcd(plan: LabPlan, deadline: float) -> None:
    """Until every member answers /health (which needs a leader: a quorum)."""
    pending = set(range(1, plan.etcd + 1))
    while pending:
        pending = {i for i in pending if not etcd_healthy(plan, i)}
        if not pending:
            return
        if time.monotonic() > deadline:
            logs = ", ".join(str(unit_log(plan, f"{ETCD_LABEL}{i}")) for i in sorted(pending))
            raise LabError(f"etcd members {sorted(pending)} were not healthy in time; see {logs}")
        time.sleep(0.05)


def leader_label(plan: LabPlan, holder: str, pids: Mapping[str, int]) -> str:
    """The unit of the server holding the controllers' Lease, from its holderIdentity
    (`host_pid_random`, `controllers/leaderelection.py`) and the units' recorded pids."""
    found = _holder_label(holder, pids)
    if found is None:
        raise LabError(
            f"no server of lab {plan.name!r} holds the controllers' Lease now ({holder!r})"
        )
    return found


def _holder_label(holder: str, pids: Mapping[str, int]) -> str | None:
    from podnet.controllers.leaderelection import pid_of  # `podnet up` imports this module

    held_by = pid_of(holder)
    for label, pid in pids.items():
        if pid == held_by and (label == "server" or label.startswith(SERVER_LABEL)):
            return label
    return None


def server_label(index: int) -> str:
    return "server" if index == 1 else f"{SERVER_LABEL}{index}"


@dataclass(frozen=True, slots=True)
class ServerState:
    index: int  # 1-based
    url: str
    pid: int | None  # None: not running
    ready: bool | None  # answers /readyz with 200; None: not running, so not asked
    leads: bool  # holds the controllers' Lease: its controllers are the active ones
    restarts: int  # by the lab's supervisor since `up`


@dataclass(frozen=True, slots=True)
class EtcdMemberState:
    index: int  # 1-based
    url: str  # client URL
    netns: str  # the member's network namespace
    pid: int | None  # None: not running
    healthy: bool  # answers /health: it has a leader and serves linearizable reads
    leader: bool
    restarts: int


def server_ready(url: str, ca: bytes | None, timeout: float = 2.0) -> bool:
    """Whether the server at `url` (https://HOST:PORT) answers /readyz with 200 (a public path:
    no credentials), its certificate verified against the cluster CA."""
    import ssl  # `podnet up` imports this module; only `status` asks

    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port, timeout=timeout, context=context
    )
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def etcd_leader(plan: LabPlan) -> int | None:
    """Index (1-based) of the etcd member that leads, as the first member answering says."""
    statuses = [member_status(etcd_ip(plan, i), ETCD_CLIENT_PORT) for i in range(1, plan.etcd + 1)]
    leading = leading_member(statuses)
    return None if leading is None else leading + 1


def control_plane(
    plan: LabPlan,
    alive: Mapping[str, int],
    restarts: Callable[[str], int],
    holder: str | None,
    ca: bytes | None,
) -> tuple[tuple[ServerState, ...], tuple[EtcdMemberState, ...]]:
    """Every server and etcd member of the lab as it is now. `alive`: the pids of the units
    running (by label); `holder`: the controllers' Lease's holderIdentity (None: unknown)."""
    leading = _holder_label(holder, alive) if holder else None
    servers = tuple(
        ServerState(
            index=i,
            url=url,
            pid=alive.get(server_label(i)),
            ready=server_ready(url, ca) if server_label(i) in alive else None,
            leads=leading == server_label(i),
            restarts=restarts(server_label(i)),
        )
        for i, url in enumerate(server_urls(plan), 1)
    )
    leader = etcd_leader(plan) if plan.etcd else None
    members = tuple(
        EtcdMemberState(
            index=i,
            url=etcd_client_url(plan, i),
            netns=etcd_member(plan, i).netns,
            pid=alive.get(f"{ETCD_LABEL}{i}"),
            healthy=etcd_healthy(plan, i),
            leader=leader == i,
            restarts=restarts(f"{ETCD_LABEL}{i}"),
        )
        for i in range(1, plan.etcd + 1)
    )
    return servers, members


def unit_label(plan: LabPlan, what: str, which: str) -> str:
    """`server` [N] or `etcd` N (1-based) as a supervisor unit; a clear error if there is none."""
    count = plan.servers if what == "server" else plan.etcd
    if what == "server" and which in ("", "1"):
        return "server"
    if not which.isdigit() or not 1 <= int(which) <= count:
        if count == 1:  # `kill server 2` on a lab of one server
            more = "--servers 3" if what == "server" else "--etcd 3"
            valid = f"1 only: the lab runs one {what} (podnet up {more} makes more)"
        elif count:
            valid = f"1-{count}"
        else:
            valid = "none: the lab runs without etcd (podnet up --etcd 3)"
        raise LabError(f"lab {plan.name!r} has no {what} {which!r}; valid: {valid}")
    return f"{SERVER_LABEL}{which}" if what == "server" else f"{ETCD_LABEL}{which}"
