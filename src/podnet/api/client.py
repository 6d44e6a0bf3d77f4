"""`HttpApi`: the `podnet.api.interface.Api` protocol over HTTPS, for agents, the CLI and tests.

What belongs here: building Kubernetes REST URLs from the resource table, the HTTP session
(server CA from the kubeconfig, bearer token), decoding responses, streaming watches, and
turning every error `Status` into `ApiError` — so callers handle exactly the errors `LocalApi`
raises.

Invariants:
- Non-2xx answers raise `ApiError` built from the Status body (or, when the body is not a
  Status, from the HTTP code with the body text), never return data.
- A watch yields events one per line; an ERROR event with code 410 raises ApiError(410) (the
  `Api` contract), other ERROR events raise their Status; the stream ends when the server ends
  it (timeoutSeconds).
- The session is created lazily inside the running event loop and closed by `close()`.
- In a pod (`in_cluster`) the token file is read again every minute: the kubelet replaces
  the projected token long before it expires.
- Every request names its component in the User-Agent (`podnet-agent/0.1.0 (linux/x86_64)`),
  as client-go does, so the server's managedFields and audit show who wrote what (the
  manager is the User-Agent's product when a write names no `fieldManager`).
- Failover (several API servers, DESIGN.md "Hosts"): a client knows every server of the
  cluster (the kubeconfig cluster's `podnet.io/servers` extension, which kubectl ignores) and
  sticks to one until it cannot connect; then it moves to the next, for every verb, because a
  request that never connected was never applied. A connection lost *after* the request was
  sent is retried on the next server only for reads (GET): a write may have been applied, so
  its caller decides (kube's client-go retries no unsafe verb either). A watch that cannot
  connect moves on too; a watch cut by a dying server ends, and the caller resumes from its
  last resourceVersion on whichever server answers (the store's revisions are shared).
"""

from __future__ import annotations

import base64
import contextlib
import json
import platform
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from podnet import __version__
from podnet.api.errors import ApiError
from podnet.api.interface import Obj, PatchType
from podnet.api.resources import Resource, resource

PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}

Params = list[tuple[str, str]]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_FILE_PERIOD = 60.0  # seconds between reads of an in-cluster token file
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
_WATCH_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
SERVERS_EXTENSION = "podnet.io/servers"  # kubeconfig cluster extension: every API server


def _resource(plural: str) -> Resource:
    try:
        return resource(plural)
    except KeyError as exc:
        raise ApiError(404, "NotFound", str(exc.args[0])) from None


