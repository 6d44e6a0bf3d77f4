"""The suite's check for processes tests leave running (podnet.testing.leftovers): found by the
session's marker however they were started, attributed to their test, ended by pid."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from podnet import procs
from podnet.kernel import netns
from podnet.lab import spec
from podnet.lab.spec import LabSpec, load_plan, plan_lab
from podnet.testing import leftovers

# daemonizes as the launcher zygote and the relay do: the process found is nobody's child
DAEMON = (
    "import os, sys, time\n"
    "if os.fork() > 0: os._exit(0)\n"
    "os.setsid(); print(os.getpid(), flush=True); os.close(1); time.sleep(60)\n"
)


def test_a_daemonized_process_is_found_with_its_test_and_stopped() -> None:
    env = dict(os.environ)
    marker = leftovers.SessionMarker(env)
    marker.current_test("tests/x.py::test_leaky")
    out = subprocess.run(
        [sys.executable, "-c", DAEMON], env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    pid = int(out.stdout)
    other = leftovers.SessionMarker(dict(os.environ))  # another session: never matches ours
    try:
        found = marker.leftovers()
        assert [(p.pid, p.test_id) for p in found] == [(pid, "tests/x.py::test_leaky")]
        assert "time.sleep(60)" in found[0].describe()
        assert pid not in {p.pid for p in other.leftovers()}
    finally:
        leftovers.stop(marker.leftovers())
    assert marker.wait_for_leftovers(5.0) == []


def test_nothing_is_found_when_nothing_was_left() -> None:
    marker = leftovers.SessionMarker(dict(os.environ))
    subprocess.run([sys.executable, "-c", "pass"], env=dict(marker.environ), check=True)
    assert marker.leftovers() == []


def test_a_lab_recorded_by_a_process_of_another_run_is_someone_elses(tmp_path: Path) -> None:
    """A benchmark's or an engineer's lab up while the suite runs: its links and namespaces
    are not a leftover of this session. Known by its recorded processes: alive, and without
    this session's token; a lab whose recorded processes carry the token, or have exited, is
    this session's own."""
    ours = leftovers.SessionMarker(dict(os.environ))
    theirs = dict(os.environ)
    theirs.pop(leftovers.SESSION_VAR, None)
    assert not ours.others_labs_running(tmp_path)  # no lab at all
    ran = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
        for env in (dict(ours.environ), theirs)
    ]
    try:
        procs.record(tmp_path / "mine" / "pids", "server", ran[0].pid)
        assert not ours.others_labs_running(tmp_path)
        procs.record(tmp_path / "bench" / "pids", "server", ran[1].pid)
        assert ours.others_labs_running(tmp_path)
        ran[1].kill()
        ran[1].wait()
        assert not ours.others_labs_running(tmp_path)  # its record outlived it: not running
        # a process its node recorded (an agent's udp datapath half, outliving the agent)
        datapath = tmp_path / "bench" / "nodes" / "node1" / "run" / "flannel" / "datapath"
        ran.append(
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=theirs)
        )
        procs.record(datapath, "datapath-receiving-half", ran[2].pid)
        assert ours.others_labs_running(tmp_path)
    finally:
        for proc in ran:
            proc.kill()
            proc.wait()


JOURNAL_A_PLAN = (
    "import sys; from pathlib import Path; from podnet.lab.spec import LabSpec, plan_lab\n"
    "plan_lab(LabSpec(name=sys.argv[1], nodes=2, state_root=Path(sys.argv[2])), 9, 40000).save()\n"
)


def test_a_lab_planned_under_the_session_is_its_own_whoever_else_runs(tmp_path: Path) -> None:
    """A lab a test plans (here in a child process, as `podnet up` does) writes its name,
    namespace prefix and host links to the session's journal: its leftovers fail the session
    even while another test session runs (they used to be only a warning then)."""
    env = dict(os.environ)
    marker = leftovers.SessionMarker(env, journal_dir=tmp_path)
    assert env[leftovers.LAB_JOURNAL_VAR] == str(marker.lab_journal)
    assert leftovers.LAB_JOURNAL_VAR == spec.LAB_JOURNAL_VAR
    subprocess.run([sys.executable, "-c", JOURNAL_A_PLAN, "t1mine", str(tmp_path / "s")],
                   env=env, check=True)  # fmt: skip
    plan = load_plan(tmp_path / "s" / "t1mine")
    assert plan is not None
    bridge, veth = f"link {plan.bridge}", f"link {plan.nodes[0].host_veth}"
    theirs = plan_lab(LabSpec(name="scale9", nodes=1, state_root=tmp_path), 8, 40001)
    new = {
        bridge,
        veth,
        "netns podnet-t1mine-node2",
        "netns podnet-t1mine-node1-pod-0a1b2c",
        "netns podnet-scale9-node1",
        f"link {theirs.bridge}",
    }
    own = {bridge, veth, "netns podnet-t1mine-node2", "netns podnet-t1mine-node1-pod-0a1b2c"}
    assert marker.own_lab_objects(new) == own
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # another test session runs (this pytest's own token is not `marker`'s)
        assert marker.others_running()
        verdict = leftovers.judge_lab_objects(marker, new, tmp_path / "none")
        assert verdict is not None and verdict[1], verdict
        assert "podnet-t1mine-node2" in verdict[0] and "scale9" not in verdict[0]
        verdict = leftovers.judge_lab_objects(marker, new - own, tmp_path / "none")
        assert verdict is not None and not verdict[1], verdict  # someone else's: a warning
    finally:
        other.kill()
        other.wait()
    marker.close()
    assert not marker.lab_journal.exists()
    assert marker.own_lab_objects(new) == set()  # no journal: nothing is this session's
    assert leftovers.judge_lab_objects(marker, set(), tmp_path) is None


@pytest.mark.root
def test_a_namespace_someone_else_runs_a_process_in_is_theirs() -> None:
    """How the session knows another lab is up when its state is not under the default root
    (a benchmark's lab under a temporary one): a process without this session's token runs in
    one of the new namespaces."""
    marker = leftovers.SessionMarker(dict(os.environ))
    name = f"pnlj-{secrets.token_hex(3)}"
    netns.create(name)
    theirs = dict(os.environ)
    theirs.pop(leftovers.SESSION_VAR, None)
    ran: list[subprocess.Popen[bytes]] = []
    try:
        assert not marker.others_in_namespaces({name, "podnet-gone-node1"})  # nobody in it
        ours = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"], env=marker.environ)
        ran.append(ours)
        assert _wait_for(lambda: _in_netns(ours.pid, name))
        assert not marker.others_in_namespaces({name})  # only this session's process
        other = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"], env=theirs)
        ran.append(other)
        assert _wait_for(lambda: _in_netns(other.pid, name))
        assert marker.others_in_namespaces({name})
    finally:
        for proc in ran:
            proc.kill()
            proc.wait()
        netns.delete(name)


def _in_netns(pid: int, name: str) -> bool:
    try:
        inode = (leftovers.NETNS_RUN_DIR / name).stat().st_ino
        return Path(f"/proc/{pid}/ns/net").readlink() == Path(f"net:[{inode}]")
    except OSError:
        return False


def _wait_for(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
