"""A throwaway etcd server on loopback, for tests and benchmarks.

`EtcdServer` starts the system `etcd` binary with free client/peer ports on 127.0.0.1 and a
fresh data directory, waits until `/health` answers, and on exit stops exactly the process it
started (by its recorded pid, never by name) and removes the data directory.

Invariants:
- Every server has a unique member name and data directory (`podnet-etcd-<random>`), so two
  suites running at the same time never share state.
- `stop()` is idempotent and always removes the data directory, even if etcd died on its own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

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
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> EtcdServer:
        if shutil.which(self.binary) is None:
            raise EtcdStartError(
                f"{self.binary!r} not found on PATH; install it "
                "(Debian: apt-get install etcd-server)"
            )
        last_error: EtcdStartError | None = None
        for _attempt in range(3):  # a free port may be taken between probing and binding
            try:
                self._start_once()
                return self
            except EtcdStartError as error:
                last_error = error
                self.stop()
        assert last_error is not None
        raise last_error

    def _start_once(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.client_port = free_port()
        self.peer_port = free_port()
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        log_path = self._workdir / "etcd.log"
        argv = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self._workdir / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.name,
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
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with code {self._process.returncode} during startup:\n"
                    + self._log_tail()
                )
            if self._healthy():
                return
            time.sleep(0.05)
        raise EtcdStartError(
            f"etcd on {self.client_url} not healthy after {self.startup_timeout:.0f}s:\n"
            + self._log_tail()
        )

    def _healthy(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1.0)
        try:
            connection.request("GET", "/health")
            body = json.loads(connection.getresponse().read())
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            connection.close()
        return bool(body.get("health") == "true")

    def _log_tail(self, lines: int = 20) -> str:
        if self._workdir is None:
            return ""
        try:
            text = (self._workdir / "etcd.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

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
