"""Warm starts (`podnet.lab.warm`): a unit forked from a preloaded interpreter looks to the
world like one started as `python -m MODULE ARGS` — argv, /proc cmdline, its own session,
only stdin/stdout/stderr open, default SIGTERM, no inherited logging handler, its exit code —
and an edited source file turns forking off. The probe is a throwaway package on sys.path."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.lab.warm import Preloaded

PROBE = """
import json, logging, os, signal, sys
from pathlib import Path
def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
print(json.dumps({
    "argv": sys.argv[1:],
    "cmdline": Path("/proc/self/cmdline").read_bytes().decode().split("\\0")[:-1],
    "fds": [fd for fd in range(1024) if is_open(fd)],
    "own_session": os.getsid(0) == os.getpid(),
    "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
    "root_handlers": len(logging.getLogger().handlers),
    "stdin": os.readlink("/proc/self/fd/0"),
}), flush=True)
sys.exit(int(sys.argv[-1]))
"""


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[str]:
    package = f"warmprobe{secrets.token_hex(4)}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "report.py").write_text(PROBE)
    (tmp_path / package / "later.py").write_text("")
    (tmp_path / package / "other.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        yield package
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[name]


def run_forked(warm: Preloaded, argv: list[str], log: Path) -> tuple[int, dict[str, object]]:
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    logging.getLogger().addHandler(handler := logging.StreamHandler())  # a "supervisor" handler
    try:
        pid = warm.fork(argv, out)
    finally:
        os.close(out)
        logging.getLogger().removeHandler(handler)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), json.loads(log.read_text())


def test_a_forked_unit_looks_like_a_new_process(probe: str, tmp_path: Path) -> None:
    warm = Preloaded([probe], package=probe, stages=())
    argv = [sys.executable, "-m", f"{probe}.report", "--flag", "value with spaces", "3"]
    assert warm.can_fork(argv)
    code, seen = run_forked(warm, argv, tmp_path / "unit.log")
    assert code == 3
    assert seen["argv"] == ["--flag", "value with spaces", "3"]
    assert seen["cmdline"] == argv
    assert seen["fds"] == [0, 1, 2]
    assert seen["own_session"] is True
    assert seen["sigterm_default"] is True
    assert seen["root_handlers"] == 0
    assert seen["stdin"] == os.devnull


def test_only_own_modules_of_this_interpreter_fork_and_not_after_an_edit(
    probe: str, tmp_path: Path
) -> None:
    warm = Preloaded([probe], package=probe, stages=())
    ours = [sys.executable, "-m", f"{probe}.report", "0"]
    assert warm.can_fork(ours)
    assert not warm.can_fork(["/usr/bin/python3.11", "-m", f"{probe}.report", "0"])
    assert not warm.can_fork([sys.executable, "-m", "json.tool"])
    assert not warm.can_fork(["sleep", "60"])
    init = tmp_path / probe / "__init__.py"
    stat = init.stat()
    os.utime(init, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not warm.can_fork(ours)


def test_a_unit_forks_with_the_modules_it_needs_and_stages_come_one_at_a_time(
    probe: str, tmp_path: Path
) -> None:
    later = f"{probe}.later"
    warm = Preloaded([probe], package=probe, stages=[[later]], needs={"agent": [later]})
    assert later not in sys.modules
    code, seen = run_forked(warm, [sys.executable, "-m", f"{probe}.report", "server", "0"],
                            tmp_path / "server.log")  # fmt: skip
    assert (code, seen["argv"]) == (0, ["server", "0"])
    assert later not in sys.modules  # a unit needing nothing more forks at once
    code, _ = run_forked(warm, [sys.executable, "-m", f"{probe}.report", "agent", "0"],
                         tmp_path / "agent.log")  # fmt: skip
    assert code == 0 and later in sys.modules  # imported for it, before the fork
    assert warm.load_next() and not warm.load_next()  # the one stage (already in), then none
    later_file = tmp_path / probe / "later.py"
    stat = later_file.stat()
    os.utime(later_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not warm.can_fork([sys.executable, "-m", f"{probe}.report", "0"])


def test_load_one_imports_a_single_module_of_the_stages(probe: str) -> None:
    later, other = f"{probe}.later", f"{probe}.other"
    warm = Preloaded([probe], package=probe, stages=[[later], [other]], needs={})
    assert warm.load_one() and later in sys.modules and other not in sys.modules
    assert warm.load_one() and other in sys.modules
    assert not warm.load_one() and not warm.load_next()
