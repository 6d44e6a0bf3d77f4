"""The JWTs the server signs: bound ServiceAccount tokens and node credentials.

What belongs here: the signing key (`sa.key`, EC P-256, generated once in the state dir, mode
0600 — upstream's `--service-account-signing-key-file`), issuing and verifying tokens. Claims
follow upstream's bound tokens (`pkg/serviceaccount/claims.go`): `iss`, `sub`
(`system:serviceaccount:<ns>:<name>`), `aud`, `exp`, `iat`, `nbf`, `jti` and a
`kubernetes.io` claim naming the namespace, the ServiceAccount (name, uid) and the object the
token is bound to (a pod, with the node it runs on). Node credentials are tokens of the same
issuer for the audience `NODE_AUDIENCE` with `sub` `system:node:<name>`: the lab issues them
from the state dir, and a later `podnet join` issues them once a bootstrap token is accepted
(`issue_node_token` is that one call).

Invariants: only ES256 is accepted (no `alg` confusion, never `none`); every token expires;
verification checks signature, issuer, audience and expiry before any claim is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from podnet.private import write_private

SIGNING_KEY = "sa.key"
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (ISSUER,)  # upstream --api-audiences defaults to the issuer
NODE_AUDIENCE = "podnet.io/node"
DEFAULT_EXPIRATION = 3607  # seconds: upstream's projected token default
MIN_EXPIRATION = 600  # TokenRequest refuses less, as upstream does
MAX_EXPIRATION = (
    48 * 3600
)  # a requested lifetime is capped here (upstream: --service-account-max-token-expiration)
NODE_EXPIRATION = 365 * 24 * 3600  # like a kubelet client certificate
ALGORITHM = "ES256"
CLOCK_SKEW = 60.0  # seconds of nbf leeway, as upstream's validator allows
CLAIM = "kubernetes.io"


class TokenInvalid(Exception):
    """The token is not one of ours, or is no longer valid; the message says why."""


@dataclass(frozen=True, slots=True)
class BoundRef:
    """What a ServiceAccount token is bound to (a pod, and the node it was scheduled to)."""

    kind: str
    name: str
    uid: str
    node_name: str = ""
    node_uid: str = ""


@dataclass(frozen=True, slots=True)
class ServiceAccountClaims:
    namespace: str
    name: str
    uid: str
    bound: BoundRef | None
    audiences: tuple[str, ...]
    expires: int
    issued: int
    token_id: str


def load_or_create_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    path = state_dir / SIGNING_KEY
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an EC private key; remove it to have a new one made")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, pem)
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """Upstream's `kid`: the unpadded base64url SHA-256 of the DER public key."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


class TokenSigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey, clock: Any = time.time) -> None:
        self.key = key
        self.public = key.public_key()
        self.kid = key_id(self.public)
        self.clock = clock

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> TokenSigner:
        return cls(load_or_create_key(state_dir))

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def issue_service_account_token(
        self,
        namespace: str,
        name: str,
        uid: str,
        *,
        audiences: tuple[str, ...] = API_AUDIENCES,
        expiration_seconds: int = DEFAULT_EXPIRATION,
        bound: BoundRef | None = None,
    ) -> tuple[str, int]:
        """(token, expiry as a Unix time)."""
        now = int(self.clock())
        expires = now + expiration_seconds
        private: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        }
        if bound is not None:
            private[bound.kind.lower()] = {"name": bound.name, "uid": bound.uid}
            if bound.node_name:
                private["node"] = {"name": bound.node_name, "uid": bound.node_uid}
        claims = {
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": list(audiences),
            "exp": expires,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            CLAIM: private,
        }
        return self._sign(claims), expires

    def issue_node_token(self, node: str, expiration_seconds: int = NODE_EXPIRATION) -> str:
        """A node's credential: user `system:node:<node>` in `system:nodes`."""
        now = int(self.clock())
        claims = {
            "iss": ISSUER,
            "sub": f"system:node:{node}",
            "aud": [NODE_AUDIENCE],
            "exp": now + expiration_seconds,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
        }
        return self._sign(claims)

    def _decode(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"not a JWT: {exc}") from None
        if header.get("kid", self.kid) != self.kid:
            raise TokenInvalid("signed by another key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public,
                algorithms=[ALGORITHM],
                audience=list(audiences),
                issuer=ISSUER,
                # times are checked below against this signer's clock
                options={
                    "require": ["exp", "iat", "sub", "aud", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenInvalid(str(exc)) from None
        now = self.clock()
        try:
            expires, not_before = float(claims["exp"]), float(claims.get("nbf", claims["iat"]))
        except (TypeError, ValueError):
            raise TokenInvalid("exp, iat and nbf must be numbers") from None
        if now >= expires:
            raise TokenInvalid("the token has expired")
        if now < not_before - CLOCK_SKEW:
            raise TokenInvalid("the token is not valid yet")
        return claims

    def looks_like_jwt(self, token: str) -> bool:
        return token.count(".") == 2 and token.startswith("eyJ")

    def verify_node_token(self, token: str) -> str:
        """The node name, or TokenInvalid."""
        claims = self._decode(token, (NODE_AUDIENCE,))
        subject = str(claims["sub"])
        if not subject.startswith("system:node:") or len(subject) == len("system:node:"):
            raise TokenInvalid(f"subject {subject!r} is not a node")
        return subject[len("system:node:") :]

    def verify_service_account_token(
        self, token: str, audiences: tuple[str, ...] = API_AUDIENCES
    ) -> ServiceAccountClaims:
        claims = self._decode(token, audiences)
        private = claims.get(CLAIM)
        if not isinstance(private, dict):
            raise TokenInvalid(f"no {CLAIM} claim: not a ServiceAccount token")
        sa = private.get("serviceaccount") or {}
        namespace, name = str(private.get("namespace") or ""), str(sa.get("name") or "")
        if claims["sub"] != f"system:serviceaccount:{namespace}:{name}" or not name:
            raise TokenInvalid("the subject does not match the ServiceAccount claim")
        bound = None
        pod = private.get("pod")
        if isinstance(pod, dict):
            node = private.get("node") or {}
            bound = BoundRef(
                "Pod",
                str(pod.get("name", "")),
                str(pod.get("uid", "")),
                str(node.get("name", "")),
                str(node.get("uid", "")),
            )
        aud = claims["aud"]
        return ServiceAccountClaims(
            namespace,
            name,
            str(sa.get("uid") or ""),
            bound,
            tuple(aud) if isinstance(aud, list) else (str(aud),),
            int(claims["exp"]),
            int(claims["iat"]),
            str(claims.get("jti", "")),
        )