class KubeconfigError(ValueError):
    """The kubeconfig is missing or lacks what podnet needs; the message says what to fix."""


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise KubeconfigError(
            f"kubeconfig {path} does not exist; start the server "
            "(`podnet server --state-dir DIR` writes DIR/kubeconfig) or pass "
            "the right path"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a YAML mapping")
    return doc


def _find(doc: dict[str, Any], path: Path, section: str, wanted: Any) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == wanted:
            return dict(entry)
    raise KubeconfigError(f"kubeconfig {path}: no {section[:-1]} named {wanted!r}")


def _context_cluster(doc: dict[str, Any], path: Path, context: str | None) -> dict[str, Any]:
    ctx = _find(doc, path, "contexts", context or doc.get("current-context")).get("context") or {}
    return _find(doc, path, "clusters", ctx.get("cluster")).get("cluster") or {}


def kubeconfig_servers(path: Path, context: str | None = None) -> list[str]:
    """Every API server the context's cluster lists in its `podnet.io/servers` extension
    (empty when it has none: a one-server cluster)."""
    cluster = _context_cluster(_read_kubeconfig(path), path, context)
    for entry in cluster.get("extensions") or []:
        if isinstance(entry, dict) and entry.get("name") == SERVERS_EXTENSION:
            servers = (entry.get("extension") or {}).get("servers") or []
            if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
                raise KubeconfigError(
                    f"kubeconfig {path}: extension {SERVERS_EXTENSION} must hold "
                    "`servers: [https://HOST:PORT, ...]`"
                )
            return [str(s).rstrip("/") for s in servers]
    return []


def load_kubeconfig(path: Path, context: str | None = None) -> tuple[str, bytes | None, str, bool]:
    """(server URL, CA PEM or None, bearer token, insecure) of a kubeconfig's context."""
    doc = _read_kubeconfig(path)
    name = context or doc.get("current-context")
    ctx = _find(doc, path, "contexts", name).get("context") or {}
    cluster = _find(doc, path, "clusters", ctx.get("cluster")).get("cluster") or {}
    user = _find(doc, path, "users", ctx.get("user")).get("user") or {}
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    ca: bytes | None = None
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        ca_path = Path(cluster["certificate-authority"])
        if not ca_path.is_absolute():
            ca_path = path.parent / ca_path
        ca = ca_path.read_bytes()
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if not token:
        raise KubeconfigError(
            f"kubeconfig {path}: user {ctx.get('user')!r} has no bearer token "
            "(podnet authenticates with `token`)"
        )
    return str(server).rstrip("/"), ca, str(token), bool(cluster.get("insecure-skip-tls-verify"))


def user_agent(component: str) -> str:
    """client-go's User-Agent shape: `PRODUCT/VERSION (OS/ARCH)`."""
    return f"{component}/{__version__} (linux/{platform.machine() or 'unknown'})"


class HttpApi:
    """`Api` over the Kubernetes REST API (see the module docstring)."""

    def __init__(
        self,
        server: str,
        token: str,
        ca_pem: bytes | None = None,
        *,
        insecure: bool = False,
        token_file: Path | None = None,
        servers: Sequence[str] = (),
        component: str = "podnet-client",
    ) -> None:
        first = server.rstrip("/")
        self.user_agent = user_agent(component)
        others = [s.rstrip("/") for s in servers if s.rstrip("/") != first]
        self.servers = [first, *others]  # failover order; `server` is the one in use
        self._current = 0
        self._token = token
        # a file the kubelet rewrites (a projected ServiceAccount token): read again at most
        # every TOKEN_FILE_PERIOD, as client-go's cached file token source does
        self._token_file = token_file
        self._token_read = time.monotonic()
        self.ca_pem = ca_pem
        self._ssl: ssl.SSLContext | bool = True
        if server.startswith("https://"):
            if insecure:
                self._ssl = False
            elif ca_pem:
                self._ssl = ssl.create_default_context(cadata=ca_pem.decode())
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(
        cls, path: str | Path, context: str | None = None, component: str = "podnet-client"
    ) -> HttpApi:
        server, ca, token, insecure = load_kubeconfig(Path(path), context)
        servers = kubeconfig_servers(Path(path), context)
        return cls(server, token, ca, insecure=insecure, servers=servers, component=component)

    @property
    def server(self) -> str:
        """The API server requests go to now (see "Failover" in the module docstring)."""
        return self.servers[self._current]

    def _fail_over(self, failed: str) -> bool:
        """Move on from `failed` (unless another request did already); False: one server."""
        if len(self.servers) == 1:
            return False
        if self.server == failed:
            self._current = (self._current + 1) % len(self.servers)
        return True

    def _on_current(self, url: str) -> str:
        """`url` (built for any of the servers) pointed at the server in use."""
        for server in self.servers:
            if url.startswith(server + "/"):
                return self.server + url[len(server) :]
        return url

    @classmethod
    def in_cluster(
        cls,
        environ: dict[str, str],
        directory: Path = SERVICE_ACCOUNT_DIR,
        component: str = "podnet-client",
    ) -> HttpApi:
        """client-go's `InClusterConfig`: the `kubernetes` Service from the environment the
        kubelet sets, the token and CA a pod finds in `directory`."""
        host = environ.get("KUBERNETES_SERVICE_HOST", "")
        port = environ.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise KubeconfigError(
                "not running in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are "
                "not set; pass a kubeconfig instead"
            )
        try:
            token = (directory / "token").read_text().strip()
            ca = (directory / "ca.crt").read_bytes()
        except OSError as exc:
            raise KubeconfigError(
                f"in-cluster credentials are missing ({exc}); the pod must mount a token and "
                f"ca.crt at {directory}"
            ) from exc
        host = f"[{host}]" if ":" in host else host
        return cls(
            f"https://{host}:{port}", token, ca, token_file=directory / "token", component=component
        )

    def _authorization(self) -> dict[str, str]:
        if self._token_file is not None:
            now = time.monotonic()
            if now - self._token_read >= TOKEN_FILE_PERIOD:
                with contextlib.suppress(OSError):
                    self._token = self._token_file.read_text().strip() or self._token
                self._token_read = now
        return {"Authorization": f"Bearer {self._token}"}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={
                    "Accept": "application/json",
                    "User-Agent": self.user_agent,
                },
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
            )
        return self._session

    async def close(self) -> None:
        # forgotten first: a session opened while this one closes is kept, for the next close
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> HttpApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ------------------------------------------------------------------------

    def url(
        self,
        res: Resource,
        namespace: str | None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        path = res.base_path(namespace if res.namespaced else None)
        if name:
            path += f"/{name}"
            if subresource:
                path += f"/{subresource}"
        return self.server + path

    async def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        params: Params | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; the decoded JSON answer, or ApiError."""
        data = None if body is None else json.dumps(body).encode()
        headers = self._authorization()
        if data is not None:
            headers["Content-Type"] = content_type
        for _attempt in range(len(self.servers)):
            server = self.server
            try:
                async with self.session.request(
                    method,
                    self._on_current(url),
                    data=data,
                    params=params,
                    headers=headers,
                    timeout=_REQUEST_TIMEOUT,
                ) as resp:
                    raw = await resp.read()
                    if resp.status >= 400:
                        raise _error(resp.status, raw)
                    return json.loads(raw) if raw else {}
            except aiohttp.ClientConnectorError as exc:
                if not self._fail_over(server):
                    raise ApiError(
                        503,
                        "ServiceUnavailable",
                        f"cannot reach the API server at {server}: {exc}; "
                        "is `podnet server` running?",
                    ) from None
                error: Exception = exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if method != "GET" or not self._fail_over(server):
                    raise
                error = exc
        raise ApiError(
            503,
            "ServiceUnavailable",
            f"cannot reach any API server ({', '.join(self.servers)}); last error: {error}",
        )

    # -- Api -----------------------------------------------------------------------------

    async def get(
        self, resource: str, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        res = _resource(resource)
        result: Obj = await self.request("GET", self.url(res, namespace, name, subresource))
        return result

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        res = _resource(resource)
        params: Params = []
        if label_selector:
            params.append(("labelSelector", label_selector))
        if field_selector:
            params.append(("fieldSelector", field_selector))
        if limit is not None:
            params.append(("limit", str(limit)))
        if continue_token:
            params.append(("continue", continue_token))
        result: Obj = await self.request("GET", self.url(res, namespace), params=params)
        return result

    async def create(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        res = _resource(resource)
        if subresource:
            name = str((obj.get("metadata") or {}).get("name") or "")
            url = self.url(res, namespace, name, subresource)
        else:
            url = self.url(res, namespace)
        result: Obj = await self.request("POST", url, obj)
        return result

    async def update(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        res = _resource(resource)
        metadata = obj.get("metadata") or {}
        namespace = namespace or metadata.get("namespace")
        result: Obj = await self.request(
            "PUT", self.url(res, namespace, str(metadata.get("name") or ""), subresource), obj
        )
        return result

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Obj:
        res = _resource(resource)
        result: Obj = await self.request(
            "PATCH",
            self.url(res, namespace, name, subresource),
            patch,
            content_type=PATCH_CONTENT_TYPES[patch_type],
        )
        return result

    async def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        res = _resource(resource)
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if uid:
            options["preconditions"] = {"uid": uid}
        result: Obj = await self.request("DELETE", self.url(res, namespace, name), options)
        return result

    def watch(
        self,
        resource: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[Obj]:
        res = _resource(resource)
        params: Params = [("watch", "true")]
        if resource_version is not None:
            params.append(("resourceVersion", resource_version))
        if label_selector:
            params.append(("labelSelector", label_selector))
        if field_selector:
            params.append(("fieldSelector", field_selector))
        if timeout_seconds:
            params.append(("timeoutSeconds", str(timeout_seconds)))
        if allow_bookmarks:
            params.append(("allowWatchBookmarks", "true"))
        return self._stream(self.url(res, namespace), params)

    async def _stream(self, url: str, params: Params) -> AsyncGenerator[Obj, None]:
        for _attempt in range(len(self.servers)):
            server = self.server
            try:
                resp = await self.session.get(
                    self._on_current(url),
                    params=params,
                    headers=self._authorization(),
                    timeout=_WATCH_TIMEOUT,
                )
                break
            except aiohttp.ClientConnectorError as exc:
                if not self._fail_over(server):
                    raise ApiError(
                        503, "ServiceUnavailable", f"cannot reach the API server at {server}: {exc}"
                    ) from None
        else:
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"cannot reach any API server ({', '.join(self.servers)})",
            )
        async with resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.read())
            buffer = b""
            try:
                async for chunk in resp.content.iter_any():
                    if b"\n" not in chunk:
                        buffer += chunk
                        continue
                    # every whole line of the chunk at once: splitting one line at a time
                    # copied the rest of a large chunk (a slow reader's backlog) per event
                    *lines, rest = chunk.split(b"\n")
                    lines[0], buffer = buffer + lines[0], rest
                    for line in lines:
                        if line.strip():
                            yield _event(json.loads(line))
            except aiohttp.ClientPayloadError:
                return  # the server closed the stream (e.g. shutting down): the watch ends
            if buffer.strip():
                yield _event(json.loads(buffer))


def _event(event: Obj) -> Obj:
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        raise ApiError.from_status(status, int(status.get("code") or 500))
    return event


def _error(code: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError.from_status(body, code)
    text = raw.decode(errors="replace").strip()
    return ApiError(code, "Unknown", f"the server answered HTTP {code}: {text or 'no body'}")
