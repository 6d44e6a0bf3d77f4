"""Pod sandboxes: the network namespace a pod's containers share, wired by CNI.

What belongs here: naming a pod's netns, reading flannel's subnet.env, `Sandboxes` (what the
pod loop asks of sandboxes) and `SandboxManager`, its implementation,
which creates and tears down sandboxes through `podnet.kernel.netns` and `podnet.agent.cni`
(the only kernel doors) and records each sandbox on disk so an agent restart adopts it instead
of re-running CNI ADD. (The pod's /etc/hosts and resolv.conf are `dnsconfig`'s.)

Invariants:
- A pod's netns is `<netns_prefix>pod-<hash of uid>`: derived, never a user string, and it
  carries the agent's marker so `podnet down` and orphan cleanup recognise it.
- A sandbox record (`<state_dir>/kubelet/sandboxes/<uid>.json`) exists only while its netns
  exists and holds an address from host-local IPAM; teardown runs CNI DEL (which releases the
  address) before deleting the netns and finally the record, so a crash in between is retried.
- Before a netns is created, an intent file (`<uid>.netns`, holding its name) is written in the
  node's state dir. Orphans are found from these files only, never by listing /run/netns: in a
  lab every node shares /run/netns, and a name prefix cannot tell this node's sandboxes from
  another node's.
- The CNI container id is the pod uid: host-local files name the pod that owns an address.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from podnet.kernel import netns
from podnet.kernel.names import hashed

if TYPE_CHECKING:
    from podnet.agent.cni import BridgeConfig

CNI_NETWORK = "cbr0"
BRIDGE = "cni0"
DEFAULT_MTU = 1500


def sandbox_netns_prefix(prefix: str) -> str:
    """What every pod namespace of an agent with `--netns-prefix prefix` begins with."""
    return f"{prefix}pod-"


def sandbox_netns_name(prefix: str, pod_uid: str) -> str:
    return f"{sandbox_netns_prefix(prefix)}{hashed(pod_uid, 12).lower()}"


@dataclass(frozen=True, slots=True)
class SubnetEnv:
    network: str
    subnet: str
    mtu: int
    ipmasq: bool
    gso_max_segs: int | None = None  # PODNET_GSO_MAX_SEGS: the pods' eth0 (flannel udp)


def parse_subnet_env(text: str) -> SubnetEnv:
    """Parse flannel's subnet.env (`KEY=VALUE` lines); raises ValueError naming a missing key
    or a PODNET_GSO_MAX_SEGS that is not a number."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            values[key] = value
    for key in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"):
        if key not in values:
            raise ValueError(f"subnet.env: {key} is missing")
    segs = values.get("PODNET_GSO_MAX_SEGS")
    if segs is not None and not segs.isdigit():
        raise ValueError(f"subnet.env: PODNET_GSO_MAX_SEGS must be a number, not {segs!r}")
    return SubnetEnv(
        network=values["FLANNEL_NETWORK"],
        subnet=values["FLANNEL_SUBNET"],
        mtu=int(values["FLANNEL_MTU"]),
        ipmasq=values["FLANNEL_IPMASQ"] == "true",
        gso_max_segs=int(segs) if segs is not None else None,
    )


