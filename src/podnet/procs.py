"""Processes podnet starts, recorded so they can be stopped by pid and never by name.

Every long-lived process podnet starts (server, agents, containers, helpers) is recorded as one
file in a directory the owner chooses: `<dir>/<label>.pid` holding "pid starttime". The start
time (field 22 of /proc/<pid>/stat) guards against pid reuse: a recorded pid whose start time
differs is someone else's process and is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Recorded:
    label: str
    pid: int
    start_time: int
    path: Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (start time)


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot, or None if the process is gone.

    A zombie is gone: it has exited and only waits for its parent (for orphans: init, which
    may take its time) to collect the exit status; signalling or waiting for it is pointless.
    """
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return stat[1]


def record(directory: Path, label: str, pid: int, *, own_child: bool = False) -> Recorded:
    """Record `pid` as `<directory>/<label>.pid`; ProcessLookupError if it is gone.

    `own_child`: `pid` is this process's child and nothing has waited for it yet, so it cannot
    be gone and its pid cannot have been reused. One that has exited already (a command that
    fails at once, on a machine busy enough that it ran to its end before we got here) is a
    zombie until it is waited for; its start time is still readable, so it is recorded all
    the same: `is_alive` says it is gone, and the caller reports how it ended instead of
    failing on a ProcessLookupError.
    """
    stat = _stat(pid)
    if stat is None or stat[0] == "X" or (stat[0] == "Z" and not own_child):
        why = "was waited for before it" if own_child else "exited before it"
        raise ProcessLookupError(f"process {pid} ({label}) {why} could be recorded")
    start = stat[1]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{label}.pid"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {start}\n")
    tmp.replace(path)
    return Recorded(label, pid, start, path)


def recorded(directory: Path) -> list[Recorded]:
    out: list[Recorded] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.pid")):
        try:
            pid_s, start_s = path.read_text().split()
            out.append(Recorded(path.stem, int(pid_s), int(start_s), path))
        except (ValueError, OSError):
            continue
    return out


def is_alive(rec: Recorded) -> bool:
    return process_start_time(rec.pid) == rec.start_time


def is_stopped(rec: Recorded) -> bool:
    """Alive but stopped (SIGSTOP: `podnet fault stop`, or a debugger's stop): it holds its
    pid and sockets and answers nothing."""
    stat = _stat(rec.pid)
    return stat is not None and stat[1] == rec.start_time and stat[0] in ("T", "t")


def forget(rec: Recorded) -> None:
    with contextlib.suppress(FileNotFoundError):
        rec.path.unlink()


def stop(rec: Recorded, grace_seconds: float = 5.0) -> None:
    """SIGTERM, wait up to the grace period, then SIGKILL; only if it is still our process."""
    stop_together([rec], grace_seconds)


def stop_together(recs: list[Recorded], grace_seconds: float = 5.0) -> int:
    """`stop` for many at once: SIGTERM to each, one grace period shared by all (not one
    each: a container that ignores SIGTERM, as a shell as pid 1 does, must not hold up the
    others), SIGKILL to the rest; the records are removed. Returns how many were alive."""
    alive = terminate(recs, grace_seconds)
    for rec in recs:
        forget(rec)
    return alive


def terminate(recs: list[Recorded], grace_seconds: float = 5.0) -> int:
    """`stop_together` without touching the record files. Returns how many were alive."""
    alive = [rec for rec in recs if is_alive(rec)]
    for rec in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(is_alive(rec) for rec in alive):
        time.sleep(0.02)
    left = [rec for rec in alive if is_alive(rec)]
    for rec in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
    for _ in range(250):
        if not any(is_alive(rec) for rec in left):
            break
        time.sleep(0.02)
    return len(alive)


def recorded_under(directory: Path) -> list[Recorded]:
    """Every process recorded in `directory` or any directory below it."""
    if not directory.is_dir():
        return []
    dirs = [directory, *sorted(p for p in directory.rglob("*") if p.is_dir())]
    return [rec for sub in dirs for rec in recorded(sub)]


def stop_all(directory: Path, grace_seconds: float = 5.0) -> int:
    """Stop every process recorded in `directory` (recursively), all together; returns how
    many were alive."""
    return stop_together(recorded_under(directory), grace_seconds)
