"""Backend devices under stress: vxlan keeps its VtepMAC across rebuilds, rebuilds an
incompatible flannel.1 (saying why) and one deleted under a running agent; udp answers an
unleased destination with ICMP net-unreachable, its datapath's two processes are recorded
and stopped by pid (by the agent, or by the records alone as `podnet down` does) and never
outlive the agent; host-gw refuses a node behind a router with an error naming it, while
still routing to the others."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import procs
from podnet.agent.flannel.datapath import LOOP_FAILED_EXIT
from podnet.agent.flannel.leases import own_lease_patch
from podnet.agent.flannel.udp import DEVICE, LABEL, RECEIVING_HALF_LABEL, DatapathProcess
from podnet.kernel import netns
from podnet.kernel.links import Netlink
from podnet.kernel.overlay import Overlay, VxlanInfo, VxlanSpec, open_tun, udp_socket
from podnet.testing.flannel_lab import FlannelLab, pod_cidr, remote_subnets, until

IP_RECVERR = 11

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]


def vxlan_info(lab: FlannelLab, index: int) -> VxlanInfo | None:
    with Overlay(lab.node_ns(index)) as overlay:
        found = overlay.vxlan("flannel.1")
        return found[1] if found else None


def delete_flannel_1(lab: FlannelLab, index: int) -> None:
    with Netlink(lab.node_ns(index)) as nl:
        nl.delete_link("flannel.1")


@pytest.mark.asyncio
@pytest.mark.parametrize("flannel_lab", ["vxlan"], indirect=True)
async def test_flannel_vxlan_device_lifecycle(
    flannel_lab: FlannelLab, caplog: pytest.LogCaptureFixture
) -> None:
    lab = flannel_lab
    before = await asyncio.to_thread(vxlan_info, lab, 1)
    assert before is not None and before.mac
    assert (before.vni, before.port, before.learning, before.mtu) == (1, 8472, False, 1450)

    # the device is lost while the agent is down: it comes back with the published MAC
    await lab.stop_agent(1)
    await asyncio.to_thread(delete_flannel_1, lab, 1)
    await lab.start_agent(1)
    after = await asyncio.to_thread(vxlan_info, lab, 1)
    assert after is not None and after.mac == before.mac

    # an incompatible device of the same name is rebuilt, and the log says why
    await lab.stop_agent(1)
    await asyncio.to_thread(delete_flannel_1, lab, 1)

    def make_wrong_device() -> None:
        with Overlay(lab.node_ns(1)) as overlay, Netlink(lab.node_ns(1)) as nl:
            eth0 = nl.require("eth0")
            overlay.ensure_vxlan(VxlanSpec("flannel.1", 2, "192.168.66.11", eth0.index, 4789))

    await asyncio.to_thread(make_wrong_device)
    with caplog.at_level(logging.WARNING, logger="podnet.kernel.overlay"):
        await lab.start_agent(1)
    rebuilt = await asyncio.to_thread(vxlan_info, lab, 1)
    assert rebuilt is not None
    assert (rebuilt.vni, rebuilt.port, rebuilt.mac) == (1, 8472, before.mac)
    assert "incompatible configuration (vni: 2 vs 1; port: 4789 vs 8472)" in caplog.text

    # deleted under a running agent: the next full sync recreates it and its entries
    await asyncio.to_thread(delete_flannel_1, lab, 1)
    await until(
        lambda: vxlan_info(lab, 1) is not None
        and remote_subnets(lab, 1)["routes"] == {pod_cidr(2), pod_cidr(3)},
        15,
        "flannel.1 recreated with its routes",
    )
    again = await asyncio.to_thread(vxlan_info, lab, 1)
    assert again is not None and again.mac == before.mac


@pytest.mark.asyncio
@pytest.mark.parametrize("flannel_lab", ["udp"], indirect=True)
async def test_flannel_udp_unleased_destination_is_net_unreachable(flannel_lab: FlannelLab) -> None:
    lab = flannel_lab
    pod = await asyncio.to_thread(lab.add_pod, 1)

    def send_to_nowhere() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            # a net-unreachable is a "soft" error for UDP: reported only with IP_RECVERR
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            s.connect(("10.244.99.9", 9))
            s.send(b"anyone?")
            try:
                s.recv(100)
            except OSError as exc:
                return exc.errno or 0
            return 0

    code = await asyncio.to_thread(netns.call_in, pod.netns, send_to_nowhere)
    assert code == errno.ENETUNREACH
    network = lab.agents[1].component.network
    assert network is not None
    stats = await asyncio.to_thread(network.datapath.stats)  # type: ignore[attr-defined]
    assert stats.unreachable >= 1


@pytest.mark.asyncio
@pytest.mark.parametrize("flannel_lab", ["host-gw"], indirect=True)
async def test_flannel_host_gw_refuses_a_node_behind_a_router(flannel_lab: FlannelLab) -> None:
    lab = flannel_lab

    def default_route() -> None:
        with Netlink(lab.node_ns(1)) as nl:
            nl.replace_route("0.0.0.0/0", gateway="192.168.66.1", dev="eth0")

    await asyncio.to_thread(default_route)
    assert lab.api is not None
    await lab.api.create(
        "nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "far",
                "annotations": own_lease_patch("host-gw", None, "10.99.0.9")["metadata"][
                    "annotations"
                ],
            },
            "spec": {"podCIDR": pod_cidr(9)},
        },
    )
    component = lab.agents[1].component
    await until(lambda: "far" in (component.last_error or ""), 15, "an error naming the node")
    assert (
        "host-gw: node far (10.99.0.9) is not on this node's L2 segment: the kernel reaches it "
        "via gateway 192.168.66.1" in (component.last_error or "")
    )
    routes = await asyncio.to_thread(remote_subnets, lab, 1)
    assert routes["routes"] == {pod_cidr(2), pod_cidr(3)}


@pytest.fixture
def udp_datapath(scratch_netns: str, tmp_path: Path) -> Iterator[tuple[str, DatapathProcess]]:
    """A udp datapath process on flannel0 in a scratch namespace (its socket on 127.0.0.1),
    its processes recorded under `tmp_path`; stopped by those records after the test."""
    sock = udp_socket("127.0.0.1", 8285, scratch_netns)
    tun = open_tun(DEVICE, scratch_netns, vnet_header=True)
    try:
        datapath = DatapathProcess(tun, sock, "10.244.1.0", tmp_path / "datapath")
    finally:
        sock.close()
        os.close(tun)
    try:
        yield scratch_netns, datapath
    finally:
        procs.stop_all(tmp_path / "datapath", grace_seconds=1.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            datapath.proc.wait(timeout=5)


def _datapath_records(datapath: DatapathProcess) -> dict[str, procs.Recorded]:
    return {rec.label: rec for rec in procs.recorded(datapath.records[0].path.parent)}


def _receiving_half(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(child) for child in f.read().split()]
    assert len(children) == 1, f"expected one receiving half, got {children}"
    return children[0]


def _flannel0_gone(ns: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        with Netlink(ns) as nl:
            if nl.link(DEVICE) is None:
                return
        assert time.monotonic() < deadline, "flannel0 outlived its datapath"
        time.sleep(0.05)


def test_flannel_udp_datapath_processes_are_recorded_and_stopped_by_pid(
    udp_datapath: tuple[str, DatapathProcess],
) -> None:
    """Both processes are recorded (the child by the pid the datapath reports, which is its
    real child); the agent's stop ends both and removes the records."""
    ns, datapath = udp_datapath
    records = _datapath_records(datapath)
    assert set(records) == {LABEL, RECEIVING_HALF_LABEL}
    assert records[LABEL].pid == datapath.proc.pid
    assert records[RECEIVING_HALF_LABEL].pid == _receiving_half(datapath.proc.pid)
    assert all(procs.is_alive(rec) for rec in records.values())
    datapath.stop()
    assert not any(procs.is_alive(rec) for rec in records.values())
    assert _datapath_records(datapath) == {}
    _flannel0_gone(ns)


