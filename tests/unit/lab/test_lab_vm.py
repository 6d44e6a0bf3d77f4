"""VM nodes, the pure parts: the plan, qemu's command line, the initramfs (scripts, cpio
archive), the kernel facts read from a bzImage and module ELF files, and the guest
supervisor's request handling."""

from __future__ import annotations

import stat
import struct
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from podnet.lab.spec import LabError, LabPlan, LabSpec, plan_lab, with_new_node
from podnet.lab.supervisor import unit_argv, unit_log
from podnet.lab.vm import VmPaths, node_mac, qemu_argv, runner_argv, virtiofsd_argv
from podnet.lab.vminit import (
    FAILED_MARKER,
    VmSettings,
    newc_archive,
    regular,
    render_boot,
    render_init,
    render_vm_env,
)
from podnet.lab.vmkernel import (
    KernelError,
    ModuleInfo,
    bzimage_release,
    load_order,
    module_index,
    read_modinfo,
)
from podnet.vmguest import Agent, WarmPython, handle, parse_vm_env

GOLDEN = Path(__file__).parent / "golden"


def vm_plan(tmp_path: Path, root: str = "9p") -> LabPlan:
    plan = plan_lab(LabSpec(name="tvm", nodes=3, vm_nodes=1, state_root=tmp_path), 9, 40000)
    return replace(
        plan, vm_kernel="/k/vmlinux", vm_initramfs="/k/initramfs.gz", vm_root=root, vm_release="6.1"
    )


def test_the_last_k_nodes_are_vms_with_their_files_under_vms(tmp_path: Path) -> None:
    plan = vm_plan(tmp_path)
    assert [n.vm for n in plan.nodes] == [False, False, True]
    node3 = plan.node("node3")
    assert node3.kubeconfig == str(tmp_path / "tvm" / "vms" / "node3" / "kubeconfig")
    assert node3.log == str(tmp_path / "tvm" / "vms" / "node3" / "agent.log")
    _, added = with_new_node(plan, vm=True)
    assert (added.name, added.vm) == ("node4", True)
    with pytest.raises(LabError, match="--vm-nodes must be between 0 and the number of nodes"):
        LabSpec(name="x", nodes=2, vm_nodes=3)
    with pytest.raises(LabError, match="--vm-memory must be between"):
        LabSpec(name="x", nodes=2, vm_nodes=1, vm_memory=64)


def test_a_vm_node_is_a_supervisor_unit_that_runs_qemu(tmp_path: Path) -> None:
    plan = vm_plan(tmp_path)
    node3 = plan.node("node3")
    assert unit_argv(plan, "agent-node3", "/py") == runner_argv(plan, node3, "/py")
    assert runner_argv(plan, node3, "/py") == [
        "/py", "-m", "podnet.lab.vmrun", str(tmp_path / "tvm"), "node3",
    ]  # fmt: skip
    assert unit_log(plan, "agent-node3") == VmPaths.of(plan.state_dir, "node3").qemu_log
    assert unit_argv(plan, "agent-node1", "/py")[:3] == ["/py", "-m", "podnet.cli.agent"]


def test_qemu_command_line(tmp_path: Path) -> None:
    plan = vm_plan(tmp_path)
    node = plan.node("node3")
    argv = qemu_argv(plan, node, qemu="qemu")
    vms = tmp_path / "tvm" / "vms" / "node3"
    text = " ".join(argv).replace(str(tmp_path), "STATE")
    want = (GOLDEN / "vm_qemu_9p.txt").read_text().strip()
    assert text == want
    assert f"ifname={node.host_veth}," in text and node_mac("tvm", "node3") in text
    assert f"podnet.env={vms}/vm.env" in " ".join(argv)
    virtiofs = " ".join(qemu_argv(vm_plan(tmp_path, "virtiofs"), node, qemu="qemu"))
    assert "vhost-user-fs-pci,chardev=rootfs,tag=hostroot" in virtiofs
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in virtiofs
    assert virtiofsd_argv(Path("/s.sock"), Path("/v"))[:2] == ["/v", "--socket-path=/s.sock"]


def test_mac_is_stable_and_locally_administered() -> None:
    mac = node_mac("lab", "node2")
    assert mac == node_mac("lab", "node2") != node_mac("lab", "node3")
    assert mac.startswith("52:54:00:") and len(mac.split(":")) == 6


def test_boot_scripts_match_golden() -> None:
    scripts = {"init": render_init(["virtio.ko", "9p.ko"]), "boot": render_boot()}
    for name, text in scripts.items():
        assert text == (GOLDEN / f"vm_{name}.sh").read_text(), name
        assert FAILED_MARKER in text


