"""Compat suite fixtures: a real `podnet server` process per test module, on SQLite and on etcd.

Each module shares one server per store (tests isolate themselves with their own namespace);
every process started here is recorded and stopped by pid in a finally block. kubectl gets a
per-test `--cache-dir` so its discovery cache can never go stale between servers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from podnet.testing.ports import free_port
from podnet.testing.server import ServerProcess

HERE = Path(__file__).parent


@pytest.fixture(scope="module", params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def podnet_store(request: pytest.FixtureRequest) -> str:
    """Every compat module runs twice: its server on SQLite, then on the session's etcd."""
    if request.param == "etcd":
        return f"{request.getfixturevalue('etcd_url')}/compat-{uuid.uuid4().hex[:8]}"
    return "sqlite"


@dataclass(frozen=True)
class Kubectl:
    server: ServerProcess
    cache_dir: Path
    namespace: str

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        binary: str = "kubectl",
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.server.kubeconfig),
            "HOME": str(self.cache_dir),
            **(env or {}),
        }
        cmd = [binary, f"--cache-dir={self.cache_dir}", "-n", self.namespace, *args]
        result = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\nserver log:\n"
                f"{self.server.log_tail()}"
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
def kubectl(podnet_server: ServerProcess, tmp_path: Path) -> Iterator[Kubectl]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    tool = Kubectl(podnet_server, tmp_path / "kube-cache", namespace)
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


@pytest.fixture
def api(podnet_server: ServerProcess) -> Iterator[Any]:
    """A client of the official `kubernetes` package for the module's server."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(podnet_server.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


@dataclass(frozen=True)
class StandinAgent:
    port: int
    node_name: str


@pytest.fixture(scope="module")
def standin_agent(podnet_server: ServerProcess) -> Iterator[StandinAgent]:
    """A stand-in node agent process (TLS from the server's CA, as a real agent), registered
    as a Node at 127.0.0.1:<its port>."""
    import json

    port = free_port()
    node_name = f"standin-{uuid.uuid4().hex[:6]}"
    issued = podnet_server.node_credentials(node_name, ["127.0.0.1"])
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "standin_agent.py"),
            str(port),
            str(issued.cert_path),
            str(issued.key_path),
            str(podnet_server.ca_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", line
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
            f"{podnet_server.url}/api/v1/nodes",
            data=json.dumps(node).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {podnet_server.token}",
                "Content-Type": "application/json",
            },
        )
        urllib.request.urlopen(request, context=podnet_server.ssl_context(), timeout=5).read()
        yield StandinAgent(port, node_name)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
