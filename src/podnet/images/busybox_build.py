"""busybox as the official image has it: built from source with the upstream configuration.

Debian's busybox-static lacks options the official busybox image has (`wget -T` crashes,
`nc` has no `-u`/`-e`), and tutorials use exactly those. So the built-in images use a busybox
built here once per machine from Debian's source package of busybox (the upstream tarball
in it, without Debian's patches or configuration): `make defconfig`, then static.

How (`ensure_busybox`): the source comes through apt with a private configuration that adds
`deb-src` lines for the machine's own Debian mirror and suite (the machine's apt setup is not
touched); the build runs in a temporary directory and the binary is renamed into
`<root>/<version>/busybox`, so it appears only complete; a flock keeps two agents from
building at once. It takes about a minute on two cores; `scripts/install.sh` does it ahead
(`python -m podnet.images.busybox_build`), otherwise the first pod that needs busybox waits.

When the build cannot run (no compiler, no mirror), `ensure_busybox` returns None and the
images fall back to Debian's busybox-static, saying so in the log.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/var/lib/podnet/busybox")
BUILD_TIMEOUT = 900
DEBIAN_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def deb_src_lines(sources: dict[Path, str]) -> list[str]:
    """`deb-src` lines for the main suites of the machine's Debian `deb` sources (deb822 or
    one-line format), security and updates suites left out."""
    lines: list[str] = []
    for path, text in sources.items():
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                stanza_fields = {
                    k.strip(): v.strip()
                    for k, _, v in (line.partition(":") for line in stanza.splitlines())
                    if not k.startswith("#") and v
                }
                if "deb" not in stanza_fields.get("Types", "").split():
                    continue
                for uri in stanza_fields.get("URIs", "").split():
                    for suite in stanza_fields.get("Suites", "").split():
                        if "-" not in suite:
                            lines.append(f"deb-src {uri} {suite} main")
        else:
            for raw in text.splitlines():
                fields = raw.split("#", 1)[0].split()
                if not fields or fields[0] != "deb":
                    continue
                rest = fields[1:]
                if rest and rest[0].startswith("["):  # [arch=amd64 signed-by=...]
                    while rest and not rest[0].endswith("]"):
                        rest.pop(0)
                    rest = rest[1:]
                if len(rest) >= 2 and "-" not in rest[1]:
                    lines.append(f"deb-src {rest[0]} {rest[1]} main")
    return list(dict.fromkeys(lines))


def built_binary(root: Path = DEFAULT_ROOT) -> Path | None:
    """The busybox built before, if any (the newest version)."""
    found = list(root.glob("*/busybox")) if root.is_dir() else []
    return max(found, key=lambda p: _version_key(p.parent.name)) if found else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


_failed: set[Path] = set()  # roots whose build failed in this process: not retried


def ensure_busybox(root: Path = DEFAULT_ROOT) -> Path | None:
    """The source-built busybox, building it first if needed; None if it cannot be built."""
    existing = built_binary(root)
    if existing is not None or root in _failed:
        return existing
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        existing = built_binary(root)  # another process may have built it meanwhile
        if existing is not None:
            return existing
        try:
            return _build(root)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            _failed.add(root)
            log.warning(
                "could not build busybox from source (%s); the built-in images use Debian's "
                "busybox-static, whose wget -T and nc -u/-e do not work",
                exc,
            )
            return None


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-10:])
        raise subprocess.SubprocessError(f"{' '.join(argv[:3])} failed:\n{tail}")


def _build(root: Path) -> Path:
    sources = {p: p.read_text() for p in DEBIAN_SOURCES if p.is_file()}
    lines = deb_src_lines(sources)
    if not lines:
        raise ValueError("no Debian `deb` source in /etc/apt to take busybox's source from")
    with tempfile.TemporaryDirectory(prefix="podnet-busybox-", dir=root) as tmp:
        work = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial"):
            (work / sub).mkdir(parents=True)
        (work / "sources.list").write_text("\n".join(lines) + "\n")
        apt = [
            "apt-get", "-q",
            "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={work / 'lists'}",
            "-o", f"Dir::Cache={work / 'cache'}",
        ]  # fmt: skip
        _run([*apt, "update"], work)
        _run([*apt, "source", "--download-only", "busybox"], work)
        tarball = next(work.glob("busybox_*.orig.tar.*"), None)
        if tarball is None:
            raise ValueError("apt-get source busybox gave no upstream tarball")
        version = tarball.name.split("_", 1)[1].split(".orig", 1)[0]
        _run(["tar", "-xf", str(tarball)], work)
        src = next(p for p in work.iterdir() if p.is_dir() and p.name.startswith("busybox-"))
        _run(["make", "defconfig"], src)
        config = (src / ".config").read_text()
        (src / ".config").write_text(
            config.replace("# CONFIG_STATIC is not set", "CONFIG_STATIC=y")
        )
        _run(["make", f"-j{os.cpu_count() or 1}", "busybox"], src)
        target = root / version / "busybox"
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(".busybox.tmp")
        shutil.copy2(src / "busybox", staged)
        staged.replace(target)
    log.info("built busybox %s from source: %s", version, target)
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    built = ensure_busybox()
    if built is None:
        return 1
    print(f"podnet: busybox built from source at {built}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
