"""A request's authorization attributes and upstream's words for a refusal.

What belongs here: `Attributes` (upstream `authorizer.AttributesRecord`), deriving the verb from
the HTTP method as upstream's `RequestInfoFactory` does (GET on a name is get, on a collection
list, with watch=true watch; POST create; PUT update; PATCH patch; DELETE on a name delete, on a
collection deletecollection), and `forbidden_error`, the 403 `Status` with upstream's message:

    pods is forbidden: User "system:serviceaccount:default:x" cannot delete resource "pods"
    in API group "" in the namespace "default"
"""

from __future__ import annotations

from dataclasses import dataclass

from podnet.api.errors import ApiError
from podnet.apiserver.auth.user import UserInfo

READ_VERBS = ("get", "list", "watch")


@dataclass(frozen=True, slots=True)
class Attributes:
    user: UserInfo
    verb: str
    resource_request: bool
    namespace: str = ""
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""  # non-resource requests

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def resource_verb(method: str, has_name: bool, watch: bool) -> str:
    if method in ("GET", "HEAD"):
        if watch:
            return "watch"
        return "get" if has_name else "list"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def nonresource_verb(method: str) -> str:
    return "get" if method == "HEAD" else method.lower()


def forbidden_message(attrs: Attributes) -> str:
    user = attrs.user.name
    if not attrs.resource_request:
        return f'User "{user}" cannot {attrs.verb} path "{attrs.path}"'
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return (
        f'User "{user}" cannot {attrs.verb} resource "{attrs.combined_resource}" '
        f'in API group "{attrs.api_group}" {where}'
    )


def forbidden_error(attrs: Attributes, reason: str = "") -> ApiError:
    """upstream `errors.NewForbidden(gr, name, err)` as the handler chain builds it."""
    message = forbidden_message(attrs)
    if reason:
        message += f": {reason}"
    if not attrs.resource_request:
        return ApiError(403, "Forbidden", f"forbidden: {message}", {})
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    details: dict[str, object] = {"kind": attrs.resource}
    if attrs.name:
        details["name"] = attrs.name
    if attrs.api_group:
        details["group"] = attrs.api_group
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {message}", details)
