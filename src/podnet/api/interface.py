"""The one interface every podnet component uses to read and write cluster state.

Controllers (inside the server) get an in-process implementation over the same registry the
HTTP handlers use; node agents, the CLI, benchmarks and tests get `podnet.api.client.HttpApi`,
which speaks the Kubernetes REST API over HTTPS with a bearer token. Code written against `Api`
runs unchanged on either, so the control loops are testable without sockets.

Objects are plain JSON dicts in the Kubernetes wire shape (what `kubectl get -o json` shows).
Resources are named by plural (see `podnet.api.resources`). Failures raise
`podnet.api.errors.ApiError` with upstream's code and reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

Obj = dict[str, Any]
PatchType = Literal["merge", "strategic", "json"]


class Api(Protocol):
    async def get(
        self, resource: str, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> Obj: ...

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        """A `<Kind>List` with `items` and `metadata.resourceVersion`; with `limit`, one page
        of at most that many items and `metadata.continue` (the token for the next page, as
        `continue_token`) while more remain."""
        ...

    async def create(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj: ...

    async def update(
        self, resource: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        """PUT; `metadata.resourceVersion` in `obj`, when set, is a precondition (409)."""
        ...

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Obj: ...

    async def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        """Returns the object (with deletionTimestamp if deletion is graceful) or a Status."""
        ...

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
        """Watch events `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": {...}}`.

        An expired resourceVersion raises ApiError(410) instead of yielding an ERROR event.
        """
        ...
