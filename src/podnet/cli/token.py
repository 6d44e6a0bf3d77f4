"""`podnet token create|list|delete`: bootstrap tokens for `podnet join` (kubeadm's commands).

What belongs here: the command line, and what creating a token writes besides its Secret, as
`kubeadm init`/`kubeadm token create` do:
- the `kube-public/cluster-info` ConfigMap: a kubeconfig with the servers' URLs and the CA (no
  credentials), signed by every signing token (`jws-kubeconfig-<id>`), which `podnet join` reads
  anonymously and trusts only when the signature of its own token checks out;
- RBAC: anonymous `get` of that one ConfigMap; the exchange (`POST /podnet/v1/node-credential`)
  for the tokens' group `system:bootstrappers:podnet:default-node-token`.
The token formats and the server's side live in `podnet.apiserver.auth.bootstrap`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from podnet.api.client import HttpApi, KubeconfigError
from podnet.api.errors import ApiError
from podnet.api.interface import Obj
from podnet.apiserver.auth import bootstrap as bt
from podnet.apiserver.credentials import render_kubeconfig

TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta | None:
    """`24h`, `30m`, `3600s`, `2d`; `0`: the token never expires (None). A number without a
    unit is refused (kubeadm's Go duration refuses it too): `24` is not taken as seconds."""
    match = TTL.match(text.strip())
    if match is None:
        raise ValueError(f"bad --ttl {text!r}: use a number with s, m, h or d (24h), or 0")
    number, unit = int(match.group(1)), match.group(2)
    if not unit and number != 0:
        raise ValueError(
            f"bad --ttl {text!r}: give its unit ({number}h, {number}m, {number}s), or 0 for a "
            "token that never expires"
        )
    seconds = number * _UNITS.get(unit, 1)
    return None if seconds == 0 else timedelta(seconds=seconds)


def is_loopback_url(url: str) -> bool:
    """https://127.0.0.1:P, https://[::1]:P, https://localhost:P: no other machine reaches it."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_kubeconfig() -> Path:
    return Path(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token",
        help="manage bootstrap tokens for `podnet join`",
        description="Bootstrap tokens let a new machine join the cluster (`podnet join "
        "https://SERVER:PORT --token TOKEN`): Secrets of type bootstrap.kubernetes.io/token "
        "in kube-system, as kubeadm's.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a token and print it")
    create.add_argument("--ttl", default="24h", help="lifetime: 24h, 30m, 7d; 0 = forever")
    create.add_argument("--description", default="", help="a note stored with the token")
    create.add_argument(
        "--server",
        action="append",
        default=None,
        metavar="URL",
        help="API server URL(s) joining machines use (default: the kubeconfig's servers)",
    )
    lst = sub.add_parser("list", help="list the bootstrap tokens")
    delete = sub.add_parser("delete", help="delete a token (its id or the whole token)")
    delete.add_argument("token", help="the token id (abcdef) or the token")
    for each in (create, lst, delete):
        each.add_argument(
            "--kubeconfig", type=Path, default=None, help="admin kubeconfig (default $KUBECONFIG)"
        )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kubeconfig = args.kubeconfig or default_kubeconfig()
    try:
        api = HttpApi.from_kubeconfig(kubeconfig, component="podnet-token")
    except KubeconfigError as exc:
        print(f"podnet token: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, api))
    except ValueError as exc:
        print(f"podnet token: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"podnet token: the API server refused: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, api: HttpApi) -> int:
    async with api:
        if args.action == "create":
            ttl = parse_ttl(args.ttl)
            expires = None if ttl is None else datetime.now(UTC) + ttl
            token = await create_token(api, expires, args.description, args.server)
            print(token)
            # where joining machines reach the cluster: the first server cluster-info names
            server = (args.server or api.servers or [api.server])[0]
            print(f"join with:  podnet join {server} --token {token}", file=sys.stderr)
            if is_loopback_url(server):
                print(
                    f"note: {server} is a loopback address: only this machine can join by it; "
                    "for other machines create the token with --server https://ADDRESS:PORT "
                    "(an address they reach; it goes into cluster-info)",
                    file=sys.stderr,
                )
            return 0
        if args.action == "list":
            rows = await list_tokens(api)
            now = datetime.now(UTC)
            print(f"{'TOKEN ID':<10} {'EXPIRES':<32} DESCRIPTION")
            for token_id, until, description in rows:
                shown = until or "<forever>"
                if until and bt.expired({"expiration": until}, now):
                    shown += " (expired)"  # joins with it fail; `token delete` removes it
                print(f"{token_id:<10} {shown:<32} {description}")
            return 0
        token_id = args.token.split(".", 1)[0]
        await delete_token(api, token_id)
        print(f"bootstrap token {token_id} deleted")
        return 0


# -- what a token needs in the cluster -------------------------------------------------------

NODE_BOOTSTRAPPER_ROLE = "podnet:node-bootstrapper"
CLUSTER_INFO_ROLE = "podnet:bootstrap-signer-clusterinfo"


def rbac_objects() -> list[tuple[str, str | None, Obj]]:
    """(plural, namespace, object) of the RBAC a joining machine relies on (kubeadm's shapes)."""
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        ("clusterroles", None, {
            "apiVersion": rbac, "kind": "ClusterRole",
            "metadata": {"name": NODE_BOOTSTRAPPER_ROLE},
            "rules": [{"nonResourceURLs": [bt.CREDENTIAL_PATH], "verbs": ["post"]}],
        }),
        ("clusterrolebindings", None, {
            "apiVersion": rbac, "kind": "ClusterRoleBinding",
            "metadata": {"name": "podnet:node-bootstrap"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": NODE_BOOTSTRAPPER_ROLE},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                          "name": bt.DEFAULT_GROUP}],
        }),
        ("roles", bt.CLUSTER_INFO_NAMESPACE, {
            "apiVersion": rbac, "kind": "Role",
            "metadata": {"name": CLUSTER_INFO_ROLE, "namespace": bt.CLUSTER_INFO_NAMESPACE},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "resourceNames": [bt.CLUSTER_INFO], "verbs": ["get"]}],
        }),
        ("rolebindings", bt.CLUSTER_INFO_NAMESPACE, {
            "apiVersion": rbac, "kind": "RoleBinding",
            "metadata": {"name": CLUSTER_INFO_ROLE, "namespace": bt.CLUSTER_INFO_NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": CLUSTER_INFO_ROLE},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "system:anonymous"}],
        }),
    ]  # fmt: skip


async def _ensure(api: HttpApi, plural: str, namespace: str | None, obj: Obj) -> None:
    try:
        await api.create(plural, obj, namespace)
    except ApiError as exc:
        if exc.code != 409:
            raise


def cluster_info_kubeconfig(servers: list[str], ca_pem: bytes) -> str:
    """The public kubeconfig in cluster-info: where the servers are and their CA, no user."""
    doc = yaml.safe_load(render_kubeconfig(servers[0], ca_pem, "", servers=servers))
    doc["users"] = []
    doc["contexts"] = []
    doc["current-context"] = ""
    return str(yaml.safe_dump(doc, sort_keys=False))


async def _tokens(api: HttpApi) -> list[dict[str, str]]:
    secrets = await api.list("secrets", bt.NAMESPACE)
    return [bt.secret_fields(s) for s in secrets["items"] if s.get("type") == bt.SECRET_TYPE]


async def sign_cluster_info(api: HttpApi, servers: list[str] | None, ca_pem: bytes) -> None:
    """(Re)write cluster-info, signed by every live token allowed to sign (the bootstrap
    signer controller's job upstream; tokens only change through these commands)."""
    try:
        current = await api.get("configmaps", bt.CLUSTER_INFO, bt.CLUSTER_INFO_NAMESPACE)
    except ApiError as exc:
        if exc.code != 404:
            raise
        current = None
    if servers is None and current is not None:
        content = str((current.get("data") or {}).get("kubeconfig") or "")
    else:
        content = cluster_info_kubeconfig(servers or [api.server], ca_pem)
    now = datetime.now(UTC)
    data = {"kubeconfig": content}
    for fields in await _tokens(api):
        if fields.get("usage-bootstrap-signing") == "true" and not bt.expired(fields, now):
            token_id, secret = fields.get("token-id", ""), fields.get("token-secret", "")
            data[bt.JWS_PREFIX + token_id] = bt.detached_signature(content, token_id, secret)
    body: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": bt.CLUSTER_INFO, "namespace": bt.CLUSTER_INFO_NAMESPACE},
        "data": data,
    }
    if current is None:
        await api.create("configmaps", body, bt.CLUSTER_INFO_NAMESPACE)
    else:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await api.update("configmaps", body, bt.CLUSTER_INFO_NAMESPACE)


