"""VM nodes, the pure parts: the plan, qemu's command line, the initramfs (scripts, cpio
archive), the kernel facts read from a bzImage and module ELF files, and the guest
supervisor's request handling."""

from __future__ import annotations

import stat
import struct
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
from podnet.vmguest import Agent, handle, parse_vm_env

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


def test_a_trace_snapshot_knows_the_vm_nodes_and_their_taps(tmp_path: Path) -> None:
    from podnet.trace.snapshot import NodeLayout, cluster_snapshot, from_json, to_json

    plan = vm_plan(tmp_path)
    snap = cluster_snapshot(plan, api={})
    node3 = plan.node("node3")
    assert snap.nodes[2] == NodeLayout("node3", node3.netns, node3.ip, node3.host_veth)
    assert [n.vm for n in snap.nodes] == [False, False, True]
    assert snap.state_dir == plan.state_dir  # where the VM's control port is
    assert from_json(to_json(snap)) == snap
