"""The assembled server in-process (HTTPS on a free port) driven through `HttpApi`, `LocalApi`,
and the credentials it writes."""

from __future__ import annotations

import asyncio
import ipaddress
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from cryptography import x509

from podnet.api.client import HttpApi, KubeconfigError
from podnet.api.errors import ApiError
from podnet.apiserver.credentials import ensure_credentials
from podnet.apiserver.local import LocalApi
from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    srv = ApiServer(
        ServerOptions(
            tmp_path / "state",
            listen=parse_listen(["127.0.0.1:0"]),
            controllers=False,
            bookmark_interval=0.2,
        )
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def test_credentials_files_are_private_and_reused(tmp_path: Path) -> None:
    first = ensure_credentials(tmp_path, ["127.0.0.1"], "10.96.0.1")
    for name in ("ca.crt", "ca.key", "server.crt", "server.key", "token"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    cert_before = (tmp_path / "server.crt").read_bytes()
    second = ensure_credentials(tmp_path, ["127.0.0.1"], "10.96.0.1")
    assert (second.token, second.ca_pem) == (first.token, first.ca_pem)
    assert (tmp_path / "server.crt").read_bytes() == cert_before
    # a new listen address reissues the server certificate from the same CA
    third = ensure_credentials(tmp_path, ["127.0.0.1", "172.31.0.1"], "10.96.0.1")
    assert third.ca_pem == first.ca_pem
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = set(sans.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("172.31.0.1"), ipaddress.ip_address("10.96.0.1")} <= ips
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)


@pytest.mark.asyncio
async def test_state_dir_is_private_to_its_owner(server: ApiServer) -> None:
    """#19: the store (with its WAL holding Secret data), keys and kubeconfig are 0600 in a
    0700 directory, even under a permissive umask."""
    assert server.registry is not None
    api = LocalApi(server.registry, server.stop_event)
    await api.create("secrets", {"metadata": {"name": "s"}, "data": {"k": "dmFsdWU="}}, "default")
    state = server.options.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir() if p.is_file()}
    assert {"state.db", "state.db-wal", "state.db-shm", "ca.key", "kubeconfig"} <= set(files)
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}


def test_parse_listen() -> None:
    assert parse_listen(["127.0.0.1:6443,172.31.0.1:6443", "[::1]:7443"]) == [
        ("127.0.0.1", 6443),
        ("172.31.0.1", 6443),
        ("::1", 7443),
    ]
    with pytest.raises(ValueError, match="ADDR:PORT"):
        parse_listen(["localhost:6443"])


def test_missing_kubeconfig_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="podnet server --state-dir"):
        HttpApi.from_kubeconfig(tmp_path / "nope")


@pytest.mark.asyncio
async def test_kubeconfig_and_http_api(server: ApiServer) -> None:
    assert server.credentials is not None
    kubeconfig = server.credentials.kubeconfig_path
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    doc = yaml.safe_load(kubeconfig.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == server.url
    async with HttpApi.from_kubeconfig(kubeconfig) as api:
        created = await api.create(
            "configmaps", {"metadata": {"name": "h"}, "data": {"a": "1"}}, "default"
        )
        listed = await api.list("configmaps", "default", field_selector="metadata.name=h")
        assert [c["metadata"]["name"] for c in listed["items"]] == ["h"]
        patched = await api.patch("configmaps", "h", {"data": {"b": "2"}}, "default")
        assert patched["data"] == {"a": "1", "b": "2"}
        stale = {**created, "data": {"c": "3"}}
        with pytest.raises(ApiError) as info:
            await api.update("configmaps", stale, "default")
        assert info.value.code == 409 and info.value.reason == "Conflict"

        events = api.watch(
            "configmaps",
            "default",
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=5,
        )
        await api.delete("configmaps", "h", "default")
        seen = []
        async for event in events:
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            if event["type"] == "DELETED":
                break
        assert seen == [("MODIFIED", "h"), ("DELETED", "h")]
        with pytest.raises(ApiError) as missing:
            await api.get("configmaps", "h", "default")
        assert missing.value.code == 404


@pytest.mark.asyncio
async def test_http_api_watch_expired_raises_410(server: ApiServer) -> None:
    assert server.registry is not None and server.credentials is not None
    store = server.registry.store
    async with HttpApi.from_kubeconfig(server.credentials.kubeconfig_path) as api:
        for i in range(3):
            await api.create("configmaps", {"metadata": {"name": f"x{i}"}}, "default")
        # history gone from the store and from the watch cache, as after a restart
        await store.compact(await store.current_revision() - 1)
        await server.registry.watch_cache.close()
        with pytest.raises(ApiError) as info:
            async for _ in api.watch("configmaps", "default", resource_version="2"):
                pass
        assert info.value.code == 410


@pytest.mark.asyncio
async def test_wrong_token_via_http_api(server: ApiServer) -> None:
    assert server.credentials is not None
    api = HttpApi(server.url, "wrong", server.credentials.ca_pem)
    try:
        with pytest.raises(ApiError) as info:
            await api.list("pods")
        assert info.value.code == 401
    finally:
        await api.close()


@pytest.mark.asyncio
async def test_local_api_same_semantics(server: ApiServer) -> None:
    assert server.registry is not None
    api = LocalApi(server.registry)
    await api.create(
        "pods",
        {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        "default",
    )
    await api.create(
        "pods",
        {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}},
        "default",
        subresource="binding",
    )
    assert (await api.get("pods", "p", "default"))["spec"]["nodeName"] == "n1"
    with pytest.raises(ApiError) as invalid:
        await api.create("pods", {"metadata": {"name": "Bad"}}, "default")
    assert invalid.value.code == 422
    with pytest.raises(ApiError) as unknown:
        await api.list("widgets")
    assert unknown.value.code == 404 and "podnet serves" in unknown.value.message
    deleting = await api.delete("pods", "p", "default")
    assert deleting["metadata"]["deletionTimestamp"]
    events = api.watch("pods", "default", resource_version="0", timeout_seconds=2)
    first = await events.__anext__()
    assert first["type"] == "ADDED"
    await api.delete("pods", "p", "default", grace_period_seconds=0)
    assert (await events.__anext__())["type"] == "DELETED"
    await events.aclose()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_server_runs_the_controllers(tmp_path: Path) -> None:
    srv = ApiServer(ServerOptions(tmp_path / "state", listen=parse_listen(["127.0.0.1:0"])))
    await srv.start()
    try:
        assert srv.registry is not None
        api = LocalApi(srv.registry)
        await api.create(
            "deployments",
            {
                "metadata": {"name": "ctl"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "ctl"}},
                    "template": {
                        "metadata": {"labels": {"app": "ctl"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                    },
                },
            },
            "default",
        )
        for _ in range(100):
            replicasets = (await api.list("replicasets", "default"))["items"]
            if replicasets:
                break
            await asyncio.sleep(0.1)
        assert replicasets, "the deployment controller created no ReplicaSet within 10 s"
    finally:
        await asyncio.wait_for(srv.stop(), 15)
