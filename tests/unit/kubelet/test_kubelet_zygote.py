"""The runtime's launcher zygote when it cannot be recorded: the start fails (the runtime
then starts containers the slow way) and leaves no descriptor open, and the zygote, whose
socket end is closed, exits (the session's leftover check would name it otherwise)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from podnet.agent.kubelet.zygote import LauncherZygote


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.asyncio
async def test_a_zygote_that_cannot_be_recorded_leaves_no_descriptor_open(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    pids.write_text("a file where the pids directory should be\n")  # procs.record fails
    zygote = LauncherZygote(
        [sys.executable, "-m", "podnet.agent.kubelet.launcher"], pids, tmp_path / "zygote.log"
    )
    before = open_descriptors()
    with pytest.raises(FileExistsError):
        zygote._spawn()
    assert open_descriptors() == before
    assert (zygote.fd, zygote.pid) == (None, None)
    # what the runtime sees: no zygote, so it falls back to `launcher run`
    assert await zygote.launch(tmp_path / "spec.json", wait_seconds=1.0) is None
    assert open_descriptors() == before
