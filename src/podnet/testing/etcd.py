"""Throwaway etcd servers on loopback, for tests and benchmarks: one member or a cluster.

`EtcdServer` starts the system `etcd` binary with free client/peer ports on 127.0.0.1 and a
fresh data directory, waits until `/health` answers, and on exit stops exactly the process it
started (by its pid, never by name) and removes the data directory. `EtcdCluster` starts N
such members as one real etcd cluster (`--initial-cluster` naming all of them), the way
`podnet`'s HA tests and `benchmarks/scale.py` run a three-member store; `kill(i)` takes one
member out with SIGKILL, as a crashed host would.

Invariants:
- Every server has a unique member name and data directory (`podnet-etcd-<random>`), so two
  suites running at the same time never share state.
- `stop()` is idempotent and always removes the data directory, even if etcd died on its own.
- A cluster is healthy only when every member answers `/health` (which needs a leader, i.e.
  a quorum); a start that loses a port race is retried with fresh ports.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from podnet.store.etcd_health import leading_member, member_healthy, member_status
from podnet.testing.ports import free_port


class EtcdStartError(RuntimeError):
    """etcd could not be started; the message carries the tail of its log."""


class EtcdServer:
    """One etcd member on loopback. Use as a context manager, or call start()/stop()."""

    def __init__(self, binary: str = "etcd", startup_timeout: float = 20.0) -> None:
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.name = f"podnet-etcd-{secrets.token_hex(4)}"
        self.client_port = 0
        self.peer_port = 0
        self.cluster_token = self.name
        self.initial_cluster = ""  # NAME=PEER_URL,...; empty: this member alone
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`, the form `etcd://` store URLs take."""
        if not self.client_port:
            raise RuntimeError("etcd server is not started")
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def store_url(self) -> str:
        return f"etcd://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> EtcdServer:
        _require(self.binary)
        last_error: EtcdStartError | None = None
        for _attempt in range(3):  # a free port may be taken between probing and binding
            try:
                self.client_port, self.peer_port = free_port(), free_port()
                self.launch()
                self.wait_healthy()
                return self
            except EtcdStartError as error:
                last_error = error
                self.stop()
        assert last_error is not None
        raise last_error

    def launch(self) -> None:
        """Start the process on the ports already chosen; `wait_healthy` waits for it."""
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        log_path = self._workdir / "etcd.log"
        argv = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self._workdir / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token,
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EtcdStartError(
                    f"etcd {self.name} exited with code {self._process.returncode} during "
                    "startup:\n" + self._log_tail()
                )
            if self._healthy():
                return
            time.sleep(0.05)
        raise EtcdStartError(
            f"etcd on {self.client_url} not healthy after {self.startup_timeout:.0f}s:\n"
            + self._log_tail()
        )

    def _healthy(self) -> bool:
        return member_healthy("127.0.0.1", self.client_port)

    def status(self) -> dict[str, Any] | None:
        """The member's `Maintenance.Status` (v3 JSON gateway); None when it does not answer."""
        if self._process is None or self._process.poll() is not None:
            return None
        return member_status("127.0.0.1", self.client_port)

    def _log_tail(self, lines: int = 20) -> str:
        if self._workdir is None:
            return ""
        try:
            text = (self._workdir / "etcd.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the member (a crashed host); its data directory stays until `stop()`."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(workdir)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        raise EtcdStartError(
            f"{binary!r} not found on PATH; install it (Debian: apt-get install etcd-server)"
        )


class EtcdCluster:
    """`size` etcd members on loopback forming one cluster. A context manager, or start/stop."""

    def __init__(self, size: int = 3, binary: str = "etcd", startup_timeout: float = 30.0) -> None:
        self.members = [EtcdServer(binary, startup_timeout) for _ in range(size)]
        self.binary = binary

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @property
    def store_url(self) -> str:
        """`etcd://127.0.0.1:P1,127.0.0.1:P2,...`: the store's gRPC channel fails over."""
        return "etcd://" + ",".join(self.endpoints)

    def leader(self) -> int | None:
        """Index of the member that leads the raft group now (asked of the live members)."""
        return leading_member([member.status() for member in self.members])

    def start(self) -> EtcdCluster:
        _require(self.binary)
        token = f"podnet-etcd-cluster-{secrets.token_hex(4)}"
        last_error: EtcdStartError | None = None
        for _attempt in range(3):  # as EtcdServer.start: a port race means fresh ports
            for member in self.members:
                member.client_port, member.peer_port = free_port(), free_port()
                member.cluster_token = token
            initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            try:
                for member in self.members:
                    member.initial_cluster = initial
                    member.launch()
                for member in self.members:
                    member.wait_healthy()
                return self
            except EtcdStartError as error:
                last_error = error
                self.stop()
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
