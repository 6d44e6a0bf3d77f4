"""The kernel a VM node boots: Debian's, taken from its package without installing it.

What belongs here: finding a guest kernel (`find_kernel`: the newest under `KERNEL_ROOT`, or
the tree or image `podnet up --vm-kernel PATH` names), installing Debian's `linux-image-amd64`
kernel into the cache (`install_debian_kernel`, run by `scripts/install.sh` as
`podnet vm-kernel`), and reading the facts the initramfs needs from the kernel's
own files: the release string in a bzImage header (`bzimage_release`), the uncompressed
kernel inside it (`bzimage_payload`), and each module's dependencies and aliases from its
`.modinfo` ELF section (`read_modinfo`), from which `module_index` resolves what to load, in
order, for a module name or alias.

Layout of the cache (one directory per kernel release, renamed into place complete):

    /var/lib/podnet/vm/kernels/<release>/
        boot/vmlinuz-<release>      the package's compressed kernel
        boot/vmlinux-<release>      the same kernel uncompressed: qemu boots this ELF through
                                    its PVH entry, skipping the in-guest xz decompression
                                    that costs ~3 s under software emulation
        lib/modules/<release>/...   the package's modules, untouched

Nothing here installs the kernel as the host's: the package is fetched with `apt-get
download` and unpacked with `dpkg-deb -x`, so dpkg's database and /boot stay as they were.

Invariants: parsing is pure (bytes in, values out); a module's load order lists every
dependency before the module that needs it; an alias with shell wildcards (device aliases,
matched by udev, never requested by name) is not indexed.
"""

from __future__ import annotations

import fcntl
import gzip
import lzma
import re
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

KERNEL_ROOT = Path("/var/lib/podnet/vm/kernels")
DEBIAN_PACKAGE = "linux-image-amd64"
APT_TIMEOUT = 600

_SETUP_HEADER_MAGIC = b"HdrS"  # at offset 0x202 of every bzImage (x86 boot protocol)
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ELF_MAGIC = b"\x7fELF"


class KernelError(Exception):
    """No usable guest kernel; the message says what is missing and how to get it."""


@dataclass(frozen=True, slots=True)
class GuestKernel:
    release: str  # `uname -r` inside the guest, e.g. 6.1.0-57-amd64
    image: Path  # what qemu boots: vmlinux (ELF, PVH entry) when there is one, else bzImage
    modules: Path  # lib/modules/<release>


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    name: str  # the module's name as the kernel knows it (dashes become underscores)
    path: str  # relative to the release's modules directory: kernel/net/.../x.ko
    depends: tuple[str, ...]
    aliases: tuple[str, ...]


# -- bzImage ------------------------------------------------------------------------------------


