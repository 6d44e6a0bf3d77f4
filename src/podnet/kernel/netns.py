"""Named network namespaces: create, delete, list, enter, and run things inside one.

A named namespace is a bind mount of a namespace file under /run/netns/<name> (what
`ip netns add` makes), so it outlives every process in it. pyroute2's `netns` module creates
and removes them; entering uses setns(2) through libc.

Invariants:
- Network namespaces are per *thread*: `enter()` switches only the calling thread and always
  switches it back; `call_in()` runs a function on a fresh thread inside the namespace, so the
  caller (an asyncio loop, say) never changes namespace. A process forked from a thread that
  is inside a namespace starts in that namespace, which is how `run()` executes tools there
  (the equivalent of `ip netns exec`, without a shell and without preexec hooks).
- Names are plain file names (letters, digits, `.`, `_`, `-`); a path is accepted wherever a
  namespace is expected (`/run/netns/x`, `/proc/<pid>/ns/net`), like CNI_NETNS.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")

T = TypeVar("T")


class NetnsError(Exception):
    """A namespace operation failed; the message names the namespace and what to do."""


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise NetnsError(
            f"invalid network namespace name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 255 characters"
        )
    return name


def path(name_or_path: str) -> Path:
    """The namespace file: /run/netns/<name> for a name, the path itself for a path."""
    if "/" in name_or_path:
        return Path(name_or_path)
    return NETNS_DIR / validate_name(name_or_path)


def exists(name_or_path: str) -> bool:
    return path(name_or_path).exists()


def list_names(prefix: str = "") -> list[str]:
    """Names under /run/netns starting with `prefix`, sorted."""
    try:
        entries = [p.name for p in NETNS_DIR.iterdir()]
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if n.startswith(prefix))


def create(name: str) -> Path:
    """Create a named namespace; it must not exist yet."""
    validate_name(name)
    if exists(name):
        raise NetnsError(f"network namespace {name!r} already exists ({path(name)})")
    try:
        pyroute2_netns.create(name)
    except OSError as exc:
        raise NetnsError(f"cannot create network namespace {name!r}: {exc}") from exc
    # pyroute2 reports some failures only by leaving no mount behind: verify
    if not _is_namespace_file(path(name)):
        _remove_quietly(name)
        raise NetnsError(f"network namespace {name!r} was not created (are you root?)")
    return path(name)


def ensure(name: str) -> Path:
    """Create the namespace unless it already exists; return its path."""
    if exists(name):
        return path(name)
    return create(name)


def delete(name: str) -> bool:
    """Remove a named namespace; returns False when it did not exist (idempotent)."""
    validate_name(name)
    if not path(name).exists():
        return False
    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise NetnsError(f"cannot delete network namespace {name!r}: {exc}") from exc
    return True


def _is_namespace_file(p: Path) -> bool:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return False
    try:
        # a bind-mounted nsfs file lives on a different device than its directory
        return os.fstat(fd).st_dev != p.parent.stat().st_dev
    finally:
        os.close(fd)


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(OSError):
        pyroute2_netns.remove(name)


_libc: ctypes.CDLL | None = None


def _setns(fd: int, name: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns into {name!r} failed: {os.strerror(err)} (errno {err})")


def _open(name_or_path: str) -> int:
    p = path(name_or_path)
    try:
        return os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(
            f"network namespace {name_or_path!r} does not exist ({p} is missing)"
        ) from None


@contextlib.contextmanager
def enter(name_or_path: str) -> Iterator[None]:
    """Move the calling thread into the namespace for the block, then back."""
    target = _open(name_or_path)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        _setns(target, name_or_path)
        try:
            yield
        finally:
            _setns(home, "the thread's original namespace")
    finally:
        os.close(target)
        os.close(home)


def switch(name_or_path: str) -> None:
    """Move the calling thread into the namespace for good (an agent's first act).

    Threads started afterwards from this thread inherit the namespace; call it before any.
    """
    fd = _open(name_or_path)
    try:
        _setns(fd, name_or_path)
    finally:
        os.close(fd)


def call_in(name_or_path: str | None, fn: Callable[[], T]) -> T:
    """Run `fn()` on a fresh thread inside the namespace and return its result.

    `None` means the caller's own namespace (the function runs directly).
    """
    if name_or_path is None:
        return fn()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            switch(name_or_path)
            outcome.append(fn())
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name=f"netns:{name_or_path}", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


def run(
    argv: list[str],
    netns: str | None = None,
    stdin_text: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a tool (argv, never a shell) inside `netns` (or here), capturing text output."""

    def execute() -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                input=stdin_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise NetnsError(f"{argv[0]} is not installed (needed to run {argv!r})") from exc

    return call_in(netns, execute)


def inode(name_or_path: str) -> int:
    """The namespace's inode number (equal inodes = the same namespace)."""
    try:
        return path(name_or_path).stat().st_ino
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name_or_path!r} does not exist") from None


def current_inode() -> int:
    """Inode of the calling thread's network namespace."""
    return Path("/proc/thread-self/ns/net").stat().st_ino
