"""ipvs mode's IPVS state in a real IPVS: one VM node (Debian's kernel under qemu, no API
server, no lab processes) loads the renderer's output for upstream's fixture through
`IpvsRunner` inside the guest, and the kernel's own view (`ipvsadm-save -n`, `ipvsadm -Ln`)
holds exactly the golden virtual and real servers. Skipped with the reason where qemu or the
kernel for VM nodes is not installed.

Marks: root + slow (it boots a VM: about a minute under software emulation).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import procs
from podnet.agent.proxy.ipvs import VirtualServer, parse_ipvsadm_save, render_ipvs
from podnet.lab.lab import Lab, down_lab
from podnet.lab.spec import LabError, LabSpec
from podnet.lab.vm import VmControl, VmError, VmPaths, check_host
from podnet.testing.proxy import FIXTURE_CONFIG, upstream_fixture

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

GOLDEN = Path(__file__).parents[2] / "unit" / "proxy" / "golden" / "ipvs_overall.txt"
BOOT_SECONDS = 180
# run in the guest: the same renderer and IpvsRunner the agent uses, on the upstream fixture
LOAD = """
from podnet.agent.proxy.ipvs import render_ipvs
from podnet.kernel.ipvs import IpvsRunner
from podnet.testing.proxy import FIXTURE_CONFIG, upstream_fixture
state = upstream_fixture()
ipvs = render_ipvs(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
IpvsRunner().restore(ipvs.ipvsadm_restore(), clear=True)
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmControl]:
    try:
        check_host(None)
    except LabError as exc:
        pytest.skip(f"VM nodes cannot boot here: {exc}")
    root = Path("/var/lib/podnet/kernel-tests")  # not under /tmp: the guest mounts its own
    name = f"tk{secrets.token_hex(3)}"
    lab = Lab.up(LabSpec(name=name, nodes=1, vm_nodes=1, state_root=root), processes=False)
    qemu: subprocess.Popen[bytes] | None = None
    try:
        paths = VmPaths.of(lab.plan.state_dir, "node1")
        paths.vm_dir.mkdir(parents=True, exist_ok=True)
        with paths.qemu_log.open("ab") as log:
            qemu = subprocess.Popen(
                [sys.executable, "-m", "podnet.lab.vmrun", lab.plan.state_dir, "node1"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.record(Path(lab.plan.pids_dir), "agent-node1", qemu.pid)
        control = VmControl(lab.plan, "node1")
        deadline = time.monotonic() + BOOT_SECONDS
        while True:  # the guest's supervisor answers once the VM has booted
            try:
                control.status()
                break
            except VmError as exc:
                assert qemu.poll() is None, paths.console_log.read_text(errors="replace")
                assert time.monotonic() < deadline, f"{exc}\n{paths.console_log.read_text()}"
                time.sleep(1)
        yield control
    finally:
        down_lab(name, root)  # stops qemu by its recorded pid
        if qemu is not None:
            qemu.wait(timeout=30)
        with contextlib.suppress(OSError):
            root.rmdir()  # when no other run uses it


def normalized(servers: tuple[VirtualServer, ...]) -> set[tuple[object, ...]]:
    """Virtual servers as the kernel keeps them, whatever order their real servers came in."""
    return {(v.key, v.scheduler, v.persistence, frozenset(v.real_servers)) for v in servers}


def test_the_guest_kernel_holds_the_rendered_ipvs_state(guest: VmControl) -> None:
    loaded = guest.run([sys.executable, "-c", LOAD], timeout=180)
    assert loaded.returncode == 0, loaded.stderr
    saved = guest.run(["ipvsadm-save", "-n"]).stdout
    state = upstream_fixture()
    rendered = render_ipvs(state.service_port_map(), state.endpoints_map(), FIXTURE_CONFIG)
    golden = GOLDEN.read_text().split("# ipvsadm-restore\n", 1)[1]
    assert rendered.ipvsadm_restore() in golden  # the golden file is what was loaded
    want = parse_ipvsadm_save(rendered.ipvsadm_restore())
    assert normalized(parse_ipvsadm_save(saved)) == normalized(want), saved
    listing = guest.run(["ipvsadm", "-Ln"]).stdout
    for vs in want:
        flags = f" persistent {vs.persistence}" if vs.persistence else ""
        assert f"{vs.protocol.upper()}  {vs.address}:{vs.port} {vs.scheduler}{flags}" in listing
        for rs in vs.real_servers:
            assert f"-> {rs.address}:{rs.port}" in listing, listing
