"""The supervisor `podnet up` starts before it plans the lab (`podnet.lab.prestart`): called
off, it ends and leaves nothing; told to go once the plan is saved and its pid recorded, it
logs into the lab's state directory and answers on the lab's socket (with no unit started)."""

from __future__ import annotations

import secrets
from pathlib import Path

from podnet import procs
from podnet.lab import supervisor as supervision
from podnet.lab.prestart import Prestarted
from podnet.lab.spec import PLAN_FILE, LabSpec, plan_lab
from podnet.testing.waiting import poll


def test_called_off_it_ends_and_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / f"p{secrets.token_hex(3)}"
    early = Prestarted(state_dir)
    pid = early.pid
    early.call_off()
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    assert not state_dir.exists()
    early.call_off()  # twice is harmless


def test_told_to_go_it_supervises_the_planned_lab(tmp_path: Path) -> None:
    spec = LabSpec(name=f"p{secrets.token_hex(3)}", nodes=1, state_root=tmp_path)
    early = Prestarted(spec.state_dir)
    plan = plan_lab(spec, 7, 40000)
    plan.save()
    rec = procs.record(Path(plan.pids_dir), supervision.LABEL, early.pid)
    proc = early.go()
    try:
        client = supervision.SupervisorClient(spec.state_dir)
        assert client.record() == rec
        status = poll("the prestarted supervisor's socket", client.status, 30,
                      tolerate=(supervision.SupervisorError,))  # fmt: skip
        assert status["pid"] == proc.pid and status["units"] == {}
        log = (spec.state_dir / supervision.LOG_NAME).read_text()
        assert f"supervising lab in {spec.state_dir}" in log
    finally:
        (spec.state_dir / PLAN_FILE).unlink()  # a supervisor whose plan is gone exits
        proc.wait(timeout=30)
    assert proc.returncode == 0