def test_vm_env_round_trips_through_the_guest_parser() -> None:
    settings = VmSettings("node2", "172.31.9.12/24", "172.31.9.1", "/s d/n", "/a.json", "/py")
    env = parse_vm_env(render_vm_env(settings))
    assert env["NODE_CIDR"] == "172.31.9.12/24" and env["STATE_DIR"] == "/s d/n"
    assert env["PYTHON"] == "/py" and env["CONTROL_PORT"] == "podnet.ctl"


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) of a newc archive (the kernel's reading of it)."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_at = pos + 110
        name = data[name_at : name_at + namesize - 1].decode()
        body = name_at + namesize + (-(name_at + namesize) % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[body : body + size])
        pos = body + size + (-(body + size) % 4)


def test_newc_archive_is_what_the_kernel_unpacks() -> None:
    archive = newc_archive(
        [regular("bin/busybox", b"\x7fELF...", executable=True), regular("init", b"#!/x\n")]
    )
    assert len(archive) % 512 == 0
    members = parse_newc(archive)
    assert members["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELF...")
    assert members["init"] == (stat.S_IFREG | 0o644, b"#!/x\n")


def fake_bzimage(version: bytes) -> bytes:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x400)  # kernel_version pointer, minus 0x200
    image[0x600 : 0x600 + len(version)] = version
    return bytes(image)


def test_release_from_the_bzimage_setup_header() -> None:
    assert bzimage_release(fake_bzimage(b"6.1.0-57-amd64 (debian-kernel@lists)\0")) == (
        "6.1.0-57-amd64"
    )
    with pytest.raises(KernelError, match="not a bzImage"):
        bzimage_release(bytes(0x1000))


def fake_module(modinfo: bytes) -> bytes:
    """A minimal 64-bit ELF object: a null section, .modinfo, and the section names."""
    names = b"\0.modinfo\0.shstrtab\0"
    data_at = 0x40
    names_at = data_at + len(modinfo)
    shoff = names_at + len(names)
    header = bytearray(0x40)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    sections = bytes(64)
    sections += struct.pack("<IIQQQQ", 1, 1, 0, 0, data_at, len(modinfo)).ljust(64, b"\0")
    sections += struct.pack("<IIQQQQ", 10, 3, 0, 0, names_at, len(names)).ljust(64, b"\0")
    return bytes(header) + modinfo + names + sections


def test_modinfo_names_dependencies_and_aliases() -> None:
    elf = fake_module(b"alias=nft-expr-queue\0depends=nf_tables,nfnetlink-queue\0name=nft_queue\0")
    info = read_modinfo(elf, "kernel/net/netfilter/nft_queue.ko")
    assert info == ModuleInfo(
        "nft_queue",
        "kernel/net/netfilter/nft_queue.ko",
        ("nf_tables", "nfnetlink_queue"),
        ("nft-expr-queue",),
    )


def test_load_order_and_the_guest_module_index() -> None:
    modules = {
        "a": ModuleInfo("a", "a.ko", (), ()),
        "b_c": ModuleInfo("b_c", "b-c.ko", ("a",), ("alias-b", "pci:v*")),
        "d": ModuleInfo("d", "d.ko", ("b_c", "a"), ()),
    }
    assert [m.name for m in load_order(modules, ["d"])] == ["a", "b_c", "d"]
    assert module_index(modules) == (
        "a a a.ko\nb_c b_c a.ko b-c.ko\nb-c b_c a.ko b-c.ko\nalias-b b_c a.ko b-c.ko\n"
        "d d a.ko b-c.ko d.ko\n"
    )
    with pytest.raises(KernelError, match=r"'e' is not in this kernel's modules \(needed by x"):
        load_order({"x": ModuleInfo("x", "x.ko", ("e",), ())}, ["x"])


def test_guest_supervisor_answers_exec_and_refuses_unknown_ops(tmp_path: Path) -> None:
    log = (tmp_path / "agent.log").open("wb")
    agent = Agent(log.fileno())
    done = handle({"op": "exec", "argv": ["sh", "-c", "echo hi; exit 3"]}, agent)
    assert (done["ok"], done["returncode"], done["stdout"]) == (True, 3, "hi\n")
    assert handle({"op": "exec", "argv": []}, agent)["error"].startswith("exec needs argv")
    assert "unknown op 'reboot'" in handle({"op": "reboot"}, agent)["error"]
    status = handle({"op": "status"}, agent)
    assert status["agent"]["alive"] is False
    log.close()


