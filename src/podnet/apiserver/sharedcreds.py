"""The cluster's credentials kept in the shared store, so every server on it takes the same:
`podnet server --share-credentials`.

What belongs here: `take_shared_credentials`, run at server start before the credentials are
loaded. Several `podnet server`s of one cluster must share the CA (clients trust one CA), the
admin token and the key that signs ServiceAccount and node tokens (`CLUSTER_FILES`). Without
this flag an operator copies those files to every control host by hand (kubeadm's "manual
certificate distribution"); with it the first server to start on an empty store writes them to
the store key `KEY`, and every other server started with the flag on the same store (and key
prefix) writes them into its own state dir before it starts. kubeadm's `init --upload-certs`
and `join --control-plane` do the same through a Secret.

Trust: anyone who can read the store can then read the CA key. They can already read every
Secret and write any RBAC binding, so the store must be protected either way (etcd's client
TLS, or as the lab does, etcd listening on loopback only).

Invariants:
- The store's copy is made once, with a create-if-absent (two servers starting together on an
  empty store: one wins, the other takes the winner's) and never changed afterwards.
- A state dir that already holds one of the files with other content belongs to another
  cluster: the server refuses to start rather than overwrite it or serve with mixed keys.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from pathlib import Path

from podnet.apiserver.auth.tokens import SIGNING_KEY, load_or_create_key
from podnet.apiserver.credentials import CA_CERT, CA_KEY, TOKEN, ensure_credentials
from podnet.private import private_dir, write_private
from podnet.store.base import KeyExists, Store

log = logging.getLogger(__name__)

KEY = "/podnet/cluster-credentials"
CLUSTER_FILES = (CA_CERT, CA_KEY, TOKEN, SIGNING_KEY)
"""What every server of one cluster shares (the rest, e.g. its serving certificate, is its own)."""


def _encode(files: dict[str, bytes]) -> bytes:
    return json.dumps(
        {name: base64.b64encode(data).decode() for name, data in files.items()}
    ).encode()


def _decode(value: bytes) -> dict[str, bytes]:
    try:
        raw = json.loads(value)
        files = {name: base64.b64decode(raw[name], validate=True) for name in CLUSTER_FILES}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"the store's {KEY} is damaged ({exc}); it must hold {', '.join(CLUSTER_FILES)}"
        ) from None
    return files


def _local(state_dir: Path) -> dict[str, bytes]:
    return {n: (state_dir / n).read_bytes() for n in CLUSTER_FILES if (state_dir / n).exists()}


def _complete(state_dir: Path, service_ip: str) -> dict[str, bytes]:
    """This state dir's cluster files, with what is missing newly made (not written here)."""
    with tempfile.TemporaryDirectory(prefix="podnet-credentials-") as scratch:
        work = Path(scratch)
        for name, data in _local(state_dir).items():
            write_private(work / name, data)
        ensure_credentials(work, ["127.0.0.1"], service_ip)  # the CA and token, if missing
        load_or_create_key(work)
        return {name: (work / name).read_bytes() for name in CLUSTER_FILES}


async def take_shared_credentials(store: Store, state_dir: Path, service_ip: str) -> bool:
    """Make `state_dir` hold the cluster files the store holds (storing this server's first if
    the store has none). Returns whether this server's were stored. Raises ValueError when the
    state dir holds another cluster's."""
    private_dir(state_dir)
    stored = await store.get(KEY)
    if stored is None:
        mine = _complete(state_dir, service_ip)
        try:
            await store.create(KEY, _encode(mine))
        except KeyExists:  # another server stored its own first: take those
            stored = await store.get(KEY)
        else:
            for name, data in mine.items():
                if not (state_dir / name).exists():
                    write_private(state_dir / name, data)
            log.info("stored this cluster's CA, admin token and signing key in the store")
            return True
    if stored is None:
        raise ValueError(f"the store's {KEY} vanished while this server started; start it again")
    shared = _decode(stored.value)
    local = _local(state_dir)
    differing = sorted(name for name, data in local.items() if data != shared[name])
    if differing:
        raise ValueError(
            f"{', '.join(str(state_dir / n) for n in differing)} differ from the cluster "
            "credentials in the store: this state dir belongs to another cluster (use a new "
            "--state-dir, or another store prefix for a new cluster)"
        )
    for name, data in shared.items():
        if name not in local:
            write_private(state_dir / name, data)
    if len(local) < len(shared):
        log.info("took this cluster's CA, admin token and signing key from the store")
    return False
