"""The delay fault's NFQUEUE reader on a real namespace: started, recorded and logged, and a
reader that dies at start is a clear error carrying its log, never a fault that silently does
nothing (the rule's --queue-bypass would let every packet by).

Marks: root. One throwaway namespace (`scratch_netns`), removed even when the test fails.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from podnet import procs
from podnet.kernel import netns, nfqueue
from podnet.lab import faults

pytestmark = pytest.mark.root

QUEUE = faults.QUEUE_BASE + 1


def target(name: str) -> faults.Target:
    return faults.Target("node1", name, "eth0", cast(Any, None))


def test_a_reader_that_binds_is_recorded_alive_with_its_log(
    tmp_path: Path, scratch_netns: str
) -> None:
    faults._start_reader(tmp_path, target(scratch_netns), "delay-1", QUEUE, 100.0, 0.0)
    [rec] = procs.recorded(tmp_path / faults.PIDS_DIR)
    try:
        assert rec.label == "delay-1"
        assert procs.is_alive(rec)
        assert faults.reader_log(tmp_path, "delay-1").exists()
        # it holds the queue: a second reader in the namespace cannot bind it
        with pytest.raises(nfqueue.BindError, match=f"cannot bind NFQUEUE {QUEUE}"):
            netns.call_in(scratch_netns, lambda: nfqueue.NfQueue(QUEUE))
    finally:
        procs.stop(rec, grace_seconds=2.0)
    assert not procs.is_alive(rec)


def test_a_reader_that_dies_at_start_is_an_error_with_its_log(
    tmp_path: Path, scratch_netns: str
) -> None:
    held = netns.call_in(scratch_netns, lambda: nfqueue.NfQueue(QUEUE))  # the queue is taken
    try:
        with pytest.raises(faults.FaultError) as caught:
            faults._start_reader(tmp_path, target(scratch_netns), "delay-1", QUEUE, 100.0, 0.0)
    finally:
        held.close()
    message = str(caught.value)
    log = faults.reader_log(tmp_path, "delay-1")
    assert message.startswith(
        f"delay on node1: its NFQUEUE reader (queue {QUEUE}, in namespace {scratch_netns})"
    ), message
    assert "exited at once (exit code 1)" in message
    assert f"see {log}:" in message
    # the reader's own words, from its stderr, which is kept in the lab's state dir
    assert f"nfqueue: cannot bind NFQUEUE {QUEUE}: Operation not permitted" in message
    assert "another process in this network namespace reads this queue" in log.read_text()
    assert procs.recorded(tmp_path / faults.PIDS_DIR) == []


def test_clearing_a_delay_leaves_no_mangle_table_it_made(
    tmp_path: Path, scratch_netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NFQUEUE rule lives in iptables' mangle table, which iptables-nft creates on first
    use. Left behind empty, it made every later `podnet trace --verify` through the pod or node
    disagree ("≠ (nothing predicted) | ip mangle POSTROUTING", the trace does not read
    mangle). Clearing removes the table when the fault made it and it holds no rule."""
    from podnet.kernel.rules import NftRunner
    from podnet.lab.lab import Lab
    from podnet.lab.spec import LabSpec, plan_lab

    lab = Lab(plan_lab(LabSpec(name="tdm", nodes=1, state_root=tmp_path), 3, 40000))
    lab.state_dir.mkdir(parents=True)
    monkeypatch.setattr(faults, "network_target", lambda *_a, **_k: target(scratch_netns))
    monkeypatch.setattr(faults, "_netem_here", lambda *_a: False)
    nft = NftRunner(scratch_netns)
    assert nft.list_table("ip", "mangle") is None
    kind = faults.kind_of("delay")
    fault = faults.Fault("delay-1", "delay", "node1", {"ms": 50.0, "jitter": 0.0}, 0.0)
    fault = replace(fault, undo=kind.apply(lab, fault))
    assert "PNF-delay-1" in (nft.list_table("ip", "mangle") or "")
    kind.clear(lab, fault, tearing_down=False)
    assert nft.list_table("ip", "mangle") is None
    assert procs.recorded(tmp_path / faults.PIDS_DIR) == []

    # a mangle table that was there before (with a rule of its own) is left as it was
    nft.apply("table ip mangle {\n chain keep {\n  ip daddr 192.0.2.1 counter\n }\n}")
    fault = replace(fault, undo=kind.apply(lab, fault))
    kind.clear(lab, fault, tearing_down=False)
    kept = nft.list_table("ip", "mangle") or ""
    assert "chain keep" in kept and "PNF-delay-1" not in kept
