"""`podnet up --servers 3 --etcd 3`: a lab on a three-member etcd cluster with three API servers
survives the loss of one server and one etcd member (#15 items 2 and 3).

One lab for the module (2 nodes, no DNS). The servers share one CA without a file copied
between them (`--share-credentials`), every node's kubeconfig lists all three, the
`kubernetes` Service's endpoints follow the servers alive (lease endpoint reconciler), and
`podnet status` lists every server (pid, /readyz, the controllers' Lease holder) and etcd
member (health, the leader etcd itself reports) and prints an etcdctl command that works. Each
member runs in its own namespace `podnet-<lab>-etcd<i>` on the underlay, which the servers
reach and the nodes do not. Then `podnet fault kill server 1 --for` and
`kill etcd 1 --for` hold the server every client uses first and one etcd member down: the
nodes stay Ready through the other servers, a new pod is scheduled and runs, `podnet status`
shows both down, the dead server leaves the `kubernetes` endpoints; after `fault clear` it is
back in them, and the restarted member runs in its namespace again. Last, `down` removes the
members' namespaces.

Marks: root + slow + etcd; one lab.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from podnet import procs
from podnet.api.client import SERVERS_EXTENSION, HttpApi
from podnet.api.errors import ApiError
from podnet.controllers.leaderelection import LEASE_NAME, LEASE_NAMESPACE, pid_of
from podnet.kernel import netns
from podnet.lab import ha
from podnet.lab.lab import Lab, _list_nodes
from podnet.lab.spec import LabPlan, LabSpec
from podnet.testing.waiting import poll

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.etcd, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(name=f"t15h{secrets.token_hex(2)}", nodes=2, dns=False, servers=3, etcd=3)
    lab = Lab.up(spec, merge_kubeconfig=False, timeout=150)
    try:
        yield lab
    finally:
        lab.down()


def podnet(lab: Lab, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args, "--name", lab.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def kubectl(lab: Lab, server: str, *args: str) -> str:
    """kubectl against one server (kubectl has no failover of its own)."""
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(lab.kubeconfig), "--server", server, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def api_call(lab: Lab, call: Callable[[HttpApi], Any]) -> Any:
    """One call through the lab's admin kubeconfig, with podnet's client failover."""

    async def go() -> Any:
        async with HttpApi.from_kubeconfig(lab.kubeconfig) as api:
            return await call(api)

    return asyncio.run(go())


def status(lab: Lab) -> tuple[int, dict[str, list[str]], str]:
    """`podnet status`'s exit code, the cells of its server and etcd rows by their URL, and
    its whole output."""
    out = subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", "status", "--name", lab.name],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "200"},  # one line per row
    )  # fmt: skip
    rows = {}
    for line in out.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) > 2 and cells[1].startswith("http"):
            rows[cells[1]] = cells
    return out.returncode, rows, out.stdout


def etcd_leads(plan: LabPlan, index: int) -> bool:
    """What the member says of itself in its metrics (not the status call `podnet` makes)."""
    url = f"http://{ha.etcd_ip(plan, index)}:{ha.ETCD_CLIENT_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return "\netcd_server_is_leader 1\n" in answer.read().decode()


def kubernetes_endpoints(lab: Lab) -> list[str]:
    endpoints = api_call(lab, lambda api: api.get("endpoints", "kubernetes", "default"))
    return sorted(a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses", []))


def test_three_servers_share_one_ca_and_are_all_listed(lab: Lab) -> None:
    plan = lab.plan
    urls = ha.server_urls(plan)
    assert len(urls) == 3
    for url in urls:  # one CA verifies every server: kubectl checks each one's certificate
        assert "node1" in kubectl(lab, url, "get", "nodes", "-o", "name")
    for node in lab:
        config = yaml.safe_load(Path(lab[node].kubeconfig).read_text())
        (extension,) = config["clusters"][0]["cluster"]["extensions"]
        assert extension["name"] == SERVERS_EXTENSION
        assert extension["extension"]["servers"] == urls
    wanted = sorted(ha.server_ip(plan, i) for i in (1, 2, 3))
    poll("the three servers in the kubernetes endpoints",
         lambda: True if kubernetes_endpoints(lab) == wanted else None, 20)  # fmt: skip
    assert all(ha.etcd_healthy(plan, i) for i in (1, 2, 3))

    # podnet status: every server and etcd member, with the controllers' and etcd's leaders
    pids = {r.label: r.pid for r in procs.recorded(lab.state_dir / "pids") if procs.is_alive(r)}
    lease = api_call(lab, lambda api: api.get("leases", LEASE_NAME, LEASE_NAMESPACE))
    holder_pid = pid_of(lease["spec"]["holderIdentity"])
    code, rows, text = status(lab)
    assert code == 0, rows
    for index, url in enumerate(urls, 1):  # server, URL, pid, /readyz, controllers, restarts
        _, _, pid, ready, controllers, _ = rows[url]
        assert int(pid) == pids["server" if index == 1 else f"server-{index}"], rows[url]
        assert ready == "ready", rows[url]
        assert controllers == ("leader" if int(pid) == holder_pid else "standby"), rows[url]
    for index in (1, 2, 3):  # etcd, client URL, pid, health, role, restarts
        row = rows[f"http://{ha.etcd_ip(plan, index)}:{ha.ETCD_CLIENT_PORT}"]
        assert int(row[2]) == pids[f"etcd-{index}"] and row[3] == "healthy", row
        assert row[4] == ("leader" if etcd_leads(plan, index) else "follower"), row
        assert_in_own_namespace(pids[f"etcd-{index}"], plan.etcd_members[index - 1].netns)
    # the command status prints reaches every member from the host, where the servers run
    (command,) = [line.strip() for line in text.splitlines() if "etcdctl" in line]
    health = subprocess.run(
        [*command.split()[:2], "endpoint", "health"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert health.returncode == 0, health
    assert (health.stdout + health.stderr).count("is healthy") == 3, health
    # ... and no node (nor a pod behind it): the members' firewall resets them
    for member in plan.etcd_members:
        with pytest.raises(ConnectionRefusedError):
            netns.call_in(lab["node1"].netns, functools.partial(connect, member.ip))


def connect(ip: str) -> None:
    socket.create_connection((ip, ha.ETCD_CLIENT_PORT), timeout=5).close()


def assert_in_own_namespace(pid: int, name: str) -> None:
    """The process runs in the namespace `name` (by inode), not in the host's."""
    inode = os.stat(f"/proc/{pid}/ns/net").st_ino
    assert inode == netns.inode(name) and inode != netns.current_inode(), (pid, name)


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "after-failover"},
    "spec": {
        "containers": [
            {
                "name": "netexec",
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.52",
                "args": ["netexec", "--http-port=8080"],
            }
        ]
    },
}


