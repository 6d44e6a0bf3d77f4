"""Bootstrap tokens: how a new machine proves it may join, and what it gets for it (#15).

What belongs here, upstream's shapes where upstream has them:
- the token format `[a-z0-9]{6}.[a-z0-9]{16}` (id.secret) and its Secret
  `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` (`token_secret`);
- `BootstrapTokens`, the authenticator: a valid, unexpired token whose Secret allows
  authentication is user `system:bootstrap:<id>` in `system:bootstrappers` (plus the Secret's
  `auth-extra-groups`), as kube-apiserver's bootstrap token authenticator;
- the `kube-public/cluster-info` ConfigMap signatures (detached JWS, HS256 keyed by the token
  secret, `kid` = token id, as k8s.io/cluster-bootstrap's `ComputeDetachedSignature`), by which
  `podnet join` trusts the CA it was handed before it sends the token anywhere;
- the exchange `POST /podnet/v1/node-credential {"nodeName": N, "nodeIPs": [IP, ...]}`
  (`issue_node_credential`): a bootstrapper gets the node credential of `system:node:<N>`
  (what the Node authorizer limits to that node's own objects) and, for the addresses given,
  the kubelet's serving certificate from the cluster CA (`kubeletCertificate`, `kubeletKey`,
  PEM) that the API server checks when it dials the node's kubelet endpoint. Upstream does
  this with CSRs that the CSR approver signs for bootstrappers; podnet's node credentials are
  signed tokens, so the exchange is one call, as k3s's agent fetches its kubelet credential
  and serving certificate from its server.

Invariants:
- A token is compared in constant time, and a Secret that is of another type, expired, or
  not marked `usage-bootstrap-authentication: "true"` authenticates nobody.
- Only a user in `system:bootstrappers` may exchange a token, and only for a valid node name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import string
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth.tokens import TokenSigner
from podnet.apiserver.auth.user import AUTHENTICATED, BOOTSTRAPPERS, UserInfo
from podnet.apiserver.registry import Registry

SECRET_TYPE = "bootstrap.kubernetes.io/token"  # noqa: S105 - a Secret type, not a secret
SECRET_PREFIX = "bootstrap-token-"  # noqa: S105 - a name prefix
NAMESPACE = "kube-system"
USER_PREFIX = "system:bootstrap:"
DEFAULT_GROUP = "system:bootstrappers:podnet:default-node-token"
CLUSTER_INFO_NAMESPACE = "kube-public"
CLUSTER_INFO = "cluster-info"
CLUSTER_INFO_PATH = f"/api/v1/namespaces/{CLUSTER_INFO_NAMESPACE}/configmaps/{CLUSTER_INFO}"
JWS_PREFIX = "jws-kubeconfig-"
CREDENTIAL_PATH = "/podnet/v1/node-credential"
TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ALPHABET = string.ascii_lowercase + string.digits


class BadToken(ValueError):
    """A string that is not a bootstrap token; the message says the expected form."""


def parse_token(token: str) -> tuple[str, str]:
    """`id.secret` -> (id, secret)."""
    match = TOKEN.match(token.strip())
    if match is None:
        raise BadToken(
            "a bootstrap token looks like abcdef.0123456789abcdef (6 and 16 characters of "
            "a-z and 0-9); `podnet token create` prints one"
        )
    return match.group(1), match.group(2)


def new_token() -> str:
    pick = secrets.choice
    return (
        "".join(pick(_ALPHABET) for _ in range(6))
        + "."
        + "".join(pick(_ALPHABET) for _ in range(16))
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def token_secret(
    token: str, expires: datetime | None, description: str = "", groups: str = DEFAULT_GROUP
) -> Obj:
    """The Secret that makes `token` valid (as `kubeadm token create` writes it)."""
    token_id, secret = parse_token(token)
    data = {
        "token-id": token_id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        "auth-extra-groups": groups,
    }
    if expires is not None:
        data["expiration"] = rfc3339(expires)
    if description:
        data["description"] = description
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {"name": SECRET_PREFIX + token_id, "namespace": NAMESPACE},
        "data": {key: _b64(value) for key, value in data.items()},
    }


def secret_fields(secret: Obj) -> dict[str, str]:
    """The decoded `data` of a bootstrap token Secret (undecodable entries are left out)."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def expired(fields: dict[str, str], now: datetime) -> bool:
    left = seconds_left(fields, now)
    return left is not None and left <= 0


def seconds_left(fields: dict[str, str], now: datetime) -> float | None:
    """How long the token has until it expires (<= 0: expired; an unparseable expiration
    counts as expired, as upstream's GetExpiration); None for a token that never expires."""
    if "expiration" not in fields:
        return None
    when = parse_rfc3339(fields["expiration"])
    return 0.0 if when is None else (when - now).total_seconds()


def user_for(secret: Obj, token_id: str, token_secret_text: str, now: datetime) -> UserInfo | None:
    """The bootstrapper `secret` lets `id.secret` be, or None (pure; upstream's rules)."""
    if secret.get("type") != SECRET_TYPE or (secret.get("metadata") or {}).get("deletionTimestamp"):
        return None
    fields = secret_fields(secret)
    if fields.get("token-id") != token_id or fields.get("usage-bootstrap-authentication") != "true":
        return None
    if not hmac.compare_digest(fields.get("token-secret", "").encode(), token_secret_text.encode()):
        return None
    if expired(fields, now):
        return None
    extra = [g.strip() for g in fields.get("auth-extra-groups", "").split(",") if g.strip()]
    extra = [g for g in extra if g.startswith(BOOTSTRAPPERS + ":")]  # upstream: only these
    return UserInfo(USER_PREFIX + token_id, "", (BOOTSTRAPPERS, *extra, AUTHENTICATED))


