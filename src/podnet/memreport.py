"""A debugging aid: where a process's memory is (the API server's, a node agent's), written to a
file while it runs.

What belongs here: the report `run` loop, started by `podnet server` and by `podnet agent` only
when the environment names a file (`PODNET_MEMORY_REPORT=PATH`); nothing here runs otherwise,
and nothing in a request's path calls into it. Every process of a lab inherits the variable from
`podnet up` (the agents are forked from the lab's supervisor, which has it), so they all append
to the one file, each line naming its `process` ("server", "agent NODE"), each written by one
`write` so lines of different processes do not interleave. Every `PODNET_MEMORY_REPORT_INTERVAL`
seconds (default 10) it appends one JSON line: the process's VmRSS and VmHWM, and per holder the
bytes reachable from it (a walk of dicts, lists, tuples, sets, strings and bytes, each object
counted once, in the order the holders are listed, so an object shared by two holders is counted
under the first), then what no holder reaches by type (`unheld`). Holders are what the process
registers (`track`): in the server the recent values, the watch cache's windows, the
controllers' informers; in an agent each component's local copies (the kubelet's pods and
Services, flannel's Nodes, the proxy's trackers and rendered rules, the policy component's
objects and parsed views). With `PYTHONTRACEMALLOC=1` in the environment as well, the line also
carries the 25 source lines holding the most traced memory (`tracemalloc`; the server then runs
about twice as slowly: for breakdowns at small sizes only). `PODNET_MEMORY_REPORT_TRACE=NAME`
turns tracing on in the processes whose name starts with NAME only (say `agent`: a lab's agents,
not its server), from the report's start; `PODNET_MEMORY_REPORT_ONLY=NAME` reports from those
processes only (the others, the server's walk of a large heap included, cost nothing).

The walk runs in a forked copy of the process (copy-on-write), so its time and its own memory (a
set of every object it has counted) are not the process's: its VmHWM and event loop do not see
it. Still a tool for a benchmark's debugging run, not for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_PATH = "PODNET_MEMORY_REPORT"
ENV_INTERVAL = "PODNET_MEMORY_REPORT_INTERVAL"
ENV_TRACE = "PODNET_MEMORY_REPORT_TRACE"
ENV_ONLY = "PODNET_MEMORY_REPORT_ONLY"

_holders: list[tuple[str, Callable[[], Any]]] = []


def enabled() -> bool:
    return bool(os.environ.get(ENV_PATH))


def track(name: str, holder: object, part: Callable[[Any], Any] | None = None) -> None:
    """Count what `holder` (or `part(holder)`) reaches under `name` in the report, while the
    holder lives; does nothing unless the report is enabled."""
    if not enabled():
        return
    ref = weakref.ref(holder)

    def reach() -> Any:
        obj = ref()
        if obj is None:
            return None
        return part(obj) if part is not None else obj

    _holders.append((name, reach))


_CONTAINERS = (dict, list, tuple, set, frozenset, deque)


def reachable_bytes(root: Any, seen: set[int]) -> tuple[int, int]:
    """(bytes, objects) reachable from `root` through JSON-like containers, objects with
    `__dict__` or `__slots__`, skipping those in `seen` (and adding what it counts)."""
    total = count = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (type, bool, int, float)):
            continue
        if callable(obj) and not isinstance(obj, _CONTAINERS):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        count += 1
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, _CONTAINERS):
            stack.extend(obj)
        elif isinstance(obj, (str, bytes, bytearray, memoryview)):
            continue
        else:
            inner = getattr(obj, "__dict__", None)
            if inner is not None:
                stack.append(inner)
            for klass in type(obj).__mro__:
                for slot in getattr(klass, "__slots__", ()):
                    value = getattr(obj, slot, None)
                    if value is not None:
                        stack.append(value)
    return total, count


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc() -> dict[str, float]:
    """glibc's heap: bytes in use, free but kept (fragmentation), and mmap'd blocks."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {
        "malloc_used_mb": round(info.uordblks / 1e6, 1),
        "malloc_free_mb": round(info.fordblks / 1e6, 1),
        "malloc_mmap_mb": round(info.hblkhd / 1e6, 1),
    }