def test_losing_a_server_and_an_etcd_member(lab: Lab) -> None:
    plan = lab.plan
    first = ha.server_ip(plan, 1)
    podnet(lab, "fault", "kill", "server", "1", "--for", "5m")
    podnet(lab, "fault", "kill", "etcd", "1", "--for", "5m")
    assert not ha.etcd_healthy(plan, 1)

    # if member 1 led, the other two elect a leader first (etcd's election timeout); a write in
    # between is refused by etcd ("leader changed") and answered 503, as upstream's would be
    def led() -> bool | None:
        return True if ha.etcd_healthy(plan, 2) and ha.etcd_healthy(plan, 3) else None

    try:
        poll("a leader among etcd members 2 and 3", led, 30)
        # a write through the failover client, then the whole path: scheduled (the controllers
        # run on a surviving server), started by a node agent that fails over too
        api_call(lab, lambda api: api.create("pods", POD, "default"))

        def running() -> str | None:
            pod = api_call(lab, lambda api: api.get("pods", "after-failover", "default"))
            status = pod.get("status") or {}
            return str(status.get("podIP")) if status.get("phase") == "Running" else None

        poll("the pod Running after the failover", running, 90)
        code, rows, _ = status(lab)
        assert code == 1, rows  # not healthy: a server and an etcd member are down
        assert rows[ha.server_urls(plan)[0]][2:4] == ["-", "not running"], rows
        etcd1 = rows[f"http://{ha.etcd_ip(plan, 1)}:{ha.ETCD_CLIENT_PORT}"]
        assert etcd1[2:4] == ["-", "not running"], rows
        nodes = asyncio.run(_list_nodes(lab.kubeconfig))
        for node in lab:
            ready = [c for c in nodes[node]["status"]["conditions"] if c["type"] == "Ready"]
            assert ready[0]["status"] == "True", json.dumps(ready)
        # server 1's lease lapses: the kubernetes Service no longer sends clients to it
        poll("server 1 out of the kubernetes endpoints",
             lambda: True if first not in kubernetes_endpoints(lab) else None, 40)  # fmt: skip
    finally:
        podnet(lab, "fault", "clear", "--all")
    poll("server 1 back in the kubernetes endpoints",
         lambda: True if first in kubernetes_endpoints(lab) else None, 60)  # fmt: skip
    poll("etcd member 1 healthy again", lambda: True if ha.etcd_healthy(plan, 1) else None, 30)
    (member1,) = [r for r in procs.recorded(lab.state_dir / "pids") if r.label == "etcd-1"]
    assert_in_own_namespace(member1.pid, plan.etcd_members[0].netns)
    try:
        api_call(lab, lambda api: api.delete("pods", "after-failover", "default"))
    except ApiError as exc:
        assert exc.code == 404


def test_down_removes_the_members_namespaces(lab: Lab) -> None:
    """Last in the module: `down` (the fixture's own is then a no-op) stops the members by
    their recorded pids and removes their namespaces and veths by the lab's markers."""
    plan = lab.plan
    removed = lab.down()
    assert {f"netns {m.netns}" for m in plan.etcd_members} <= set(removed), removed
    assert not any(netns.exists(m.netns) for m in plan.etcd_members)
    assert netns.list_names(plan.netns_prefix) == []