class BootstrapTokens:
    """The authenticator (see the module docstring)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def authenticate(self, token: str) -> UserInfo | None:
        match = TOKEN.match(token)
        if match is None:
            return None
        token_id, secret_text = match.group(1), match.group(2)
        try:
            secret = await self.registry.get(
                BY_PLURAL["secrets"], NAMESPACE, SECRET_PREFIX + token_id
            )
        except ApiError:
            return None
        return user_for(secret, token_id, secret_text, datetime.now(UTC))


# -- cluster-info signatures ---------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def detached_signature(content: str, token_id: str, secret: str) -> str:
    """`header..signature` of `content`: HS256 keyed by the token secret, kid = token id."""
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{_b64url(content.encode())}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{_b64url(signature)}"


def verify_detached(content: str, signature: str, token_id: str, secret: str) -> bool:
    """Whether `signature` (detached JWS) signs `content` with this token."""
    header, dot, rest = signature.partition(".")
    empty, dot2, sig = rest.partition(".")
    if not dot or not dot2 or empty:
        return False
    try:
        fields: Any = json.loads(_unb64url(header))
    except ValueError:
        return False
    if not isinstance(fields, dict) or fields.get("alg") != "HS256":
        return False
    if fields.get("kid") != token_id:
        return False
    signing_input = f"{header}.{_b64url(content.encode())}".encode()
    expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    try:
        return hmac.compare_digest(expected, _unb64url(sig))
    except ValueError:
        return False


# -- the exchange --------------------------------------------------------------------------


MAX_NODE_IPS = 8
# (node, its addresses) -> (serving certificate, key), PEM (`credentials.issue_kubelet_serving`)
ServingIssuer = Callable[[str, Sequence[str]], tuple[bytes, bytes]]


def requested_node_name(body: Any) -> str | None:
    """The valid node name an exchange request asks for, else None."""
    name = body.get("nodeName") if isinstance(body, dict) else None
    if not isinstance(name, str) or len(name) > 253 or not _NODE_NAME.match(name):
        return None
    return name


async def node_named(registry: Registry, name: str | None) -> Obj | None:
    """The Node an exchange asks to become, if there is one (what `issue_node_credential`
    checks it against)."""
    if name is None:
        return None
    try:
        return await registry.get(BY_PLURAL["nodes"], None, name)
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise


def _taken(name: str, ips: Sequence[str], existing: Obj | None) -> None:
    """Refuse (409) the name of a Node that is Ready at other addresses: another machine runs
    it (kubeadm join's check). Its credential would let this machine take the Node over, its
    InternalIP and podCIDR, and every node's overlay would send that subnet here. The same
    machine joining again (one of its addresses) and a Node not Ready (its machine gone)
    pass."""
    if existing is None:
        return
    status = existing.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
        if isinstance(c, dict)
    )
    theirs = [
        str(a.get("address"))
        for a in status.get("addresses") or []
        if isinstance(a, dict) and a.get("type") == "InternalIP"
    ]
    if not ready or not theirs or set(theirs) & set(ips):
        return
    raise ApiError(
        409,
        "AlreadyExists",
        f'node "{name}" is Ready at {", ".join(theirs)}, another machine: join with another '
        f"--node-name, or, if that machine is gone for good, delete its Node first (kubectl "
        f"delete node {name})",
    )


def issue_node_credential(
    user: UserInfo,
    body: Any,
    signer: TokenSigner,
    serving: ServingIssuer | None = None,
    existing: Obj | None = None,
) -> Obj:
    """The answer to `POST /podnet/v1/node-credential` (ApiError when refused). `existing`:
    the Node of the name asked for, if there is one (`node_named`)."""
    if BOOTSTRAPPERS not in user.groups:
        raise ApiError(
            403,
            "Forbidden",
            f'user "{user.name}" is not a bootstrapper: only a bootstrap token (podnet token '
            "create) can be exchanged for a node credential",
        )
    name = requested_node_name(body)
    if name is None:
        raise ApiError(
            400,
            "BadRequest",
            'the body must be {"nodeName": NAME} with NAME a DNS-1123 subdomain (lower-case '
            "letters, digits, '-' and '.')",
        )
    ips = _node_ips(body.get("nodeIPs"))
    _taken(name, ips, existing)
    answer: Obj = {
        "apiVersion": "podnet.io/v1",
        "kind": "NodeCredential",
        "nodeName": name,
        "user": f"system:node:{name}",
        "token": signer.issue_node_token(name),
    }
    if ips and serving is not None:
        cert, key = serving(name, ips)
        answer["kubeletCertificate"] = cert.decode()
        answer["kubeletKey"] = key.decode()
    return answer


def _node_ips(value: Any) -> list[str]:
    """`nodeIPs` of an exchange request, each address validated (none given: [])."""
    if value is None:
        return []
    refused = ApiError(
        400,
        "BadRequest",
        f"nodeIPs must be a list of 1 to {MAX_NODE_IPS} IP addresses (the node's, for its "
        "kubelet serving certificate)",
    )
    if not isinstance(value, list) or not 0 < len(value) <= MAX_NODE_IPS:
        raise refused
    if not all(isinstance(ip, str) for ip in value):
        raise refused
    try:
        return [str(ipaddress.ip_address(ip)) for ip in value]
    except ValueError:
        raise refused from None
