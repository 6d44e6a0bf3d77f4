"""The proxy kernel tests' topology (`podnet.testing.proxy_lab`) stops what its endpoints'
httpds forked: a connection child waiting for a request that never comes (a connection a
policy revoked) must not outlive the topology. On loopback, with a real busybox httpd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from podnet import procs
from podnet.testing.proxy_lab import _spawn_quiet, _stop_groups


def _running_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (Debian: busybox)")
def test_an_httpds_connection_child_ends_with_it(tmp_path: Path) -> None:
    Path(tmp_path, "index.html").write_text("ep0\n")
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    httpd = _spawn_quiet(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(tmp_path)])
    children: list[int] = []
    starts: dict[int, int | None] = {}
    client = None
    try:
        deadline = time.monotonic() + 5
        while client is None:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=1)
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "busybox httpd did not listen"
                time.sleep(0.02)
        # accepted, and no request sent: the child waits (busybox: up to 60 s) for one
        while not (children := _running_children(httpd.pid)):
            assert time.monotonic() < deadline, "busybox httpd forked no connection child"
            time.sleep(0.02)
        starts = {pid: procs.process_start_time(pid) for pid in children}
        _stop_groups([httpd])
        assert httpd.returncode is not None
        left = [pid for pid in children if procs.process_start_time(pid) == starts[pid]]
        assert not left, f"connection children of the stopped httpd still run: {left}"
    finally:
        if client is not None:
            client.close()
        if httpd.returncode is None:
            httpd.kill()
            httpd.wait()
        for pid in children:  # what a failing stop left, by pid and start time
            if procs.process_start_time(pid) == starts.get(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
