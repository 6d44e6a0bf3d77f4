"""`podnet up --servers S --etcd E` as a plan: the units, their command lines and addresses, and
what `podnet fault kill server N|leader` / `kill etcd N` mean."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from podnet.kernel import names
from podnet.lab import ha
from podnet.lab.spec import MAX_NODES, MAX_SERVERS, LabError, LabSpec, plan_lab
from podnet.lab.supervisor import unit_argv, unit_labels, unit_log

PY = "/usr/bin/python3"


def test_units_addresses_and_command_lines(tmp_path: Path) -> None:
    plan = plan_lab(LabSpec(name="ha", nodes=1, servers=3, etcd=3, state_root=tmp_path), 7, 6443)
    state = tmp_path / "ha"
    assert unit_labels(plan) == [
        "etcd-1", "etcd-2", "etcd-3", "server-2", "server-3", "server", "agent-node1",
    ]  # fmt: skip
    assert ha.server_urls(plan) == [f"https://172.31.7.{i}:6443" for i in (1, 2, 3)]
    store = "etcd://172.31.7.6:2379,172.31.7.7:2379,172.31.7.8:2379/podnet"
    assert ha.store_url(plan) == store
    assert unit_argv(plan, "server", PY) == [
        PY, "-m", "podnet.cli.main", "server",
        "--state-dir", str(state),
        "--listen", "127.0.0.1:6443,172.31.7.1:6443",
        "--advertise-address", "172.31.7.1",
        "--node-monitor-grace-period", "8.0",
        "--default-unreachable-toleration-seconds", "15.0",
        "--store", store, "--share-credentials",
        "--cluster-url=https://127.0.0.1:6443",
        "--cluster-url=https://172.31.7.2:6443",
        "--cluster-url=https://172.31.7.3:6443",
    ]  # fmt: skip
    assert unit_argv(plan, "server-3", PY) == [
        PY, "-m", "podnet.cli.main", "server",
        "--state-dir", str(state / "servers" / "server-3"),
        "--listen", "172.31.7.3:6443",
        "--advertise-address", "172.31.7.3",
        "--node-monitor-grace-period", "8.0",
        "--default-unreachable-toleration-seconds", "15.0",
        "--store", store, "--share-credentials",
    ]  # fmt: skip
    if shutil.which("etcd"):
        etcd = unit_argv(plan, "etcd-2", PY)
        assert etcd[1:] == [
            "--name", "etcd-2",
            "--data-dir", str(state / "etcd" / "etcd-2"),
            "--listen-client-urls", "http://172.31.7.7:2379",
            "--advertise-client-urls", "http://172.31.7.7:2379",
            "--listen-peer-urls", "http://172.31.7.7:2380",
            "--initial-advertise-peer-urls", "http://172.31.7.7:2380",
            "--initial-cluster",
            "etcd-1=http://172.31.7.6:2380,etcd-2=http://172.31.7.7:2380,"
            "etcd-3=http://172.31.7.8:2380",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "podnet-ha-7",
            "--logger", "zap", "--log-level", "warn",
        ]  # fmt: skip
    assert unit_log(plan, "etcd-1") == state / "etcd-1.log"
    # the supervisor starts each member in its namespace, everything else on the host
    assert [ha.unit_netns(plan, label) for label in unit_labels(plan)] == [
        "podnet-ha-etcd1", "podnet-ha-etcd2", "podnet-ha-etcd3", None, None, None, None,
    ]  # fmt: skip
    assert unit_log(plan, "server-2") == state / "server-2.log"
    assert unit_log(plan, "server") == state / "server.log"


def test_one_server_on_etcd_and_the_default_lab(tmp_path: Path) -> None:
    plan = plan_lab(LabSpec(name="one", nodes=1, etcd=1, state_root=tmp_path), 3, 6000)
    argv = unit_argv(plan, "server", PY)
    assert argv[-3:] == ["--store", "etcd://172.31.3.6:2379/podnet", "--share-credentials"]
    assert unit_labels(plan) == ["etcd-1", "server", "agent-node1"]
    plain = plan_lab(LabSpec(name="plain", nodes=1, state_root=tmp_path), 4, 6001)
    assert "--store" not in unit_argv(plain, "server", PY)
    assert ha.labels(plain) == []
    assert plain.etcd_members == ()


def test_etcd_members_have_namespaces_and_addresses_of_their_own(tmp_path: Path) -> None:
    """Member i: `podnet-<lab>-etcd<i>` at .(5+i), between the servers' .1-.5 and the nodes'
    .11 and up, at the largest counts the spec takes; its host veth is a port like a node's."""
    spec = LabSpec(name="big", nodes=MAX_NODES, servers=MAX_SERVERS, etcd=MAX_SERVERS,
                   state_root=tmp_path)  # fmt: skip
    plan = plan_lab(spec, 9, 6004)
    members = plan.etcd_members
    assert [(m.name, m.netns, m.ip) for m in members] == [
        (f"etcd-{i}", f"podnet-big-etcd{i}", f"172.31.9.{5 + i}") for i in range(1, 6)
    ]
    assert members[1].data_dir == str(tmp_path / "big" / "etcd" / "etcd-2")
    servers = {ha.server_ip(plan, i) for i in range(1, MAX_SERVERS + 1)}
    nodes = {n.ip for n in plan.nodes}
    ips = {m.ip for m in members}
    assert len(ips) == 5 and not ips & servers and not ips & nodes and plan.host_ip in servers
    # the namespaces carry the lab's prefix (down removes them with the nodes'), but no
    # node's: an agent owns the pod sandboxes under its node's prefix only
    assert all(m.netns.startswith(plan.netns_prefix) for m in members)
    assert not any(m.netns.startswith(n.pod_netns_prefix) for m in members for n in plan.nodes)
    veths = [m.host_veth for m in members]
    assert all(v.startswith(names.LAB_NODE_VETH_PREFIX) and len(v) == 15 for v in veths)
    assert len(set(veths) | {n.host_veth for n in plan.nodes}) == 5 + MAX_NODES
    assert plan.host_links == (*(n.host_veth for n in plan.nodes), *veths, plan.bridge)


