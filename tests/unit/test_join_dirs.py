"""`podnet join` / `leave` never delete a directory podnet did not make (podnet.cli.join).

join's check of its state dir and run_dir (before the server is contacted or anything is
written), its marking of the directories it makes, and leave's removal step, on real
directories under tmp_path; no root, no server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from podnet import procs
from podnet.cli import join
from podnet.cli.join import (
    MARKER,
    RUN_ENTRIES,
    STATE_ENTRIES,
    JoinError,
    check_dirs,
    claim_dirs,
    remove_dirs,
)
from podnet.cli.main import main

TOKEN = "abcdef.0123456789abcdef"


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (relative) with its content, None for a directory."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_join_refuses_a_non_empty_directory_it_did_not_make(tmp_path: Path) -> None:
    work = tmp_path / "work"
    write(work / "thesis.tex", "years of it")
    with pytest.raises(JoinError) as refused:
        check_dirs(work, tmp_path / "run")
    message = str(refused.value)
    assert message.startswith(f"--state-dir {work} already holds files podnet did not make")
    assert "thesis.tex" in message and "pass a new or empty directory" in message
    with pytest.raises(JoinError, match=f"--run-dir {work} already holds .*thesis.tex"):
        check_dirs(tmp_path / "state", work)
    assert tree(work) == {"thesis.tex": b"years of it"}


def test_join_points_at_leave_for_a_state_dir_of_an_earlier_podnet(tmp_path: Path) -> None:
    old = tmp_path / "node"
    write(old / "join.json", "{}")
    write(old / "kubeconfig")
    with pytest.raises(JoinError, match=f"run `podnet leave --state-dir {old}` first"):
        check_dirs(old, tmp_path / "run")


def test_join_refuses_the_root_and_one_directory_for_both(tmp_path: Path) -> None:
    with pytest.raises(JoinError, match="--state-dir / is the filesystem root"):
        check_dirs(Path("/"), tmp_path / "run")
    with pytest.raises(JoinError, match="--run-dir / is the filesystem root"):
        check_dirs(tmp_path / "state", Path("/"))
    with pytest.raises(JoinError, match="--state-dir and --run-dir are both"):
        check_dirs(tmp_path / "node", tmp_path / "node")
    write(tmp_path / "file")
    with pytest.raises(JoinError, match="exists and is not a directory"):
        check_dirs(tmp_path / "file", tmp_path / "run")


def test_join_accepts_new_empty_and_marked_directories_and_marks_them(tmp_path: Path) -> None:
    state, run = tmp_path / "lib" / "node", tmp_path / "run"
    run.mkdir()  # empty: adopted
    check_dirs(state, run)
    claim_dirs(state, run)
    assert (state / MARKER).read_text().startswith("podnet join state dir")
    assert (run / MARKER).read_text().startswith("podnet join run dir")
    assert state.stat().st_mode & 0o777 == 0o700
    # a join that crashed half-way left its files: joining again over them works
    write(state / "kubeconfig")
    write(run / "flannel" / "subnet.env")
    check_dirs(state, run)
    claim_dirs(state, run)
    assert {p.name for p in state.iterdir()} == {MARKER, "kubeconfig"}


def test_a_run_dir_inside_the_state_dir_is_claimed_outer_first(tmp_path: Path) -> None:
    state = tmp_path / "node"
    run = state / "run"
    check_dirs(state, run)
    claim_dirs(state, run)  # the inner one first would leave the outer non-empty, unmarked
    assert (state / MARKER).is_file() and (run / MARKER).is_file()
    claim_dirs(run / "state", run)  # and the other way round
    assert (run / "state" / MARKER).is_file()


def test_join_refuses_before_it_contacts_the_server_or_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    write(home / "notes.txt", "mine")
    run = tmp_path / "run"
    # port 9 on loopback answers nothing: a join that got as far as discovery would say so
    code = main(["join", "https://127.0.0.1:9", "--token", TOKEN, "--state-dir", str(home),
                 "--run-dir", str(run), "--no-start"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"podnet join: --state-dir {home} already holds files"), err
    assert tree(tmp_path) == {"home": None, "home/notes.txt": b"mine"}  # nothing written


def test_leave_keeps_what_a_foreign_run_dir_held_and_says_so(tmp_path: Path) -> None:
    state, run = tmp_path / "node", tmp_path / "var-run"  # as if an older podnet took --run-dir
    join.claim_dir("state", state)
    write(state / "kubeconfig")
    write(state / "agent" / "pods" / "p1")
    write(run / "sshd.pid", "1234")
    write(run / "flannel" / "subnet.env")
    write(run / "flannel" / "datapath" / "datapath.pid")
    write(run / "proxy-relay" / "relay.pid")
    notes = remove_dirs(state, run)
    assert not state.exists()  # marked: removed whole
    assert tree(run) == {"sshd.pid": b"1234"}  # podnet's own entries gone, the user's kept
    (note,) = notes
    assert note.startswith(f"left the run dir {run} with 1 entries podnet did not write (sshd.pid)")
    assert f"it has no {MARKER} marker" in note


def test_leave_of_an_unmarked_state_dir_removes_only_podnets_files(tmp_path: Path) -> None:
    state, run = tmp_path / "node", tmp_path / "run"
    for name in STATE_ENTRIES:
        write(state / name if name not in ("pids", "agent") else state / name / "x")
    for name in RUN_ENTRIES:
        write(run / name if name not in ("flannel/datapath", "proxy-relay") else run / name / "y")
    write(state / "mine" / "keep.txt", "keep")
    write(run / "flannel" / "other-flannel.conf", "real flannel's")
    notes = remove_dirs(state, run)
    assert tree(state) == {"mine": None, "mine/keep.txt": b"keep"}
    assert tree(run) == {"flannel": None, "flannel/other-flannel.conf": b"real flannel's"}
    assert len(notes) == 2
    # an older podnet's state dir that held only its files: nothing is left, the dir neither
    old = tmp_path / "old"
    write(old / "join.json", "{}")
    write(old / "pids" / "agent.pid", "1 2")
    assert remove_dirs(old, tmp_path / "missing") == [] and not old.exists()


def test_the_root_never_counts_as_marked() -> None:
    assert not join.is_marked(Path("/"))


def test_leave_stops_records_only_where_podnet_writes_them_in_an_unmarked_dir(
    tmp_path: Path,
) -> None:
    """In a run_dir without the marker (an older join, or /run given to it) `leave` stops what
    is recorded under podnet's own entries (proxy-relay/) and never walks the rest: a record
    elsewhere there is not podnet's to act on. In a marked one, everything under it is."""
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run.mkdir()
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        relay = procs.record(run / "proxy-relay", "relay", sleepers[0].pid, own_child=True)
        foreign = procs.record(run / "someone", "daemon", sleepers[1].pid, own_child=True)
        assert join.stop_left_running(state, run) == ["relay"]
        assert sleepers[0].wait(timeout=10) is not None
        assert procs.is_alive(foreign) and foreign.path.exists() and not relay.path.exists()

        write(run / MARKER)  # a run_dir join made: all of it is podnet's
        marked = procs.record(run / "elsewhere", "datapath", sleepers[2].pid, own_child=True)
        assert join.stop_left_running(state, run) == ["daemon", "datapath"]
        assert not procs.is_alive(marked) and not procs.is_alive(foreign)
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


