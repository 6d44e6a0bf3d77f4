"""Writing a volume's files so a reader never sees a half-updated set (upstream `AtomicWriter`).

What belongs here: `write_volume(directory, files)`, upstream's layout and order:

    <directory>/..2026_01_02_03_04_05.123456789/   this version's files (with their modes)
    <directory>/..data -> ..2026_01_02_03_04_05.123456789
    <directory>/token -> ..data/token              one link per top-level entry

1. paths are checked (relative, no `..`) — `volumes.py` already did, this is the last guard;
2. when the files equal what `..data` holds, nothing is written;
3. otherwise a new timestamped directory gets the files, a `..data_tmp` link to it is renamed
   over `..data` (the one atomic step: readers following `..data` see the old set or the new
   one), the top-level links are made, and entries no longer in the set and older versions
   (also any a crash left) are removed.
Readers in the container open `token` -> `..data/token`, so a file is never read half-written
and a set of files (token, ca.crt, namespace) always comes from one version.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from podnet.agent.kubelet.volumes import VolumeFile, inside_volume

DATA_DIR = "..data"
DATA_TMP = "..data_tmp"


def _timestamp_dir(directory: Path) -> Path:
    now = time.time_ns()
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(now // 1_000_000_000))
    for attempt in range(100):
        candidate = directory / f"..{stamp}.{now % 1_000_000_000:09d}{'_' * attempt}"
        try:
            candidate.mkdir(mode=0o755)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not make a new version directory in {directory}")


def current_files(directory: Path) -> dict[str, VolumeFile] | None:
    """What `..data` holds now (None: nothing written yet)."""
    data = directory / DATA_DIR
    if not data.is_symlink():
        return None
    root = directory / data.readlink()
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = VolumeFile(
                path.read_bytes(), path.stat().st_mode & 0o777
            )
    return out


def write_volume(directory: Path, files: Mapping[str, VolumeFile]) -> bool:
    """Make `directory` hold exactly `files`; True when something changed."""
    for path in files:
        if not inside_volume(path):
            raise ValueError(f"volume file path {path!r} must be relative without '..'")
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    wanted = {PurePosixPath(p).as_posix(): f for p, f in files.items()}
    if current_files(directory) == wanted:
        return False
    version = _timestamp_dir(directory)
    for path, file in wanted.items():
        target = version / path
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode)
        try:
            os.fchmod(fd, file.mode)
            view = memoryview(file.data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    tmp = directory / DATA_TMP
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.name)
    tmp.replace(directory / DATA_DIR)
    top = {PurePosixPath(p).parts[0] for p in wanted}
    for name in top:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"{DATA_DIR}/{name}")
    for entry in directory.iterdir():
        if entry.name in (DATA_DIR, version.name):
            continue
        if entry.name.startswith(".."):  # older versions (and any left by a crash)
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name not in top:
            entry.unlink()
    return True