def test_member_firewall(tmp_path: Path) -> None:
    """Clients from the servers only (on the host's end of the bridge), peers from the
    members; anyone else on the underlay is reset."""
    plan = plan_lab(LabSpec(name="fw", nodes=2, servers=2, etcd=3, state_root=tmp_path), 4, 6005)
    assert ha.member_firewall(plan) == (
        "*filter\n"
        ":INPUT ACCEPT [0:0]\n"
        "-A INPUT -i lo -j ACCEPT\n"
        "-A INPUT -s 172.31.4.1,172.31.4.2 -p tcp --dport 2379 -j ACCEPT\n"
        "-A INPUT -s 172.31.4.6,172.31.4.7,172.31.4.8 -p tcp -m multiport --dports 2379,2380 "
        "-j ACCEPT\n"
        "-A INPUT -p tcp -m multiport --dports 2379,2380 -j REJECT --reject-with tcp-reset\n"
        "COMMIT\n"
    )


def test_bad_counts_are_refused() -> None:
    with pytest.raises(LabError, match="needs --etcd N"):
        LabSpec(servers=3)
    with pytest.raises(LabError, match="--servers must be 1-5 and --etcd 0-5"):
        LabSpec(servers=6, etcd=3)
    with pytest.raises(LabError, match="--servers must be 1-5"):
        LabSpec(servers=0)


def test_fault_targets(tmp_path: Path) -> None:
    plan = plan_lab(LabSpec(name="f", nodes=1, servers=3, etcd=3, state_root=tmp_path), 2, 6002)
    assert ha.unit_label(plan, "server", "") == "server"
    assert ha.unit_label(plan, "server", "1") == "server"
    assert ha.unit_label(plan, "server", "3") == "server-3"
    assert ha.unit_label(plan, "etcd", "2") == "etcd-2"
    with pytest.raises(LabError, match="has no server '4'; valid: 1-3"):
        ha.unit_label(plan, "server", "4")
    with pytest.raises(LabError, match="has no etcd ''"):
        ha.unit_label(plan, "etcd", "")
    plain = plan_lab(LabSpec(name="p", nodes=1, state_root=tmp_path), 3, 6003)
    with pytest.raises(LabError, match="runs without etcd"):
        ha.unit_label(plain, "etcd", "1")
    # it said "valid: 1-1"
    with pytest.raises(LabError, match=r"valid: 1 only: the lab runs one server \(podnet up --"):
        ha.unit_label(plain, "server", "2")
    pids = {"server": 100, "server-2": 200, "agent-node1": 300}
    assert ha.leader_label(plan, "host_200_abc123", pids) == "server-2"
    with pytest.raises(LabError, match="holds the controllers' Lease"):
        ha.leader_label(plan, "host_300_abc123", pids)  # an agent's pid is no server
