"""Files that may hold secrets: directories 0700, files 0600, owned by whoever runs podnet.

What belongs here: making a private directory (`private_dir`), writing a private file
atomically (`write_private`), opening a private log for appending (`open_private_log`) and the
umask a process that only writes private state sets first (`PRIVATE_UMASK`). Every state
directory podnet creates (the server's, a lab's, a node's) goes through these, so the SQLite
files, logs, `lab.json`, keys and kubeconfigs are never readable by other users.

Invariants:
- Modes are set explicitly (fchmod/chmod), not left to the caller's umask: a directory that
  already existed with a wider mode is narrowed.
- `write_private` replaces the file atomically (temp file + rename): a half-written key or
  kubeconfig is never read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_UMASK = 0o077  # a process whose every file is private (the API server)


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make `path` itself mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    path.chmod(DIR_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    tmp.replace(path)


def open_private_log(path: Path) -> BinaryIO:
    """`path` opened for appending, created (or narrowed to) mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "ab")


def touch_private(path: Path) -> None:
    """Create `path` empty with mode 0600 if it is missing; narrow its mode if it exists.

    SQLite gives its `-wal` and `-shm` files the mode of the database file, so creating the
    database this way first keeps all three private."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