def _pymalloc() -> dict[str, float]:
    """Python's small-object allocator: its arenas, and the bytes of objects in them (the
    rest is free space it keeps, fragmentation). Redirects fd 2 while it prints: call it only
    in the forked child."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        number = value.strip().replace(",", "")
        if not number.isdigit():
            continue
        if name.startswith("# arenas allocated current"):
            found["pymalloc_arenas_mb"] = round(int(number) * 1048576 / 1e6, 1)
        elif name.startswith("# bytes in allocated blocks"):
            found["pymalloc_used_mb"] = round(int(number) / 1e6, 1)
    return found


def _status() -> dict[str, float]:
    out: dict[str, float] = dict(_malloc())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def _unheld(seen: set[int], top: int = 12) -> dict[str, float]:
    """What no holder reaches, by type (MB): each object the collector tracks and no holder
    counted, with the strings, bytes and numbers it holds directly; the biggest `top`."""
    by_type: dict[str, int] = {}
    objects = gc.get_objects()
    seen.update((id(seen), id(by_type), id(objects)))  # the walk's own
    for obj in objects:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        size = sys.getsizeof(obj)
        if isinstance(obj, dict):
            inner: Any = [*obj.keys(), *obj.values()]
        elif isinstance(obj, _CONTAINERS):
            inner = obj
        else:
            inner = ()
        for item in inner:
            if isinstance(item, (str, bytes, int, float)) and id(item) not in seen:
                seen.add(id(item))
                size += sys.getsizeof(item)
        name = type(obj).__qualname__
        by_type[name] = by_type.get(name, 0) + size
    biggest = sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
    return {name: round(size / 1e6, 1) for name, size in biggest}


def snapshot(status: dict[str, float] | None = None, process: str = "") -> dict[str, Any]:
    """One report line (see the module docstring); `status`: the process's VmRSS and VmHWM
    (default: this process's now)."""
    line: dict[str, Any] = {"time": time.strftime("%H:%M:%S"), "process": process}
    line.update(status or _status())
    seen: set[int] = set()
    holders: dict[str, Any] = {}
    for name, reach in _holders:
        root = reach()
        if root is None:
            continue
        size, objects = reachable_bytes(root, seen)
        held = holders.setdefault(name, {"mb": 0.0, "objects": 0})
        held["mb"] = round(held["mb"] + size / 1e6, 1)
        held["objects"] += objects
    line["holders"] = holders
    line["unheld"] = _unheld(seen)
    line.update(_pymalloc())
    line["gc_objects"] = len(gc.get_objects())
    line["gc_frozen"] = gc.get_freeze_count()
    if tracemalloc.is_tracing():
        traced, peak = tracemalloc.get_traced_memory()
        line["traced_mb"] = round(traced / 1e6, 1)
        line["traced_peak_mb"] = round(peak / 1e6, 1)
        stats = tracemalloc.take_snapshot().statistics("lineno")[:25]
        line["top"] = [
            f"{s.size / 1e6:.1f} MB {s.count} {s.traceback[0].filename}:{s.traceback[0].lineno}"
            for s in stats
        ]
    return line


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _append(path: Path, line: dict[str, Any]) -> None:
    """One JSON line in one `write` on an O_APPEND descriptor: whole, whoever else appends."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _watch_peaks(path: Path, main: int, stop: threading.Event, process: str) -> None:
    """Every 20 ms: when the RSS passes its highest value so far by 8 MB, append the main
    thread's stack then (what is allocating while the peak grows)."""
    high = _rss_mb()
    while not stop.wait(0.02):
        rss = _rss_mb()
        if rss < high + 8:
            continue
        high = rss
        frames = sys._current_frames()
        frame = frames.get(main)
        line = {"time": time.strftime("%H:%M:%S"), "process": process,
                "peak_rss_mb": round(rss, 1), "stack": _stack(frame, 12)}  # fmt: skip
        # what the other threads run (asyncio.to_thread's workers: a proxier's sync, a
        # kernel tool's output), idle ones left out
        busy = {
            str(ident): _stack(f, 6)
            for ident, f in frames.items()
            if ident not in (main, threading.get_ident()) and not _idle(f)
        }
        if busy:
            line["threads"] = busy
        _append(path, line)


def _stack(frame: Any, limit: int) -> list[str]:
    stack = traceback.format_stack(frame, limit=limit) if frame is not None else []
    return [" ".join(part.strip().split("\n")[0].split()) for part in stack]


def _idle(frame: Any) -> bool:
    """A thread waiting for work: an executor's worker between jobs, an Event or a Condition."""
    where: str = frame.f_code.co_filename
    return where.endswith(("concurrent/futures/thread.py", "threading.py", "queue.py"))


def _report_from_a_child(path: Path, process: str) -> None:
    """Write a report line from a forked copy of the process: the walk's own memory (its set
    of every object seen) and time are the child's, so neither the server's VmHWM nor its
    event loop sees them."""
    status = _status()
    pid = os.fork()
    if pid == 0:  # the child: walk, write, and leave without running any clean-up
        code = 1
        try:
            _append(path, snapshot(status, process))
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


async def run(stop: asyncio.Event, process: str = "server") -> None:
    """Append a report line to `$PODNET_MEMORY_REPORT` every interval until `stop`, and a
    line with the main thread's stack whenever the RSS reaches a new high; `process` names
    this process in each line."""
    path = Path(os.environ[ENV_PATH])
    interval = float(os.environ.get(ENV_INTERVAL) or 10.0)
    only = os.environ.get(ENV_ONLY)
    if only and not process.startswith(only):
        return
    trace = os.environ.get(ENV_TRACE)
    if trace and process.startswith(trace) and not tracemalloc.is_tracing():
        tracemalloc.start()
    ended = threading.Event()
    peaks = threading.Thread(
        target=_watch_peaks,
        args=(path, threading.main_thread().ident, ended, process),
        daemon=True,
    )
    peaks.start()
    stop_event = asyncio.ensure_future(stop.wait())
    stop_event.add_done_callback(lambda _: ended.set())
    log.warning("memory report of %s every %.0fs to %s (a debugging aid)",
                process, interval, path)  # fmt: skip
    while not stop.is_set():
        await asyncio.to_thread(_report_from_a_child, path, process)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
