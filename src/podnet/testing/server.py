"""A real `podnet server` child process on loopback, for tests and benchmarks.

What belongs here: `ServerProcess`, the one way test code and benchmarks run the API server as
a process (the compat suite, the kubelet and flannel kernel tests, `benchmarks/api.py`). Tests
reach it through fixtures (`podnet_server` in `tests/conftest.py`); benchmarks import it.

Invariants:
- `start()` returns only when the server is *bootstrapped*: `/readyz` answers and the last
  object bootstrap writes (the `default/kubernetes` EndpointSlice) exists, so a test may
  create objects in `default` at once.
- The process is recorded by pid and start time (`podnet.procs`) in `<state_dir>/pids` and is
  only ever stopped through that record: SIGTERM, then SIGKILL after the grace period.
  `stop()` is idempotent and returns the exit code (0 after a clean SIGTERM shutdown).
- The server's output goes to `<state_dir>/server.log`; every start error carries its tail.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from podnet import procs
from podnet.api.client import HttpApi
from podnet.apiserver.credentials import NodeCredentials, write_node_credentials
from podnet.testing.ports import free_port

_BOOTSTRAPPED = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"
_START_ATTEMPTS = 3  # a free port may be taken by someone else between probing and binding


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message carries the tail of its log."""


class ServerProcess:
    """`podnet server` on 127.0.0.1:<free port>. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        state_dir: Path,
        *,
        store: str = "sqlite",
        controllers: bool = False,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.store = store
        self.controllers = controllers
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._record: procs.Recorded | None = None

    # -- where things are ---------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the podnet server is not started")
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "ca.crt"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def api(self) -> HttpApi:
        """A client for this server (the caller closes it)."""
        return HttpApi.from_kubeconfig(self.kubeconfig)

    def node_credentials(self, node: str, ips: list[str]) -> NodeCredentials:
        """A node agent's identity issued by this server (`podnet node-credentials`): its
        token kubeconfig and a kubelet serving certificate for `ips`, under the state dir."""
        return write_node_credentials(
            self.state_dir, node, ips, self.url, self.state_dir / "nodes" / node
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> ServerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._spawn()
            try:
                self._wait_ready()
                return self
            except ServerStartError as error:
                self.stop()
                lost_port_race = "address already in use" in str(error).lower()
                if not lost_port_race or attempt == _START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.port = free_port()
        self.returncode = None
        argv = [
            sys.executable, "-m", "podnet.cli.main", "server",
            "--state-dir", str(self.state_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--store", self.store,
            *([] if self.controllers else ["--no-controllers"]),
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C on the test run does not reach it first
            )
        self._record = procs.record(self.state_dir / "pids", "server", self._process.pid)

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerStartError(
                    f"podnet server exited with {self._process.returncode} during startup:\n"
                    + self.log_tail()
                )
            if self._bootstrapped():
                return
            time.sleep(0.05)
        raise ServerStartError(
            f"podnet server on {self.url} not ready after {self.startup_timeout:.0f}s:\n"
            + self.log_tail()
        )

    def _bootstrapped(self) -> bool:
        if not self.kubeconfig.exists() or not (self.state_dir / "token").exists():
            return False
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ssl_context(), timeout=2.0
        )
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().read() != b"ok":
                return False
            connection.request(
                "GET", _BOOTSTRAPPED, headers={"Authorization": f"Bearer {self.token}"}
            )
            response = connection.getresponse()
            return response.status == 200 and json.loads(response.read())["kind"] == "EndpointSlice"
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            return False  # not listening yet, or its certificate is not written yet
        finally:
            connection.close()

    def kill(self) -> None:
        """SIGKILL the process (a crashed host: no lease released, connections cut)."""
        if self._process is not None and self._record is not None and procs.is_alive(self._record):
            self._process.kill()
            self._process.wait(10)

    def stop(self, grace_seconds: float = 15.0) -> int | None:
        """Stop the process (by its record); its exit code, None if it was never started."""
        process, self._process = self._process, None
        record, self._record = self._record, None
        if process is not None:
            if process.poll() is None and record is not None and procs.is_alive(record):
                process.terminate()
                try:
                    process.wait(grace_seconds)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
            self.returncode = process.wait(10)
        if record is not None:
            procs.forget(record)
        return self.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
