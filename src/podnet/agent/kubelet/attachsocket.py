"""The attach socket: how `kubectl attach` reaches a running container's own stdio.

The shim (launcher.py) owns the container's stdin (a pipe, or the pty) and reads its output;
it listens on `<container dir>/attach.sock` and serves any number of attachers with one tiny
framed protocol — a 5-byte header (kind, big-endian length) and the payload:

    attacher -> shim   0 stdin data   4 resize (">HH" width, height)   255 end of stdin
    shim -> attacher   1 stdout       2 stderr

`AttachServer` is the shim's side, driven by the shim's selector loop (non-blocking, no
threads); the kubelet endpoint (`server.py`) is the other side and uses `frame`/`FrameReader`.

Invariants:
- Output reaches every attacher in order. While any attacher has more than `HIGH_WATER`
  bytes unsent, the shim stops reading the container's output (back-pressure, as containerd's
  attach has; the log is written from the same reads, so it never loses lines).
- Input from attachers is queued for the container's stdin; while more than `HIGH_WATER`
  bytes wait, the shim stops reading from attachers.
- End of stdin closes the container's stdin only with `stdinOnce` (Kubernetes semantics);
  otherwise the container keeps its stdin open for the next attacher. On a tty, the end of
  input is the terminal's EOF character (^D), as a terminal would send it.
- Imports only the standard library (the launcher imports this on every container start).
"""

# The shim side works with str paths and raw fds, like launcher.py:
# ruff: noqa: PTH101, PTH108, PTH119, PTH120

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import socket
import struct
import termios
from collections.abc import Iterator
from dataclasses import dataclass, field

SOCKET_NAME = "attach.sock"
HEADER = struct.Struct(">BI")
STDIN, STDOUT, STDERR, RESIZE, CLOSE_STDIN = 0, 1, 2, 4, 255
HIGH_WATER = 256 * 1024
MAX_FRAME = 1024 * 1024
_UNIX_PATH_MAX = 107


def frame(kind: int, payload: bytes = b"") -> bytes:
    """`payload` as one frame of `kind`, or as several when it is over `MAX_FRAME` bytes (a
    client's stdin arrives in messages of any size; only stream kinds get that large)."""
    if len(payload) <= MAX_FRAME:
        return HEADER.pack(kind, len(payload)) + payload
    return b"".join(
        frame(kind, payload[start : start + MAX_FRAME])
        for start in range(0, len(payload), MAX_FRAME)
    )


def resize_frame(width: int, height: int) -> bytes:
    return frame(RESIZE, struct.pack(">HH", width, height))


