"""A highly available control plane on loopback: N etcd members, M `podnet server`s on them.

What belongs here: `HaControlPlane`, which tests and `benchmarks/scale.py` use to run the shape
of issue #15's control hosts on one machine — a real etcd cluster (`EtcdCluster`), several
real server processes (`ServerProcess`) sharing it, and one kubeconfig listing every server
(`podnet.io/servers`) so podnet's clients fail over by themselves — plus the failures the
tests inflict: `kill_server(i)` and `kill_etcd(i)` (SIGKILL, as a crashed host), and
`leader()`, the server whose controllers are active (the holder of the controllers' Lease).
And the load that tests/e2e/test_ha.py and benchmarks/ha.py put on such a plane across those
failures: `Writer`, a steady stream of ConfigMap creates that records when each was
acknowledged, and `Watcher`, the agents' own list+watch loop counting what it is fed.

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

import asyncio
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from podnet.api.client import HttpApi
from podnet.api.errors import ApiError
from podnet.api.interface import Api
from podnet.api.meta import parse_rfc3339
from podnet.api.reflector import reflect
from podnet.apiserver.credentials import render_kubeconfig
from podnet.controllers.leaderelection import LEASE_NAME, LEASE_NAMESPACE, pid_of
from podnet.private import private_dir, write_private
from podnet.testing.etcd import EtcdCluster
from podnet.testing.server import ServerProcess


@dataclass(frozen=True, slots=True)
class ControllersLease:
    holder: int | None  # index of the server holding it (None: nobody, or not of this plane)
    acquired: datetime | None  # when the holder took it (wall clock of the servers' host)
    renewed: datetime | None  # when the holder last renewed it


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

    def client(self, index: int) -> HttpApi:
        """A client that knows every server and starts on server `index` (the caller closes it)."""
        first = self.servers[index]
        others = [server.url for server in self.servers]
        return HttpApi(first.url, first.token, first.ca_path.read_bytes(), servers=others)

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
            return (await self.controllers_lease(api)).holder

    async def controllers_lease(self, api: Api) -> ControllersLease:
        """The controllers' Lease as `api` reads it now: which server holds it, since when."""
        spec = (await api.get("leases", LEASE_NAME, LEASE_NAMESPACE)).get("spec") or {}
        held_by = pid_of(str(spec.get("holderIdentity") or ""))
        pids = [server.pid for server in self.servers]
        index = pids.index(held_by) if held_by is not None and held_by in pids else None
        return ControllersLease(
            index, parse_rfc3339(spec.get("acquireTime")), parse_rfc3339(spec.get("renewTime"))
        )

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


class Writer:
    """Creates ConfigMaps `cm-0`, `cm-1`, ... one after another, retrying a name until the store
    confirms it (a 409 on a retry: an earlier, cut-off attempt was applied). Records when each
    write was acknowledged and when each retry was made (`time.monotonic()`)."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.acked: list[str] = []
        self.ack_times: list[float] = []
        self.retry_times: list[float] = []

    @property
    def retries(self) -> int:
        return len(self.retry_times)

    async def run(self, stop: asyncio.Event) -> None:
        index = 0
        while not stop.is_set():
            name = f"cm-{index}"
            body = {"metadata": {"name": name}, "data": {"n": str(index)}}
            try:
                await self.api.create("configmaps", body, self.namespace)
            except ApiError as error:
                if error.code != 409:  # 409: an earlier, cut-off attempt was applied
                    self.retry_times.append(time.monotonic())
                    await asyncio.sleep(0.05)
                    continue
            except (aiohttp.ClientError, TimeoutError):
                self.retry_times.append(time.monotonic())  # cut off after sending: ask again
                continue
            self.acked.append(name)
            self.ack_times.append(time.monotonic())
            index += 1

    def longest_gap(self, since: float, until: float = float("inf")) -> float:
        """The longest time without an acknowledgement from the last one before `since` (the
        write a failure at `since` interrupted) over every one before `until`."""
        before = [at for at in self.ack_times if at < since]
        after = [at for at in self.ack_times if since <= at < until]
        if not after:
            raise ValueError("no write was acknowledged in that window")
        times = [before[-1] if before else since, *after]
        return max(b - a for a, b in pairwise(times))

    def acked_between(self, since: float, until: float = float("inf")) -> list[str]:
        return [n for n, at in zip(self.acked, self.ack_times, strict=True) if since <= at < until]

    def retries_between(self, since: float, until: float = float("inf")) -> int:
        return sum(1 for at in self.retry_times if since <= at < until)


class Watcher:
    """The agents' own list+watch loop (`reflect`) on ConfigMaps, counting what it is fed."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.added: Counter[str] = Counter()
        self.lists = 0  # a failover must not cost a re-list

    def replace(self, items: list[dict[str, object]]) -> None:
        self.lists += 1

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "ADDED":
            self.added[obj["metadata"]["name"]] += 1

    async def run(self, stop: asyncio.Event) -> None:
        await reflect(
            self.api, "configmaps", replace=self.replace, apply=self.apply, stop=stop,
            namespace=self.namespace,
        )  # fmt: skip
