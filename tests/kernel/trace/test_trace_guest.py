"""Reading a VM node's state for a trace through its control port (`podnet.trace.guest`).

No VM boots here: the control port's host end, a unix socket under the lab's `vms/<node>/`,
is answered by the guest supervisor's own request handler (`podnet.vmguest.handle`), which
runs each command inside a scratch namespace standing for the guest's root namespace, with a
"pod" namespace joined to it by a veth. So the host's side (`read_guest` through `VmControl`)
and the guest's (`python -m podnet.trace.guest`, reading with `snapshot.read_namespace`) are
the real ones; `tests/e2e/test_vm_lab.py` traces through a booted VM node.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.kernel import netns
from podnet.kernel.rules import IptablesRunner
from podnet.lab.vm import VmPaths
from podnet.trace.guest import GuestError, read_guest
from podnet.trace.snapshot import NodeLayout
from podnet.vmguest import Agent, handle

pytestmark = pytest.mark.root

RULES = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 8080 -j ACCEPT\nCOMMIT\n"


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(state dir, the "guest root" namespace, the "pod" namespace) with a control port."""
    root, pod = f"pngr-{secrets.token_hex(3)}", f"pngp-{secrets.token_hex(3)}"
    netns.create(root)
    netns.create(pod)
    paths = VmPaths.of(str(tmp_path), "node9")
    paths.vm_dir.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(paths.control_socket))
    server.listen()
    log = (tmp_path / "agent.log").open("wb")
    agent = Agent(log.fileno())

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn, conn.makefile("rwb") as stream:
                    request = json.loads(stream.readline())
                    request["argv"] = ["ip", "netns", "exec", root, *request["argv"]]
                    answer = handle(request, agent) | {"id": request["id"]}
                    stream.write(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        subprocess.run(
            ["ip", "-n", root, "link", "add", "veth-p", "type", "veth", "peer", "name", "eth0",
             "netns", pod],
            check=True,
        )  # fmt: skip
        subprocess.run(["ip", "-n", pod, "addr", "add", "10.244.9.2/24", "dev", "eth0"], check=True)
        IptablesRunner(root).restore(RULES, noflush=False)
        yield str(tmp_path), root, pod
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
        log.close()
        netns.delete(pod)
        netns.delete(root)


def test_the_guest_sends_its_root_and_pod_namespaces(guest: tuple[str, str, str]) -> None:
    state_dir, _, pod = guest
    node = NodeLayout("node9", "podnet-tvm-node9", "172.31.9.19", tap="pnvtest")
    states = read_guest(state_dir, node, [pod, f"{pod}-gone"], rules=True)
    assert set(states) == {"podnet-tvm-node9", pod}  # the root under the node's netns name
    root = states["podnet-tvm-node9"]
    veth = root.inventory.link_named("veth-p")
    eth0 = states[pod].inventory.link_named("eth0")
    assert veth is not None and eth0 is not None
    assert (veth.peer_index, eth0.peer_index) == (eth0.index, veth.index)
    assert [a.address for a in states[pod].inventory.addresses_of(eth0.index)] == ["10.244.9.2"]
    assert "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT" in root.iptables
    assert "table ip filter" in root.nft
    assert (root.ipvs, root.ipsets) == ("", "")  # this kernel has no IP_VS
    assert states[pod].iptables == ""  # a pod's: links, addresses and its nft listing only

    pictures = read_guest(state_dir, node, [], rules=False)
    assert set(pictures) == {"podnet-tvm-node9"}
    assert pictures["podnet-tvm-node9"].iptables == ""


def test_an_unreachable_guest_is_named(tmp_path: Path) -> None:
    node = NodeLayout("node9", "podnet-tvm-node9", "172.31.9.19", tap="pnvtest")
    with pytest.raises(GuestError, match="reading VM node node9: no control port under"):
        read_guest(str(tmp_path), node, [], rules=True)
    VmPaths.of(str(tmp_path), "node9").vm_dir.mkdir(parents=True)  # its qemu is not running
    with pytest.raises(GuestError, match="reading VM node node9: cannot reach the control port"):
        read_guest(str(tmp_path), node, [], rules=True)
