"""The exec socket: `kubectl exec` processes belong to the container's shim, not to the agent.

containerd runs an exec'd process as a child of the container's shim and keeps its stdio
there; the kubelet only relays streams. podnet does the same, so an agent restart ends the
exec's stream but not its process. The shim listens on `<container dir>/exec.sock`; each
connection is one exec, in the attach socket's framing (`attachsocket.frame`, 5-byte header):

    agent -> shim   16 request (JSON: argv, tty, stdin, stdout, stderr)   first, once
                     0 stdin data   4 resize (">HH" width, height)   255 end of stdin
                     9 kill: the client went away, end the process (SIGKILL to its group)
    shim -> agent    1 stdout   2 stderr
                     3 exit (JSON: exit_code, message), then the shim hangs up; the message
                       says why the command could not run, or is empty

`ExecServer` is the shim's side, driven by the shim's selector loop like `AttachServer`; the
process itself is started by the `spawn` function the shim passes in (launcher.py forks and
enters the container). The kubelet endpoint (`server.py`) is the other side.

Invariants:
- The process is the shim's child in a session of its own (`kill` signals that group).
- A connection that ends without a kill frame (the agent stopped or died) leaves the process
  running: the shim keeps reading its output (and drops it) so it never blocks on a full pipe,
  and keeps its stdin open. When it exits, the shim reaps it and forgets the session.
- After the process exits, its output is drained until every writer closed it or for
  `DRAIN_SECONDS` (a background child may hold it), then the exit frame goes out.
- Output is read only while the agent has less than `HIGH_WATER` bytes unsent (back-pressure).
- Imports only the standard library (the launcher, which imports this, runs on every start).
"""

# The shim side works with raw fds, like launcher.py:
# ruff: noqa: PTH108

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from podnet.agent.kubelet.attachsocket import (
    CLOSE_STDIN,
    HIGH_WATER,
    RESIZE,
    STDIN,
    FrameReader,
    frame,
    listen,
)

SOCKET_NAME = "exec.sock"
EXIT, KILL, REQUEST = 3, 9, 16
DRAIN_SECONDS = 5.0
MAX_REQUEST = 256 * 1024


@dataclass(frozen=True, slots=True)
class ExecRequest:
    argv: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True

    def to_frame(self) -> bytes:
        body = {
            "argv": list(self.argv),
            "tty": self.tty,
            "stdin": self.stdin,
            "stdout": self.stdout,
            "stderr": self.stderr and not self.tty,
        }
        return frame(REQUEST, json.dumps(body).encode())

    @classmethod
    def parse(cls, payload: bytes) -> ExecRequest:
        data = json.loads(payload)
        argv = data.get("argv") if isinstance(data, dict) else None
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("an exec request needs a non-empty argv of strings")
        flags = {k: bool(data.get(k)) for k in ("tty", "stdin", "stdout", "stderr")}
        return cls(tuple(argv), **flags)


@dataclass(eq=False)
class ExecProcess:
    """What `spawn` returns: the child and the shim's ends of its stdio."""

    pid: int
    stdin_fd: int | None  # pipe write end, or a dup of the pty master
    outputs: dict[int, int]  # fd -> STDOUT/STDERR
    tty_fd: int | None  # the pty master, for resizes
    error_fd: int  # "<exit code> <message>" if the command could not be executed


Spawn = Callable[[ExecRequest], ExecProcess]


def exit_frame(exit_code: int, message: str) -> bytes:
    return frame(EXIT, json.dumps({"exit_code": exit_code, "message": message}).encode())


@dataclass(eq=False)
class _Session:
    sock: socket.socket | None
    reader: FrameReader = field(default_factory=FrameReader)
    pending: bytearray = field(default_factory=bytearray)
    proc: ExecProcess | None = None
    pidfd: int | None = None
    status: int | None = None  # wait status once reaped
    drain_until: float | None = None
    stdin_pending: bytearray = field(default_factory=bytearray)
    stdin_closing: bool = False
    hang_up: bool = False  # the exit frame is queued: close once it is sent
    finished: bool = False  # the process's descriptors are closed and its status reported


