"""The runtime's side of the launcher zygote (`launcher.serve_zygote`).

A container start through `python -m ...launcher run` pays for a Python interpreter start
(tens of milliseconds of CPU, much more on a busy machine); the zygote is one warm launcher
that forks a shim per request instead. The runtime keeps one per `Runtime` object:

- spawned lazily on the first start; it daemonizes, so it is nobody's child, and reports its
  pid over the socket; recorded in `pids_dir` as `zygote-<pid>` like every podnet process;
- one SOCK_SEQPACKET message per start: the spec path + the write end of a fresh readiness
  pipe (SCM_RIGHTS); the answer is the shim's JSON line on that pipe, exactly as with `run`;
- it exits when our end of the socket closes: `close()`, the Runtime being collected, or the
  agent process ending. Nothing here is a Python object with a finalizer warning (the fd is
  raw), so a forgotten `close()` costs nothing but the zygote's exit.

`launch()` returns None when the zygote cannot be used (failed to start, died); the runtime
then falls back to `launcher run`, so the zygote is an optimisation, never a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import weakref
from pathlib import Path

from podnet import procs

log = logging.getLogger(__name__)


def _close(fd: int, record: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    record.unlink(missing_ok=True)


async def read_line(fd: int, wait_seconds: float) -> bytes:
    """One line from a pipe (b"" at EOF or on timeout); closes `fd`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await asyncio.wait_for(reader.readline(), wait_seconds)
    except TimeoutError:
        return b""
    finally:
        transport.close()


class LauncherZygote:
    def __init__(self, argv: list[str], pids_dir: Path, log_path: Path) -> None:
        self.argv = argv  # [python, "-m", launcher module]
        self.pids_dir = pids_dir
        self.log_path = log_path
        self.fd: int | None = None
        self.pid: int | None = None
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._finalizer: weakref.finalize[..., LauncherZygote] | None = None

    def lock(self) -> asyncio.Lock:
        """One lock per event loop (a Runtime may outlive the loop it first ran in)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    def _spawn(self) -> None:
        """Start the zygote and wait for its pid (blocking: run in a thread)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log_file:
                starter = subprocess.Popen(
                    [*self.argv, "zygote", str(child.fileno())],
                    pass_fds=(child.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    start_new_session=True,
                )
                starter.wait(30)  # it forks the zygote and exits at once
            child.close()
            parent.settimeout(30)
            pid = int(parent.recv(64))
            parent.settimeout(None)
            # recorded before our end is detached: if recording fails (the zygote died, the
            # pids dir is unwritable) closing our end both frees it and ends a live zygote
            procs.record(self.pids_dir, f"zygote-{pid}", pid)
        except BaseException:
            parent.close()
            child.close()
            raise
        fd = parent.detach()
        self.fd, self.pid = fd, pid
        self._finalizer = weakref.finalize(self, _close, fd, self.pids_dir / f"zygote-{pid}.pid")

    async def launch(self, spec_path: Path, wait_seconds: float) -> bytes | None:
        """The shim's readiness line for this spec; None if the zygote is unusable."""
        async with self.lock():
            if self.fd is None:
                try:
                    await asyncio.to_thread(self._spawn)
                except (OSError, ValueError, subprocess.SubprocessError) as exc:
                    log.warning(
                        "launcher zygote unavailable, starting containers the slow way: %s", exc
                    )
                    return None
            assert self.fd is not None
            ready_r, ready_w = os.pipe()
            sock = socket.socket(fileno=self.fd)
            try:
                socket.send_fds(sock, [str(spec_path).encode()], [ready_w], socket.MSG_NOSIGNAL)
            except OSError as exc:
                log.warning(
                    "launcher zygote %s is gone (%s); a new one starts next time", self.pid, exc
                )
                os.close(ready_r)
                self.close()
                return None
            finally:
                sock.detach()
                os.close(ready_w)
        return await read_line(ready_r, wait_seconds)

    def close(self) -> None:
        """Close our end: the zygote exits. Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        self.fd = self.pid = None
        self._finalizer = None
