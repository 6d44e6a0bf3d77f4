"""What a test session started and left behind: processes (found by a marker in their
environment) and lab network objects (found by the lab naming scheme).

What belongs here: `SessionMarker`, how the suite (tests/conftest.py) notices a test that left a
process behind (a server, a lab's agent, a kubelet's launcher zygote or shim, etcd, ...), and
`lab_objects`, the host's lab bridges, node veths and node/pod namespaces, which the suite
lists at its start and end to notice a lab a test did not take down.

The session puts a random token in its own environment (`PODNET_TEST_SESSION`) and, per test,
the test's id (`PODNET_TEST_ID`); every process a test starts inherits both, however deep
(daemonized helpers too), unless it is given an environment of its own (containers are, but
their shims are not). When the session ends, a process still carrying the token was left
behind; the test id in its environment says which test started it. The token is this
session's alone, so other runs' processes never match; nothing here matches names.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from podnet import procs
from podnet.kernel import names

SESSION_VAR = "PODNET_TEST_SESSION"
TEST_VAR = "PODNET_TEST_ID"


@dataclass(frozen=True, slots=True)
class Leftover:
    pid: int
    start_time: int
    command: str
    test_id: str  # the test that was running when it (or its first ancestor) started

    def describe(self) -> str:
        return f"pid {self.pid} started by {self.test_id or '(no test)'}: {self.command}"


def _environment(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:300]


class SessionMarker:
    """Marks this process's environment (so its children) and finds the marked processes."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.token = secrets.token_hex(8)
        self.environ[SESSION_VAR] = self.token

    def current_test(self, test_id: str) -> None:
        """Processes started from now on are attributed to `test_id`."""
        self.environ[TEST_VAR] = test_id

    def leftovers(self) -> list[Leftover]:
        """Running processes (not zombies) that carry this session's token, except this one."""
        found: list[Leftover] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            env = _environment(pid)
            if env.get(SESSION_VAR) != self.token:
                continue
            start = procs.process_start_time(pid)
            if start is not None:
                found.append(Leftover(pid, start, _command(pid), env.get(TEST_VAR, "")))
        return found

    def others_running(self) -> bool:
        """Whether a process of another test session is running (another engineer's pytest on
        the same machine, whose labs come and go while this session runs)."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                token = _environment(int(entry.name)).get(SESSION_VAR)
                if token is not None and token != self.token:
                    return True
        return False

    def others_labs_running(self, state_root: Path) -> bool:
        """Whether a lab this session did not start is up under `state_root` (a benchmark's or
        an engineer's `podnet up` on the same machine, whose links and namespaces appear while
        this session runs): a process one of its labs recorded is alive and does not carry
        this session's token."""
        for pids in state_root.glob("*/pids"):
            for rec in procs.recorded(pids):
                if procs.is_alive(rec) and _environment(rec.pid).get(SESSION_VAR) != self.token:
                    return True
        return False

    def wait_for_leftovers(self, seconds: float) -> list[Leftover]:
        """The leftovers still there after up to `seconds` (processes told to stop may take a
        moment: a zygote exits when it sees its runtime's socket close)."""
        deadline = time.monotonic() + seconds
        while (found := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return found


def stop(leftovers: list[Leftover], grace_seconds: float = 2.0) -> None:
    """End them by pid and start time (never someone else's process that reused the pid)."""
    # no record file: the start time read from /proc guards against a reused pid
    procs.terminate(
        [
            procs.Recorded("leftover", p.pid, p.start_time, Path(f"/proc/{p.pid}"))
            for p in leftovers
        ],
        grace_seconds,
    )


# lab node, pod and etcd member namespaces: podnet-<lab>-<node>[-pod-<hash>], podnet-<lab>-etcd<i>
LAB_NETNS_PREFIX = "podnet-"


def lab_objects() -> set[str]:
    """The host namespace's lab links (underlay bridges, node and etcd member veths, VM taps)
    and every lab namespace, as "link NAME" / "netns NAME" (a lab names them by these prefixes
    only)."""
    from podnet.kernel import netns  # these import pyroute2: only when a root session asks
    from podnet.kernel.links import Netlink

    prefixes = (names.LAB_BRIDGE_PREFIX, names.LAB_NODE_VETH_PREFIX)
    with Netlink(None) as host:
        links = {f"link {link.name}" for link in host.links() if link.name.startswith(prefixes)}
    return links | {f"netns {name}" for name in netns.list_names(LAB_NETNS_PREFIX)}


def wait_for_lab_objects(before: set[str], seconds: float) -> set[str]:
    """Lab objects present now that were not `before`, after up to `seconds` (a namespace's
    veth vanishes only when the kernel's asynchronous namespace cleanup has run)."""
    deadline = time.monotonic() + seconds
    while (new := lab_objects() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    return new
