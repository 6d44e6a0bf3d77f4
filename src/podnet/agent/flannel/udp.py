"""The udp backend: TUN `flannel0`, UDP port 8285, and a datapath process between them.

What belongs here: `UdpBackend` / `UdpNetwork` (flannel's `udp_amd64.go` and
`udp_network_amd64.go`) and `DatapathProcess`, which starts and steers the forwarding process
of `podnet.agent.flannel.datapath` (flannel's C proxy with its control socket).

    flannel0 10.244.1.0/32 mtu underlay-28, route 10.244.0.0/16 dev flannel0
    UDP socket <node ip>:8285 ──▶ datapath process (TUN fd, socket fd, control socketpair)

Invariants:
- The TUN is opened with IFF_VNET_HDR so the datapath can write merged TCP runs as GSO
  packets and (it turns on TSO and checksum offload itself) read 64 KiB TCP superpackets;
  what crosses the wire is still one inner IP packet per UDP datagram, a partial TCP/UDP
  checksum marked by the IPv4 reserved flag (podnet peers only: see `datapath`).
- The agent opens the TUN and binds the socket (inside the node's namespace), hands both to
  the datapath process and closes its own copies: the process owns them, so flannel0 lives
  exactly as long as the datapath. The process exits when the control socket reaches EOF, so
  it never outlives its agent, even when the agent is killed.
- Both of the datapath's processes (it forks its UDP → flannel0 half) are recorded with
  `podnet.procs` under the agent's `run_dir/flannel/datapath/` (`datapath.pid`,
  `datapath-receiving-half.pid`; the child's pid is the datapath's first control message),
  and stopped by those records: by the agent's `close()`, by the next `register_network`
  (an earlier agent's datapath), and by `podnet down` (`procs.stop_all` over the lab's node
  directories). The EOF exits stay as the second line of defence.
- Lease changes reach the datapath as one whole route table (subnet -> public IP:port).
- accept_local is on for flannel0: the datapath's ICMP errors come from the flannel0
  address, which the kernel would otherwise drop as a martian.
- Like flanneld's, the udp datapath lives in the agent's lifetime: a restart interrupts udp
  traffic for that moment (TCP retransmits across it); device, route and table come back.
- Pods on a udp node get `gso_max_segs` = `pod_gso_max_segs(mtu)` on their eth0 (44 for
  MTU 1472; subnet.env's PODNET_GSO_MAX_SEGS, set by the CNI bridge): their TCP then builds
  superpackets that fit one UDP GSO send (65,507 bytes) once cut, not 46 segments that need
  two sends, two receives and two TUN writes. Set on the pod's device, not flannel0's: a
  superpacket over flannel0's limit would be segmented in software before the TUN.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from podnet import procs
from podnet.agent.flannel.backend import ExternalInterface, FlannelError, Network
from podnet.agent.flannel.config import NetConfig
from podnet.agent.flannel.datapath import GSO_SEGMENTS, UDP_MAX_PAYLOAD, DatapathStats
from podnet.agent.flannel.leases import Lease, LeaseEvents
from podnet.kernel import sysctl
from podnet.kernel.links import LinkError, Netlink
from podnet.kernel.overlay import Overlay, OverlayError, open_tun, udp_socket

log = logging.getLogger(__name__)

BACKEND_TYPE = "udp"
DEVICE = "flannel0"
DEFAULT_PORT = 8285
ENCAP_OVERHEAD = 28  # 20 outer IPv4 + 8 UDP
CONTROL_TIMEOUT = 5.0
PIDS_DIR = Path("flannel", "datapath")  # under the agent's run_dir
LABEL = "datapath"
RECEIVING_HALF_LABEL = "datapath-receiving-half"
TUN_QUEUE_LENGTH = 10000


def pod_gso_max_segs(mtu: int) -> int:
    """The most `mtu`-byte segments one UDP GSO send can carry (a datagram's 65,507 bytes,
    the kernel's 64 segments): the pods' TCP superpackets are kept to this many segments so
    that each leaves the datapath in one send (44 at MTU 1472)."""
    return max(1, min(GSO_SEGMENTS, UDP_MAX_PAYLOAD // mtu))


def udp_routes(leases: Sequence[Lease], port: int) -> dict[str, tuple[str, int]]:
    """subnet -> (public IP, port) for the udp leases."""
    return {
        str(lease.subnet): (str(lease.public_ip), port)
        for lease in leases
        if lease.backend_type == BACKEND_TYPE
    }


class DatapathProcess:
    """The forwarding process of one node, steered over a control socketpair; it and its
    receiving half (a child it forks) are recorded in `pids_dir` and stopped by pid."""

    def __init__(self, tun: int, sock: socket.socket, address: str, pids_dir: Path) -> None:
        control, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "podnet.agent.flannel.datapath",
                    "--tun-fd",
                    str(tun),
                    "--socket-fd",
                    str(sock.fileno()),
                    "--control-fd",
                    str(child_end.fileno()),
                    "--address",
                    address,
                    "--vnet-header",
                ],
                pass_fds=(tun, sock.fileno(), child_end.fileno()),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            control.close()
            raise
        finally:
            child_end.close()
        self.control = control
        self.control.settimeout(CONTROL_TIMEOUT)
        self.records: list[procs.Recorded] = []
        try:
            self.records.append(procs.record(pids_dir, LABEL, self.proc.pid, own_child=True))
            self.receiving_half = self._receiving_half()
            # not our child (the datapath's): gone already is a ProcessLookupError
            self.records.append(procs.record(pids_dir, RECEIVING_HALF_LABEL, self.receiving_half))
        except OSError:
            self.stop()
            raise

    def _receiving_half(self) -> int:
        """The pid of the datapath's child, its first control message."""
        try:
            hello = self.control.recv(4096)
        except TimeoutError:
            raise TimeoutError(
                f"the datapath process (pid {self.proc.pid}) did not say it started within "
                f"{CONTROL_TIMEOUT:.0f} s"
            ) from None
        if not hello:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=CONTROL_TIMEOUT)
            raise ChildProcessError(
                f"the datapath process (pid {self.proc.pid}) exited with code "
                f"{self.proc.returncode} as it started (its traceback is in the agent's log)"
            )
        try:
            return int(json.loads(hello)["receiving_half"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ChildProcessError(
                f"the datapath process (pid {self.proc.pid}) began with {hello!r}, not the "
                "pid of its receiving half"
            ) from exc

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def set_routes(self, routes: Mapping[str, tuple[str, int]]) -> None:
        message = {"routes": {subnet: list(hop) for subnet, hop in routes.items()}}
        try:
            self.control.send(json.dumps(message).encode())
        except OSError as exc:
            raise FlannelError(
                f"udp: the datapath process (pid {self.proc.pid}) is not listening: {exc}"
            ) from exc

    def stats(self) -> DatapathStats:
        self.control.send(b'{"stats": true}')
        return DatapathStats(**json.loads(self.control.recv(65536)))

    def stop(self) -> None:
        """Close the control socket (the process exits on EOF, and closes its receiving half's
        socketpair); escalate only on our pid; then both by their records (the receiving half
        is stopped by pid, not left to see EOF), which are removed."""
        self.control.close()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        procs.stop_together(self.records, grace_seconds=2.0)


# -- the backend ---------------------------------------------------------------------------


class UdpBackend:
    def __init__(self, ext: ExternalInterface, netns: str | None, run_dir: Path) -> None:
        self.ext = ext
        self.netns = netns
        self.pids_dir = run_dir / PIDS_DIR

    def register_network(
        self, config: NetConfig, subnet: ipaddress.IPv4Network, stored: Mapping[str, Any]
    ) -> Network:
        port = int(config.backend_option("Port", 0)) or DEFAULT_PORT
        mtu = self.ext.mtu - ENCAP_OVERHEAD
        address = str(subnet.network_address)
        # an earlier agent's datapath (one killed with its agent ends at EOF; this is sure)
        if stopped := procs.stop_all(self.pids_dir, grace_seconds=2.0):
            log.info("udp: stopped %d process(es) of an earlier datapath", stopped)
        try:
            sock = udp_socket(self.ext.address, port, self.netns)
        except OverlayError as exc:
            raise FlannelError(f"udp: {exc}") from exc
        try:
            tun = open_tun(DEVICE, self.netns, vnet_header=True)
        except OverlayError as exc:
            sock.close()
            raise FlannelError(f"udp: {exc}") from exc
        try:
            with Overlay(self.netns) as overlay:
                # room for bursts while the datapath is scheduled out (default 500 packets)
                overlay.set_txqueuelen(DEVICE, TUN_QUEUE_LENGTH)
            with Netlink(self.netns) as nl:
                nl.set_mtu(DEVICE, mtu)
                nl.ensure_address(DEVICE, f"{address}/32")
                nl.set_up(DEVICE)
                nl.replace_route(str(config.network), dev=DEVICE)
            # our ICMP errors come from the flannel0 address, a local one: without
            # accept_local the kernel would drop them as martians
            sysctl.write(sysctl.interface_key(DEVICE, "accept_local"), 1, self.netns)
        except (LinkError, OverlayError, sysctl.SysctlError) as exc:
            sock.close()
            os.close(tun)
            raise FlannelError(f"udp: cannot configure {DEVICE}: {exc}") from exc
        try:
            datapath = DatapathProcess(tun, sock, address, self.pids_dir)
        except OSError as exc:
            raise FlannelError(f"udp: cannot start the datapath process: {exc}") from exc
        finally:
            # the datapath process holds them now; flannel0 lives as long as it does
            sock.close()
            os.close(tun)
        log.info(
            "udp: %s %s/32 mtu %d, UDP %s:%d, route %s dev %s",
            DEVICE, address, mtu, self.ext.address, port, config.network, DEVICE,
        )  # fmt: skip
        return UdpNetwork(datapath, port, mtu)


class UdpNetwork:
    backend_type = BACKEND_TYPE

    def __init__(self, datapath: DatapathProcess, port: int, mtu: int) -> None:
        self.datapath = datapath
        self.port = port
        self.mtu = mtu
        self.pod_gso_max_segs: int | None = pod_gso_max_segs(mtu)
        self._routes: dict[str, tuple[str, int]] = {}

    def backend_data(self) -> dict[str, Any] | None:
        return None

    def reconcile(self, leases: Sequence[Lease]) -> None:
        if not self.datapath.alive:
            raise FlannelError(
                f"udp: the datapath process (pid {self.datapath.proc.pid}) exited with code "
                f"{self.datapath.proc.returncode}; flannel0 went with it and is rebuilt"
            )
        self._routes = udp_routes(leases, self.port)
        self.datapath.set_routes(self._routes)
        log.info("udp: %d remote subnets", len(self._routes))

    def handle(self, events: LeaseEvents) -> None:
        routes = dict(self._routes)
        for lease in events.removed:
            routes.pop(str(lease.subnet), None)
        routes.update(udp_routes(events.added, self.port))
        self._routes = routes
        self.datapath.set_routes(routes)
        for lease in events.added:
            log.info(
                "udp: node %s: %s via %s:%d", lease.node, lease.subnet, lease.public_ip, self.port
            )

    def close(self) -> None:
        self.datapath.stop()
