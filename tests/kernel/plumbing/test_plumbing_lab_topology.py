"""Lab topology for real, without server or agents: build, check, remove, side by side.

Labs are named `t1<random>` under a temporary state root and are always taken down by the
fixture, which then asserts nothing of theirs is left in the kernel.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podnet import procs
from podnet.kernel import netns
from podnet.kernel.links import Netlink
from podnet.kernel.rules import IptablesRunner
from podnet.lab import Lab, LabError, LabSpec, down_lab, ha
from podnet.lab.lab import machine_lock
from podnet.lab.prestart import Prestarted
from podnet.lab.spec import PLAN_FILE, plan_lab
from podnet.lab.supervisor import Supervisor
from podnet.lab.topology import (
    ensure_forward_accept,
    forward_accept_rule,
    remove_forward_accept,
)
from podnet.testing import leftovers as testing_leftovers

pytestmark = pytest.mark.root

MakeLab = Callable[..., Lab]


def leftovers(lab_name: str, host_links: tuple[str, ...]) -> list[str]:
    found = [f"netns {n}" for n in netns.list_names(f"podnet-{lab_name}-")]
    with Netlink() as host:
        found += [f"link {name}" for name in host_links if host.link(name) is not None]
    return found


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[MakeLab]:
    made: list[tuple[str, tuple[str, ...]]] = []

    def make(nodes: int = 2, name: str | None = None, etcd: int = 0) -> Lab:
        lab_name = name or f"t1{secrets.token_hex(3)}"
        spec = LabSpec(name=lab_name, nodes=nodes, state_root=tmp_path, etcd=etcd)
        try:
            lab = Lab.up(spec, processes=False)
        finally:
            made.append((lab_name, ()))
        made[-1] = (lab_name, lab.plan.host_links)
        return lab

    try:
        yield make
    finally:
        for lab_name, links in made:
            down_lab(lab_name, tmp_path)
            assert leftovers(lab_name, links) == []


def ping(source_netns: str, address: str) -> bool:
    done = netns.run(["busybox", "ping", "-c", "1", "-W", "2", address], source_netns)
    return done.returncode == 0


def test_topology_up_is_reachable_and_down_leaves_nothing(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    lab = make_lab(nodes=2)
    plan = lab.plan
    assert (tmp_path / lab.name / PLAN_FILE).exists()
    with Netlink() as host:
        bridge = host.require(plan.bridge)
        assert (bridge.kind, bridge.mtu, bridge.up) == ("bridge", 1500, True)
        assert [a.cidr for a in host.addresses(plan.bridge)] == [f"{plan.host_ip}/24"]
        for node in plan.nodes:
            assert host.require(node.host_veth).master == bridge.index
    for node in plan.nodes:
        with Netlink(node.netns) as inside:
            assert [a.cidr for a in inside.addresses("eth0")] == [f"{node.ip}/24"]
            routes = {r.dst: r.gateway for r in inside.routes()}
            assert routes["0.0.0.0/0"] == plan.host_ip
            assert inside.require("lo").up
    node1, node2 = lab["node1"], lab["node2"]
    assert "node2" in lab and list(lab) == ["node1", "node2"]
    assert ping(node1.netns, node2.ip)
    assert ping(node2.netns, plan.host_ip)

    removed = lab.down()
    assert f"netns {node1.netns}" in removed and f"link {plan.bridge}" in removed
    assert leftovers(lab.name, plan.host_links) == []
    assert not (tmp_path / lab.name).exists()
    assert lab.down() == []  # idempotent


def test_two_labs_side_by_side_do_not_collide(make_lab: MakeLab) -> None:
    a, b = make_lab(nodes=1), make_lab(nodes=1)
    assert a.plan.index != b.plan.index
    assert a.plan.port != b.plan.port
    assert a.plan.bridge != b.plan.bridge
    assert ping(a["node1"].netns, a.plan.host_ip)
    assert ping(b["node1"].netns, b.plan.host_ip)
    # separate layer 2: each node's host end is a port of its own lab's bridge only
    with Netlink() as host:
        for lab in (a, b):
            bridge = host.require(lab.plan.bridge).index
            assert host.require(lab["node1"].host_veth).master == bridge
    a.down()
    assert netns.exists(b["node1"].netns)
    assert ping(b["node1"].netns, b.plan.host_ip)


def test_down_after_a_crash_without_the_record(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(nodes=2)
    # pod sandboxes an agent would have made live under the same prefix
    netns.create(f"{lab.plan.netns_prefix}pod-abc")
    (tmp_path / lab.name / PLAN_FILE).unlink()
    down_lab(lab.name, tmp_path)
    assert netns.list_names(lab.plan.netns_prefix) == []
    assert leftovers(lab.name, (lab.plan.bridge,)) == []


def test_overlapping_and_duplicate_names_are_refused(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=1)
    with pytest.raises(LabError, match="already exists"):
        make_lab(nodes=1, name=lab.name)
    with pytest.raises(LabError, match="clashes with existing lab"):
        make_lab(nodes=1, name=f"{lab.name}-x")


def connects(source_netns: str | None, address: str, port: int) -> bool:
    """Whether a TCP connection from the namespace (None: the host) is accepted."""

    def connect() -> bool:
        try:
            socket.create_connection((address, port), timeout=2).close()
        except ConnectionRefusedError:
            return False
        return True

    return netns.call_in(source_netns, connect)


def test_etcd_members_get_namespaces_the_servers_reach_and_the_nodes_do_not(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    """`up --etcd 2` without processes: each member's namespace on the underlay, its firewall
    (clients: the host, where the servers run; peers: the other member; nodes: reset), a
    process the supervisor spawns there, and `down` removing all of it."""
    lab = make_lab(nodes=1, etcd=2)
    plan = lab.plan
    first, second = plan.etcd_members
    with Netlink() as host:
        bridge = host.require(plan.bridge).index
        assert all(host.require(m.host_veth).master == bridge for m in plan.etcd_members)
    with Netlink(first.netns) as inside:
        assert [a.cidr for a in inside.addresses("eth0")] == [f"{first.ip}/24"]
        assert [r.dst for r in inside.routes() if r.dst == "0.0.0.0/0"] == []  # underlay only
    listeners = [
        netns.call_in(first.netns, lambda port=port: socket.create_server((first.ip, port)))
        for port in (ha.ETCD_CLIENT_PORT, ha.ETCD_PEER_PORT)
    ]
    node = lab["node1"].netns
    try:
        assert connects(None, first.ip, ha.ETCD_CLIENT_PORT)  # the servers, on the host
        assert connects(second.netns, first.ip, ha.ETCD_PEER_PORT)
        assert not connects(node, first.ip, ha.ETCD_CLIENT_PORT)
        assert not connects(node, first.ip, ha.ETCD_PEER_PORT)
        assert not connects(None, first.ip, ha.ETCD_PEER_PORT)  # peers are members only
    finally:
        for listener in listeners:
            listener.close()
    log = tmp_path / "member.log"
    out = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pid = Supervisor._spawn_in(first.netns, ["sleep", "60"], out)
    finally:
        os.close(out)
    try:
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns.inode(first.netns)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    removed = lab.down()
    assert {f"netns {m.netns}" for m in plan.etcd_members} <= set(removed)
    assert {f"link {m.host_veth}" for m in plan.etcd_members} <= set(removed)
    assert leftovers(lab.name, plan.host_links) == []
    with pytest.raises(LabError, match="does not exist"):
        Supervisor._spawn_in(first.netns, ["true"], 1)


def test_forward_accept_rule_only_when_the_policy_drops(
    new_netns: Callable[[], str], tmp_path: Path
) -> None:
    plan = plan_lab(LabSpec(name="t1fwd", nodes=1, state_root=tmp_path), 9, 9999)
    runner = IptablesRunner(new_netns())
    runner.restore("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
    assert ensure_forward_accept(runner, plan) is False  # policy ACCEPT: nothing to do
    runner.restore("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    assert ensure_forward_accept(runner, plan) is True
    assert ensure_forward_accept(runner, plan) is False  # already there
    saved = runner.save("filter")
    assert saved.count(f"-A {forward_accept_rule(plan)}") == 1
    assert remove_forward_accept(runner, plan) is True
    assert remove_forward_accept(runner, plan) is False
    assert "podnet lab t1fwd" not in runner.save("filter")


def test_a_directory_that_is_not_a_lab_is_never_removed(tmp_path: Path) -> None:
    name = f"t1{secrets.token_hex(3)}"
    precious = tmp_path / name / "keep.txt"
    precious.parent.mkdir()
    precious.write_text("not podnet's")
    with pytest.raises(LabError, match="is not a lab's state"):
        Lab.up(LabSpec(name=name, nodes=1, state_root=tmp_path), processes=False)
    down_lab(name, tmp_path)
    assert precious.read_text() == "not podnet's"
    assert netns.list_names(f"podnet-{name}-") == []


def test_up_of_an_existing_lab_calls_its_prestarted_supervisor_off(tmp_path: Path) -> None:
    """`up` spawns the lab's supervisor before it plans the lab (`prestart.py`); when the
    plan fails (here: the lab exists), that process is killed and reaped, nothing kept."""
    name = f"t1{secrets.token_hex(3)}"
    spec = LabSpec(name=name, nodes=1, state_root=tmp_path)
    Lab.up(spec, processes=False)
    try:
        early = Prestarted(spec.state_dir)
        pid = early.pid
        with pytest.raises(LabError, match="already exists"):
            Lab.up(spec, supervisor=early)
        assert not Path(f"/proc/{pid}").exists()
        assert procs.recorded(spec.state_dir / "pids") == []
    finally:
        down_lab(name, tmp_path)


def test_machine_lock_is_reentrant_within_a_thread() -> None:
    with machine_lock(), machine_lock():  # a second flock on a new fd would block forever
        pass
    with machine_lock():  # and it is released afterwards
        pass


def test_the_suites_leftover_check_sees_every_object_of_a_lab_until_it_is_down(
    make_lab: MakeLab,
) -> None:
    before = testing_leftovers.lab_objects()
    lab = make_lab(nodes=2, etcd=1)
    expected = {f"link {name}" for name in lab.plan.host_links} | {
        f"netns {ns.netns}" for ns in (*lab.plan.nodes, *lab.plan.etcd_members)
    }
    # other labs (other engineers' runs) may come and go meanwhile: only this lab's are asked
    assert expected <= testing_leftovers.wait_for_lab_objects(before, 0)
    # and the session's lab journal names them all, so the session-end check knows them as its
    # own whoever else runs labs meanwhile
    journal = Path(os.environ[testing_leftovers.LAB_JOURNAL_VAR]).read_text().splitlines()
    entries = [json.loads(line) for line in journal]
    mine = [e for e in entries if e["name"] == lab.plan.name]
    assert (
        mine
        and {f"link {link}" for e in mine for link in e["links"]}
        | {o for o in expected if o.removeprefix("netns ").startswith(mine[-1]["netns_prefix"])}
        == expected
    ), entries
    lab.down()
    assert not expected & testing_leftovers.wait_for_lab_objects(before, 0)
