"""`--share-credentials`: servers on one store take one CA, admin token and signing key; a state
dir of another cluster is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podnet.apiserver.credentials import CA_KEY, TOKEN, ensure_credentials
from podnet.apiserver.sharedcreds import CLUSTER_FILES, take_shared_credentials
from podnet.store import Store

SERVICE_IP = "10.96.0.1"


def _files(state_dir: Path) -> dict[str, bytes]:
    return {name: (state_dir / name).read_bytes() for name in CLUSTER_FILES}


@pytest.mark.asyncio
async def test_servers_starting_together_take_one_set(store: Store, tmp_path: Path) -> None:
    dirs = [tmp_path / f"server{i}" for i in range(3)]
    stored = await asyncio.gather(*(take_shared_credentials(store, d, SERVICE_IP) for d in dirs))
    assert sorted(stored) == [False, False, True]
    first = _files(dirs[0])
    assert all(_files(d) == first for d in dirs[1:])
    # the server then loads them: one CA and token for all
    creds = [ensure_credentials(d, ["127.0.0.1"], SERVICE_IP) for d in dirs]
    assert {c.ca_pem for c in creds} == {creds[0].ca_pem}
    assert {c.token for c in creds} == {creds[0].token}


@pytest.mark.asyncio
async def test_an_existing_state_dir_is_stored_and_kept(store: Store, tmp_path: Path) -> None:
    first = tmp_path / "first"
    made = ensure_credentials(first, ["127.0.0.1"], SERVICE_IP)
    assert await take_shared_credentials(store, first, SERVICE_IP) is True
    assert (first / CA_KEY).exists() and ensure_credentials(
        first, ["127.0.0.1"], SERVICE_IP
    ).ca_pem == made.ca_pem  # fmt: skip
    second = tmp_path / "second"
    assert await take_shared_credentials(store, second, SERVICE_IP) is False
    assert _files(second) == _files(first)
    assert await take_shared_credentials(store, first, SERVICE_IP) is False  # a restart


@pytest.mark.asyncio
async def test_another_clusters_state_dir_is_refused(store: Store, tmp_path: Path) -> None:
    await take_shared_credentials(store, tmp_path / "first", SERVICE_IP)
    other = tmp_path / "other"
    ensure_credentials(other, ["127.0.0.1"], SERVICE_IP)
    before = (other / TOKEN).read_bytes()
    with pytest.raises(ValueError, match="belongs to another cluster"):
        await take_shared_credentials(store, other, SERVICE_IP)
    assert (other / TOKEN).read_bytes() == before  # nothing overwritten
