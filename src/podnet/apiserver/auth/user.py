"""Users and groups, as upstream's `user.Info` and its well-known names.

A ServiceAccount's user is `system:serviceaccount:<ns>:<name>` in the groups
`system:serviceaccounts` and `system:serviceaccounts:<ns>`; a node's is `system:node:<name>`
in `system:nodes`; every authenticated user is also in `system:authenticated`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SYSTEM_MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
SERVICE_ACCOUNTS = "system:serviceaccounts"
NODES = "system:nodes"
BOOTSTRAPPERS = "system:bootstrappers"  # bootstrap tokens (podnet join) authenticate into it
SA_PREFIX = "system:serviceaccount:"
NODE_PREFIX = "system:node:"
ADMIN_USER = "kubernetes-admin"


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


def service_account_user(namespace: str, name: str, uid: str = "", **extra: str) -> UserInfo:
    return UserInfo(
        f"{SA_PREFIX}{namespace}:{name}",
        uid,
        (SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{namespace}", AUTHENTICATED),
        {f"authentication.kubernetes.io/{k.replace('_', '-')}": (v,) for k, v in extra.items()},
    )


def node_user(node: str) -> UserInfo:
    return UserInfo(f"{NODE_PREFIX}{node}", "", (NODES, AUTHENTICATED))


def admin_user() -> UserInfo:
    return UserInfo(ADMIN_USER, "", (SYSTEM_MASTERS, AUTHENTICATED))


def split_service_account(username: str) -> tuple[str, str] | None:
    """`system:serviceaccount:ns:name` -> (ns, name)."""
    if not username.startswith(SA_PREFIX):
        return None
    namespace, colon, name = username[len(SA_PREFIX) :].partition(":")
    return (namespace, name) if colon and namespace and name and ":" not in name else None


def node_name(user: UserInfo) -> str | None:
    """The node a user speaks for (`system:node:<name>` in `system:nodes`), else None."""
    if NODES not in user.groups or not user.name.startswith(NODE_PREFIX):
        return None
    return user.name[len(NODE_PREFIX) :] or None
