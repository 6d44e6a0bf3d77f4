"""Bootstrap tokens (#15): the token and Secret rules, the cluster-info signatures, the
exchange; then `podnet token` and `podnet join --no-start` against a real server process."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from podnet.api.errors import ApiError
from podnet.apiserver.auth import bootstrap as bt
from podnet.apiserver.auth.tokens import TokenSigner
from podnet.apiserver.auth.user import node_user
from podnet.cli.join import JoinError, ca_cert_hash, verified_cluster_info
from podnet.cli.main import main
from podnet.cli.token import cluster_info_kubeconfig, parse_ttl
from podnet.testing.server import ServerProcess

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TOKEN = "abcdef.0123456789abcdef"


def test_token_format() -> None:
    assert bt.parse_token(TOKEN) == ("abcdef", "0123456789abcdef")
    assert bt.parse_token(bt.new_token())
    for bad in ("abcdef0123456789abcdef", "ABCDEF.0123456789abcdef", "abc.def", ""):
        with pytest.raises(bt.BadToken, match=re.escape(TOKEN)):
            bt.parse_token(bad)


def test_secret_authenticates_as_a_bootstrapper() -> None:
    secret = bt.token_secret(TOKEN, NOW + timedelta(hours=1), "for node7")
    assert secret["metadata"] == {"name": "bootstrap-token-abcdef", "namespace": "kube-system"}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    user = bt.user_for(secret, "abcdef", "0123456789abcdef", NOW)
    assert user is not None
    assert user.name == "system:bootstrap:abcdef"
    assert user.groups == ("system:bootstrappers", bt.DEFAULT_GROUP, "system:authenticated")


def test_what_authenticates_nobody() -> None:
    good = bt.token_secret(TOKEN, NOW + timedelta(hours=1))
    assert bt.user_for(good, "abcdef", "0123456789abcdeX", NOW) is None  # wrong secret
    assert bt.user_for(good, "abcdeX", "0123456789abcdef", NOW) is None  # wrong id
    assert bt.user_for(good, "abcdef", "0123456789abcdef", NOW + timedelta(hours=2)) is None
    other_type = {**good, "type": "Opaque"}
    assert bt.user_for(other_type, "abcdef", "0123456789abcdef", NOW) is None
    no_auth = bt.token_secret(TOKEN, None)
    no_auth["data"]["usage-bootstrap-authentication"] = base64.b64encode(b"false").decode()
    assert bt.user_for(no_auth, "abcdef", "0123456789abcdef", NOW) is None
    forever = bt.token_secret(TOKEN, None, groups="system:masters,system:bootstrappers:x")
    user = bt.user_for(forever, "abcdef", "0123456789abcdef", NOW + timedelta(days=999))
    assert user is not None and "system:masters" not in user.groups  # upstream's rule
    assert "system:bootstrappers:x" in user.groups


def test_detached_signature_round_trip_and_tampering() -> None:
    content = "apiVersion: v1\nclusters: []\n"
    signature = bt.detached_signature(content, "abcdef", "0123456789abcdef")
    header, empty, _sig = signature.split(".")
    assert empty == ""
    assert base64.urlsafe_b64decode(header + "==") == b'{"alg":"HS256","kid":"abcdef"}'
    assert bt.verify_detached(content, signature, "abcdef", "0123456789abcdef")
    assert not bt.verify_detached(content + " ", signature, "abcdef", "0123456789abcdef")
    assert not bt.verify_detached(content, signature, "abcdef", "0123456789abcdeX")
    assert not bt.verify_detached(content, signature, "zzzzzz", "0123456789abcdef")
    assert not bt.verify_detached(content, "garbage", "abcdef", "0123456789abcdef")


def test_exchange_only_for_bootstrappers(tmp_path: Path) -> None:
    signer = TokenSigner.from_state_dir(tmp_path)
    secret = bt.token_secret(TOKEN, None)
    bootstrapper = bt.user_for(secret, "abcdef", "0123456789abcdef", NOW)
    assert bootstrapper is not None
    answer = bt.issue_node_credential(bootstrapper, {"nodeName": "pi-4"}, signer)
    assert signer.verify_node_token(answer["token"]) == "pi-4"
    with pytest.raises(ApiError) as refused:
        bt.issue_node_credential(node_user("pi-4"), {"nodeName": "pi-5"}, signer)
    assert refused.value.code == 403
    for body in ({"nodeName": "Bad_Name"}, {}, [], {"nodeName": "x" * 254}):
        with pytest.raises(ApiError) as bad:
            bt.issue_node_credential(bootstrapper, body, signer)
        assert bad.value.code == 400
    # with the node's addresses, its kubelet serving certificate (the server's issuer)
    issued: list[tuple[str, list[str]]] = []

    def serving(node: str, ips: Sequence[str]) -> tuple[bytes, bytes]:
        issued.append((node, list(ips)))
        return b"CERT", b"KEY"

    body = {"nodeName": "pi-4", "nodeIPs": ["10.0.0.7"]}
    answer = bt.issue_node_credential(bootstrapper, body, signer, serving)
    assert (answer["kubeletCertificate"], answer["kubeletKey"]) == ("CERT", "KEY")
    assert issued == [("pi-4", ["10.0.0.7"])]
    for ips in ("10.0.0.7", [], ["10.0.0.300"], [7], ["10.0.0.1"] * 9):
        with pytest.raises(ApiError, match="nodeIPs must be a list of 1 to 8 IP addresses"):
            bt.issue_node_credential(bootstrapper, {"nodeName": "pi-4", "nodeIPs": ips}, signer)


def test_ttl() -> None:
    assert parse_ttl("24h") == timedelta(hours=24)
    assert parse_ttl("90s") == timedelta(seconds=90)
    assert parse_ttl("0") is None
    with pytest.raises(ValueError, match="24h"):
        parse_ttl("1y")
    # a number without its unit is refused, as kubeadm's --ttl (a Go duration) refuses it:
    # `--ttl 24` meant as a day made a token that expired 24 seconds later
    with pytest.raises(ValueError, match=r"bad --ttl '24': give its unit \(24h, 24m, 24s\)"):
        parse_ttl("24")


def test_join_trusts_only_a_cluster_info_this_token_signed(podnet_server: ServerProcess) -> None:
    ca = podnet_server.ca_path.read_bytes()
    content = cluster_info_kubeconfig(["https://10.0.0.1:6443", "https://10.0.0.2:6443"], ca)
    assert "token" not in yaml.safe_load(content)["users"]  # no credentials in public
    signed = {"data": {"kubeconfig": content, "jws-kubeconfig-abcdef": bt.detached_signature(
        content, "abcdef", "0123456789abcdef")}}  # fmt: skip
    found_ca, servers = verified_cluster_info(signed, TOKEN, [])
    assert found_ca == ca and servers == ["https://10.0.0.1:6443", "https://10.0.0.2:6443"]
    assert verified_cluster_info(signed, TOKEN, [ca_cert_hash(ca)])[0] == ca
    with pytest.raises(JoinError, match="refusing to trust it"):
        verified_cluster_info(signed, TOKEN, ["sha256:" + "0" * 64])
    with pytest.raises(JoinError, match="does not match this token"):
        verified_cluster_info(signed, "abcdef.0123456789abcdex", [])
    with pytest.raises(JoinError, match="no signature for token"):
        verified_cluster_info(signed, "zzzzzz.0123456789abcdef", [])


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    """The `podnet` command in this process (its output captured)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def join_no_start(
    server: ServerProcess, token: str, node: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`podnet join --no-start` as node `node` at 127.0.0.1, its state dir tmp_path/node."""
    return podnet(
        "join", server.url, "--token", token, "--node-name", node, "--node-ip", "127.0.0.1",
        "--state-dir", str(tmp_path / "node"), "--run-dir", str(tmp_path / "run"), "--no-start",
    )  # fmt: skip


def test_token_create_then_join_for_a_node_credential(
    podnet_server: ServerProcess, tmp_path: Path
) -> None:
    kubeconfig = str(podnet_server.kubeconfig)
    created = podnet("token", "create", "--ttl", "1h", "--kubeconfig", kubeconfig)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert "podnet join" in created.stderr
    listed = podnet("token", "list", "--kubeconfig", kubeconfig)
    assert token.split(".")[0] in listed.stdout
    state = tmp_path / "node"
    joined = join_no_start(podnet_server, token, "pi-4", tmp_path)
    assert joined.returncode == 0, joined.stderr
    whoami = subprocess.run(
        ["kubectl", "--kubeconfig", str(state / "kubeconfig"), "auth", "whoami", "-o", "yaml"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert yaml.safe_load(whoami.stdout)["status"]["userInfo"]["username"] == "system:node:pi-4"
    argv = (state / "agent.argv").read_text().split("\0")
    assert argv[3:11] == ["agent", "--kubeconfig", str(state / "kubeconfig"),
                          "--tls-cert-file", str(state / "kubelet.crt"),
                          "--tls-private-key-file", str(state / "kubelet.key"),
                          "--node-name"]  # fmt: skip
    serving = x509.load_pem_x509_certificate((state / "kubelet.crt").read_bytes())
    serving.verify_directly_issued_by(
        x509.load_pem_x509_certificate(podnet_server.ca_path.read_bytes())
    )
    assert serving.subject.rfc4514_string() == "CN=system:node:pi-4,O=system:nodes"
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    deleted = podnet("token", "delete", token, "--kubeconfig", kubeconfig)
    assert deleted.returncode == 0, deleted.stderr
    again = podnet(
        "join", podnet_server.url, "--token", token, "--state-dir", str(tmp_path / "again"),
        "--run-dir", str(tmp_path / "run-again"), "--no-start",
    )  # fmt: skip
    assert again.returncode == 1
    assert "no signature for token" in again.stderr
    bad = podnet("join", podnet_server.url, "--token", "nope", "--no-start")
    assert bad.returncode == 1 and "abcdef.0123456789abcdef" in bad.stderr


def test_token_create_names_the_server_joining_machines_use(podnet_server: ServerProcess) -> None:
    """`--server URL` is where the joining machines reach the cluster (the admin kubeconfig
    may name 127.0.0.1, as a lab's does): the printed join command names it, as cluster-info
    does."""
    kubeconfig = str(podnet_server.kubeconfig)
    servers = ["--server", "https://10.0.0.5:6443", "--server", "https://10.0.0.6:6443"]
    created = podnet("token", "create", "--kubeconfig", kubeconfig, *servers)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert f"join with:  podnet join https://10.0.0.5:6443 --token {token}" in created.stderr
    assert podnet_server.url not in created.stderr and "loopback" not in created.stderr
    podnet("token", "delete", token, "--kubeconfig", kubeconfig)
    # without --server, the admin kubeconfig's 127.0.0.1 is all cluster-info can name: only
    # this machine can join by it, and token create says so and what to pass instead
    created = podnet("token", "create", "--kubeconfig", kubeconfig)
    assert created.returncode == 0, created.stderr
    assert f"podnet join {podnet_server.url} --token" in created.stderr
    assert (
        f"note: {podnet_server.url} is a loopback address: only this machine can join by it; "
        "for other machines create the token with --server https://ADDRESS:PORT"
    ) in " ".join(created.stderr.split()), created.stderr
    podnet("token", "delete", created.stdout.strip(), "--kubeconfig", kubeconfig)


def test_join_with_an_expired_token_says_so(podnet_server: ServerProcess, tmp_path: Path) -> None:
    """An expired token's signature stays in cluster-info until the next `podnet token`
    command re-signs it, so discovery passes and the exchange is refused: join says why and
    what to do, not just "401 Unauthorized"."""
    kubeconfig = str(podnet_server.kubeconfig)
    created = podnet("token", "create", "--kubeconfig", kubeconfig)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    token_id = token.split(".")[0]
    # expire it by its Secret, as time would, without a token command re-signing cluster-info
    # (a `--ttl 1s` token can expire before `token create` has signed it on a loaded machine)
    past = base64.b64encode(b"2020-01-01T00:00:00Z").decode()
    subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, "-n", "kube-system", "patch", "secret",
         f"bootstrap-token-{token_id}", "--type", "merge", "-p",
         json.dumps({"data": {"expiration": past}})],
        check=True, capture_output=True,
    )  # fmt: skip
    joined = join_no_start(podnet_server, token, "pi-5", tmp_path)
    assert joined.returncode == 1
    assert joined.stderr.startswith(
        f"podnet join: the server did not accept token {token_id} (401): it has expired or "
        "was deleted"
    ), joined.stderr
    assert "podnet token create" in joined.stderr
    assert not (tmp_path / "node").exists()  # nothing written
    # and the admin sees it: `token list` marks it expired (kubeadm: TTL <invalid>)
    listed = podnet("token", "list", "--kubeconfig", kubeconfig).stdout.splitlines()
    (row,) = [line for line in listed if line.startswith(token_id)]
    assert row.split()[2] == "(expired)", listed
    podnet("token", "delete", token, "--kubeconfig", kubeconfig)


def ready_node(name: str, ip: str, ready: str = "True") -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def test_the_name_of_a_node_ready_at_another_address_is_not_handed_out(tmp_path: Path) -> None:
    """kubeadm's join refuses a node name whose Node is Ready: handing out its credential lets
    a second machine take the Node over (its InternalIP, its podCIDR: every node's overlay
    then sends that subnet's packets to the newcomer). The same machine joining again (its
    address) and a Node that is not Ready (its machine gone) still get it."""
    signer = TokenSigner.from_state_dir(tmp_path)
    bootstrapper = bt.user_for(bt.token_secret(TOKEN, None), "abcdef", "0123456789abcdef", NOW)
    assert bootstrapper is not None
    body = {"nodeName": "node1", "nodeIPs": ["172.31.3.13"]}
    with pytest.raises(ApiError) as taken:
        bt.issue_node_credential(
            bootstrapper, body, signer, existing=ready_node("node1", "172.31.3.11")
        )
    assert taken.value.code == 409
    assert str(taken.value.message).startswith(
        'node "node1" is Ready at 172.31.3.11, another machine: join with another --node-name'
    ), taken.value.message
    assert "kubectl delete node node1" in str(taken.value.message)
    for existing in (
        None,
        ready_node("node1", "172.31.3.13"),
        ready_node("node1", "172.31.3.11", "Unknown"),
    ):
        answer = bt.issue_node_credential(bootstrapper, body, signer, existing=existing)
        assert signer.verify_node_token(answer["token"]) == "node1"


def test_join_as_a_ready_node_of_another_machine_is_refused(
    podnet_server: ServerProcess, tmp_path: Path
) -> None:
    kubeconfig = str(podnet_server.kubeconfig)
    node = ready_node("pi-7", "10.0.0.7")
    node["apiVersion"], node["kind"] = "v1", "Node"
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "create", "-f", "-"],
                   input=json.dumps({k: v for k, v in node.items() if k != "status"}),
                   text=True, check=True, capture_output=True)  # fmt: skip
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "patch", "node", "pi-7",
                    "--subresource", "status", "--type", "merge", "-p",
                    json.dumps({"status": node["status"]})],
                   text=True, check=True, capture_output=True)  # fmt: skip
    token = podnet("token", "create", "--ttl", "1h", "--kubeconfig", kubeconfig).stdout.strip()
    joined = join_no_start(podnet_server, token, "pi-7", tmp_path)
    assert joined.returncode == 1
    assert joined.stderr.startswith(
        'podnet join: the server will not make this machine node pi-7 (409): node "pi-7" is '
        "Ready at 10.0.0.7, another machine"
    ), joined.stderr
    assert not (tmp_path / "node").exists()
    podnet("token", "delete", token, "--kubeconfig", kubeconfig)
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "delete", "node", "pi-7"], check=True,
                   capture_output=True)  # fmt: skip
