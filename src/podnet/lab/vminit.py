"""The initramfs a VM node boots, rendered: its scripts as text, the archive as bytes.

What belongs here, all pure: the scripts (`render_init`, `render_boot`, `render_modprobe`,
`render_supervise`, `INITTAB`), the node's settings file (`render_vm_env`) and the cpio
"newc" archive writer (`newc_archive`); `build_initramfs` assembles them with a static
busybox and the modules needed before the host's root is mounted.

How a VM node boots (each step's failure prints `podnet-vm: FAILED: <why>` on the serial
console, the lab's `vms/<node>/console.log`, and powers the VM off):

    /init (initramfs)   mount proc/sys/dev; insmod the early modules (virtio, the root's
                        transport, overlay); mount the host's root read-only at /lower
                        (virtiofs, or 9p); a tmpfs-backed overlay over it at /root; read
                        the node's settings from vms/<node>/vm.env through it; copy the
                        podnet-vm files to /root/run/podnet-vm; switch_root to busybox init
    boot (sysinit)      hostname; lo and eth0 (the tap on the lab's underlay bridge) with the
                        node's address and the default route via the host; ip_forward;
                        the kernel's module loader set to podnet's `modprobe`; the modules
                        the agent needs loaded up front; a tmpfs at the agent's state dir
                        (containers' overlay upper dirs cannot live on the root overlay)
    supervise (respawn) the guest supervisor (`podnet.vmguest`, the host's Python): it
                        starts `podnet agent` and answers the host on the control port

Module loading: the kernel requests modules by name or alias (`nft-expr-queue`,
`ip_set_hash:ip,port`) through /proc/sys/kernel/modprobe. The guest has no kmod, and the
host's modules directory has no modules.dep (the package's postinst would have made it), so
the initramfs carries `modules.index` (from `vmkernel.module_index`: each key with its load
order) and `modprobe` is a busybox-sh loader that insmods those paths from the kernel's
modules directory, which the guest sees at its host path.

Invariants: every value that reaches a script is either a constant here or shell-quoted
(`shlex.quote`); host paths a VM node uses contain no whitespace (checked by the lab).
"""

from __future__ import annotations

import gzip
import shlex
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from podnet.lab.vmkernel import GuestKernel, ModuleInfo, load_order, module_index

RUN_DIR = "/run/podnet-vm"  # in the guest: busybox, the scripts, the module index
BUSYBOX = f"{RUN_DIR}/busybox"
CONTROL_PORT = "podnet.ctl"  # virtio-serial port names
AGENT_LOG_PORT = "podnet.agentlog"
ROOT_TAG = "hostroot"  # virtiofs tag / 9p mount tag of the host's root
PROBE_MARKER = "podnet-vm: probe-ok"
FAILED_MARKER = "podnet-vm: FAILED"
ROOT_TRANSPORTS = ("virtiofs", "9p")

# before the root is mounted: PCI virtio, entropy (Python's getrandom must not block),
# both root transports, the overlay, the control and log ports
EARLY_MODULES = (
    "virtio_pci", "virtio_rng", "virtio_console", "virtio_net",
    "virtiofs", "9pnet_virtio", "9p", "overlay",
)  # fmt: skip
# loaded by `boot` before the agent starts: what podnet checks for rather than asks for
# (ipvs mode reads /proc/net/ip_vs; flannel's udp backend opens /dev/net/tun, whose device
# node only exists once tun is loaded), and br_netfilter, which the host has loaded too
AGENT_MODULES = (
    "br_netfilter", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "tun", "overlay",
    "nf_conntrack",
)  # fmt: skip

INITTAB = (
    f"::sysinit:{BUSYBOX} sh {RUN_DIR}/boot\n"
    f"::respawn:{RUN_DIR}/supervise\n"
    f"::shutdown:{BUSYBOX} sync\n"
)


def render_init(early: Sequence[str]) -> str:
    """The initramfs's /init; `early` are the module files in /modules, in load order."""
    modules = " ".join(shlex.quote(m) for m in early)
    return f"""#!/bin/busybox sh
# podnet VM node: /init of the initramfs (rendered by podnet.lab.vminit, which explains it)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
die() {{ echo "{FAILED_MARKER}: $*"; poweroff -f; }}
env_file= root=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    podnet.probe) echo "{PROBE_MARKER}"; poweroff -f ;;
    podnet.env=*) env_file="${{arg#podnet.env=}}" ;;
    podnet.root=*) root="${{arg#podnet.root=}}" ;;
  esac
done
for m in {modules}; do insmod "/modules/$m" || die "insmod $m"; done
mkdir -p /lower /rw /root
case "$root" in
  virtiofs) mount -t virtiofs -o ro {ROOT_TAG} /lower ;;
  9p) mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose {ROOT_TAG} /lower ;;
  *) false ;;
esac || die "mounting the host's root over ${{root:-nothing}}"
[ -r "/lower$env_file" ] || die "the node's settings ${{env_file:-(podnet.env=)}} are not readable"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "tmpfs for the overlay"
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /root \\
  || die "the overlay over the host's root"
for d in proc sys dev; do mount --move "/$d" "/root/$d" || die "moving /$d"; done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /root/run || die "tmpfs on /run"
mkdir -p /root{RUN_DIR} /root/etc
cp /bin/busybox /podnet/* /root{RUN_DIR}/ || die "copying the podnet-vm files"
ln -s "$env_file" /root{RUN_DIR}/vm.env
cp /podnet/inittab /root/etc/inittab
exec switch_root /root {BUSYBOX} init
"""


