"""Merging a lab's context into a user's kubeconfig the way kind does, and removing it."""

from __future__ import annotations

from pathlib import Path

import yaml

from podnet.lab.kubeconfig import (
    merge_into_file,
    merged,
    remove_from_file,
    renamed,
)

SERVER = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [
        {
            "name": "podnet",
            "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority-data": "Q0E="},
        }
    ],
    "users": [{"name": "podnet-admin", "user": {"token": "tok"}}],
    "contexts": [
        {
            "name": "podnet",
            "context": {"cluster": "podnet", "user": "podnet-admin", "namespace": "default"},
        }
    ],
    "current-context": "podnet",
}

OTHER = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "kind-x", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "kind-x", "user": {"token": "other"}}],
    "contexts": [{"name": "kind-x", "context": {"cluster": "kind-x", "user": "kind-x"}}],
    "current-context": "kind-x",
}


def test_renamed_entries_and_new_server_url() -> None:
    doc = renamed(SERVER, "podnet-t1", "https://172.31.1.1:6443")
    assert doc["clusters"] == [
        {
            "name": "podnet-t1",
            "cluster": {"server": "https://172.31.1.1:6443", "certificate-authority-data": "Q0E="},
        }
    ]
    assert doc["users"] == [{"name": "podnet-t1", "user": {"token": "tok"}}]
    assert doc["contexts"] == [
        {
            "name": "podnet-t1",
            "context": {"cluster": "podnet-t1", "user": "podnet-t1", "namespace": "default"},
        }
    ]
    assert doc["current-context"] == "podnet-t1"


def test_merge_keeps_other_entries_and_replaces_its_own() -> None:
    once = merged(OTHER, renamed(SERVER, "podnet-t1"), "podnet-t1")
    twice = merged(once, renamed(SERVER, "podnet-t1"), "podnet-t1")
    assert [c["name"] for c in twice["clusters"]] == ["kind-x", "podnet-t1"]
    assert [u["name"] for u in twice["users"]] == ["kind-x", "podnet-t1"]
    assert twice["current-context"] == "podnet-t1"
    assert merged(None, renamed(SERVER, "p"), "p")["contexts"][0]["name"] == "p"


def test_files_merge_then_remove(tmp_path: Path) -> None:
    server = tmp_path / "server-kubeconfig"
    server.write_text(yaml.safe_dump(SERVER))
    user = tmp_path / "home" / ".kube" / "config"
    user.parent.mkdir(parents=True)
    user.write_text(yaml.safe_dump(OTHER))
    merge_into_file(server, user, "podnet-t1")
    assert user.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(user.read_text())
    assert doc["current-context"] == "podnet-t1"
    assert len(doc["contexts"]) == 2
    assert remove_from_file(user, "podnet-t1") is True
    assert remove_from_file(user, "podnet-t1") is False
    after = yaml.safe_load(user.read_text())
    assert after["clusters"] == OTHER["clusters"] and after["current-context"] == ""
    assert remove_from_file(tmp_path / "missing", "podnet-t1") is False
