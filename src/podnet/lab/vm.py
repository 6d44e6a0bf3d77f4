"""VM nodes: lab nodes that boot a kernel of their own under qemu (`podnet up --vm-nodes K`).

A namespace node shares the host's kernel; a VM node has its own (Debian's, see
`vmkernel`), so it has what the host's may lack (IP_VS, netem, nft `queue`, dummy links) and
its own conntrack table, as the machines of a real cluster do. Everything else is the same:
the node is on the lab's underlay (a tap on the underlay bridge, `pnv<hash>` like the veths
of namespace nodes, with the node's address inside), and it runs the same `podnet agent` —
the host's Python and podnet, seen through the host's root filesystem, which the guest
mounts read-only (virtiofs when the host has virtiofsd, else 9p) under a tmpfs-backed
overlay for its own state. `vminit` explains the boot, `podnet.vmguest` the supervisor.

What belongs here: the files of a VM node (`VmPaths`: under `<lab>/vms/<node>/`), the
command lines of qemu and virtiofsd (`qemu_argv`, `virtiofsd_argv`, pure), the choice of
accelerator (`probe_accel`: KVM only when a probe guest boots under it within seconds; the
answer is cached per host kernel, qemu and guest kernel, since a hanging probe costs its
whole timeout in CPU), preparing a lab for VM nodes (`prepare`: kernel, initramfs, root
transport, accelerator), booting one (`run_node`, which the lab's supervisor runs as the
node's `agent-<node>` unit through `podnet.lab.vmrun`) and the host's end of its control
port (`VmControl`: run a command in the guest, ask its status).

Invariants:
- Every process is recorded and stopped by recorded pid: qemu as the node's `agent-<node>`
  (the supervisor records it; `run_node` execs qemu in the process it started), virtiofsd
  as `virtiofsd-<node>`; the tap is a host link of the plan, removed with the others.
- Nothing in a VM node writes to the host's filesystem: its root is read-only and its
  output (console, agent log, control answers) comes back over qemu's character devices.
- Paths handed to qemu or the guest contain no whitespace or commas (qemu's option syntax
  and the kernel command line would split them); `prepare` refuses such a state dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import podnet
from podnet import procs
from podnet.kernel import names
from podnet.lab.spec import LabError, LabPlan, NodePlan, agent_argv, load_plan
from podnet.lab.vminit import (
    AGENT_LOG_PORT,
    BUSYBOX,
    CONTROL_PORT,
    PROBE_MARKER,
    ROOT_TAG,
    ROOT_TRANSPORTS,
    VmSettings,
    build_initramfs,
    render_vm_env,
)
from podnet.lab.vmkernel import GuestKernel, KernelError, find_kernel, scan_modules
from podnet.private import private_dir, write_private

QEMU = "qemu-system-x86_64"
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")  # the C virtiofsd of Debian 12's qemu
KVM_DEVICE = Path("/dev/kvm")
ACCEL_CACHE = Path("/var/lib/podnet/vm/accel.json")
PROBE_TIMEOUT = 8.0  # a guest boots to its probe marker in ~1 s under KVM, ~2 s under TCG
CONTROL_TIMEOUT = 30.0
DEFAULT_MEMORY_MIB = 1024
_UNSAFE_PATH = re.compile(r"[\s,]")

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class VmPaths:
    """The files of one VM node, under `<lab>/vms/<node>/` (not under `nodes/`, whose pid
    files `podnet down` stops: the guest's pids mean nothing on the host)."""

    vm_dir: Path

    @classmethod
    def of(cls, plan_state_dir: str, node: str) -> VmPaths:
        return cls(Path(plan_state_dir) / "vms" / node)

    @property
    def console_log(self) -> Path:
        return self.vm_dir / "console.log"

    @property
    def agent_log(self) -> Path:
        return self.vm_dir / "agent.log"

    @property
    def qemu_log(self) -> Path:
        return self.vm_dir / "qemu.log"

    @property
    def env_file(self) -> Path:
        return self.vm_dir / "vm.env"

    @property
    def agent_file(self) -> Path:
        return self.vm_dir / "agent.json"

    @property
    def kubeconfig(self) -> Path:
        return self.vm_dir / "kubeconfig"

    @property
    def control_socket(self) -> Path:
        return self.vm_dir / "control.sock"

    @property
    def control_lock(self) -> Path:
        return self.vm_dir / "control.lock"

    @property
    def virtiofs_socket(self) -> Path:
        return self.vm_dir / "virtiofs.sock"


def node_mac(lab: str, node: str) -> str:
    """A stable, locally administered MAC for a VM node's eth0 (qemu's 52:54:00 prefix)."""
    digest = names.hashed(f"{lab}/{node}", 8).lower().encode()
    tail = int.from_bytes(digest, "big") & 0xFFFFFF
    return "52:54:00:" + ":".join(f"{(tail >> s) & 0xFF:02x}" for s in (16, 8, 0))


@dataclass(frozen=True, slots=True)
class Accel:
    name: str  # kvm | tcg
    reason: str

    def describe(self) -> str:
        what = "KVM" if self.name == "kvm" else "TCG (software emulation)"
        return f"{what}: {self.reason}"


def qemu_argv(
    plan: LabPlan,
    node: NodePlan,
    qemu: str = QEMU,
) -> list[str]:
    """The qemu command line of VM node `node` (pure)."""
    paths = VmPaths.of(plan.state_dir, node.name)
    assert plan.vm_kernel and plan.vm_initramfs, "prepare() fills the lab's VM settings"
    memory = f"{plan.vm_memory}M"
    machine = "pc"
    root: list[str]
    if plan.vm_root == "virtiofs":
        machine += ",memory-backend=mem"
        root = [
            "-object", f"memory-backend-memfd,id=mem,size={memory},share=on",
            "-chardev", f"socket,id=rootfs,path={paths.virtiofs_socket}",
            "-device", f"vhost-user-fs-pci,chardev=rootfs,tag={ROOT_TAG}",
        ]  # fmt: skip
    else:
        root = [
            "-fsdev", "local,id=rootfs,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=rootfs,mount_tag={ROOT_TAG}",
        ]  # fmt: skip
    cmdline = f"console=ttyS0 quiet panic=-1 podnet.root={plan.vm_root} podnet.env={paths.env_file}"
    return [
        qemu,
        "-name", f"podnet-{plan.name}-{node.name}",
        "-machine", machine,
        "-accel", plan.vm_accel,
        "-m", memory,
        "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", plan.vm_kernel,
        "-initrd", plan.vm_initramfs,
        "-append", cmdline,
        "-chardev", f"file,id=console,path={paths.console_log},append=on",
        "-serial", "chardev:console",
        "-device", "virtio-rng-pci",
        "-netdev", f"tap,id=underlay,ifname={node.host_veth},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=underlay,mac={node_mac(plan.name, node.name)}",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=control,path={paths.control_socket},server=on,wait=off",
        "-device", f"virtserialport,chardev=control,name={CONTROL_PORT}",
        "-chardev", f"file,id=agentlog,path={paths.agent_log},append=on",
        "-device", f"virtserialport,chardev=agentlog,name={AGENT_LOG_PORT}",
        *root,
    ]  # fmt: skip


def virtiofsd_argv(socket_path: Path, virtiofsd: Path = VIRTIOFSD) -> list[str]:
    """virtiofsd serving the host's root to one VM (the guest mounts it read-only).

    cache=always: the guest caches names and attributes without asking again, which is
    what makes Python's imports fast under emulation; a file the host changes while the
    VM runs may be seen late (the lab writes what a node reads before it boots).
    """
    return [
        str(virtiofsd), f"--socket-path={socket_path}", "-o", "source=/",
        "-o", "cache=always", "-o", "sandbox=chroot",
    ]  # fmt: skip


# -- preparing a lab ----------------------------------------------------------------------------


def qemu_binary() -> str:
    found = shutil.which(QEMU)
    if found is None:
        raise LabError(
            f"VM nodes need {QEMU}: run scripts/install.sh or `apt-get install qemu-system-x86`"
        )
    return found


def check_host(kernel_path: Path | None) -> GuestKernel:
    """Fail early, before the lab makes anything, if VM nodes cannot boot here."""
    qemu_binary()
    try:
        return find_kernel(kernel_path)
    except KernelError as exc:
        raise LabError(str(exc)) from None


def choose_root(wanted: str | None) -> str:
    if wanted is not None and wanted not in ROOT_TRANSPORTS:
        raise LabError(f"unknown VM root transport {wanted!r}; valid: {', '.join(ROOT_TRANSPORTS)}")
    if wanted == "virtiofs" and not VIRTIOFSD.is_file():
        raise LabError(f"--vm-root virtiofs needs {VIRTIOFSD} (Debian: qemu-system-common)")
    if wanted is not None:
        return wanted
    return "virtiofs" if VIRTIOFSD.is_file() else "9p"


def _qemu_version(qemu: str) -> str:
    done = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout.splitlines() or ["unknown"])[0]


