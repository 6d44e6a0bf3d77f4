"""A highly available control plane on loopback: N etcd members, M `podnet server`s on them.

What belongs here: `HaControlPlane`, which tests and `benchmarks/scale.py` use to run the shape
of issue #15's control hosts on one machine — a real etcd cluster (`EtcdCluster`), several
real server processes (`ServerProcess`) sharing it, and one kubeconfig listing every server
(`podnet.io/servers`) so podnet's clients fail over by themselves — plus the failures the
tests inflict: `kill_server(i)` and `kill_etcd(i)` (SIGKILL, as a crashed host), and
`leader()`, the server whose controllers are active (the holder of the controllers' Lease).

Shared credentials: every server runs with `--share-credentials`; the first creates the
cluster's CA, admin token and token-signing key and stores them, the others take them from the
store (`apiserver/sharedcreds.py`). Each server issues its own serving certificate from that CA.

Invariants:
- Everything lives under `base` (state dirs, logs, the kubeconfig) and every process is
  stopped by its own record; `stop()` is idempotent and also runs after a failed `start()`.
- The servers share one etcd key prefix (`/podnet-<random>`): one cluster per plane, and two
  planes may even share an etcd.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from podnet.api.client import HttpApi
from podnet.apiserver.credentials import render_kubeconfig
from podnet.controllers.leaderelection import LEASE_NAME, LEASE_NAMESPACE
from podnet.private import private_dir, write_private
from podnet.testing.etcd import EtcdCluster
from podnet.testing.server import ServerProcess


class HaControlPlane:
    """`etcd` members and `servers` API servers under `base`. Context manager or start/stop."""

    def __init__(
        self,
        base: Path,
        *,
        servers: int = 3,
        etcd: int = 3,
        controllers: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.base = Path(base)
        self.etcd = EtcdCluster(etcd)
        self.prefix = f"/podnet-{secrets.token_hex(4)}"
        self.controllers = controllers
        self.extra_args = extra_args
        self.servers: list[ServerProcess] = []
        self._count = servers

    @property
    def kubeconfig(self) -> Path:
        return self.base / "kubeconfig"

    @property
    def store_url(self) -> str:
        return self.etcd.store_url + self.prefix

    def api(self) -> HttpApi:
        """A client that knows every server (the caller closes it)."""
        return HttpApi.from_kubeconfig(self.kubeconfig)

    def start(self) -> HaControlPlane:
        private_dir(self.base)
        try:
            self.etcd.start()
            self.servers = [
                ServerProcess(
                    self.base / f"server{index + 1}",
                    store=self.store_url,
                    controllers=self.controllers,
                    extra_args=("--share-credentials", *self.extra_args),
                )
                for index in range(self._count)
            ]
            first, *others = self.servers
            first.start()  # creates and stores the cluster's credentials, bootstraps the store
            with ThreadPoolExecutor(max(1, len(others))) as pool:
                for started in [pool.submit(server.start) for server in others]:
                    started.result()
            write_private(
                self.kubeconfig,
                render_kubeconfig(
                    first.url,
                    first.ca_path.read_bytes(),
                    first.token,
                    servers=[server.url for server in self.servers],
                ).encode(),
            )
        except BaseException:
            self.stop()
            raise
        return self

    async def leader(self) -> int | None:
        """Index of the server holding the controllers' Lease now (None: nobody/unknown)."""
        async with self.api() as api:
            lease = await api.get("leases", LEASE_NAME, LEASE_NAMESPACE)
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        parts = holder.rsplit("_", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        for index, server in enumerate(self.servers):
            if server.pid == int(parts[1]):
                return index
        return None

    def kill_server(self, index: int) -> None:
        self.servers[index].kill()

    def kill_etcd(self, index: int) -> None:
        self.etcd.members[index].kill()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.etcd.stop()

    def __enter__(self) -> HaControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
