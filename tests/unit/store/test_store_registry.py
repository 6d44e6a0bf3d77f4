"""Opening stores from URLs: the scheme registry, URL parsing, and errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.store import (
    STORE_DRIVERS,
    EtcdStore,
    MemoryStore,
    SqliteStore,
    open_store,
    parse_etcd_url,
    sqlite_path,
)
from podnet.store.etcd import grpc_target, prefix_range_end


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite", "/state/state.db"),
        ("sqlite:", "/state/state.db"),
        ("sqlite://", "/state/state.db"),
        ("sqlite:///var/lib/podnet/db.sqlite", "/var/lib/podnet/db.sqlite"),
        ("sqlite://cluster-a/state.db", "/state/cluster-a/state.db"),
    ],
)
def test_sqlite_urls_name_a_file(url: str, expected: str) -> None:
    assert sqlite_path(url, Path("/state")) == Path(expected)


@pytest.mark.parametrize(
    ("url", "endpoints", "prefix"),
    [
        ("etcd://127.0.0.1:2379", [("127.0.0.1", 2379)], ""),
        ("etcd://127.0.0.1:2379/", [("127.0.0.1", 2379)], ""),
        ("etcd://127.0.0.1:2379/podnet", [("127.0.0.1", 2379)], "/podnet"),
        (
            "etcd://10.0.0.1:2379,10.0.0.2:2379/a/b/",
            [("10.0.0.1", 2379), ("10.0.0.2", 2379)],
            "/a/b",
        ),
        ("etcd://[::1]:2379", [("::1", 2379)], ""),
        ("etcd://etcd.example:2379", [("etcd.example", 2379)], ""),
    ],
)
def test_etcd_urls_parse(url: str, endpoints: list[tuple[str, int]], prefix: str) -> None:
    assert parse_etcd_url(url) == (endpoints, prefix)


@pytest.mark.parametrize("url", ["etcd://", "etcd://host", "etcd://host:port", "etcd://:2379"])
def test_bad_etcd_urls_show_the_expected_form(url: str) -> None:
    with pytest.raises(ValueError, match=r"etcd://HOST:PORT"):
        parse_etcd_url(url)


def test_unknown_scheme_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one of etcd, memory, sqlite") as raised:
        open_store("postgres://localhost/db", tmp_path)
    assert "postgres://localhost/db" in str(raised.value)
    assert sorted(STORE_DRIVERS) == ["etcd", "memory", "sqlite"]


@pytest.mark.asyncio
async def test_open_store_picks_the_driver_by_scheme(tmp_path: Path) -> None:
    sqlite = open_store("sqlite", tmp_path)
    assert isinstance(sqlite, SqliteStore)
    assert sqlite.path == tmp_path / "state.db"
    await sqlite.close()
    etcd = open_store("etcd://127.0.0.1:2379/podnet", tmp_path)
    assert isinstance(etcd, EtcdStore)
    assert etcd.key_prefix == "/podnet"
    await etcd.close()
    one, two = open_store("memory", tmp_path), open_store("memory://", tmp_path)
    assert isinstance(one, MemoryStore) and isinstance(two, MemoryStore) and one is not two
    with pytest.raises(ValueError, match="it takes no path"):
        open_store("memory:///somewhere", tmp_path)


def test_grpc_target_for_one_and_several_endpoints() -> None:
    assert grpc_target([("etcd.example", 2379)]) == ("etcd.example", 2379)
    host, port = grpc_target([("10.0.0.1", 2379), ("10.0.0.2", 2380)])
    assert f"{host}:{port}" == "ipv4:10.0.0.1:2379,10.0.0.2:2380"
    host, port = grpc_target([("::1", 2379), ("::2", 2380)])
    assert f"{host}:{port}" == "ipv6:[::1]:2379,[::2]:2380"
    with pytest.raises(ValueError, match="IPv4 or all be IPv6 addresses"):
        grpc_target([("etcd-a", 2379), ("etcd-b", 2379)])


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/pods/") == b"/pods0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"") == b"\0"