def probe_accel(
    kernel_image: str,
    initramfs: str,
    release: str,
    cache: Path = ACCEL_CACHE,
    timeout: float = PROBE_TIMEOUT,
) -> Accel:
    """KVM if a probe guest boots under it within `timeout`, else TCG (cached per host)."""
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return Accel("tcg", f"{KVM_DEVICE} is not available")
    qemu = qemu_binary()
    key = f"{os.uname().release} | {_qemu_version(qemu)} | guest {release}"
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(cache.read_text()).get(key)
        if isinstance(known, dict) and known.get("accel") in ("kvm", "tcg"):
            return Accel(known["accel"], f"{known['reason']} (probed {known['when']}; {cache})")
    accel = _probe_kvm(qemu, kernel_image, initramfs, timeout)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(cache.read_text())
        except (OSError, ValueError):
            entries = {}
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
        entries[key] = {"accel": accel.name, "reason": accel.reason, "when": when}
        cache.write_text(json.dumps(entries, indent=2) + "\n")
    return accel


def _probe_kvm(qemu: str, kernel_image: str, initramfs: str, timeout: float) -> Accel:
    argv = [
        qemu, "-accel", "kvm", "-machine", "pc", "-m", "256", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", kernel_image, "-initrd", initramfs,
        "-append", "console=ttyS0 quiet panic=-1 podnet.probe",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while PROBE_MARKER.encode() not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                output += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    if PROBE_MARKER.encode() in output:
        return Accel("kvm", "a probe guest booted under KVM")
    last = output.decode(errors="replace").strip().splitlines()[-1:] or [""]
    if proc.returncode not in (0, -9) and last[0]:
        return Accel("tcg", f"qemu -accel kvm failed: {last[0]}")
    return Accel("tcg", f"a probe guest did not boot under KVM within {timeout:g} s")


def precompile(progress: Progress) -> None:
    """Byte-compile podnet and its dependencies ahead: the guest's root is read-only, and
    compiling every import on every start costs tens of seconds under emulation."""
    import sysconfig

    dirs = [str(Path(podnet.__file__).parent), sysconfig.get_paths()["purelib"]]
    done = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *dirs],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        progress(f"byte-compiling podnet for VM nodes reported problems: {done.stdout[-300:]}")


