"""Who may use the kubelet endpoint (#19 item 2): TLS only, a serving certificate from the
cluster CA for the node's address, callers authenticated (the API server's client
certificate, or a bearer token through a TokenReview) and authorized (a SubjectAccessReview of
`nodes/proxy` on this node), refusals in upstream's words. The cluster is the suite's
`podnet_server`; the endpoint is the conftest's `kubelet`."""

from __future__ import annotations

import datetime as dt
import ssl
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from podnet.api.errors import ApiError
from podnet.apiserver.streams.dial import AgentDialer
from podnet.apiserver.streams.locate import AgentEndpoint

pytestmark = [pytest.mark.root, pytest.mark.asyncio]

LOGS = "/containerLogs/default/web-0/app"
NODE = "pnt4-node"  # the conftest's


async def status_of(kubelet: Any, session: aiohttp.ClientSession, **headers: str) -> int:
    async with session.get(kubelet.url + LOGS, headers=headers) as response:
        return response.status


async def token_for(api: Any, account: str, *, role_rules: list[dict[str, Any]] | None) -> str:
    """A token of a new ServiceAccount, bound (cluster-wide) to a role with `role_rules`."""
    await api.create("serviceaccounts", {"metadata": {"name": account}}, "default")
    if role_rules is not None:
        await api.create("clusterroles", {"metadata": {"name": account}, "rules": role_rules})
        await api.create(
            "clusterrolebindings",
            {
                "metadata": {"name": account},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": account},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": "default"}],
            },
        )  # fmt: skip
    issued = await api.create(
        "serviceaccounts", {"metadata": {"name": account}, "spec": {}}, "default", "token"
    )
    return str(issued["status"]["token"])


async def test_the_api_servers_certificate_is_let_in(kubelet: Any) -> None:
    async with kubelet.session() as session:
        assert await status_of(kubelet, session) == 404  # authorized; no such container


async def test_plain_http_and_strangers_are_refused(kubelet: Any, tmp_path: Any) -> None:
    plain = kubelet.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain + LOGS) as response:
                await response.read()
    async with kubelet.session(identity=False) as anonymous:
        async with anonymous.get(kubelet.url + LOGS) as response:
            assert response.status == 401
            assert (await response.json())["reason"] == "Unauthorized"
        assert await status_of(kubelet, anonymous, Authorization="Bearer not-a-token") == 401
    # a client certificate from another CA does not get past the handshake
    stranger = _self_signed_client(tmp_path)
    tls = ssl.create_default_context(cafile=str(kubelet.api_server.ca_path))
    tls.load_cert_chain(*stranger)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
        with pytest.raises(aiohttp.ClientError):
            await status_of(kubelet, session)


async def test_bearer_tokens_are_reviewed_and_held_to_nodes_proxy(kubelet: Any) -> None:
    async with kubelet.api_server.api() as api:
        nobody = await token_for(api, "kubelet-nobody", role_rules=None)
        proxier = await token_for(
            api,
            "kubelet-proxier",
            role_rules=[{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}],
        )
    async with kubelet.session(identity=False) as session:
        admin = f"Bearer {kubelet.api_server.token}"
        assert await status_of(kubelet, session, Authorization=admin) == 404
        assert await status_of(kubelet, session, Authorization=f"Bearer {proxier}") == 404
        async with session.get(
            kubelet.url + LOGS, headers={"Authorization": f"Bearer {nobody}"}
        ) as response:
            assert response.status == 403
            assert (await response.json())["message"] == (
                "Forbidden (user=system:serviceaccount:default:kubelet-nobody, verb=get, "
                "resource=nodes, subresource=proxy)"
            )


def _self_signed_client(tmp_path: Any) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-kubelet-client")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "stranger.crt", tmp_path / "stranger.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_the_api_servers_dialer_checks_the_kubelets_certificate(kubelet: Any) -> None:
    """The API server's side (`streams.dial.AgentDialer`, here a port-forward's tunnel): TLS
    to the address dialled with its client certificate, so the kubelet's own answer (no such
    pod here: 404) comes back; dialled by a name its certificate does not carry, the kubelet
    is not trusted."""
    tls = kubelet.client_tls()
    async with aiohttp.ClientSession() as session:
        dialer = AgentDialer(session, tls)
        by_address = AgentEndpoint(NODE, "127.0.0.1", kubelet.server.port)
        with pytest.raises(ApiError) as missing:
            await dialer.tunnel(by_address, "default", "nowhere", 80)
        assert missing.value.code == 404, missing.value
        by_name = AgentEndpoint(NODE, "localhost", kubelet.server.port)
        with pytest.raises(ApiError) as untrusted:
            await dialer.tunnel(by_name, "default", "nowhere", 80)
        assert "the kubelet's serving certificate is not trusted" in str(untrusted.value)
