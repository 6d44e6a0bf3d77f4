"""The DNS server on loopback: a real registry behind it, Debian's dnsmasq as its upstream.

Queries go over real UDP and TCP sockets (dnspython's asyncio client); the cluster changes
through the API and the answers follow; names outside the zone go to dnsmasq and come back
from the cache the second time; /health, /ready and /metrics answer like CoreDNS's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
import pytest_asyncio

from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.local import LocalApi
from podnet.apiserver.registry import Registry
from podnet.config import ClusterConfig
from podnet.dns.records import DnsConfig
from podnet.dns.server import DnsServer, ServerOptions
from podnet.store import open_store
from podnet.testing.dns_cluster import endpoint_slice, service
from podnet.testing.ports import free_port
from podnet.testing.waiting import eventually

LOOPBACK = "127.0.0.1"
DEADLINE = 10.0

pytestmark = pytest.mark.asyncio


@pytest.fixture
def upstream() -> Iterator[tuple[str, int]]:
    """dnsmasq on loopback, answering: www.example.com and its PTR; other names in
    example.com are NXDOMAIN."""
    binary = shutil.which("dnsmasq")
    if binary is None:
        pytest.skip("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
    port = free_port()  # dnsmasq binds it for TCP and UDP
    proc = subprocess.Popen(
        [
            binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", f"--listen-address={LOOPBACK}", "--bind-interfaces", f"--port={port}",
            "--pid-file=", "--user=root", "--local=/example.com/",
            "--address=/www.example.com/192.0.2.80", "--local-ttl=300",
            "--ptr-record=80.2.0.192.in-addr.arpa,www.example.com",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # it binds a moment after it starts (long on a loaded machine): a query before that
        # is refused, and the server under test answers SERVFAIL
        probe = dns.message.make_query("www.example.com", "A")
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"dnsmasq exited with {proc.returncode} (port {port})"
            try:
                dns.query.udp(probe, LOOPBACK, port=port, timeout=0.5)
                break
            except (OSError, dns.exception.Timeout):
                assert time.monotonic() < deadline, "dnsmasq did not answer within 30 s"
                time.sleep(0.05)
        yield LOOPBACK, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[LocalApi]:
    store = open_store("sqlite", tmp_path)
    try:
        registry = Registry(store, ClusterConfig(), ca_pem=b"", bookmark_interval=0.2)
        await bootstrap(registry, LOOPBACK, 6443)
        yield LocalApi(registry)
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def running(api: LocalApi, options: ServerOptions) -> AsyncIterator[DnsServer]:
    server = DnsServer(api, options)
    stop = asyncio.Event()
    await server.start()
    task = asyncio.create_task(server.run(stop))
    try:
        await eventually(lambda: server.ready, DEADLINE, "the server to be ready")
        yield server
    finally:
        stop.set()
        await task


def options(upstream: tuple[str, int] | None = None, lameduck: float = 0.0) -> ServerOptions:
    return ServerOptions(
        config=DnsConfig(local_ips=(LOOPBACK,)),
        upstreams=(upstream,) if upstream else (),
        address=LOOPBACK,
        dns_port=0,
        health_port=0,
        ready_port=0,
        metrics_port=0,
        lameduck=lameduck,
    )


async def query(
    server: DnsServer, name: str, rdtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    request = dns.message.make_query(name, rdtype)
    port = server.ports["dns"]
    if tcp:
        return await dns.asyncquery.tcp(request, LOOPBACK, port=port, timeout=3)
    return await dns.asyncquery.udp(request, LOOPBACK, port=port, timeout=3)


def addresses(reply: dns.message.Message) -> str:
    """rcode + the A records of the answer, e.g. 'NOERROR 10.96.0.20'."""
    found = [r.address for rrset in reply.answer if rrset.rdtype == 1 for r in rrset]
    return " ".join([dns.rcode.to_text(reply.rcode()), *found])


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{LOOPBACK}:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_answers_follow_the_api(api: LocalApi) -> None:
    async with running(api, options()) as server:
        assert await http_get(server.ports["health"], "/health") == (200, "OK")
        assert await http_get(server.ports["ready"], "/ready") == (200, "OK")
        kubernetes = await query(server, "kubernetes.default.svc.cluster.local")
        assert addresses(kubernetes) == "NOERROR 10.96.0.1"
        assert kubernetes.flags & dns.flags.AA

        created = await api.create(
            "services", service("default", "web", None, [("http", 80, "TCP")]), "default"
        )
        ip = created["spec"]["clusterIP"]

        async def web(expected: str) -> bool:
            return addresses(await query(server, "web.default.svc.cluster.local")) == expected

        await eventually(lambda: web(f"NOERROR {ip}"), DEADLINE, "web's address")
        tcp = await query(server, "web.default.svc.cluster.local", tcp=True)
        assert addresses(tcp) == f"NOERROR {ip}"

        await api.create(
            "services", service("default", "db", "None", [("mysql", 3306, "TCP")]), "default"
        )
        slice_obj = endpoint_slice(
            "default", "db", [("10.244.1.5", "db-0", True)], [("mysql", 3306, "TCP")]
        )
        await api.create("endpointslices", slice_obj, "default")

        async def db() -> bool:
            reply = await query(server, "db-0.db.default.svc.cluster.local")
            return addresses(reply) == "NOERROR 10.244.1.5"

        await eventually(db, DEADLINE, "the endpoint's name")
        await api.delete("services", "web", "default")
        await eventually(lambda: web("NXDOMAIN"), DEADLINE, "web to be gone")

        status, metrics = await http_get(server.ports["metrics"], "/metrics")
        assert status == 200
        assert 'coredns_dns_requests_total{server="dns://:53",zone=".",view="",proto="tcp"' in (
            metrics
        )
        assert 'rcode="NXDOMAIN",plugin="kubernetes"' in metrics
        assert "coredns_dns_request_duration_seconds_bucket{" in metrics


async def test_other_names_go_upstream_and_come_back_from_the_cache(
    api: LocalApi, upstream: tuple[str, int]
) -> None:
    ext = service("default", "ext", None, type="ExternalName", externalName="www.example.com")
    await api.create("services", ext, "default")
    async with running(api, options(upstream)) as server:
        first = await query(server, "www.example.com")
        assert addresses(first) == "NOERROR 192.0.2.80"
        assert first.answer[0].ttl == 30  # capped by the cache at 30 s (dnsmasq says 300)
        second = await query(server, "WWW.example.com")
        assert addresses(second) == "NOERROR 192.0.2.80"
        assert second.question[0].name.to_text() == "WWW.example.com."
        assert server.metrics.cache_hits.total() == 1

        missing = await query(server, "nope.example.com")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        reverse = await query(server, "80.2.0.192.in-addr.arpa", "PTR")  # falls through
        assert [r.to_text() for r in reverse.answer] == [
            "80.2.0.192.in-addr.arpa. 30 IN PTR www.example.com."
        ]

        chased = await query(server, "ext.default.svc.cluster.local")
        assert [r.to_text() for r in chased.answer] == [
            "ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",
            "www.example.com. 30 IN A 192.0.2.80",
        ]


async def test_without_an_upstream_other_names_fail_fast(api: LocalApi) -> None:
    async with running(api, options()) as server:
        reply = await query(server, "www.example.com")
        assert reply.rcode() == dns.rcode.SERVFAIL


async def test_lame_duck_keeps_answering_while_not_ready(api: LocalApi) -> None:
    server = DnsServer(api, options(lameduck=0.5))
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    await eventually(lambda: bool(server.ports) and server.ready, DEADLINE, "readiness")
    stop.set()
    await eventually(lambda: server.stopping, DEADLINE, "the server to stop")
    assert (await http_get(server.ports["ready"], "/ready"))[0] == 503
    reply = await query(server, "kubernetes.default.svc.cluster.local")
    assert addresses(reply) == "NOERROR 10.96.0.1"
    await task
    with pytest.raises((TimeoutError, ConnectionError, OSError, dns.exception.Timeout)):
        await query(server, "kubernetes.default.svc.cluster.local", tcp=True)