async def create_token(
    api: HttpApi, expires: datetime | None, description: str, servers: list[str] | None
) -> str:
    token = bt.new_token()
    for plural, namespace, obj in rbac_objects():
        await _ensure(api, plural, namespace, obj)
    await api.create("secrets", bt.token_secret(token, expires, description), bt.NAMESPACE)
    await sign_cluster_info(api, servers or api.servers, _ca_of(api))
    return token


def _ca_of(api: HttpApi) -> bytes:
    ca = api.ca_pem
    if ca is None:
        raise ValueError(
            "the kubeconfig names no certificate authority; joining machines need the "
            "cluster CA (certificate-authority-data)"
        )
    return ca


async def list_tokens(api: HttpApi) -> list[tuple[str, str, str]]:
    return [
        (f.get("token-id", "?"), f.get("expiration", ""), f.get("description", ""))
        for f in await _tokens(api)
    ]


async def delete_token(api: HttpApi, token_id: str) -> None:
    try:
        await api.delete("secrets", bt.SECRET_PREFIX + token_id, bt.NAMESPACE)
    except ApiError as exc:
        if exc.code == 404:
            raise ValueError(
                f"there is no bootstrap token {token_id!r} (podnet token list)"
            ) from None
        raise
    await sign_cluster_info(api, None, _ca_of(api))