def prepare(
    plan: LabPlan,
    kernel: GuestKernel,
    progress: Progress,
    root: str | None = None,
) -> LabPlan:
    """The lab's VM settings: kernel, initramfs (built into `<lab>/vms/`), root transport and
    accelerator; returns the plan with them (the caller saves it)."""
    from podnet.images.builtin import find_busybox

    if _UNSAFE_PATH.search(plan.state_dir) or _UNSAFE_PATH.search(sys.executable):
        raise LabError(
            f"VM nodes need a state dir and a Python path without spaces or commas "
            f"({plan.state_dir}, {sys.executable}): qemu's options would split them"
        )
    vms = private_dir(Path(plan.state_dir) / "vms")
    initramfs = vms / "initramfs.gz"
    try:
        modules = scan_modules(kernel.modules)
        write_private(initramfs, build_initramfs(kernel, find_busybox(), modules))
    except (KernelError, OSError) as exc:
        raise LabError(f"building the VM nodes' initramfs from {kernel.modules}: {exc}") from exc
    transport = choose_root(root)
    accel = probe_accel(str(kernel.image), str(initramfs), kernel.release)
    progress(
        f"VM nodes: kernel {kernel.release} ({kernel.image}), root over {transport}, "
        f"{accel.describe()}"
    )
    precompile(progress)
    return replace(
        plan,
        vm_kernel=str(kernel.image),
        vm_release=kernel.release,
        vm_initramfs=str(initramfs),
        vm_root=transport,
        vm_accel=accel.name,
    )


# -- one VM -------------------------------------------------------------------------------------


def write_agent_file(plan: LabPlan, node: NodePlan, python: str) -> list[str]:
    argv = agent_argv(plan, node, python)
    paths = VmPaths.of(plan.state_dir, node.name)
    write_private(paths.agent_file, json.dumps({"argv": argv, "env": {}}).encode())
    return argv


def runner_argv(plan: LabPlan, node: NodePlan, python: str) -> list[str]:
    """The supervisor's unit for VM node `node`: `run_node` in a fresh Python, which execs
    qemu (so the unit's pid is qemu's)."""
    return [python, "-m", "podnet.lab.vmrun", plan.state_dir, node.name]


def run_node(state_dir: Path, node_name: str, python: str) -> None:
    """Boot VM node `node_name` of the lab in `state_dir` (its tap exists) by exec'ing qemu:
    the node's settings and agent command line are written from the plan as it is now,
    virtiofsd is started and recorded first when the root goes over virtiofs."""
    plan = load_plan(state_dir)
    if plan is None:
        raise LabError(f"{state_dir} holds no lab plan")
    node = plan.node(node_name)
    paths = VmPaths.of(plan.state_dir, node.name)
    private_dir(paths.vm_dir)
    network = plan.subnet.split("/")[1]
    settings = VmSettings(
        node_name=node.name,
        node_cidr=f"{node.ip}/{network}",
        gateway=plan.host_ip,
        state_dir=node.state_dir,
        agent_file=str(paths.agent_file),
        python=python,
    )
    write_private(paths.env_file, render_vm_env(settings).encode())
    write_agent_file(plan, node, python)
    for stale in (paths.control_socket, paths.virtiofs_socket):
        stale.unlink(missing_ok=True)
    qemu = qemu_argv(plan, node, qemu_binary())
    if plan.vm_root == "virtiofs":
        _start_virtiofsd(plan, node, paths)
    sys.stdout.flush()
    os.execv(qemu[0], qemu)  # noqa: S606 (qemu takes over this process: the unit)


