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

Labs are told apart the same way: the session's environment names a journal file
(`LAB_JOURNAL_VAR`), and every lab plan saved under it (`LabPlan.save`, before `up` creates
anything) appends its name, namespace prefix and host links there. A lab object one of those
labs names is this session's (`SessionMarker.own_lab_objects`); any other was planned by
someone else (another engineer's `podnet up`, a benchmark), whose labs come and go meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from podnet import procs
from podnet.kernel import names

SESSION_VAR = "PODNET_TEST_SESSION"
LAB_JOURNAL_VAR = "PODNET_TEST_LAB_JOURNAL"  # lab.spec's (not imported: conftest loads this)
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

    def __init__(
        self, environ: MutableMapping[str, str] | None = None, journal_dir: Path | None = None
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.token = secrets.token_hex(8)
        self.environ[SESSION_VAR] = self.token
        where = Path(tempfile.gettempdir()) if journal_dir is None else journal_dir
        self.lab_journal = where / f"podnet-test-labs-{self.token}.jsonl"
        self.environ[LAB_JOURNAL_VAR] = str(self.lab_journal)

    def own_lab_objects(self, objects: set[str]) -> set[str]:
        """Those of `objects` ("link NAME" / "netns NAME", as `lab_objects` lists them) that a
        lab this session planned names: its namespaces (by the lab's prefix) and host links."""
        prefixes: list[str] = []
        links: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for line in self.lab_journal.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    entry = json.loads(line)
                    prefixes.append(str(entry["netns_prefix"]))
                    links.update(str(link) for link in entry["links"])
        own = {f"link {link}" for link in links}
        netns = (o for o in objects if o.startswith("netns "))
        own |= {o for o in netns if o.removeprefix("netns ").startswith(tuple(prefixes))}
        return own & objects

    def others_in_namespaces(self, netns_names: set[str]) -> bool:
        """Whether a process that does not carry this session's token runs in one of these
        named network namespaces (a lab someone else started, up now)."""
        inodes = set()
        for name in netns_names:
            with contextlib.suppress(OSError):
                inodes.add(f"net:[{(NETNS_RUN_DIR / name).stat().st_ino}]")
        if not inodes:
            return False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                inside = str((entry / "ns" / "net").readlink()) in inodes
            except OSError:  # gone meanwhile, or a kernel thread
                continue
            if inside and _environment(int(entry.name)).get(SESSION_VAR) != self.token:
                return True
        return False

    def close(self) -> None:
        """Remove the session's lab journal."""
        self.lab_journal.unlink(missing_ok=True)

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
        this session's token. A lab's records are those `podnet down` stops: its own (`pids/`)
        and its nodes' (agents record containers, the relay and the udp datapath's two
        processes under `nodes/<node>/`)."""
        for lab in state_root.glob("*/pids"):
            for rec in procs.recorded(lab) + procs.recorded_under(lab.parent / "nodes"):
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


def judge_lab_objects(
    marker: SessionMarker, new: set[str], state_root: Path
) -> tuple[str, bool] | None:
    """What the session says of lab objects that appeared during it and are still there:
    None if there are none, else (message, whether it fails the session). A leftover of a lab
    this session planned always fails it. One that no lab of this session names is someone
    else's, a warning, while another test session runs, a lab under `state_root` that this
    session did not start is up, or a process of someone else's runs in one of the
    namespaces; with none of those (a machine to itself, as in CI) it fails too."""
    if not new:
        return None
    own = marker.own_lab_objects(new)
    if own:
        return "lab objects left by this session's tests:\n" + "\n".join(sorted(own)), True
    listing = "lab objects no lab of this session planned:\n" + "\n".join(sorted(new))
    foreign_netns = {o.removeprefix("netns ") for o in new if o.startswith("netns ")}
    if (
        marker.others_running()
        or marker.others_labs_running(state_root)
        or marker.others_in_namespaces(foreign_netns)
    ):
        return listing + "\n(another lab or test session is running)", False
    return listing + "\n(and no other lab or test session is running)", True


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


NETNS_RUN_DIR = Path("/run/netns")  # where named network namespaces are (kernel.netns's)

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
