"""Who may use the kubelet endpoint (`agent.kubelet.authn`) and the credentials a node is given
(`apiserver.credentials.write_node_credentials`): the certificates' names and uses, the
review-based authentication and authorization against an in-process server (asked as the node
itself, as an agent does), and the reviews' caches."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podnet.agent.kubelet.authn import (
    DENIED_TTL,
    KubeletAuth,
    certificate_caller,
    subresource,
)
from podnet.api.client import HttpApi
from podnet.api.errors import ApiError
from podnet.apiserver.credentials import ensure_credentials, load_ca, write_node_credentials
from podnet.apiserver.server import ApiServer
from podnet.cli.main import main
from podnet.testing.waiting import eventually


def test_subresource_of_each_kubelet_path() -> None:
    table = {
        "/healthz": "healthz",
        "/metrics/cadvisor": "metrics",
        "/logs/": "log",
        "/stats/summary": "stats",
        "/spec": "spec",
        "/exec/default/web/app": "proxy",
        "/containerLogs/default/web/app": "proxy",
        "/portForward/default/web": "proxy",
        "/healthzz": "proxy",  # a prefix is a whole path segment
    }
    assert {path: subresource(path) for path in table} == table


def test_the_caller_of_a_client_certificate() -> None:
    peer = {
        "subject": (
            (("organizationName", "system:masters"),),
            (("commonName", "kube-apiserver-kubelet-client"),),
        )
    }
    caller = certificate_caller(peer)
    assert caller is not None
    assert (caller.name, caller.groups) == ("kube-apiserver-kubelet-client", ("system:masters",))
    assert certificate_caller(None) is None
    assert certificate_caller({"subject": ((("organizationName", "x"),),)}) is None


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.asyncio
async def test_node_credentials_name_the_node_and_chain_to_the_cluster_ca(
    api_server: ApiServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    issued = write_node_credentials(state, "n1", ["172.31.9.11"], api_server.url, tmp_path / "n1")
    for path in (issued.kubeconfig, issued.cert_path, issued.key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ca, _ = load_ca(state)
    serving = _certificate(issued.cert_path)
    serving.verify_directly_issued_by(ca)
    subject = serving.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("172.31.9.11")]
    assert sans.get_values_for_type(x509.DNSName) == ["n1"]
    usage = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # the API server's own client certificate for kubelets: in system:masters, client auth only
    client = _certificate(state / "apiserver-kubelet-client.crt")
    client.verify_directly_issued_by(ca)
    assert client.subject.rfc4514_string() == "CN=kube-apiserver-kubelet-client,O=system:masters"
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # the kubeconfig carries the node's own token, and the server knows it as that node
    doc = yaml.safe_load(issued.kubeconfig.read_text())
    token = doc["users"][0]["user"]["token"]
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "system:node:n1"
    async with HttpApi.from_kubeconfig(issued.kubeconfig) as api:
        review = await api.create("selfsubjectreviews", {"spec": {}})
    assert review["status"]["userInfo"]["username"] == "system:node:n1"


def test_node_credentials_need_the_servers_ca(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start the server once"):
        write_node_credentials(tmp_path, "n1", ["10.0.0.1"], "https://x", tmp_path / "out")


def test_node_credentials_refuse_bad_input_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node name the API would refuse, an address that is none, a server URL without
    https://: `podnet node-credentials` says which and writes nothing (it wrote a kubeconfig
    for user node-Host_A dialing `127.0.0.1:16443`, or a kubeconfig and no certificate)."""
    state = tmp_path / "state"
    ensure_credentials(state, ["127.0.0.1"], "10.96.0.1")
    good = {"--node-name": "host-a", "--node-ip": "10.0.0.11", "--server": "https://10.0.0.5:6443"}
    cases = {
        "--node-name": ("Host_A", "node name 'Host_A' (--node-name) is not a valid Node name"),
        "--node-ip": ("10.0.0.x", "node address '10.0.0.x' (--node-ip) is not an IP address"),
        "--server": (
            "10.0.0.5:6443",
            "server URL '10.0.0.5:6443' (--server) is not https://HOST[:PORT]",
        ),
    }
    for flag, (bad, said) in cases.items():
        args = {**good, flag: bad}
        out = tmp_path / f"out{flag}"
        argv = ["node-credentials", "--state-dir", str(state), "--out", str(out)]
        code = main([*argv, *(item for pair in args.items() for item in pair)])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"podnet node-credentials: {said}"), err
        assert not out.exists()
    out = tmp_path / "host-a"
    argv = ["node-credentials", "--state-dir", str(state), "--out", str(out)]
    assert main([*argv, *(item for pair in good.items() for item in pair)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["kubeconfig", "kubelet.crt", "kubelet.key"]


@pytest.mark.asyncio
async def test_callers_are_reviewed_by_the_server_and_the_answers_cached(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """As an agent does: the reviews are asked as the node. A denied caller stays denied for
    DENIED_TTL after it is granted, then is let in."""
    assert api_server.credentials is not None
    state = tmp_path / "state"
    issued = write_node_credentials(state, "n1", ["127.0.0.1"], api_server.url, tmp_path / "n1")
    now = [0.0]
    async with (
        HttpApi.from_kubeconfig(api_server.credentials.kubeconfig_path) as admin,
        HttpApi.from_kubeconfig(issued.kubeconfig) as as_node,
    ):
        auth = KubeletAuth(as_node, "n1", clock=lambda: now[0])
        await admin.create("serviceaccounts", {"metadata": {"name": "probe"}}, "default")
        answer = await admin.create(
            "serviceaccounts", {"metadata": {"name": "probe"}, "spec": {}}, "default", "token"
        )
        token = answer["status"]["token"]

        with pytest.raises(ApiError) as refused:
            await auth.authenticate(None, "Bearer not-a-token")
        assert refused.value.code == 401
        with pytest.raises(ApiError):
            await auth.authenticate(None, "")
        caller = await auth.authenticate(None, f"Bearer {token}")
        assert caller.name == "system:serviceaccount:default:probe"
        assert "system:serviceaccounts" in caller.groups

        with pytest.raises(ApiError) as denied:
            await auth.authorize(caller, "POST", "/exec/default/web/app")
        assert (denied.value.code, denied.value.message) == (
            403,
            "Forbidden (user=system:serviceaccount:default:probe, verb=create, "
            "resource=nodes, subresource=proxy)",
        )
        await admin.create(
            "clusterroles",
            {"metadata": {"name": "probe"},
             "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["create"]}]},
        )  # fmt: skip
        await admin.create(
            "clusterrolebindings",
            {"metadata": {"name": "probe"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "probe"},
             "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": "default"}]},
        )  # fmt: skip
        review = {
            "spec": {
                "user": caller.name,
                "groups": list(caller.groups),
                "resourceAttributes": {"verb": "create", "resource": "nodes",
                                       "subresource": "proxy", "name": "n1"},
            }
        }  # fmt: skip

        async def granted() -> bool:  # RBAC's index follows the bindings by a watch
            answer = await admin.create("subjectaccessreviews", review)
            return bool(answer["status"].get("allowed"))

        await eventually(granted, what="the binding in effect")
        with pytest.raises(ApiError):  # the denial is still cached
            await auth.authorize(caller, "POST", "/exec/default/web/app")
        now[0] += DENIED_TTL + 1
        await auth.authorize(caller, "POST", "/exec/default/web/app")
        # the API server's certificate: no review needed to know who it is
        master = certificate_caller(
            {"subject": ((("organizationName", "system:masters"),),
                         (("commonName", "kube-apiserver-kubelet-client"),))}
        )  # fmt: skip
        assert master is not None
        await auth.authorize(master, "GET", "/containerLogs/default/web/app")