def render_boot() -> str:
    """`boot`, run once by busybox init in the final root (sysinit)."""
    modules = " ".join(AGENT_MODULES)
    return f"""#!{BUSYBOX} sh
# podnet VM node: sysinit (rendered by podnet.lab.vminit, which explains it)
B={BUSYBOX}
die() {{ echo "{FAILED_MARKER}: $*"; $B poweroff -f; }}
. {RUN_DIR}/vm.env || die "reading {RUN_DIR}/vm.env"
$B hostname "$NODE_NAME"
$B ip link set lo up
$B ip addr add "$NODE_CIDR" dev eth0 && $B ip link set eth0 up \\
  && $B ip route add default via "$GATEWAY" || die "configuring eth0 with $NODE_CIDR"
echo 1 > /proc/sys/net/ipv4/ip_forward
echo {RUN_DIR}/modprobe > /proc/sys/kernel/modprobe
{RUN_DIR}/modprobe {modules} || die "loading {modules}"
$B mkdir -p "$STATE_DIR" && $B mount -t tmpfs -o mode=0700 tmpfs "$STATE_DIR" \\
  || die "tmpfs on $STATE_DIR"
echo "podnet-vm: $NODE_NAME booted ($($B uname -r)), $NODE_CIDR"
"""


def render_modprobe(modules_dir: str) -> str:
    """The kernel's module loader in the guest (`modprobe [-q] [--] NAME...`)."""
    return f"""#!{BUSYBOX} sh
# podnet VM node: loads modules by name or alias from modules.index, dependencies first
# (rendered by podnet.lab.vminit, which explains it)
B={BUSYBOX}
MODULES_DIR={shlex.quote(modules_dir)}
load() {{
  line=$($B awk -v key="$1" '$1 == key {{ print; exit }}' {RUN_DIR}/modules.index)
  [ -n "$line" ] || return 1
  set -- $line
  module=$2
  shift 2
  for path; do
    name=$($B basename "$path" .ko | $B tr - _)
    [ -d "/sys/module/$name" ] || $B insmod "$MODULES_DIR/$path" 2>/dev/null
  done
  [ -d "/sys/module/$module" ]
}}
status=0
for arg; do
  case "$arg" in
    -*) ;;
    *) load "$arg" || {{ echo "modprobe: no module $arg" >&2; status=1; }} ;;
  esac
done
exit $status
"""


def render_supervise() -> str:
    """What busybox init respawns: the guest supervisor, on the host's Python."""
    return f"""#!{BUSYBOX} sh
# podnet VM node: the guest supervisor (rendered by podnet.lab.vminit, which explains it)
. {RUN_DIR}/vm.env
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export PYTHONDONTWRITEBYTECODE=1
exec "$PYTHON" -m podnet.vmguest {RUN_DIR}/vm.env
"""


@dataclass(frozen=True, slots=True)
class VmSettings:
    """One VM node's settings, as `boot` and the guest supervisor read them (vm.env)."""

    node_name: str
    node_cidr: str  # 172.31.N.(10+i)/24
    gateway: str  # the host's end of the underlay
    state_dir: str  # the agent's --state-dir: a tmpfs in the guest
    agent_file: str  # JSON {"argv": [...], "env": {...}} the supervisor starts the agent with
    python: str


def render_vm_env(settings: VmSettings) -> str:
    values = {
        "NODE_NAME": settings.node_name,
        "NODE_CIDR": settings.node_cidr,
        "GATEWAY": settings.gateway,
        "STATE_DIR": settings.state_dir,
        "AGENT_FILE": settings.agent_file,
        "PYTHON": settings.python,
        "CONTROL_PORT": CONTROL_PORT,
        "AGENT_LOG_PORT": AGENT_LOG_PORT,
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


# -- cpio (newc) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # inside the archive, without a leading /
    mode: int  # including the file type bits
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # a device node's major, minor


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def regular(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def newc_archive(entries: Iterable[Entry]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as its initramfs."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    def member(ino: int, entry: Entry) -> None:
        name = entry.path.encode() + b"\0"
        fields = (
            ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0, len(entry.data),
            0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )  # fmt: skip
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        pad()
        out.extend(entry.data)
        pad()

    for ino, entry in enumerate(entries, start=1):
        member(ino, entry)
    member(0, Entry("TRAILER!!!", 0))
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def initramfs_entries(
    busybox: bytes,
    early: Sequence[ModuleInfo],
    module_files: Mapping[str, bytes],
    index: str,
    modules_dir: str,
) -> list[Entry]:
    """Every member of the initramfs; `module_files` maps an early module's path to its bytes."""
    names = [Path(m.path).name for m in early]
    entries = [
        *(directory(d) for d in ("bin", "dev", "proc", "sys", "modules", "podnet")),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        regular("bin/busybox", busybox, executable=True),
        regular("init", render_init(names).encode(), executable=True),
        regular("podnet/boot", render_boot().encode(), executable=True),
        regular("podnet/modprobe", render_modprobe(modules_dir).encode(), executable=True),
        regular("podnet/supervise", render_supervise().encode(), executable=True),
        regular("podnet/inittab", INITTAB.encode()),
        regular("podnet/modules.index", index.encode()),
    ]
    entries += [regular(f"modules/{Path(m.path).name}", module_files[m.path]) for m in early]
    return entries


def build_initramfs(kernel: GuestKernel, busybox: Path, modules: Mapping[str, ModuleInfo]) -> bytes:
    """The gzip-compressed initramfs for `kernel` (`modules`: `vmkernel.scan_modules`)."""
    early = load_order(modules, EARLY_MODULES)
    files = {m.path: (kernel.modules / m.path).read_bytes() for m in early}
    entries = initramfs_entries(
        busybox.read_bytes(), early, files, module_index(modules), str(kernel.modules)
    )
    return gzip.compress(newc_archive(entries), compresslevel=1, mtime=0)