class ExecServer:
    """The shim's end: one process per connection, relayed until it exits."""

    def __init__(self, path: str, spawn: Spawn) -> None:
        self.path = path
        self.spawn = spawn
        self.listener = listen(path)
        self.sessions: list[_Session] = []
        self.sel: selectors.BaseSelector | None = None

    # -- selector plumbing -------------------------------------------------------------------

    def register(self, sel: selectors.BaseSelector) -> None:
        self.sel = sel
        sel.register(self.listener, selectors.EVENT_READ, self)

    def _set(self, fileobj: int | socket.socket, events: int) -> None:
        assert self.sel is not None
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        registered = fd in self.sel.get_map()
        if events and registered:
            self.sel.modify(fileobj, events, self)
        elif events:
            self.sel.register(fileobj, events, self)
        elif registered:
            self.sel.unregister(fileobj)

    def _interest(self, s: _Session) -> None:
        if s.sock is not None:
            events = (0 if s.hang_up else selectors.EVENT_READ) | (
                selectors.EVENT_WRITE if s.pending else 0
            )
            self._set(s.sock, events)
        if s.proc is not None:
            reading = len(s.pending) <= HIGH_WATER
            for fd in s.proc.outputs:
                self._set(fd, selectors.EVENT_READ if reading else 0)
            if s.proc.stdin_fd is not None:
                self._set(s.proc.stdin_fd, selectors.EVENT_WRITE if s.stdin_pending else 0)

    def timeout(self, now: float) -> float | None:
        """Seconds until the next drain deadline (the shim's select timeout), if any."""
        deadlines = [s.drain_until for s in self.sessions if s.drain_until is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def handle(self, key: selectors.SelectorKey, events: int) -> None:
        if key.fileobj is self.listener:
            self._accept()
            return
        for s in list(self.sessions):
            if s.sock is not None and key.fd == s.sock.fileno():
                if events & selectors.EVENT_WRITE:
                    self._send(s)
                if events & selectors.EVENT_READ and s.sock is not None:
                    self._receive(s)
                return
            if s.pidfd is not None and key.fd == s.pidfd:
                self._exited(s)
                return
            if s.proc is not None and key.fd in s.proc.outputs:
                self._read_output(s, key.fd)
                return
            if s.proc is not None and key.fd == s.proc.stdin_fd:
                self._write_stdin(s)
                return

    def check(self, now: float) -> None:
        """Finish sessions whose drain time is up (call on every loop turn)."""
        for s in list(self.sessions):
            if s.drain_until is not None and now >= s.drain_until:
                self._finish(s)

    # -- connections -------------------------------------------------------------------------

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                sock, _ = self.listener.accept()
                sock.setblocking(False)
                s = _Session(sock)
                self.sessions.append(s)
                self._interest(s)

    def _send(self, s: _Session) -> None:
        assert s.sock is not None
        try:
            sent = s.sock.send(s.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._client_gone(s)
            return
        del s.pending[:sent]
        if s.hang_up and not s.pending:
            self._client_gone(s)
            return
        self._interest(s)

    def _queue(self, s: _Session, data: bytes) -> None:
        if s.sock is None:
            return  # nobody listens any more: the output is dropped
        s.pending += data
        self._send(s)

    def _receive(self, s: _Session) -> None:
        assert s.sock is not None
        try:
            data = s.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._client_gone(s)
            return
        try:
            frames = s.reader.feed(data)
        except ValueError:
            self._client_gone(s)
            return
        for kind, payload in frames:
            if s.proc is None:
                if kind != REQUEST:
                    self._refuse(s, "the first frame of an exec must be its request")
                    return
                self._start(s, payload)
                if s.proc is None:
                    return
            elif kind == STDIN and s.proc.stdin_fd is not None and not s.stdin_closing:
                s.stdin_pending += payload
            elif kind == RESIZE and s.proc.tty_fd is not None and len(payload) == 4:
                width, height = struct.unpack(">HH", payload)
                with contextlib.suppress(OSError):
                    winsize = struct.pack("HHHH", height, width, 0, 0)
                    fcntl.ioctl(s.proc.tty_fd, termios.TIOCSWINSZ, winsize)
            elif kind == CLOSE_STDIN and s.proc.stdin_fd is not None:
                if s.proc.tty_fd is not None:
                    s.stdin_pending += b"\x04"  # a terminal's end of input
                else:
                    s.stdin_closing = True
            elif kind == KILL and s.status is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(s.proc.pid, signal.SIGKILL)
        self._write_stdin(s)

    def _refuse(self, s: _Session, message: str) -> None:
        s.pending += exit_frame(126, message)
        s.hang_up = True
        self._send(s)

    def _start(self, s: _Session, payload: bytes) -> None:
        try:
            request = ExecRequest.parse(payload)
        except ValueError as exc:
            self._refuse(s, f"bad exec request: {exc}")
            return
        try:
            proc = self.spawn(request)
        except OSError as exc:
            self._refuse(s, f"starting the exec'd process: {exc}")
            return
        s.proc = proc
        for fd in proc.outputs:
            os.set_blocking(fd, False)
        if proc.stdin_fd is not None:
            os.set_blocking(proc.stdin_fd, False)
        try:
            s.pidfd = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # reaped already by a waitpid(-1) elsewhere: not ours
            s.pidfd = None
        if s.pidfd is not None:
            self._set(s.pidfd, selectors.EVENT_READ)
        self._interest(s)

    def _client_gone(self, s: _Session) -> None:
        """The agent hung up (stream over, or the agent went away): the process stays."""
        if s.sock is not None:
            self._set(s.sock, 0)
            s.sock.close()
            s.sock = None
        s.pending.clear()
        self._interest(s)
        if s.proc is None or (s.status is not None and s.drain_until is None):
            self._forget(s)

    # -- the process -------------------------------------------------------------------------

    def _read_output(self, s: _Session, fd: int) -> None:
        assert s.proc is not None
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the pty's other side is gone
            chunk = b""
        if chunk:
            self._queue(s, frame(s.proc.outputs[fd], chunk))
            self._interest(s)
            return
        self._set(fd, 0)
        os.close(fd)
        del s.proc.outputs[fd]
        if fd == s.proc.tty_fd:
            s.proc.tty_fd = None
        if s.status is not None and not s.proc.outputs:
            self._finish(s)

    def _write_stdin(self, s: _Session) -> None:
        if s.proc is None or s.proc.stdin_fd is None:
            return
        if s.stdin_pending:
            try:
                written = os.write(s.proc.stdin_fd, s.stdin_pending)
                del s.stdin_pending[:written]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # the process closed its stdin
                s.stdin_pending.clear()
        if not s.stdin_pending and s.stdin_closing:
            self._set(s.proc.stdin_fd, 0)
            os.close(s.proc.stdin_fd)
            s.proc.stdin_fd = None
        self._interest(s)

    def _exited(self, s: _Session) -> None:
        """The pidfd says the process ended: reap it, then drain its output."""
        assert s.proc is not None and s.pidfd is not None
        self._set(s.pidfd, 0)
        os.close(s.pidfd)
        s.pidfd = None
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(s.proc.pid, 0)
            s.status = status
        if s.status is None:
            s.status = 255 << 8  # reaped elsewhere; its status is lost
        s.drain_until = time.monotonic() + DRAIN_SECONDS
        if not s.proc.outputs:
            self._finish(s)

    def reaped(self, pid: int, status: int) -> bool:
        """The shim's own waitpid(-1) collected `pid`: True if it was an exec'd process."""
        for s in self.sessions:
            if s.proc is not None and s.proc.pid == pid and s.status is None:
                s.status = status
                if s.pidfd is not None:
                    self._set(s.pidfd, 0)
                    os.close(s.pidfd)
                    s.pidfd = None
                s.drain_until = time.monotonic() + DRAIN_SECONDS
                if not s.proc.outputs:
                    self._finish(s)
                return True
        return False

    def _finish(self, s: _Session) -> None:
        """Output drained (or given up on): send the exit status and hang up."""
        assert s.proc is not None and s.status is not None
        if s.finished:
            return
        s.finished = True
        s.drain_until = None
        closed = set(s.proc.outputs)
        for fd in closed:
            self._set(fd, 0)
            os.close(fd)
        s.proc.outputs.clear()
        code = os.waitstatus_to_exitcode(s.status)
        exit_code = code if code >= 0 else 128 - code
        message = _read_failure(s.proc.error_fd)  # empty: the command ran
        if message and exit_code == 0:
            exit_code = 126
        for other in (s.proc.stdin_fd, s.proc.tty_fd, s.proc.error_fd):
            if other is not None and other not in closed:
                self._set(other, 0)
                os.close(other)
        s.proc.stdin_fd = None
        s.proc.tty_fd = None
        if s.sock is None:
            self._forget(s)
            return
        s.pending += exit_frame(exit_code, message)
        s.hang_up = True
        self._send(s)

    def _forget(self, s: _Session) -> None:
        if s in self.sessions:
            self.sessions.remove(s)

    def close(self, flush_seconds: float = 1.0) -> None:
        """The container is gone (its leftovers were killed): report what is known, hang up."""
        for s in list(self.sessions):
            if s.proc is not None and s.status is None:
                deadline = time.monotonic() + 1.0
                while s.status is None and time.monotonic() < deadline:
                    try:  # killed with the container a moment ago: collect its status
                        pid, status = os.waitpid(s.proc.pid, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid:
                        s.status = status
                    else:
                        time.sleep(0.01)
                if s.status is None:
                    s.status = signal.SIGKILL  # a wait status: killed by SIGKILL
            if s.proc is not None:
                if s.pidfd is not None:
                    self._set(s.pidfd, 0)
                    os.close(s.pidfd)
                    s.pidfd = None
                self._finish(s)
            if s.sock is not None:
                with contextlib.suppress(OSError):
                    s.sock.settimeout(flush_seconds)
                    s.sock.sendall(s.pending)
                self._client_gone(s)
        self._set(self.listener, 0)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _read_failure(error_fd: int) -> str:
    os.set_blocking(error_fd, False)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(error_fd, 4096):
            data += chunk
    return data.decode(errors="replace").partition(" ")[2]