class FrameReader:
    """Splits a byte stream into (kind, payload) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        pos = 0
        while len(self._buffer) - pos >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer, pos)
            if length > MAX_FRAME:
                raise ValueError(f"attach frame of {length} bytes is too large")
            end = pos + HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, bytes(self._buffer[pos + HEADER.size : end])))
            pos = end
        del self._buffer[:pos]
        return frames


@contextlib.contextmanager
def _short_path(path: str) -> Iterator[str]:
    """A path for bind/connect even when `path` exceeds the 107 bytes of sun_path: reach
    the directory through /proc/self/fd."""
    if len(path.encode()) <= _UNIX_PATH_MAX:
        yield path
        return
    directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(path)}"
    finally:
        os.close(directory)


def listen(path: str) -> socket.socket:
    """A non-blocking listening socket at `path` (replacing a stale one), mode 0600."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with _short_path(path) as address:
            listener.bind(address)
        os.chmod(path, 0o600)
        listener.listen(8)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def connect(path: str) -> socket.socket:
    """A blocking connection to an attach socket (the caller may make it non-blocking)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(path) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    pending: bytearray = field(default_factory=bytearray)
    reading: bool = True


class AttachServer:
    """The shim's end: listens, fans output out, funnels input into the container."""

    def __init__(
        self, path: str, stdin_fd: int | None, tty_fd: int | None, stdin_once: bool
    ) -> None:
        self.path = path
        self.stdin_fd = stdin_fd  # where stdin goes (pipe write end or a dup of the pty)
        self.tty_fd = tty_fd  # the pty, for resizes
        self.stdin_once = stdin_once
        self.listener = listen(path)
        self.clients: dict[int, _Client] = {}
        self.stdin_pending = bytearray()
        self.stdin_closing = False
        self.sel: selectors.BaseSelector | None = None
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)

    # -- selector plumbing -------------------------------------------------------------------

    def register(self, sel: selectors.BaseSelector) -> None:
        self.sel = sel
        sel.register(self.listener, selectors.EVENT_READ, self)

    def _interest(self, client: _Client) -> None:
        assert self.sel is not None
        events = (selectors.EVENT_READ if client.reading else 0) | (
            selectors.EVENT_WRITE if client.pending else 0
        )
        registered = client.sock.fileno() in self.sel.get_map()
        if events and registered:
            self.sel.modify(client.sock, events, self)
        elif events:
            self.sel.register(client.sock, events, self)
        elif registered:
            self.sel.unregister(client.sock)

    def _stdin_interest(self) -> None:
        assert self.sel is not None
        if self.stdin_fd is None:
            return
        registered = self.stdin_fd in self.sel.get_map()
        if self.stdin_pending and not registered:
            self.sel.register(self.stdin_fd, selectors.EVENT_WRITE, self)
        elif not self.stdin_pending and registered:
            self.sel.unregister(self.stdin_fd)

    @property
    def backlogged(self) -> bool:
        """True while some attacher is too far behind to read more container output."""
        return any(len(c.pending) > HIGH_WATER for c in self.clients.values())

    def handle(self, key: selectors.SelectorKey, events: int) -> None:
        if key.fileobj is self.listener:
            self._accept()
        elif key.fd == self.stdin_fd:
            self._write_stdin()
        else:
            client = self.clients.get(key.fd)
            if client is None:
                return
            if events & selectors.EVENT_WRITE:
                self._send(client)
            if events & selectors.EVENT_READ and key.fd in self.clients:
                self._receive(client)

    # -- events ------------------------------------------------------------------------------

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                sock, _ = self.listener.accept()
                sock.setblocking(False)
                client = _Client(sock)
                self.clients[sock.fileno()] = client
                self._interest(client)

    def _drop(self, client: _Client) -> None:
        assert self.sel is not None
        fd = client.sock.fileno()
        self.clients.pop(fd, None)
        if fd in self.sel.get_map():
            self.sel.unregister(client.sock)
        client.sock.close()

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        del client.pending[:sent]
        self._interest(client)

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)  # detached
            return
        try:
            frames = client.reader.feed(data)
        except ValueError:
            self._drop(client)
            return
        for kind, payload in frames:
            if kind == STDIN and self.stdin_fd is not None and not self.stdin_closing:
                self.stdin_pending += payload
            elif kind == RESIZE and self.tty_fd is not None and len(payload) == 4:
                width, height = struct.unpack(">HH", payload)
                with contextlib.suppress(OSError):
                    winsize = struct.pack("HHHH", height, width, 0, 0)
                    fcntl.ioctl(self.tty_fd, termios.TIOCSWINSZ, winsize)
            elif kind == CLOSE_STDIN and self.stdin_once and self.stdin_fd is not None:
                if self.tty_fd is not None:
                    self.stdin_pending += b"\x04"
                self.stdin_closing = True
        if len(self.stdin_pending) > HIGH_WATER:
            for other in self.clients.values():
                other.reading = False
                self._interest(other)
        self._write_stdin()

    def _write_stdin(self) -> None:
        if self.stdin_fd is None:
            return
        if self.stdin_pending:
            try:
                written = os.write(self.stdin_fd, self.stdin_pending)
                del self.stdin_pending[:written]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # the container closed its stdin
                self.stdin_pending.clear()
        if not self.stdin_pending and self.stdin_closing and self.tty_fd is None:
            self._close_stdin()
            return
        if len(self.stdin_pending) <= HIGH_WATER:
            for client in self.clients.values():
                if not client.reading:
                    client.reading = True
                    self._interest(client)
        self._stdin_interest()

    def _close_stdin(self) -> None:
        assert self.sel is not None and self.stdin_fd is not None
        if self.stdin_fd in self.sel.get_map():
            self.sel.unregister(self.stdin_fd)
        os.close(self.stdin_fd)
        self.stdin_fd = None

    # -- output ------------------------------------------------------------------------------

    def broadcast(self, kind: int, data: bytes) -> None:
        if not data or not self.clients:
            return
        message = frame(kind, data)
        for client in list(self.clients.values()):
            client.pending += message
            self._send(client)

    def close(self, flush_seconds: float = 1.0) -> None:
        """Flush what attachers have pending (briefly, blocking), then hang up on them."""
        for client in list(self.clients.values()):
            with contextlib.suppress(OSError):
                client.sock.settimeout(flush_seconds)
                client.sock.sendall(client.pending)
            self._drop(client)
        if self.sel is not None and self.listener.fileno() in self.sel.get_map():
            self.sel.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None
