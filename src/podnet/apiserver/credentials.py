"""The server's credentials: a CA, a server certificate, a bearer token and the kubeconfig; the
API server's client certificate for the kubelet endpoint; and what a node agent is given.

What belongs here: generating these on first start, reusing them afterwards, writing
`DIR/kubeconfig`, and `write_node_credentials` (a node's token kubeconfig and its kubelet
serving certificate, issued from the server's state dir: the lab calls it for each node, an
operator through `podnet server node-credentials`). Nothing here touches the network.

Invariants:
- Every file is written mode 0600 (atomically: temp file + rename), so a half-written key is
  never read and no other user can read the token.
- The CA, the token and the kubelet client certificate are generated once and then reused
  forever (clients keep trusting the cluster across restarts). The server certificate is
  reissued from the same CA only when it does not cover every name the server is asked to
  answer on (e.g. a new `--listen` address).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podnet.api.client import SERVERS_EXTENSION
from podnet.private import private_dir, write_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
TOKEN = "token"  # noqa: S105 - a file name, not a secret
KUBECONFIG = "kubeconfig"
# the API server's client certificate for the kubelet endpoint (upstream's
# --kubelet-client-certificate, kubeadm's apiserver-kubelet-client.crt)
KUBELET_CLIENT_CERT = "apiserver-kubelet-client.crt"
KUBELET_CLIENT_KEY = "apiserver-kubelet-client.key"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
# what a node agent is given (`write_node_credentials`)
NODE_KUBECONFIG = "kubeconfig"
KUBELET_CERT = "kubelet.crt"
KUBELET_KEY = "kubelet.key"

_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class Credentials:
    state_dir: Path
    ca_pem: bytes
    token: str

    @property
    def ca_path(self) -> Path:
        return self.state_dir / CA_CERT

    @property
    def cert_path(self) -> Path:
        return self.state_dir / SERVER_CERT

    @property
    def key_path(self) -> Path:
        return self.state_dir / SERVER_KEY

    @property
    def kubeconfig_path(self) -> Path:
        return self.state_dir / KUBECONFIG

    @property
    def kubelet_client_cert_path(self) -> Path:
        return self.state_dir / KUBELET_CLIENT_CERT

    @property
    def kubelet_client_key_path(self) -> Path:
        return self.state_dir / KUBELET_CLIENT_KEY


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podnet-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    ips: Sequence[str] = (),
    dns_names: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate signed by the cluster CA for one use (server or client auth)."""
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _name(common_name: str, *organizations: str) -> x509.Name:
    return x509.Name(
        [
            *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    ips: list[str],
    dns_names: list[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return _issue_leaf(
        ca_cert, ca_key, _name("podnet-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, ips, dns_names
    )


def _covers(cert: x509.Certificate, ips: list[str], dns_names: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    have_dns = set(san.get_values_for_type(x509.DNSName))
    return set(ips) <= have_ips and set(dns_names) <= have_dns


def server_names(listen_ips: list[str], service_ip: str) -> tuple[list[str], list[str]]:
    """The (IP, DNS) subject alternative names the server certificate must carry."""
    ips = list(
        dict.fromkeys([*(ip for ip in listen_ips if not _unspecified(ip)), "127.0.0.1", service_ip])
    )
    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    return ips, dns


def _unspecified(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


def load_ca(state_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The cluster CA (certificate and key) from the server's state dir."""
    ca_cert_path, ca_key_path = state_dir / CA_CERT, state_dir / CA_KEY
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ValueError(
            f"{exc.filename} is missing: start the server once (`podnet server --state-dir "
            f"{state_dir}`) to create the cluster CA"
        ) from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(
            f"{ca_key_path} is not an EC private key; remove the state dir "
            "credentials (ca.*, server.*) to regenerate them"
        )
    return ca_cert, loaded


def ensure_credentials(state_dir: Path, listen_ips: list[str], service_ip: str) -> Credentials:
    """Load the CA, token and server certificate from `state_dir`, creating what is missing."""
    private_dir(state_dir)
    ca_cert_path, ca_key_path = state_dir / CA_CERT, state_dir / CA_KEY
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert, ca_key = load_ca(state_dir)
    else:
        ca_cert, ca_key = _issue_ca()
        write_private(ca_key_path, _key_pem(ca_key))
        write_private(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))

    ips, dns = server_names(listen_ips, service_ip)
    cert_path, key_path = state_dir / SERVER_CERT, state_dir / SERVER_KEY
    reissue = True
    if cert_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        reissue = not (_covers(current, ips, dns) and current.issuer == ca_cert.subject)
    if reissue:
        cert, key = _issue_server_cert(ca_cert, ca_key, ips, dns)
        write_private(key_path, _key_pem(key))
        write_private(
            cert_path,
            cert.public_bytes(serialization.Encoding.PEM)
            + ca_cert.public_bytes(serialization.Encoding.PEM),
        )

    client_cert, client_key = state_dir / KUBELET_CLIENT_CERT, state_dir / KUBELET_CLIENT_KEY
    if not (client_cert.exists() and client_key.exists()):
        cert, key = _issue_leaf(
            ca_cert,
            ca_key,
            _name(KUBELET_CLIENT_USER, "system:masters"),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        write_private(client_key, _key_pem(key))
        write_private(client_cert, cert.public_bytes(serialization.Encoding.PEM))

    token_path = state_dir / TOKEN
    if token_path.exists():
        token = token_path.read_text().strip()
    else:
        token = secrets.token_urlsafe(32)
        write_private(token_path, (token + "\n").encode())
    return Credentials(state_dir, ca_cert.public_bytes(serialization.Encoding.PEM), token)


def render_kubeconfig(
    server_url: str,
    ca_pem: bytes,
    token: str,
    name: str = "podnet",
    servers: Sequence[str] = (),
    user: str = "",
) -> str:
    """A kubeconfig with one cluster, one user (bearer token; `<name>-admin` unless given)
    and one current context.

    `servers` (several API servers): every one of them, in the cluster's `podnet.io/servers`
    extension, where podnet's clients find where to fail over to (kubectl uses `server_url`).
    """
    user = user or f"{name}-admin"
    cluster: dict[str, object] = {
        "server": server_url,
        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
    }
    if servers:
        cluster["extensions"] = [
            {"name": SERVERS_EXTENSION, "extension": {"servers": list(servers)}}
        ]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": name, "user": user, "namespace": "default"},
            }
        ],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_kubeconfig(creds: Credentials, server_url: str, servers: Sequence[str] = ()) -> Path:
    """The admin kubeconfig; `servers`: every server of the cluster (see `render_kubeconfig`)."""
    path = creds.kubeconfig_path
    write_private(
        path, render_kubeconfig(server_url, creds.ca_pem, creds.token, servers=servers).encode()
    )
    return path


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    kubeconfig: Path  # the node's token (`system:node:<name>`) and the cluster CA
    cert_path: Path  # the kubelet serving certificate (agent --tls-cert-file)
    key_path: Path  # its key (agent --tls-private-key-file)


def check_node_identity(node: str, ips: Sequence[str], server_url: str) -> None:
    """Refuse (ValueError) what would make credentials no server accepts: a node name the
    API refuses for a Node, an address that is none, a server URL without https://HOST."""
    from urllib.parse import urlsplit

    from podnet.api.meta import dns1123_subdomain_errors

    errors = dns1123_subdomain_errors(node)
    if errors:
        raise ValueError(
            f"node name {node!r} (--node-name) is not a valid Node name: {'; '.join(errors)}"
        )
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"node address {ip!r} (--node-ip) is not an IP address") from None
    try:
        parts = urlsplit(server_url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not one
    except ValueError:
        parts = urlsplit("")
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(
            f"server URL {server_url!r} (--server) is not https://HOST[:PORT]: the API server "
            "the node dials"
        )


def write_node_credentials(
    state_dir: Path,
    node: str,
    ips: Sequence[str],
    server_url: str,
    out_dir: Path,
    servers: Sequence[str] = (),
) -> NodeCredentials:
    """Everything one node agent needs, issued from the server's state dir (its CA and signing
    key) into `out_dir`: a kubeconfig with the node's own token (user `system:node:<node>` in
    `system:nodes`, held to the Node authorizer), and the kubelet's serving certificate for
    `ips` and the node name, signed by the cluster CA (CN `system:node:<node>`, O
    `system:nodes`, as upstream's kubelet-serving certificates), which the API server checks
    on every connection to the kubelet endpoint. `servers`: every API server, for the agent's
    client to fail over between."""
    from podnet.apiserver.auth.tokens import TokenSigner

    check_node_identity(node, ips, server_url)  # before anything is written
    ca_cert, _ = load_ca(state_dir)
    private_dir(out_dir)
    token = TokenSigner.from_state_dir(state_dir).issue_node_token(node)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    kubeconfig = out_dir / NODE_KUBECONFIG
    write_private(
        kubeconfig,
        render_kubeconfig(server_url, ca_pem, token, servers=servers, user=f"node-{node}").encode(),
    )
    cert_pem, key_pem = issue_kubelet_serving(state_dir, node, ips)
    cert_path, key_path = out_dir / KUBELET_CERT, out_dir / KUBELET_KEY
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem)
    return NodeCredentials(kubeconfig, cert_path, key_path)


def issue_kubelet_serving(state_dir: Path, node: str, ips: Sequence[str]) -> tuple[bytes, bytes]:
    """(certificate, key), PEM: node `node`'s kubelet serving certificate for `ips` and its
    name, signed by the cluster CA in `state_dir` (CN `system:node:<node>`, O
    `system:nodes`, server auth), which the API server checks on every dial."""
    ca_cert, ca_key = load_ca(state_dir)
    cert, key = _issue_leaf(
        ca_cert,
        ca_key,
        _name(f"system:node:{node}", "system:nodes"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        ips,
        [node],
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
