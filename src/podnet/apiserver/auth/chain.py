"""`Auth`: what the HTTP layer asks of authentication, authorization and identity admission.

The server builds one `Auth` (after the registry and the signing key) and runs its watches
(`run`); `handlers` calls `authenticate` for every request and `authorize` once the request's
attributes are known. Authorizers run in upstream's order — `system:masters` (the privileged
group), Node, RBAC — and the first that allows wins; none allowing is a 403 with upstream's
message.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from podnet.api.errors import ApiError, unauthorized
from podnet.apiserver.auth import rbac
from podnet.apiserver.auth.attributes import Attributes, forbidden_error
from podnet.apiserver.auth.authn import (
    NodeTokens,
    ServiceAccountTokens,
    StaticToken,
    TokenAuthenticator,
    authenticate_token,
)
from podnet.apiserver.auth.bootstrap import BootstrapTokens
from podnet.apiserver.auth.node import NodeAuthorizer, PodIndex
from podnet.apiserver.auth.tokens import TokenSigner
from podnet.apiserver.auth.user import ANONYMOUS, SYSTEM_MASTERS, UNAUTHENTICATED, UserInfo
from podnet.apiserver.registry import Registry

log = logging.getLogger(__name__)
SYNC_WAIT_SECONDS = 10.0  # a request at start-up waits this long for the RBAC index
ANONYMOUS_USER = UserInfo(ANONYMOUS, "", (UNAUTHENTICATED,))


class Authorizer(Protocol):
    name: str

    def authorize(self, attrs: Attributes) -> tuple[bool | None, str]:
        """(True, why) allows; (None, why) has no opinion. Nothing here denies outright."""
        ...


class PrivilegedGroups:
    name = "system:masters"

    def authorize(self, attrs: Attributes) -> tuple[bool | None, str]:
        return (True, "") if SYSTEM_MASTERS in attrs.user.groups else (None, "")


class Auth:
    def __init__(self, registry: Registry, signer: TokenSigner, admin_token: str) -> None:
        self.registry = registry
        self.signer = signer
        self.rbac_index = rbac.RbacIndex()
        self.pods = PodIndex()
        self.authenticators: list[TokenAuthenticator] = [
            StaticToken(admin_token),
            NodeTokens(signer),
            ServiceAccountTokens(signer, registry),
            BootstrapTokens(registry),
        ]
        self.authorizers: list[Authorizer] = [
            PrivilegedGroups(),
            NodeAuthorizer(self.pods),
            rbac.RbacAuthorizer(self.rbac_index),
        ]

    @classmethod
    def for_state_dir(cls, registry: Registry, state_dir: Path, admin_token: str) -> Auth:
        return cls(registry, TokenSigner.from_state_dir(state_dir), admin_token)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the RBAC and pod indexes current (and aggregated ClusterRoles written)."""
        await asyncio.gather(
            self.rbac_index.run(self.registry, stop),
            self.pods.run(self.registry, stop),
            rbac.run_aggregation(self.registry, self.rbac_index, stop),
        )

    async def authenticate(self, authorization: str) -> UserInfo:
        """The user of an `Authorization` header value ('' : anonymous); 401 if it is bad."""
        if not authorization:
            return ANONYMOUS_USER
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()
        user = await authenticate_token(self.authenticators, token.strip())
        if user is None:
            raise unauthorized()
        return user

    async def decide(self, attrs: Attributes) -> tuple[bool, str]:
        reasons = []
        for authorizer in self.authorizers:
            if not isinstance(authorizer, PrivilegedGroups):
                await self._synced()
            allowed, reason = authorizer.authorize(attrs)
            if allowed:
                return True, reason
            if reason:
                reasons.append(reason)
        return False, "; ".join(reasons)

    async def authorize(self, attrs: Attributes) -> None:
        """Return if allowed; raise the 403 Status (upstream's message) if not."""
        allowed, _ = await self.decide(attrs)
        if not allowed:
            raise forbidden_error(attrs)

    async def _synced(self) -> None:
        if self.rbac_index.synced.is_set() and self.pods.synced.is_set():
            return
        for index in (self.rbac_index.synced, self.pods.synced):
            try:
                await asyncio.wait_for(index.wait(), SYNC_WAIT_SECONDS)
            except TimeoutError:
                raise ApiError(
                    503,
                    "ServiceUnavailable",
                    "the authorizer has not loaded its roles and bindings yet; retry shortly",
                ) from None
