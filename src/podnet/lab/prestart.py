"""The lab's supervisor started before `podnet up` has planned the lab, so that the imports
it needs before it can fork the lab's units (about 1.5 s of CPU: the API server, the agent,
netlink) overlap the command's own imports, planning and network building.

What belongs here: `Prestarted` (spawn the supervisor process waiting for the word to go,
then give the word or call it off) and `supervisor_argv`. Nothing heavy is imported here:
`podnet up` spawns the supervisor before it imports the lab machinery.

Invariants:
- The waiting supervisor touches nothing of the lab (no state directory, no log, no socket)
  until it reads `GO` on its stdin, which `up` writes only after the lab's plan is saved and
  the supervisor's pid recorded in the plan's pids directory — `down` finds it as it finds a
  supervisor started the ordinary way. `up` failing before that (the lab exists, bad name)
  calls it off: EOF on the supervisor's stdin ends it, and `up` kills it by its pid and
  reaps it, so nothing is left behind.
- The supervisor runs in its own session (Ctrl-C on `up` does not stop it), like every unit.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

GO = b"go\n"
WHEN_PLANNED = "--when-planned"  # `podnet supervise --foreground` waits for GO on its stdin


def supervisor_argv(state_dir: Path, python: str) -> list[str]:
    return [
        python, "-m", "podnet.cli.main", "supervise", "--foreground",
        "--name", state_dir.name, "--state-root", str(state_dir.parent), "--python", python,
    ]  # fmt: skip


class Prestarted:
    """A supervisor process spawned for `state_dir`'s lab, waiting for `go()`."""

    def __init__(self, state_dir: Path, python: str = sys.executable) -> None:
        self.state_dir = state_dir
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [*supervisor_argv(state_dir, python), WHEN_PLANNED],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # its log is opened once the state directory exists
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None, "go() or call_off() ran already"
        return self.proc.pid

    def go(self) -> subprocess.Popen[bytes]:
        """Let it supervise the lab (its plan is saved, its pid recorded); the process."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None, "go() or call_off() ran already"
        self.proc = None
        try:
            proc.stdin.write(GO)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died already: `up` finds out when the supervisor does not answer
        return proc

    def call_off(self) -> None:
        """`up` failed before go(): stop the waiting process (by its pid) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        proc.kill()
        proc.wait()
