"""Who may use the kubelet endpoint, and the TLS it is served with (upstream kubelet flags
`--tls-cert-file`, `--client-ca-file`, `--anonymous-auth=false`,
`--authentication-token-webhook`, `--authorization-mode=Webhook`).

What belongs here: `server_tls` (the listener's TLS settings) and `KubeletAuth`:
- authentication: a client certificate the TLS layer verified against the cluster CA (user =
  its CN, groups = its Os — the API server's `kube-apiserver-kubelet-client` in
  `system:masters`), else a bearer token checked with a TokenReview; neither is a 401. Plain
  HTTP is not served at all.
- authorization: a SubjectAccessReview for `nodes/<subresource>` named after this node, with
  the verb of the HTTP method, as upstream's `GetRequestAttributes`: `/healthz` is `healthz`,
  `/metrics` `metrics`, `/logs` `log`, `/stats` `stats`, `/spec` `spec`, everything else
  (exec, attach, portForward, containerLogs) `proxy`. A refusal is a 403 with upstream's text.
Both reviews are asked of the API server as this node (the Node authorizer allows them) and
their answers cached as upstream's webhook caches do: tokens 2 min, allowed 5 min, denied 30 s.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podnet.api.errors import ApiError, forbidden, unauthorized
from podnet.api.interface import Api

TOKEN_TTL = 120.0
ALLOWED_TTL = 300.0
DENIED_TTL = 30.0
CACHE_SIZE = 1024
SUBRESOURCES = {  # upstream kubelet `server/auth.go`: the path prefix's subresource
    "/healthz": "healthz",
    "/metrics": "metrics",
    "/logs": "log",
    "/stats": "stats",
    "/spec": "spec",
}
VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
         "DELETE": "delete"}  # fmt: skip


def server_tls(cert: Path, key: Path, client_ca: bytes) -> ssl.SSLContext:
    """TLS for the kubelet endpoint: our serving certificate; a client certificate is
    optional at this layer (bearer tokens are the other way in) but must chain to
    `client_ca` when one is presented."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=client_ca.decode())
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def certificate_caller(peercert: Mapping[str, Any] | None) -> Caller | None:
    """The user of a verified client certificate (`ssl.SSLSocket.getpeercert()`)."""
    if not peercert:
        return None
    names: list[str] = []
    organizations: list[str] = []
    for rdn in peercert.get("subject") or ():
        for key, value in rdn:
            if key == "commonName":
                names.append(str(value))
            elif key == "organizationName":
                organizations.append(str(value))
    return Caller(names[0], tuple(organizations)) if names else None


def subresource(path: str) -> str:
    for prefix, name in SUBRESOURCES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return name
    return "proxy"


class _TtlCache:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        found = self.entries.get(key)
        if found is None or found[0] <= self.clock():
            self.entries.pop(key, None)
            return None
        return found[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        if len(self.entries) >= CACHE_SIZE:
            now = self.clock()
            self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            while len(self.entries) >= CACHE_SIZE:
                self.entries.pop(next(iter(self.entries)))
        self.entries[key] = (self.clock() + ttl, value)


class KubeletAuth:
    def __init__(
        self, api: Api, node_name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.api = api
        self.node_name = node_name
        self._tokens = _TtlCache(clock)
        self._decisions = _TtlCache(clock)

    async def authenticate(self, peercert: Mapping[str, Any] | None, authorization: str) -> Caller:
        """The caller, or a 401 ApiError."""
        caller = certificate_caller(peercert)
        if caller is not None:
            return caller
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
        cached = self._tokens.get(token)
        if cached is None:
            cached = await self._review_token(token)
            self._tokens.put(token, cached, TOKEN_TTL)
        if not isinstance(cached, Caller):
            raise unauthorized()
        return cached

    async def _review_token(self, token: str) -> Caller | bool:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        answer = await self.api.create("tokenreviews", review)
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return False
        user = status.get("user") or {}
        extra = {str(k): tuple(v) for k, v in (user.get("extra") or {}).items()}
        return Caller(
            str(user.get("username") or ""),
            tuple(user.get("groups") or ()),
            str(user.get("uid") or ""),
            extra,
        )

    async def authorize(self, caller: Caller, method: str, path: str) -> None:
        """Return if `caller` may make this request of this node; else a 403 ApiError."""
        verb = VERBS.get(method.upper(), method.lower())
        sub = subresource(path)
        key = (caller.name, caller.groups, caller.uid, verb, sub)
        allowed = self._decisions.get(key)
        if allowed is None:
            allowed = await self._review_access(caller, verb, sub)
            self._decisions.put(key, allowed, ALLOWED_TTL if allowed else DENIED_TTL)
        if not allowed:
            raise forbidden(
                f"Forbidden (user={caller.name}, verb={verb}, resource=nodes, subresource={sub})"
            )

    async def _review_access(self, caller: Caller, verb: str, sub: str) -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": caller.name,
                "groups": list(caller.groups),
                "uid": caller.uid,
                "extra": {k: list(v) for k, v in caller.extra.items()},
                "resourceAttributes": {
                    "verb": verb,
                    "version": "v1",
                    "resource": "nodes",
                    "subresource": sub,
                    "name": self.node_name,
                },
            },
        }
        try:
            answer = await self.api.create("subjectaccessreviews", review)
        except ApiError as exc:
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"the kubelet could not ask the API server whether {caller.name} may {verb} "
                f"nodes/{sub}: {exc}",
            ) from None
        return bool((answer.get("status") or {}).get("allowed"))
