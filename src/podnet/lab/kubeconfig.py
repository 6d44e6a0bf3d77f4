"""kubeconfig files of a lab: the entries merged into ~/.kube/config (each node's own
kubeconfig, with its node token, is written by `apiserver.credentials.write_node_credentials`).

Merging works the way kind does it: the lab's cluster, user and context are all named
`podnet-<lab>`, replace any entries of that name, leave every other entry alone, and the
context becomes current. Removal deletes exactly those three entries and clears
current-context if it pointed at them. The pure functions work on parsed documents; only
`merge_into_file` / `remove_from_file` read and write (atomically, mode 0600).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]


class KubeconfigFileError(Exception):
    """A kubeconfig could not be read or written; the message names the file."""


def user_kubeconfig_path() -> Path:
    """Where kubectl looks first: the first entry of $KUBECONFIG, else ~/.kube/config."""
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return Path(first).expanduser() if first else Path.home() / ".kube" / "config"


def _only(doc: Doc, section: str) -> dict[str, Any]:
    items = doc.get(section) or []
    if len(items) != 1:
        raise KubeconfigFileError(f"expected exactly one entry in {section}, found {len(items)}")
    item: dict[str, Any] = items[0]
    return item


def renamed(server_doc: Doc, name: str, server_url: str | None = None) -> Doc:
    """The server's one-cluster kubeconfig with every entry named `name` (and a new URL)."""
    cluster = dict(_only(server_doc, "clusters")["cluster"])
    if server_url is not None:
        cluster["server"] = server_url
    user = _only(server_doc, "users")["user"]
    context = dict(_only(server_doc, "contexts")["context"])
    context.update(cluster=name, user=name)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
        "preferences": {},
    }


def merged(existing: Doc | None, entry: Doc, name: str) -> Doc:
    """`existing` with the cluster/user/context `name` replaced by those in `entry`."""
    out = removed(existing, name)
    for section in ("clusters", "users", "contexts"):
        out[section] = [*out.get(section, []), *entry[section]]
    out["current-context"] = name
    return out


def removed(existing: Doc | None, name: str) -> Doc:
    out: Doc = dict(existing or {})
    out.setdefault("apiVersion", "v1")
    out.setdefault("kind", "Config")
    out.setdefault("preferences", {})
    for section in ("clusters", "users", "contexts"):
        out[section] = [e for e in (out.get(section) or []) if e.get("name") != name]
    if out.get("current-context") == name:
        out["current-context"] = ""
    return out


def read_doc(path: Path) -> Doc | None:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigFileError(f"cannot read kubeconfig {path}: {exc}") from exc
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise KubeconfigFileError(f"{path} is not a kubeconfig (not a YAML mapping)")
    return doc


def write_doc(path: Path, doc: Doc) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".podnet-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(doc, handle, sort_keys=False)
        tmp.replace(path)
    except OSError as exc:
        raise KubeconfigFileError(f"cannot write kubeconfig {path}: {exc}") from exc


def merge_into_file(server_kubeconfig: Path, target: Path, name: str) -> None:
    doc = read_doc(server_kubeconfig)
    if doc is None:
        raise KubeconfigFileError(f"the server has not written {server_kubeconfig} yet")
    write_doc(target, merged(read_doc(target), renamed(doc, name), name))


def remove_from_file(target: Path, name: str) -> bool:
    """Remove the lab's entries; False when the file or the entries were not there."""
    doc = read_doc(target)
    if doc is None:
        return False
    if not any(
        e.get("name") == name for s in ("clusters", "users", "contexts") for e in doc.get(s) or []
    ):
        return False
    write_doc(target, removed(doc, name))
    return True