def test_the_warm_python_answers_python_execs_as_a_fresh_interpreter_would(
    tmp_path: Path,
) -> None:
    """`python -c`/`-m` execs of the guest's own interpreter go to a fork of the warm Python
    (`podnet.vmwarm`, started by the first): argv, stdin, output past a pipe's buffer, exit
    codes (sys.exit with a message, an exception, a signal), `-m` running a module as
    __main__, the timeout; the pyroute2 it imported is already there. Other execs, and
    interpreter options, run plainly; a warm Python gone during a call runs it plainly."""
    log = (tmp_path / "agent.log").open("wb")
    agent = Agent(log.fileno())
    warm = WarmPython(sys.executable)
    py = sys.executable

    def run(*args: str, stdin: str = "", timeout: float = 60) -> dict[str, object]:
        request = {"op": "exec", "argv": [py, *args], "stdin": stdin, "timeout": timeout}
        return handle(request, agent, warm)

    try:
        assert warm.proc is None  # started by the first call it serves
        # the first call finds pyroute2 (which every in-guest call imports) and nothing else
        # the warm Python imports: those come after its answer
        probe = "import sys; print('pyroute2' in sys.modules, 'podnet.kernel.qdisc' in sys.modules)"
        assert run("-c", probe)["stdout"] == "True False\n"
        assert run("-c", probe)["stdout"] == "True True\n"
        assert warm.proc is not None
        warm_pid = warm.proc.pid
        code = (
            "import os, sys; print(sys.argv, sys.stdin.read(), 'pyroute2' in sys.modules,"
            " os.getpid() != int(sys.argv[1])); print('x' * 200000, file=sys.stderr)"
        )
        done = run("-c", code, str(warm_pid), "b", stdin="in")
        assert done["ok"] and done["returncode"] == 0, done
        assert done["stdout"] == f"['-c', '{warm_pid}', 'b'] in True True\n"
        assert done["stderr"] == "x" * 200000 + "\n"
        done = run("-c", "import atexit; atexit.register(print, 'at exit'); print('run')")
        assert done["stdout"] == "run\nat exit\n", done
        done = run("-c", "import sys; sys.exit('bad input')")
        assert (done["returncode"], done["stderr"]) == (1, "bad input\n")
        done = run("-c", "raise ValueError('boom')")
        assert done["returncode"] == 1 and "ValueError: boom" in str(done["stderr"])
        assert (
            run("-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")["returncode"] == -9
        )
        done = run("-m", "podnet.trace.guest")  # its usage: argv[0] and __main__ as with -m
        assert (done["returncode"], done["stdout"]) == (2, ""), done
        assert done["stderr"] == "usage: python -m podnet.trace.guest REQUEST\n"
        done = run("-c", "import time; time.sleep(30)", timeout=0.5)
        assert done == {"ok": False, "error": f"{py} did not finish within 0.5 s"}, done
        assert warm.proc is not None and warm.proc.pid == warm_pid  # still the same one
        # not the warm Python's: another program, or interpreter options
        assert not warm.takes(["sh", "-c", "true"]) and not warm.takes([py, "-S", "-c", "1"])
        done = run("-S", "-c", "import sys; print('pyroute2' in sys.modules)")
        assert done["stdout"] == "False\n"
        # gone during a call: the call runs as a plain exec (where this kills nothing), and
        # the next one starts a new warm Python
        code = "import os, sys; 'pyroute2' in sys.modules and os.kill(os.getppid(), 9); print(7)"
        assert run("-c", code)["stdout"] == "7\n"
        assert warm.proc is None
        assert run("-c", "print(6 * 7)")["stdout"] == "42\n"
        assert warm.proc is not None and warm.proc.pid != warm_pid
    finally:
        warm.stop()
        log.close()


def test_a_trace_snapshot_knows_the_vm_nodes_and_their_taps(tmp_path: Path) -> None:
    from podnet.trace.snapshot import NodeLayout, cluster_snapshot, from_json, to_json

    plan = vm_plan(tmp_path)
    snap = cluster_snapshot(plan, api={})
    node3 = plan.node("node3")
    assert snap.nodes[2] == NodeLayout("node3", node3.netns, node3.ip, node3.host_veth)
    assert [n.vm for n in snap.nodes] == [False, False, True]
    assert snap.state_dir == plan.state_dir  # where the VM's control port is
    assert from_json(to_json(snap)) == snap