def bzimage_release(image: bytes) -> str:
    """The kernel release a bzImage announces (its setup header's kernel_version string)."""
    if image[0x202:0x206] != _SETUP_HEADER_MAGIC:
        raise KernelError("not a bzImage: no x86 setup header (HdrS at 0x202)")
    (pointer,) = struct.unpack_from("<H", image, 0x20E)
    start = pointer + 0x200
    version = image[start : start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    release = version.split(" ", 1)[0]
    if not release:
        raise KernelError("the bzImage's setup header has no kernel version string")
    return release


def bzimage_payload(image: bytes) -> bytes | None:
    """The uncompressed kernel (an ELF vmlinux) inside a bzImage compressed with xz or gzip;
    None for other compressions (the bzImage itself then boots, only slower)."""
    for magic, opener in ((_XZ_MAGIC, "xz"), (_GZIP_MAGIC, "gzip")):
        start = image.find(magic)
        while start != -1:
            try:
                if opener == "xz":
                    out = lzma.LZMADecompressor().decompress(image[start:])
                else:
                    out = gzip.GzipFile(fileobj=_Reader(image[start:])).read()
            except (lzma.LZMAError, OSError, EOFError):
                out = b""
            if out.startswith(_ELF_MAGIC):
                return out
            start = image.find(magic, start + 1)
    return None


class _Reader:
    """Enough of a file for GzipFile over bytes with trailing garbage after the stream."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk = self.data[self.pos : end]
        self.pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.data)}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos


# -- modules ------------------------------------------------------------------------------------


def _modinfo_section(elf: bytes) -> bytes:
    """The bytes of the `.modinfo` section of a 64-bit little-endian ELF object."""
    if elf[:4] != _ELF_MAGIC or elf[4] != 2 or elf[5] != 1:
        raise KernelError("not a 64-bit little-endian ELF module")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        return name, offset, size

    _, names_at, names_size = section(shstrndx)
    names = elf[names_at : names_at + names_size]
    for i in range(shnum):
        name_at, offset, size = section(i)
        if names[name_at : names.index(b"\0", name_at)] == b".modinfo":
            return elf[offset : offset + size]
    raise KernelError("the module has no .modinfo section")


def read_modinfo(elf: bytes, path: str) -> ModuleInfo:
    """A module's name, dependencies and aliases from its `.modinfo` section."""
    fields: dict[str, list[str]] = {}
    for entry in _modinfo_section(elf).split(b"\0"):
        key, sep, value = entry.decode("utf-8", "replace").partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    name = (fields.get("name") or [Path(path).name.removesuffix(".ko")])[0].replace("-", "_")
    depends = tuple(
        d.replace("-", "_") for d in ",".join(fields.get("depends", [])).split(",") if d
    )
    return ModuleInfo(name, path, depends, tuple(fields.get("alias", ())))


def scan_modules(modules: Path) -> dict[str, ModuleInfo]:
    """Every module under a release's modules directory, by name."""
    found: dict[str, ModuleInfo] = {}
    for ko in sorted(modules.rglob("*.ko")):
        rel = str(ko.relative_to(modules))
        info = read_modinfo(ko.read_bytes(), rel)
        found.setdefault(info.name, info)
    return found


def load_order(modules: Mapping[str, ModuleInfo], wanted: Iterable[str]) -> list[ModuleInfo]:
    """`wanted` (module names) and everything they depend on, dependencies first."""
    order: list[ModuleInfo] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        info = modules.get(key)
        if info is None:
            via = f" (needed by {' -> '.join(chain)})" if chain else ""
            raise KernelError(f"kernel module {key!r} is not in this kernel's modules{via}")
        seen.add(key)
        for dep in info.depends:
            visit(dep, (*chain, key))
        order.append(info)

    for name in wanted:
        visit(name, ())
    return order


_WILDCARD = re.compile(r"[*?\[]")


def module_index(modules: Mapping[str, ModuleInfo]) -> str:
    """What the guest's module loader reads: one line per module name and per literal alias,
    `<name-or-alias> <module> <path> <path> ...`, the paths in load order.

    The kernel asks for modules by name (`ip_vs_rr`, `sch_netem`) or by alias
    (`nft-expr-queue`, `net-pf-16-proto-16-family-IPVS`, `ip_set_hash:ip,port`); both are keys.
    A name is also listed with dashes, as modprobe accepts either spelling.
    """
    lines: dict[str, str] = {}
    for name in sorted(modules):
        info = modules[name]
        paths = " ".join(m.path for m in load_order(modules, [name]))
        keys = [name, name.replace("_", "-"), *info.aliases]
        for key in keys:
            if _WILDCARD.search(key) or " " in key or key in lines:
                continue
            lines[key] = f"{key} {name} {paths}"
    return "".join(line + "\n" for line in lines.values())


# -- finding a kernel ---------------------------------------------------------------------------


def _release_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: [int(n) if n.isdigit() else n for n in re.split(r"(\d+)", p.name)],
    )


