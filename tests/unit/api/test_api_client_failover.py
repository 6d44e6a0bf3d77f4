"""`HttpApi` failover between several API servers: the kubeconfig extension that lists them,
and requests and watches that move on from a server nobody listens on (a real `podnet server`
process, a free port for the dead one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.api.client import HttpApi, KubeconfigError, kubeconfig_servers, load_kubeconfig
from podnet.api.errors import ApiError
from podnet.apiserver.credentials import ensure_credentials, render_kubeconfig
from podnet.testing.ports import free_port
from podnet.testing.server import ServerProcess


def dead_url() -> str:
    return f"https://127.0.0.1:{free_port()}"


def test_kubeconfig_lists_every_server(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    servers = ["https://10.0.0.1:6443", "https://10.0.0.2:6443/"]
    ca = ensure_credentials(tmp_path / "state", ["127.0.0.1"], "10.96.0.1").ca_pem
    path.write_text(render_kubeconfig(servers[0], ca, "t0k", servers=servers))
    assert load_kubeconfig(path)[0] == "https://10.0.0.1:6443"
    assert kubeconfig_servers(path) == ["https://10.0.0.1:6443", "https://10.0.0.2:6443"]
    single = tmp_path / "single"
    single.write_text(render_kubeconfig(servers[0], ca, "t0k"))
    assert kubeconfig_servers(single) == []
    api = HttpApi.from_kubeconfig(path)
    assert api.servers == ["https://10.0.0.1:6443", "https://10.0.0.2:6443"]


def test_malformed_servers_extension_says_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        render_kubeconfig("https://10.0.0.1:6443", b"CA", "t", servers=["x"]).replace(
            "- x", "  bad: 1"
        )
    )
    with pytest.raises(KubeconfigError, match="servers: \\[https://HOST:PORT"):
        kubeconfig_servers(path)


@pytest.mark.asyncio
async def test_requests_and_watches_fail_over(podnet_server: ServerProcess) -> None:
    server = podnet_server
    token, ca = server.token, server.ca_path.read_bytes()
    dead = dead_url()
    async with HttpApi(dead, token, ca, servers=[dead, server.url]) as api:
        created = await api.create("configmaps", {"metadata": {"name": "a"}}, "default")
        assert api.server == server.url  # it moved on and stays there
        assert created["metadata"]["name"] == "a"
    async with HttpApi(dead, token, ca, servers=[dead, server.url]) as api:
        events = api.watch("configmaps", "default", resource_version="0", timeout_seconds=1)
        assert "a" in [e["object"]["metadata"]["name"] async for e in events]
        assert api.server == server.url


@pytest.mark.asyncio
async def test_no_server_answers() -> None:
    one, two = dead_url(), dead_url()
    async with HttpApi(one, "t", servers=[one, two]) as api:
        with pytest.raises(ApiError) as caught:
            await api.get("namespaces", "default")
    assert caught.value.code == 503
    assert one in str(caught.value) and two in str(caught.value)
    async with HttpApi(one, "t") as single:
        with pytest.raises(ApiError, match="is `podnet server` running"):
            await single.get("namespaces", "default")


@pytest.mark.asyncio
async def test_writes_name_their_component_as_field_manager(podnet_server: ServerProcess) -> None:
    """The User-Agent's product is the manager of a write that names no fieldManager, so
    `kubectl get -o yaml --show-managed-fields` tells an agent's writes from the lab's."""
    server = podnet_server
    token, ca = server.token, server.ca_path.read_bytes()
    async with HttpApi(server.url, token, ca, component="podnet-agent") as api:
        assert api.user_agent.startswith("podnet-agent/")
        body = {"metadata": {"name": "ua"}, "data": {"k": "v"}}
        created = await api.create("configmaps", body, "default")
    assert [m["manager"] for m in created["metadata"].get("managedFields", [])] == [
        "podnet-agent"
    ], created
