"""Authenticators: a bearer token in, a `UserInfo` (or a 401) out.

What belongs here: each kind of credential the server accepts, tried in order by
`authenticate_token` (upstream's union token authenticator):
- the admin token written to the state dir (the lab's kubeconfig): user `kubernetes-admin` in
  `system:masters`;
- node credentials (`tokens.NODE_AUDIENCE` JWTs): `system:node:<name>` in `system:nodes`;
- ServiceAccount tokens (bound JWTs): checked against the store as upstream's validator does —
  the ServiceAccount must still exist with the uid in the token, and a token bound to a pod
  stops working when that pod is gone (or replaced by one with another uid).
A bootstrap-token authenticator for `podnet join` (`system:bootstrap:<id>` in
`system:bootstrappers`, checked against the `bootstrap-token-<id>` Secret in kube-system) is
one more `TokenAuthenticator` in the list built by `chain.Auth`.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from podnet.api.errors import ApiError
from podnet.api.meta import parse_rfc3339
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth.tokens import TokenInvalid, TokenSigner
from podnet.apiserver.auth.user import UserInfo, admin_user, node_user, service_account_user
from podnet.apiserver.registry import Registry


class TokenAuthenticator(Protocol):
    async def authenticate(self, token: str) -> UserInfo | None:
        """The user, or None when the token is not of this kind (or not valid)."""
        ...


class StaticToken:
    def __init__(self, token: str, user: UserInfo | None = None) -> None:
        self.token = token.encode()
        self.user = user or admin_user()

    async def authenticate(self, token: str) -> UserInfo | None:
        return self.user if hmac.compare_digest(token.encode(), self.token) else None


class NodeTokens:
    def __init__(self, signer: TokenSigner) -> None:
        self.signer = signer

    async def authenticate(self, token: str) -> UserInfo | None:
        if not self.signer.looks_like_jwt(token):
            return None
        try:
            return node_user(self.signer.verify_node_token(token))
        except TokenInvalid:
            return None


class ServiceAccountTokens:
    def __init__(self, signer: TokenSigner, registry: Registry) -> None:
        self.signer = signer
        self.registry = registry

    async def authenticate(self, token: str) -> UserInfo | None:
        if not self.signer.looks_like_jwt(token):
            return None
        try:
            claims = self.signer.verify_service_account_token(token)
        except TokenInvalid:
            return None
        try:
            account = await self.registry.get(
                BY_PLURAL["serviceaccounts"], claims.namespace, claims.name
            )
        except ApiError:
            return None
        if claims.uid and account["metadata"].get("uid") != claims.uid:
            return None
        extra: dict[str, str] = {"credential_id": f"JTI={claims.token_id}"}
        if claims.bound is not None:
            try:
                pod = await self.registry.get(
                    BY_PLURAL["pods"], claims.namespace, claims.bound.name
                )
            except ApiError:
                return None
            meta = pod["metadata"]
            if meta.get("uid") != claims.bound.uid or _deleted(meta, self.signer.clock()):
                return None
            extra.update(pod_name=claims.bound.name, pod_uid=claims.bound.uid)
            if claims.bound.node_name:
                extra.update(node_name=claims.bound.node_name, node_uid=claims.bound.node_uid)
        return service_account_user(claims.namespace, claims.name, claims.uid, **extra)


def _deleted(meta: dict[str, object], now: float) -> bool:
    """upstream: a bound token ends when its pod's deletion timestamp has passed."""
    when = parse_rfc3339(meta.get("deletionTimestamp"))
    return when is not None and when.timestamp() <= now


async def authenticate_token(
    authenticators: list[TokenAuthenticator], token: str
) -> UserInfo | None:
    for authenticator in authenticators:
        user = await authenticator.authenticate(token)
        if user is not None:
            return user
    return None