def test_join_refuses_a_state_dir_whose_agent_still_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Joining twice from one state dir while its agent runs would rewrite the credentials
    under it and record the new agent over the running one's pid, so `leave` would say
    "agent stopped" and leave it running. Refused before the server is contacted."""
    state, run = tmp_path / "node", tmp_path / "run"
    claim_dirs(state, run)
    record = {"node_name": "host-a", "node_ip": "10.0.0.11", "server": "https://10.0.0.5:6443",
              "state_dir": str(state), "run_dir": str(run), "netns_prefix": "podnet-host-a-",
              "unit": None}  # fmt: skip
    write(state / "join.json", json.dumps(record))
    write(state / "kubeconfig", "the running agent's")
    agent = subprocess.Popen(["sleep", "60"])
    try:
        rec = procs.record(state / "pids", "agent", agent.pid, own_child=True)
        before = tree(tmp_path)
        for extra in ([], ["--no-start"]):
            code = main(["join", "https://127.0.0.1:9", "--token", TOKEN, "--state-dir",
                         str(state), "--run-dir", str(run), *extra])  # fmt: skip
            err = capsys.readouterr().err
            assert code == 1
            assert err.startswith(
                f"podnet join: this machine already joined as node host-a from {state} "
                f"(its agent runs, pid {agent.pid})"
            ), err
            assert f"`podnet leave --state-dir {state}` first" in err
            assert tree(tmp_path) == before  # nothing rewritten, the record still its own
        assert procs.is_alive(rec)
    finally:
        agent.kill()
        agent.wait()
    # once its agent is gone (stopped, crashed), the same state dir is joined again as is
    with pytest.raises(JoinError, match="cannot reach the API server"):
        join.check_not_joined(state)
        join.discover("https://127.0.0.1:9", TOKEN, [])


def test_join_refuses_a_node_name_no_node_can_have_before_contacting_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--node-name defaults to the host name, which may be no valid Node name (Pi_4): said
    at once, with the flag to choose another, not as the server's 400 after discovery."""
    state, run = tmp_path / "node", tmp_path / "run"
    code = main(["join", "https://127.0.0.1:9", "--token", TOKEN, "--node-name", "Pi_4",
                 "--state-dir", str(state), "--run-dir", str(run), "--no-start"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("podnet join: node name 'Pi_4' is not a valid Node name"), err
    assert "(--node-name)" in err and "choose one with --node-name" in err
    assert not state.exists() and not run.exists()


def test_leave_removes_only_the_pods_namespaces_of_its_own_agent() -> None:
    """A machine joined under its host name `podnet` next to a lab of the default name
    `podnet` on it: leave's prefix podnet-podnet- also begins the lab's node, pod and etcd
    namespaces. Only the names the agent gives its pods' namespaces are its own."""
    from podnet.agent.kubelet.sandbox import sandbox_netns_name

    prefix = "podnet-podnet-"  # join's default for node `podnet`
    mine = sandbox_netns_name(prefix, "6f1c0d1e-0000-4000-8000-000000000001")
    lab = ["podnet-podnet-node1", "podnet-podnet-node1-pod-6fnfmpmraqhp", "podnet-podnet-etcd1"]
    assert join.own_pod_netns([*lab, mine, "podnet-other-pod-x"], prefix) == [mine]