def test_flannel_udp_datapath_is_stopped_by_its_records_alone(
    udp_datapath: tuple[str, DatapathProcess],
) -> None:
    """What `podnet down` does after an agent that did not stop (its control socket still
    open, so no EOF reaches either process): the records alone end both."""
    ns, datapath = udp_datapath
    records = _datapath_records(datapath)
    assert datapath.stats().errors == 0  # both halves answer
    assert procs.stop_all(datapath.records[0].path.parent, grace_seconds=2.0) == 2
    assert not any(procs.is_alive(rec) for rec in records.values())
    datapath.proc.wait(timeout=5)
    _flannel0_gone(ns)
    datapath.control.close()


def test_flannel_udp_datapath_never_outlives_its_agent(
    udp_datapath: tuple[str, DatapathProcess],
) -> None:
    """The datapath process exits when the agent's end of the control socket closes (as when
    the agent is killed), and flannel0 disappears with it."""
    ns, datapath = udp_datapath
    datapath.set_routes({"10.244.2.0/24": ("127.0.0.1", 8285)})
    assert datapath.stats().errors == 0  # alive and answering
    with Netlink(ns) as nl:
        assert nl.link(DEVICE) is not None
    receiving_half = _datapath_records(datapath)[RECEIVING_HALF_LABEL]
    datapath.control.close()  # what the kernel does to a killed agent's sockets
    datapath.proc.wait(timeout=5)
    _flannel0_gone(ns)
    deadline = time.monotonic() + 5  # the second line of defence: EOF from its parent
    while procs.is_alive(receiving_half):
        assert time.monotonic() < deadline, "the receiving half outlived its parent"
        time.sleep(0.05)


def test_flannel_udp_datapath_ends_when_its_receiving_half_dies(
    udp_datapath: tuple[str, DatapathProcess],
) -> None:
    """UDP → flannel0 runs in a child process of the datapath (one GIL per direction): if it
    dies, the datapath exits with the loop-failure code, so the agent rebuilds both halves;
    its counters are part of the datapath's until then."""
    _, datapath = udp_datapath
    assert datapath.stats().errors == 0  # both halves answer
    os.kill(_receiving_half(datapath.proc.pid), signal.SIGKILL)
    assert datapath.proc.wait(timeout=5) == LOOP_FAILED_EXIT