def kernel_in_tree(tree: Path) -> GuestKernel:
    """The kernel of an unpacked kernel package: `<tree>/boot/vmlinuz-*` and its modules."""
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if not images:
        raise KernelError(f"{tree} holds no boot/vmlinuz-* (an unpacked kernel package)")
    return kernel_from_image(images[-1])


def kernel_from_image(image: Path) -> GuestKernel:
    """The kernel of a bzImage file, with its modules beside it: the package layout
    (`<tree>/boot/vmlinuz-R` with `<tree>/lib/modules/R`), else `/lib/modules/R`."""
    try:
        release = bzimage_release(image.read_bytes()[:0x10000])
    except OSError as exc:
        raise KernelError(f"cannot read the kernel image {image}: {exc.strerror}") from None
    except KernelError as exc:
        raise KernelError(f"{image}: {exc}") from None
    candidates = [image.parent.parent / "lib" / "modules" / release, Path("/lib/modules") / release]
    modules = next((c for c in candidates if c.is_dir()), None)
    if modules is None:
        raise KernelError(
            f"the modules of kernel {release} ({image}) are in neither "
            f"{candidates[0]} nor {candidates[1]}; VM nodes load ip_vs, 9p, virtio and more "
            "from there"
        )
    vmlinux = image.with_name(image.name.replace("vmlinuz", "vmlinux", 1))
    boots = vmlinux if vmlinux != image and vmlinux.is_file() else image
    return GuestKernel(release, boots, modules)


def find_kernel(path: Path | None = None, root: Path = KERNEL_ROOT) -> GuestKernel:
    """`path` (an unpacked kernel package or a bzImage), else the newest kernel in the cache."""
    if path is not None:
        if path.is_dir():
            return kernel_in_tree(path)
        if path.is_file():
            return kernel_from_image(path)
        raise KernelError(f"--vm-kernel {path}: no such file or directory")
    trees = _release_dirs(root)
    if not trees:
        raise KernelError(
            f"no kernel for VM nodes in {root}: run scripts/install.sh (or "
            "`podnet vm-kernel`), which unpacks Debian's linux-image-amd64 there "
            "without installing it, or pass --vm-kernel PATH"
        )
    return kernel_in_tree(trees[-1])


# -- installing Debian's kernel -----------------------------------------------------------------


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise KernelError(f"{' '.join(argv[:3])} failed:\n{tail}")
    return done.stdout


def debian_kernel_package(meta: str = DEBIAN_PACKAGE) -> str:
    """The versioned package the meta package depends on (linux-image-6.1.0-57-amd64)."""
    out = _run(["apt-cache", "depends", meta], Path("/"))
    for line in out.splitlines():
        kind, _, package = line.strip().partition(": ")
        if kind == "Depends" and package.startswith("linux-image-"):
            return package
    raise KernelError(f"`apt-cache depends {meta}` names no linux-image package")


def install_debian_kernel(root: Path = KERNEL_ROOT, meta: str = DEBIAN_PACKAGE) -> GuestKernel:
    """Unpack Debian's current kernel package into `root/<release>` (once; idempotent)."""
    package = debian_kernel_package(meta)
    release = package.removeprefix("linux-image-")
    target = root / release
    if target.is_dir():
        return kernel_in_tree(target)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if target.is_dir():
            return kernel_in_tree(target)
        with tempfile.TemporaryDirectory(prefix=".unpack-", dir=root) as tmp:
            work = Path(tmp)
            _run(["apt-get", "download", "-q", package], work)
            deb = next(work.glob("*.deb"), None)
            if deb is None:
                raise KernelError(f"apt-get download {package} left no .deb")
            tree = work / "tree"
            _run(["dpkg-deb", "-x", str(deb), str(tree)], work)
            kernel = kernel_in_tree(tree)
            payload = bzimage_payload(kernel.image.read_bytes())
            if payload is not None:
                vmlinux = kernel.image.with_name(f"vmlinux-{kernel.release}")
                vmlinux.write_bytes(payload)
            tree.rename(target)
    return kernel_in_tree(target)
