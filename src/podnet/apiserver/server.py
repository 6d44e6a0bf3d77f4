"""The `podnet server` process: store + registry + HTTPS + bootstrap + controllers, wired once.

What belongs here: `ServerOptions` (what the command line says), `ApiServer` (start/stop of
everything the server runs), listen-address parsing and `serve` (run until a stop event).

Invariants:
- Start order: store -> credentials/kubeconfig -> registry -> auth (signing key) -> listeners
  -> bootstrap (namespaces, the `kubernetes` Service, the default RBAC policy) -> the auth
  indexes, the `kubernetes` endpoint reconciler, namespace finalizer, root CA publisher and
  controllers. Stop reverses it: stop
  event (ends every watch stream), controllers, listeners, relay session, store. Nothing is
  left running after `stop()`.
- The server is stateless over the store (DESIGN.md contract 5): several servers may share one
  etcd; a list's continue token is its key and revision (any server continues it), and the
  watch cache and recent values are rebuilt from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from podnet import memreport
from podnet.apiserver import DEFAULT_LISTEN
from podnet.apiserver.auth.chain import Auth
from podnet.apiserver.bootstrap import (
    bootstrap,
    run_allocation_repair,
    run_namespace_finalizer,
)
from podnet.apiserver.credentials import (
    Credentials,
    ensure_credentials,
    issue_kubelet_serving,
    write_kubeconfig,
)
from podnet.apiserver.endpointreconciler import EndpointReconciler
from podnet.apiserver.handlers import ApiRunner, ServerState, build_app
from podnet.apiserver.local import LocalApi
from podnet.apiserver.registry import DEFAULT_BOOKMARK_INTERVAL, Registry
from podnet.apiserver.rootca import run_root_ca_publisher
from podnet.apiserver.sharedcreds import take_shared_credentials
from podnet.apiserver.streams.dial import kubelet_client_tls
from podnet.apiserver.watchcache import CacheOptions
from podnet.config import ClusterConfig
from podnet.controllers.manager import run_controllers
from podnet.gcfreeze import frozen_heap
from podnet.private import private_dir
from podnet.store.base import Store

log = logging.getLogger(__name__)


STOP_GRACE_SECONDS = 5.0


def parse_listen(values: list[str]) -> list[tuple[str, int]]:
    """`["127.0.0.1:6443", "172.31.0.1:6443,[::1]:6443"]` -> [(host, port), ...]."""
    out: list[tuple[str, int]] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            host, colon, port = item.rpartition(":")
            host = host.strip("[]")
            try:
                ipaddress.ip_address(host)
                number = int(port)
            except ValueError:
                raise ValueError(
                    f"bad --listen {item!r}: expected ADDR:PORT with an IP address, "
                    "e.g. 127.0.0.1:6443 or [::1]:6443"
                ) from None
            if not colon or not 0 <= number < 65536:
                raise ValueError(f"bad --listen {item!r}: the port must be 0-65535")
            out.append((host, number))
    if not out:
        raise ValueError("--listen needs at least one ADDR:PORT")
    return out


@dataclass(slots=True)
class ServerOptions:
    state_dir: Path
    store_url: str = "sqlite"
    listen: list[tuple[str, int]] = field(default_factory=lambda: parse_listen([DEFAULT_LISTEN]))
    advertise_address: str | None = None
    config: ClusterConfig = field(default_factory=ClusterConfig)
    controllers: bool = True
    bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL
    watch_cache: CacheOptions = field(default_factory=CacheOptions)
    tls: bool = True  # unit tests may serve plain HTTP
    # take the cluster's CA, admin token and signing key from the store (apiserver/sharedcreds.py)
    share_credentials: bool = False
    # every server of the cluster, listed in STATE_DIR/kubeconfig for podnet's clients to fail
    # over between (empty: this server only)
    cluster_urls: tuple[str, ...] = ()


def _host_for_url(host: str) -> str:
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return f"[{host}]" if ip.version == 6 else host


class ApiServer:
    """Everything `podnet server` runs; `start()` then `stop()` (or `async with`)."""

    def __init__(self, options: ServerOptions, store: Store | None = None) -> None:
        self.options = options
        self._store = store
        self.stop_event = asyncio.Event()
        self.registry: Registry | None = None
        self.auth: Auth | None = None
        self.credentials: Credentials | None = None
        self.ports: list[int] = []
        self._runner: web.AppRunner | None = None
        self._state: ServerState | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        host, _ = self.options.listen[0]
        scheme = "https" if self.options.tls else "http"
        return f"{scheme}://{_host_for_url(host)}:{self.ports[0]}"

    @property
    def advertise_address(self) -> str:
        if self.options.advertise_address:
            return self.options.advertise_address
        for host, _ in self.options.listen:
            ip = ipaddress.ip_address(host)
            if not ip.is_loopback and not ip.is_unspecified:
                return host
        return "127.0.0.1"

    async def start(self) -> None:
        opts = self.options
        private_dir(opts.state_dir)
        if self._store is None:
            from podnet.store import open_store

            self._store = open_store(opts.store_url, opts.state_dir)
        listen_ips = [host for host, _ in opts.listen]
        if opts.share_credentials:
            await take_shared_credentials(
                self._store, opts.state_dir, opts.config.kubernetes_service_ip
            )
        self.credentials = ensure_credentials(
            opts.state_dir, [*listen_ips, self.advertise_address], opts.config.kubernetes_service_ip
        )
        registry = Registry(
            self._store,
            opts.config,
            ca_pem=self.credentials.ca_pem,
            bookmark_interval=opts.bookmark_interval,
            watch_cache=opts.watch_cache,
        )
        self.registry = registry

        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        auth = Auth.for_state_dir(registry, opts.state_dir, self.credentials.token)
        self.auth = auth
        agent_tls = kubelet_client_tls(
            self.credentials.ca_path,
            self.credentials.kubelet_client_cert_path,
            self.credentials.kubelet_client_key_path,
        )
        state_dir = opts.state_dir
        state = ServerState(
            registry,
            auth,
            "",
            self.stop_event,
            session,
            agent_tls,
            lambda node, ips: issue_kubelet_serving(state_dir, node, ips),
        )
        self._state = state
        # shutdown waits this long for requests in flight (watches end on the stop event)
        runner = ApiRunner(build_app(state), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        ssl_context: ssl.SSLContext | None = None
        if opts.tls:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(self.credentials.cert_path, self.credentials.key_path)
        for host, port in opts.listen:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
            # aiohttp exposes the bound socket (needed for port 0) only on the private server
            sockets = getattr(site._server, "sockets", None) or []
            bound = int(sockets[0].getsockname()[1]) if sockets else port
            self.ports.append(bound)
        secure_port = self.ports[0]
        state.server_address = f"{self.advertise_address}:{secure_port}"
        write_kubeconfig(self.credentials, self.url, opts.cluster_urls)
        await bootstrap(registry, self.advertise_address, secure_port)
        self._tasks.append(asyncio.create_task(auth.run(self.stop_event), name="auth-indexes"))
        reconciler = EndpointReconciler(
            LocalApi(registry, self.stop_event), self.advertise_address, secure_port
        )
        self._tasks.append(
            asyncio.create_task(reconciler.run(self.stop_event), name="endpoint-reconciler")
        )

        self._tasks.append(
            asyncio.create_task(
                run_namespace_finalizer(registry, self.stop_event), name="namespace-finalizer"
            )
        )
        self._tasks.append(
            asyncio.create_task(
                run_allocation_repair(registry, self.stop_event), name="allocation-repair"
            )
        )
        self._tasks.append(
            asyncio.create_task(
                run_root_ca_publisher(
                    LocalApi(registry, self.stop_event), registry.ca_pem, self.stop_event
                ),
                name="root-ca-publisher",
            )
        )
        if opts.controllers:
            # every watch of the controllers is an informer's, which keeps no managedFields
            api = LocalApi(registry, self.stop_event, watch_managed_fields=False)
            self._tasks.append(
                asyncio.create_task(
                    self._supervise(
                        run_controllers(
                            api,
                            opts.config,
                            self.stop_event,
                            # the node authorizer reads the controllers' pod informer while
                            # they run here, instead of decoding every pod event again
                            share=lambda informers: auth.pods.follow(informers.informer("pods")),
                        )
                    ),
                    name="controllers",
                )
            )
        if memreport.enabled():
            self._tasks.append(
                asyncio.create_task(memreport.run(self.stop_event), name="memory-report")
            )
        addresses = ", ".join(f"{h}:{p}" for (h, _), p in zip(opts.listen, self.ports, strict=True))
        log.info(
            "podnet API server listening on %s (%s, store %s); kubeconfig %s",
            addresses,
            self.url,
            opts.store_url,
            self.credentials.kubeconfig_path,
        )

    async def _supervise(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the controllers stopped with an error")

    async def stop(self) -> None:
        self.stop_event.set()
        # every task ends by itself once the stop event is set (watches end, controllers
        # return); one that does not is a bug, cancelled after a grace period and logged
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_SECONDS)
        for task in pending:
            log.warning(
                "%s did not stop within %.0fs of the stop event; cancelling it",
                task.get_name(),
                STOP_GRACE_SECONDS,
            )
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._state is not None and self._state.session is not None:
            await self._state.session.close()
        if self.registry is not None:
            await self.registry.close()
        if self._store is not None:
            await self._store.close()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(options: ServerOptions, stop: asyncio.Event) -> None:
    """Run a server until `stop` is set (the process's full garbage collections walk only what
    changed since the last one: `podnet.gcfreeze`)."""
    server = ApiServer(options)
    with frozen_heap():
        await _serve(server, stop)


async def _serve(server: ApiServer, stop: asyncio.Event) -> None:
    try:
        await server.start()
        await stop.wait()
        log.info("stopping the podnet API server")
    finally:
        await server.stop()