def read_subnet_env(run_dir: Path) -> SubnetEnv | None:
    path = run_dir / "flannel" / "subnet.env"
    try:
        return parse_subnet_env(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    pod_uid: str
    namespace: str
    name: str
    netns: str  # the netns name (path: /run/netns/<netns>)
    pod_ip: str
    pod_cidr: str
    mtu: int

    @property
    def netns_path(self) -> str:
        return str(netns.path(self.netns))


class Sandboxes(Protocol):
    """What the pod loop asks of sandboxes (blocking calls: it runs them in threads)."""

    def ensure(self, pod_uid: str, namespace: str, name: str, pod_cidr: str) -> SandboxRecord:
        """The pod's sandbox, created unless a live one is recorded."""
        ...

    def teardown(self, pod_uid: str) -> None:
        """Release the pod's address and delete its netns; idempotent."""
        ...

    def records(self) -> dict[str, SandboxRecord]:
        """Every recorded sandbox, by pod uid."""
        ...

    def orphan_netns(self, known_uids: Mapping[str, object]) -> list[str]:
        """Netns this node made for pods that are neither recorded nor in `known_uids`."""
        ...

    def delete_netns(self, ns_name: str) -> None: ...


class SandboxError(Exception):
    """A sandbox could not be created; the message says what to check."""


class SandboxManager:
    """Creates, adopts and removes pod sandboxes (blocking calls: run them in a thread)."""

    def __init__(
        self,
        state_dir: Path,
        run_dir: Path,
        netns_prefix: str,
        cluster_cidr: str,
        underlay_ifname: str = "eth0",
    ) -> None:
        self.records_dir = state_dir / "kubelet" / "sandboxes"
        self.cni_dir = state_dir / "cni"
        self.run_dir = run_dir
        self.netns_prefix = netns_prefix
        self.cluster_cidr = cluster_cidr
        self.underlay_ifname = underlay_ifname

    def netns_name(self, pod_uid: str) -> str:
        return sandbox_netns_name(self.netns_prefix, pod_uid)

    def link_settings(self) -> tuple[int, int | None]:
        """The pods' eth0 MTU and gso_max_segs: subnet.env's (FLANNEL_MTU,
        PODNET_GSO_MAX_SEGS), else the underlay's MTU and the kernel's default."""
        env = read_subnet_env(self.run_dir)
        if env is not None:
            return env.mtu, env.gso_max_segs
        return self._underlay_mtu(), None

    def _underlay_mtu(self) -> int:
        from podnet.kernel.links import Netlink

        try:
            with Netlink() as nl:
                link = nl.link(self.underlay_ifname)
        except Exception:  # no underlay link (a bare test netns): the Ethernet default
            return DEFAULT_MTU
        return int(link.mtu) if link is not None else DEFAULT_MTU

    def _bridge_config(
        self, pod_cidr: str, mtu: int, gso_max_segs: int | None = None
    ) -> BridgeConfig:
        from podnet.agent.cni import BridgeConfig

        return BridgeConfig(
            name=CNI_NETWORK,
            bridge=BRIDGE,
            subnet=pod_cidr,
            mtu=mtu,
            gso_max_segs=gso_max_segs,
            routes=(self.cluster_cidr,),
            data_dir=self.cni_dir,
        )

    # records -----------------------------------------------------------------------------

    def _record_path(self, pod_uid: str) -> Path:
        return self.records_dir / f"{pod_uid}.json"

    def _intent_path(self, pod_uid: str) -> Path:
        return self.records_dir / f"{pod_uid}.netns"

    def records(self) -> dict[str, SandboxRecord]:
        out: dict[str, SandboxRecord] = {}
        if not self.records_dir.is_dir():
            return out
        for path in self.records_dir.glob("*.json"):
            try:
                rec = SandboxRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)
                continue
            out[rec.pod_uid] = rec
        return out

    def _write_record(self, rec: SandboxRecord) -> None:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        path = self._record_path(rec.pod_uid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)))
        tmp.replace(path)

    # lifecycle ---------------------------------------------------------------------------

    def ensure(self, pod_uid: str, namespace: str, name: str, pod_cidr: str) -> SandboxRecord:
        """The pod's sandbox, created (netns + CNI ADD) unless a live one is recorded."""
        from podnet.agent.cni import cni_add

        existing = self.records().get(pod_uid)
        if existing is not None and netns.exists(existing.netns):
            return existing
        ns_name = self.netns_name(pod_uid)
        # a netns without a record is a half-made sandbox from a crash: start over
        self._release(pod_uid, pod_cidr)
        mtu, gso_max_segs = self.link_settings()
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self._intent_path(pod_uid).write_text(ns_name + "\n")
        netns.create(ns_name)
        try:
            result = cni_add(
                self._bridge_config(pod_cidr, mtu, gso_max_segs),
                pod_uid,
                str(netns.path(ns_name)),
                "eth0",
            )
        except Exception as exc:
            self._release(pod_uid, pod_cidr)
            raise SandboxError(f"CNI ADD failed for pod {namespace}/{name}: {exc}") from exc
        if not result.ips:
            self._release(pod_uid, pod_cidr)
            raise SandboxError(f"CNI ADD for pod {namespace}/{name} returned no IP address")
        pod_ip = str(result.ips[0].address).split("/")[0]
        rec = SandboxRecord(pod_uid, namespace, name, ns_name, pod_ip, pod_cidr, mtu)
        self._write_record(rec)
        return rec

    def teardown(self, pod_uid: str) -> None:
        """CNI DEL, delete the netns, forget the record; idempotent."""
        rec = self.records().get(pod_uid)
        # host-local releases by container id, so any valid subnet finds an unrecorded lease
        self._release(pod_uid, rec.pod_cidr if rec else self.cluster_cidr)
        self._record_path(pod_uid).unlink(missing_ok=True)
        self._intent_path(pod_uid).unlink(missing_ok=True)

    def _release(self, pod_uid: str, pod_cidr: str) -> None:
        from podnet.agent.cni import cni_del

        ns_name = self.netns_name(pod_uid)
        path = netns.path(ns_name)
        cni_del(
            self._bridge_config(pod_cidr, DEFAULT_MTU),
            pod_uid,
            str(path) if path.exists() else None,
            "eth0",
        )
        netns.delete(ns_name)

    def orphan_netns(self, known_uids: Mapping[str, object]) -> list[str]:
        """Netns this node created (intent files) for pods that are neither recorded nor known:
        left by a crash between creating a netns and recording its sandbox."""
        if not self.records_dir.is_dir():
            return []
        recorded = self.records()
        orphans = []
        for intent in sorted(self.records_dir.glob("*.netns")):
            uid = intent.stem
            if uid in known_uids or uid in recorded:
                continue
            orphans.append(intent.read_text().strip())
        return orphans

    def delete_netns(self, ns_name: str) -> None:
        """Delete an orphaned sandbox netns and forget its intent file."""
        netns.delete(ns_name)
        for intent in self.records_dir.glob("*.netns"):
            if intent.read_text().strip() == ns_name:
                intent.unlink(missing_ok=True)