def _start_virtiofsd(plan: LabPlan, node: NodePlan, paths: VmPaths) -> None:
    """virtiofsd for one VM, recorded as `virtiofsd-<node>`; it exits when its VM does (its
    one client hangs up), and `podnet down` stops it by its record otherwise."""
    with (paths.vm_dir / "virtiofsd.log").open("ab") as log:
        fs = subprocess.Popen(
            virtiofsd_argv(paths.virtiofs_socket),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    procs.record(Path(plan.pids_dir), f"virtiofsd-{node.name}", fs.pid)
    deadline = time.monotonic() + 10
    while not paths.virtiofs_socket.exists():
        if fs.poll() is not None or time.monotonic() > deadline:
            raise LabError(
                f"virtiofsd for {node.name} did not start; see {paths.vm_dir}/virtiofsd.log"
            )
        time.sleep(0.05)


# -- the control port ---------------------------------------------------------------------------


class VmError(Exception):
    """The guest did not answer, or answered with an error; the message says which."""


class VmControl:
    """The host's end of a VM node's control port (see `podnet.vmguest` for the protocol).

    One request at a time per VM (a flock on `control.lock`): the port is one byte stream.
    """

    def __init__(self, plan: LabPlan, node: str) -> None:
        self.node = node
        self.paths = VmPaths.of(plan.state_dir, node)

    @classmethod
    def at(cls, state_dir: str, node: str) -> VmControl:
        """The control port of VM node `node` of the lab in `state_dir`, without its plan."""
        control = cls.__new__(cls)
        control.node, control.paths = node, VmPaths.of(state_dir, node)
        return control

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self.paths.control_lock.open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield

    def request(self, op: str, wait: float = CONTROL_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Send one request and return its answer; `wait`: seconds until giving up."""
        rid = secrets.token_hex(8)
        payload = json.dumps({"id": rid, "op": op, **fields}).encode() + b"\n"
        deadline = time.monotonic() + wait
        with self._locked(), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock.connect(str(self.paths.control_socket))
                sock.sendall(payload)
                buffer = b""
                while True:
                    while b"\n" not in buffer:
                        sock.settimeout(max(0.01, deadline - time.monotonic()))
                        chunk = sock.recv(1 << 16)
                        if not chunk:
                            raise VmError(f"the VM of {self.node} closed its control port")
                        buffer += chunk
                    line, buffer = buffer.split(b"\n", 1)
                    with contextlib.suppress(ValueError):
                        answer = json.loads(line)
                        if isinstance(answer, dict) and answer.get("id") == rid:
                            break
            except TimeoutError:
                raise VmError(
                    f"the VM of {self.node} did not answer {op!r} within {wait:g} s "
                    f"(still booting? see {self.paths.console_log})"
                ) from None
            except OSError as exc:
                raise VmError(
                    f"cannot reach the control port of {self.node}'s VM ({exc.strerror}); "
                    f"is it running? see {self.paths.qemu_log}"
                ) from None
        if not answer.get("ok"):
            raise VmError(f"{self.node}: {answer.get('error')}")
        return answer

    def run(
        self, argv: list[str], stdin: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the guest (as root, its root namespace); like `subprocess.run`."""
        answer = self.request("exec", timeout + 10, argv=argv, stdin=stdin, timeout=timeout)
        return subprocess.CompletedProcess(
            argv, int(answer["returncode"]), str(answer["stdout"]), str(answer["stderr"])
        )

    def status(self, wait: float = 5.0) -> dict[str, Any]:
        return self.request("status", wait)


def wait_until_dns_answers(
    plan: LabPlan, node: NodePlan, server: str, name: str, expected: str, deadline: float
) -> None:
    """Until `server` answers `name` with `expected`, asked from inside VM node `node` (the
    lab's DNS check when no node is a namespace the host can enter)."""
    control = VmControl(plan, node.name)
    problem = "not asked yet"
    while time.monotonic() < deadline:
        try:
            done = control.run([BUSYBOX, "nslookup", "-type=a", name, server], timeout=5)
            if re.search(rf"^Address:\s+{re.escape(expected)}$", done.stdout, re.MULTILINE):
                return
            lines = (done.stdout + done.stderr).strip().splitlines()
            problem = lines[-1] if lines else "no answer"
        except VmError as exc:
            problem = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"cluster DNS {server} did not answer {name} from {node.name}: {problem}")
