"""Compat suite fixtures: a real `podnet server` process per test module, on SQLite and on etcd.

Each module shares one server per store (tests isolate themselves with their own namespace);
every process started here is recorded and stopped by pid in a finally block. kubectl gets a
per-test `--cache-dir` so its discovery cache can never go stale between servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningServer:
    url: str
    state_dir: Path
    kubeconfig: Path
    token: str
    store: str
    log: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.state_dir / "ca.crt"))


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_server(state_dir: Path, store: str) -> tuple[subprocess.Popen[bytes], RunningServer]:
    port = free_port()
    log = state_dir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "podnet.cli.main",
                "server",
                "--state-dir",
                str(state_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--store",
                store,
                "--no-controllers",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(
        f"https://127.0.0.1:{port}", state_dir, state_dir / "kubeconfig", "", store, log
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"podnet server exited with {proc.returncode}:\n{log.read_text()}")
        if server.kubeconfig.exists():
            try:
                urllib.request.urlopen(
                    f"{server.url}/readyz", context=server.ssl_context(), timeout=2
                ).read()
                token = (state_dir / "token").read_text().strip()
                return proc, RunningServer(
                    server.url, state_dir, server.kubeconfig, token, store, log
                )
            except OSError:
                pass
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"podnet server did not become ready:\n{log.read_text()}")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    state_dir = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "etcd":
        store = f"{request.getfixturevalue('etcd_url')}/compat-{uuid.uuid4().hex[:8]}"
    else:
        store = "sqlite"
    proc, running = start_server(state_dir, store)
    try:
        yield running
    finally:
        code = _stop(proc)
        assert code == 0, f"podnet server exited with {code}:\n{running.log.read_text()}"


@dataclass(frozen=True)
class Kubectl:
    server: RunningServer
    cache_dir: Path
    namespace: str

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.server.kubeconfig),
            "HOME": str(self.cache_dir),
        }
        cmd = ["kubectl", f"--cache-dir={self.cache_dir}", "-n", self.namespace, *args]
        result = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\nserver log:\n"
                f"{self.server.log.read_text()[-3000:]}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "KUBECONFIG": str(self.server.kubeconfig), "HOME": str(self.cache_dir)}
        return subprocess.Popen(
            ["kubectl", f"--cache-dir={self.cache_dir}", "-n", self.namespace, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )


@pytest.fixture
def kubectl(server: RunningServer, tmp_path: Path) -> Iterator[Kubectl]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    tool = Kubectl(server, tmp_path / "kube-cache", namespace)
    tool(
        "create",
        "-f",
        "-",
        stdin=f'{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{namespace}"}}}}',
    )
    try:
        yield tool
    finally:
        tool("delete", "namespace", namespace, "--wait=false", check=False)


@dataclass(frozen=True)
class StandinAgent:
    port: int
    node_name: str


@pytest.fixture(scope="module")
def standin_agent(server: RunningServer) -> Iterator[StandinAgent]:
    """A stand-in node agent process, registered as a Node at 127.0.0.1:<its port>."""
    import json

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "standin_agent.py"), str(port), server.token],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", line
        node_name = f"standin-{uuid.uuid4().hex[:6]}"
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node_name},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            },
        }
        request = urllib.request.Request(
            f"{server.url}/api/v1/nodes",
            data=json.dumps(node).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, context=server.ssl_context(), timeout=5).read()
        yield StandinAgent(port, node_name)
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def running_pod(kubectl: Kubectl, standin_agent: StandinAgent) -> Callable[[str], str]:
    """Create a pod bound to the stand-in node and mark it Running; returns its name."""
    import json

    def make(name: str) -> str:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": standin_agent.node_name,
                "containers": [
                    {"name": "main", "image": "busybox"},
                    {"name": "side", "image": "busybox"},
                ],
            },
        }
        kubectl("create", "-f", "-", stdin=json.dumps(manifest))
        kubectl(
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"phase": "Running"}}),
        )
        return name

    return make
