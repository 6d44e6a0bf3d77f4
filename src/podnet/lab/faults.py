"""Faults on purpose: `podnet fault` kills, freezes, partitions and degrades parts of a lab, and
takes it back.

What belongs here: the fault record (`Fault`, kept in `<state>/faults.json` under a lock), the
registry of fault kinds (`KINDS`: one small class per kind with `unavailable` (the capability
check), `apply` and `clear`), target resolution (a node's underlay or a pod's interface), and
`inject` / `clear` / `expire_due` / `clear_for_down`, which the CLI, the supervisor (`--for`
timeouts) and `podnet down` call.

How each kind works here (this kernel has no `sch_netem` and no nft `queue` statement):

- kill pod/agent/server: SIGKILL by recorded pid (the kubelet, the supervisor restart it);
  `--for` holds an agent or the server down instead;
- stop node: SIGSTOP every process in the node's and its pods' network namespaces (SIGCONT);
- restart agent: the supervisor stops and starts it;
- partition: nft drops in the node's namespace (all its underlay traffic, or only to/from
  some nodes or the API server);
- loss: nft `numgen random` drops on the target's egress;
- bandwidth: a `tbf` root qdisc on the target's egress;
- delay: `iptables -j NFQUEUE --queue-bypass` and a reader process that accepts each packet
  late (`kernel/nfqueue.py`; its stderr in `<state>/fault-<id>.log`), started and bound before
  the rule goes in; netem's delay/jitter where the kernel has netem;
- corrupt, duplicate: only with netem; here `podnet fault` says so.

Network faults act on traffic leaving the target (as netem does on an interface): a node's
`eth0` in its namespace (all underlay traffic, the overlay included), or a pod's `eth0` in its
sandbox. A partition drops both directions.

A VM node (`podnet up --vm-nodes`) has its own kernel, with netem: the qdisc kinds (delay,
corrupt, duplicate, bandwidth) run their `kernel.qdisc` call inside its guest and the nft
kinds (partition, loss) load their table there (`_in_guest`, targets written
`vm:<node>[:<netns>]`); stop freezes its qemu (SIGSTOP), the whole machine at once. kill and
restart refuse VM nodes (killing the agent's unit would kill the VM). Pluggable: a new
kind is one class and one `KINDS` entry. Invariants: a fault is recorded before anything is
done (so `down` can always undo it) and forgotten only after its `clear` succeeded; every
kernel object a fault makes is named after its id (`podnet-fault-<id>` nft tables,
`PNF-<id>` iptables chains) and every helper process is recorded under `<state>/fault-pids`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from podnet import procs
from podnet.kernel import netns, qdisc
from podnet.kernel.rules import IptablesRunner, NftRunner, RuleLoadError
from podnet.lab import ha
from podnet.lab.spec import FAULTS_FILE, LabError, NodePlan
from podnet.private import open_private_log, write_private

if TYPE_CHECKING:
    from podnet.lab.lab import Lab

CAPABILITIES_FILE = "fault-capabilities.json"
PIDS_DIR = "fault-pids"
QUEUE_BASE = 4200  # NFQUEUE numbers of delay faults: QUEUE_BASE + the fault's number


class FaultError(LabError):
    """A fault could not be caused or cleared; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    netem: bool

    @classmethod
    def probe(cls) -> Capabilities:
        return cls(netem=qdisc.netem_available())


def capabilities(state_dir: Path) -> Capabilities:
    """This machine's kernel, probed once per lab and remembered."""
    path = state_dir / CAPABILITIES_FILE
    with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
        return Capabilities(**json.loads(path.read_text()))
    caps = Capabilities.probe()
    with contextlib.suppress(FileNotFoundError):
        write_private(path, json.dumps(asdict(caps)).encode())
    return caps


@dataclass(frozen=True, slots=True)
class Fault:
    id: str
    kind: str
    target: str
    params: dict[str, Any]
    created_at: float
    expires_at: float | None = None
    undo: dict[str, Any] = field(default_factory=dict)  # what `apply` did, for `clear`
    # recorded, `apply` not done yet: its undo is unknown, so the supervisor must not expire
    # it (clearing an empty undo and then finishing the apply would hold a unit down forever)
    applying: bool = False

    @property
    def number(self) -> int:
        return int(self.id.rsplit("-", 1)[1])

    def describe(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.params.items() if v not in (None, [], ""))
        return f"{self.id}: {self.kind} {self.target} {shown}".rstrip()


@dataclass(frozen=True, slots=True)
class Request:
    """What the user asked for, before it is a recorded fault."""

    kind: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    duration: float | None = None  # --for


# -- the record ------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[dict[str, Any]]:
    """faults.json, read and written back under an exclusive lock."""
    path = state_dir / FAULTS_FILE
    with (state_dir / "faults.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            data = {"next": 1, "faults": []}
        yield data
        write_private(path, json.dumps(data, indent=2).encode() + b"\n")


def recorded(state_dir: Path) -> list[Fault]:
    try:
        data = json.loads((state_dir / FAULTS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [Fault(**f) for f in data.get("faults", [])]


def _record(state_dir: Path, req: Request) -> Fault:
    with _locked(state_dir) as data:
        number = int(data["next"])
        data["next"] = number + 1
        now = time.time()
        fault = Fault(
            id=f"{req.kind}-{number}",
            kind=req.kind,
            target=req.target,
            params=req.params,
            created_at=now,
            expires_at=now + req.duration if req.duration else None,
            applying=True,
        )
        data["faults"].append(asdict(fault))
    return fault


def _update(state_dir: Path, fault: Fault) -> None:
    with _locked(state_dir) as data:
        data["faults"] = [asdict(fault) if f["id"] == fault.id else f for f in data["faults"]]


def _forget(state_dir: Path, fault_id: str) -> None:
    with _locked(state_dir) as data:
        data["faults"] = [f for f in data["faults"] if f["id"] != fault_id]


# -- targets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a network fault acts: an interface in a namespace (a node's or a pod's)."""

    name: str
    netns: str
    ifname: str
    node: NodePlan


def node_target(lab: Lab, name: str, allow_vm: bool = False) -> Target:
    """A node's underlay interface; a VM node's (`allow_vm`: a kind that can act inside the
    guest) is `eth0` in the guest's root namespace, written `vm:<node>`."""
    if name not in lab:
        raise FaultError(f"lab {lab.name} has no node {name!r}; nodes: {', '.join(lab)}")
    node = lab[name]
    if node.vm:
        _refuse_vm(node, allow_vm)
        return Target(name, f"{VM_PREFIX}{node.name}", node.ifname, node)
    return Target(name, node.netns, node.ifname, node)


def _refuse_vm(node: NodePlan, allow_vm: bool) -> None:
    if node.vm and not allow_vm:
        raise FaultError(
            f"{node.name} is a VM node (its own kernel, no namespace on this host); on VM "
            "nodes and their pods podnet fault can: partition, loss, delay, corrupt, "
            "duplicate, bandwidth, stop"
        )


def pod_target(lab: Lab, name: str, allow_vm: bool = False) -> Target:
    """`NS/POD` (or `POD` in default): the pod's sandbox, found through the API."""
    from podnet.agent.kubelet.sandbox import sandbox_netns_name

    namespace, _, pod_name = name.rpartition("/")
    pod = lab.api_get("pods", pod_name, namespace or "default")
    node_name = (pod.get("spec") or {}).get("nodeName")
    uid = (pod.get("metadata") or {}).get("uid")
    if not node_name or not uid or node_name not in lab:
        raise FaultError(f"pod {name} is not running on a node of lab {lab.name}")
    node = lab[node_name]
    ns = sandbox_netns_name(node.pod_netns_prefix, str(uid))
    if node.vm:  # the sandbox is a namespace inside the guest
        _refuse_vm(node, allow_vm)
        return Target(name, f"{VM_PREFIX}{node.name}:{ns}", "eth0", node)
    if not netns.exists(ns):
        raise FaultError(f"pod {name} has no sandbox ({ns}) on {node_name} yet")
    return Target(name, ns, "eth0", node)


def network_target(lab: Lab, name: str, allow_vm: bool = False) -> Target:
    """A node name, or a pod as NS/POD."""
    if "/" in name:
        return pod_target(lab, name, allow_vm)
    return node_target(lab, name, allow_vm)


# -- root qdiscs, on this kernel or inside a VM node's ---------------------------------------

VM_PREFIX = "vm:"
# what a VM node's guest runs for a fault: the same `podnet.kernel` call as on this host,
# `a['call']` on `a['netns']` (None: the guest's root namespace)
_GUEST_CALL = (
    "import json, sys\n"
    "from podnet.kernel import qdisc\n"
    "from podnet.kernel.rules import NftRunner, RuleLoadError\n"
    "a = json.loads(sys.argv[1])\n"
    "try:\n"
    "    if a['call'] == 'qdisc':\n"
    "        getattr(qdisc, a['op'])(a['netns'], *a['args'], **a['kwargs'])\n"
    "    else:\n"
    "        getattr(NftRunner(a['netns']), a['op'])(*a['args'])\n"
    "except (qdisc.QdiscError, RuleLoadError) as exc:\n"
    "    sys.exit(str(exc))\n"
)


def _in_guest(lab: Lab, where: str, call: str, op: str, *args: Any, **kwargs: Any) -> None:
    """`call` (`qdisc` or `nft`) `op` inside the guest of `where` = `vm:<node>[:<netns>]`."""
    from podnet.lab.vm import VmControl, VmError

    node, _, inner = where.removeprefix(VM_PREFIX).partition(":")
    request = {"call": call, "op": op, "netns": inner or None, "args": args, "kwargs": kwargs}
    try:
        done = VmControl(lab.plan, node).run(
            [sys.executable, "-c", _GUEST_CALL, json.dumps(request)], timeout=60
        )
    except VmError as exc:
        raise FaultError(str(exc)) from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise FaultError(f"in VM node {node}: {lines[-1] if lines else 'failed'}")


def _shape(lab: Lab, where: str, ifname: str, op: str, **kwargs: Any) -> None:
    """`qdisc.<op>` on `ifname` in namespace `where`, or in the guest for `vm:<node>[:ns]`."""
    if where.startswith(VM_PREFIX):
        _in_guest(lab, where, "qdisc", op, ifname, **kwargs)
    else:
        getattr(qdisc, op)(where, ifname, **kwargs)


def _netem_here(lab: Lab, target: Target) -> bool:
    """Whether the target's kernel has netem: a VM node's (Debian's) has."""
    return target.node.vm or capabilities(lab.state_dir).netem


# -- kinds -----------------------------------------------------------------------------


class Kind(ABC):
    """A kind of fault. `name` and `summary` are what `podnet fault` lists; `lasting` is False
    for a one-shot action (unless held with --for), where nothing stays to clear."""

    name: ClassVar[str]
    summary: ClassVar[str]
    lasting: ClassVar[bool] = True

    def unavailable(self, caps: Capabilities) -> str | None:
        """Why this kernel cannot produce the fault, or None."""
        return None

    @abstractmethod
    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        """Cause the fault; what `clear` needs to undo it."""

    def clear(self, lab: Lab, fault: Fault, tearing_down: bool) -> None:
        """Undo it (`tearing_down`: `podnet down` follows, nothing needs to come back)."""
        return None  # by default nothing stays: a one-shot action


class NftKind(Kind):
    """A fault made of rules in an nft table of its own (see `_apply_nft`), cleared by deleting
    that table."""

    def clear(self, lab: Lab, fault: Fault, tearing_down: bool) -> None:
        _clear_nft(lab, fault, tearing_down)


def _signal_recorded(pid: int, start: int, sig: signal.Signals) -> bool:
    if procs.process_start_time(pid) != start:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    return True


def _unit_pid(lab: Lab, label: str) -> procs.Recorded:
    for rec in procs.recorded(lab.state_dir / "pids"):
        if rec.label == label and procs.is_alive(rec):
            return rec
    raise FaultError(f"{label} of lab {lab.name} is not running")


def unit_of(lab: Lab, what: str, name: str) -> str:
    """The supervisor unit `kill`/`restart` mean: `agent NODE`, `server [N|leader]` (leader: the
    server holding the controllers' Lease) or `etcd N` (lab/ha.py)."""
    if what == "server" and name == "leader":
        from podnet.controllers.leaderelection import LEASE_NAME, LEASE_NAMESPACE

        lease = lab.api_get("leases", LEASE_NAME, LEASE_NAMESPACE)
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        pids = {r.label: r.pid for r in procs.recorded(lab.state_dir / "pids")}
        return ha.leader_label(lab.plan, holder, pids)
    if what in ("server", "etcd"):
        return ha.unit_label(lab.plan, what, name)
    return f"agent-{node_target(lab, name).name}"


class KillFault(Kind):
    name = "kill"
    summary = (
        "kill pod NS/POD [--container C] | kill agent NODE | kill server [N|leader] | kill etcd N"
    )
    lasting = False

    @staticmethod
    def split(target: str) -> tuple[str, str]:
        what, _, rest = target.partition(" ")
        return what, rest

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        what, name = self.split(fault.target)
        if what == "pod":
            if fault.expires_at is not None:
                raise FaultError("kill pod happens once; --for holds only an agent or the server")
            return self._kill_container(lab, name, fault.params.get("container"))
        label = unit_of(lab, what, name)
        if fault.expires_at is not None:  # held down: the supervisor must not restart it
            lab.supervisor.stop(label, grace=0.0)
            return {"held": label}
        rec = _unit_pid(lab, label)
        _signal_recorded(rec.pid, rec.start_time, signal.SIGKILL)
        return {"killed": rec.pid}

    def _kill_container(self, lab: Lab, name: str, container: str | None) -> dict[str, Any]:
        namespace, _, pod_name = name.rpartition("/")
        pod = lab.api_get("pods", pod_name, namespace or "default")
        node_name = str((pod.get("spec") or {}).get("nodeName") or "")
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        chosen = [s for s in statuses if container in (None, s.get("name"))]
        if node_name not in lab or not chosen:
            raise FaultError(f"pod {name} has no running container {container or ''} to kill")
        killed = []
        for status in chosen:
            container_id = str(status.get("containerID") or "").rpartition("://")[2]
            started = Path(lab[node_name].state_dir) / "containers" / container_id / "started.json"
            try:
                info = json.loads(started.read_text())
            except (OSError, ValueError):
                continue
            if _signal_recorded(int(info["pid"]), int(info["pid_start_time"]), signal.SIGKILL):
                killed.append(status.get("name"))
        if not killed:
            raise FaultError(f"no container of pod {name} was running")
        return {"killed": killed}

    def clear(self, lab: Lab, fault: Fault, tearing_down: bool) -> None:
        label = fault.undo.get("held")
        if label and not tearing_down:
            lab.supervisor.start(str(label))


class RestartFault(Kind):
    name = "restart"
    summary = "restart agent NODE: stop it (SIGTERM) and start it again"
    lasting = False

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        what, _, name = fault.target.partition(" ")
        label = unit_of(lab, what, name)
        lab.supervisor.stop(label)
        lab.supervisor.start(label)
        return {}


def node_processes(node: NodePlan) -> list[procs.Recorded]:
    """Every process in the node's namespace or one of its pods' (agent, relay, shims,
    containers, exec'd commands): what runs "on the machine"."""
    wanted = {netns.inode(node.netns)}
    for name in netns.list_names(node.pod_netns_prefix):
        with contextlib.suppress(OSError):
            wanted.add(netns.inode(name))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inode = (entry / "ns" / "net").stat().st_ino
        except OSError:
            continue
        pid = int(entry.name)
        start = procs.process_start_time(pid)
        if inode in wanted and start is not None:
            found.append(procs.Recorded(f"pid-{pid}", pid, start, Path()))
    return found


class StopNodeFault(Kind):
    name = "stop"
    summary = "stop node NODE: freeze its agent and every pod process (SIGSTOP), a hung machine"

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        node = node_target(lab, fault.target.partition(" ")[2], allow_vm=True).node
        if node.vm:  # the machine is its qemu: guest, agent and pods freeze together
            rec = _unit_pid(lab, f"agent-{node.name}")
            _signal_recorded(rec.pid, rec.start_time, signal.SIGSTOP)
            return {"stopped": [[rec.pid, rec.start_time]]}
        stopped = []
        for rec in node_processes(node):
            if _signal_recorded(rec.pid, rec.start_time, signal.SIGSTOP):
                stopped.append([rec.pid, rec.start_time])
        return {"stopped": stopped}

    def clear(self, lab: Lab, fault: Fault, tearing_down: bool) -> None:
        for pid, start in fault.undo.get("stopped", []):
            _signal_recorded(int(pid), int(start), signal.SIGCONT)


def _nft_table(fault: Fault) -> str:
    return f"podnet-fault-{fault.id}"


def _apply_nft(lab: Lab, target_netns: str, fault: Fault, rules: list[str]) -> dict[str, Any]:
    table = _nft_table(fault)
    text = "\n".join(
        [
            f"table ip {table} {{",
            "  chain pre { type filter hook prerouting priority -200; policy accept; }",
            "  chain post { type filter hook postrouting priority 200; policy accept; }",
            "}",
            *(f"add rule ip {table} {rule}" for rule in rules),
        ]
    )
    try:
        if target_netns.startswith(VM_PREFIX):
            _in_guest(lab, target_netns, "nft", "apply", text + "\n")
        else:
            NftRunner(target_netns).apply(text + "\n")
    except RuleLoadError as exc:
        raise FaultError(f"{fault.kind} on {fault.target}: nft refused the rules: {exc}") from exc
    return {"netns": target_netns, "nft_table": table}


def _clear_nft(lab: Lab, fault: Fault, tearing_down: bool) -> None:
    """Delete the fault's table (a VM node's goes with its VM when the lab is torn down)."""
    ns = fault.undo.get("netns")
    if ns and str(ns).startswith(VM_PREFIX):
        if not tearing_down:
            _in_guest(lab, str(ns), "nft", "delete_table", "ip", str(fault.undo["nft_table"]))
    elif ns and netns.exists(str(ns)):
        with contextlib.suppress(RuleLoadError):
            NftRunner(str(ns)).delete_table("ip", str(fault.undo["nft_table"]))


class PartitionFault(NftKind):
    name = "partition"
    summary = "partition NODE [--from NODE...|--from api]: drop its underlay traffic both ways"

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        target = node_target(lab, fault.target, allow_vm=True)
        peers: list[str] = list(fault.params.get("from") or [])
        dev = target.ifname
        if not peers:
            rules = [f'pre iifname "{dev}" drop', f'post oifname "{dev}" drop']
        elif peers == ["api"]:
            api, port = lab.plan.host_ip, lab.plan.port
            rules = [
                f'pre iifname "{dev}" ip saddr {api} tcp sport {port} drop',
                f'post oifname "{dev}" ip daddr {api} tcp dport {port} drop',
            ]
        else:
            ips = ", ".join(node_target(lab, p, allow_vm=True).node.ip for p in peers)
            rules = [
                f'pre iifname "{dev}" ip saddr {{ {ips} }} drop',
                f'post oifname "{dev}" ip daddr {{ {ips} }} drop',
            ]
        return _apply_nft(lab, target.netns, fault, rules)


class LossFault(NftKind):
    name = "loss"
    summary = "loss NODE|NS/POD PERCENT: drop that share of its outgoing packets (nft numgen)"

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        target = network_target(lab, fault.target, allow_vm=True)
        per_10k = round(float(fault.params["percent"]) * 100)
        rule = f'post oifname "{target.ifname}" numgen random mod 10000 < {per_10k} drop'
        return _apply_nft(lab, target.netns, fault, [rule])


def _qdisc_busy(lab: Lab, fault: Fault, target: Target) -> None:
    for other in recorded(lab.state_dir):
        if other.id != fault.id and other.undo.get("qdisc") == [target.netns, target.ifname]:
            raise FaultError(
                f"{target.name}'s {target.ifname} already carries {other.id} (one shaping "
                f"fault per interface); clear it first: podnet fault clear {other.id}"
            )


def _clear_qdisc(lab: Lab, fault: Fault, tearing_down: bool) -> bool:
    """Remove the fault's root qdisc, if it set one (a VM node's goes with its VM when the
    lab is torn down); whether it had one."""
    ns, ifname = fault.undo.get("qdisc") or (None, None)
    if not ns:
        return False
    if not (tearing_down and str(ns).startswith(VM_PREFIX)):
        _shape(lab, str(ns), str(ifname), "clear_root")
    return True


class BandwidthFault(Kind):
    name = "bandwidth"
    summary = "bandwidth NODE|NS/POD RATE: limit its outgoing traffic (tbf), e.g. 10mbit"

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        target = network_target(lab, fault.target, allow_vm=True)
        _qdisc_busy(lab, fault, target)
        try:
            _shape(
                lab, target.netns, target.ifname, "set_tbf", rate_bps=int(fault.params["rate_bps"])
            )
        except qdisc.QdiscError as exc:
            raise FaultError(str(exc)) from exc
        return {"qdisc": [target.netns, target.ifname]}

    def clear(self, lab: Lab, fault: Fault, tearing_down: bool) -> None:
        _clear_qdisc(lab, fault, tearing_down)


class DelayFault(Kind):
    name = "delay"
    summary = "delay NODE|NS/POD MS [--jitter MS]: hold its outgoing packets (netem or NFQUEUE)"

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        target = network_target(lab, fault.target, allow_vm=True)
        ms, jitter = float(fault.params["ms"]), float(fault.params.get("jitter") or 0.0)
        if _netem_here(lab, target):
            _qdisc_busy(lab, fault, target)
            try:
                _shape(lab, target.netns, target.ifname, "set_netem", delay_ms=ms, jitter_ms=jitter)
            except qdisc.QdiscError as exc:
                raise FaultError(str(exc)) from exc
            return {"qdisc": [target.netns, target.ifname]}
        queue = QUEUE_BASE + fault.number
        chain = f"PNF-{fault.id}"[:28]
        # iptables-nft makes the mangle table on first use; if this fault does, clear drops it
        made = NftRunner(target.netns).list_table("ip", "mangle") is None
        _start_reader(lab.state_dir, target, fault.id, queue, ms, jitter)
        undo = {"netns": target.netns, "chain": chain, "mangle_made": made}
        try:
            IptablesRunner(target.netns).restore(
                f"*mangle\n:{chain} - [0:0]\n"
                f"-A {chain} -o {target.ifname} -j NFQUEUE --queue-num {queue} --queue-bypass\n"
                f"-A POSTROUTING -j {chain}\nCOMMIT\n"
            )
        except RuleLoadError as exc:
            _stop_helper(lab, fault.id)
            raise FaultError(f"delay on {target.name}: iptables refused the rule: {exc}") from exc
        return undo

    def clear(self, lab: Lab, fault: Fault, tearing_down: bool) -> None:
        if _clear_qdisc(lab, fault, tearing_down):
            return
        ns, chain = fault.undo.get("netns"), fault.undo.get("chain")
        if ns and chain and netns.exists(str(ns)):
            with contextlib.suppress(RuleLoadError):
                IptablesRunner(str(ns)).restore(
                    f"*mangle\n-D POSTROUTING -j {chain}\n-F {chain}\n-X {chain}\nCOMMIT\n"
                )
            if fault.undo.get("mangle_made"):
                _drop_unused_mangle(str(ns))
        _stop_helper(lab, fault.id)


def _drop_unused_mangle(ns: str) -> None:
    """Delete iptables' mangle table in `ns` if no rule is left in it: an empty one would stay
    for good, and `podnet trace --verify` (which does not model mangle) would see its chains
    run where it predicted none."""
    if any(line.startswith("-A ") for line in IptablesRunner(ns).save("mangle").splitlines()):
        return
    with contextlib.suppress(RuleLoadError):
        NftRunner(ns).delete_table("ip", "mangle")


READER_BIND_TIMEOUT = 15.0  # seconds for the reader to start and bind its queue (a loaded machine)


def reader_log(state_dir: Path, fault_id: str) -> Path:
    return state_dir / f"fault-{fault_id}.log"


def _start_reader(
    state_dir: Path, target: Target, fault_id: str, queue: int, ms: float, jitter: float
) -> None:
    """Start a delay's NFQUEUE reader (`kernel/nfqueue.py`) in the target's namespace,
    recorded under `fault-pids` with its stderr in `reader_log`, and return once it has bound
    its queue (its first line on stdout). One that exits first, or does not bind in time, is
    stopped, forgotten and reported with its exit and its log: without a reader the rule's
    --queue-bypass lets every packet by undelayed, and the fault would silently do nothing."""
    log_path = reader_log(state_dir, fault_id)
    argv = [sys.executable, "-m", "podnet.kernel.nfqueue", str(queue), str(ms), str(jitter)]

    def spawn() -> subprocess.Popen[bytes]:
        with open_private_log(log_path) as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )

    proc = netns.call_in(target.netns, spawn)
    # recorded before anything waits for it (`procs.record`'s own_child: even if it has exited)
    rec = procs.record(state_dir / PIDS_DIR, fault_id, proc.pid, own_child=True)
    assert proc.stdout is not None
    with proc.stdout:
        readable, _, _ = select.select([proc.stdout], [], [], READER_BIND_TIMEOUT)
        first = proc.stdout.readline() if readable else b""  # b"" also when it exited
    if first.startswith(b"bound NFQUEUE"):
        # reaped if it exits while this process still lives, so no zombie lingers (`podnet
        # fault` itself exits at once and leaves it to init)
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        return
    try:
        how = _exit_status(proc.wait(timeout=2.0))
    except subprocess.TimeoutExpired:
        how = f"did not bind its queue within {READER_BIND_TIMEOUT:.0f} s and was stopped"
        procs.terminate([rec], grace_seconds=2.0)
        proc.wait()
    procs.forget(rec)
    from podnet.lab.lab import explain_log

    raise FaultError(
        f"delay on {target.name}: its NFQUEUE reader (queue {queue}, in namespace "
        f"{target.netns}) {how}; see {log_path}:\n{explain_log(log_path)}"
    )


def _exit_status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited at once (exit code {code})"


def _stop_helper(lab: Lab, fault_id: str) -> None:
    for rec in procs.recorded(lab.state_dir / PIDS_DIR):
        if rec.label == fault_id:
            procs.stop(rec, grace_seconds=2.0)


class NetemOnly(Kind):
    """A fault only netem can produce; on a kernel without it, `unavailable` says so."""

    option: ClassVar[str]

    def unavailable(self, caps: Capabilities) -> str | None:
        if caps.netem:
            return None
        return (
            f"this kernel has no netem qdisc (sch_netem), and nothing else here can {self.name} "
            "packets; it can: partition, loss, bandwidth, delay (NFQUEUE), kill, stop, restart"
        )

    def apply(self, lab: Lab, fault: Fault) -> dict[str, Any]:
        target = network_target(lab, fault.target, allow_vm=True)
        _qdisc_busy(lab, fault, target)
        try:
            _shape(
                lab,
                target.netns,
                target.ifname,
                "set_netem",
                **{self.option: float(fault.params["percent"])},
            )
        except qdisc.QdiscError as exc:
            raise FaultError(str(exc)) from exc
        return {"qdisc": [target.netns, target.ifname]}

    def clear(self, lab: Lab, fault: Fault, tearing_down: bool) -> None:
        _clear_qdisc(lab, fault, tearing_down)


class CorruptFault(NetemOnly):
    name = "corrupt"
    summary = "corrupt NODE|NS/POD PERCENT: flip bits in that share of its packets (netem)"
    option = "corrupt_percent"


class DuplicateFault(NetemOnly):
    name = "duplicate"
    summary = "duplicate NODE|NS/POD PERCENT: send that share of its packets twice (netem)"
    option = "duplicate_percent"


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        KillFault(),
        StopNodeFault(),
        RestartFault(),
        PartitionFault(),
        LossFault(),
        BandwidthFault(),
        DelayFault(),
        CorruptFault(),
        DuplicateFault(),
    )
}


def kind_of(name: str) -> Kind:
    found = KINDS.get(name)
    if found is None:
        raise FaultError(f"unknown fault {name!r}; valid: {', '.join(KINDS)}")
    return found


# -- parsing what users type ---------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)(bit|bps|b)?$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """`30s`, `2m`, `500ms`, `1h` or plain seconds."""
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise FaultError(f"--for {text!r} is not a duration (examples: 30s, 2m, 500ms)")
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_rate(text: str) -> int:
    """`10mbit`, `500kbit`, `1gbit` (bits a second) or `1mbps` (bytes a second) -> bits/s."""
    m = _RATE.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise FaultError(f"rate {text!r} is not a rate (examples: 10mbit, 500kbit, 1mbps)")
    scale = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}[m.group(2).lower()]
    unit = (m.group(3) or "bit").lower()
    bits = float(m.group(1)) * scale * (8 if unit in ("bps", "b") else 1)
    if bits < 8000:
        raise FaultError(f"rate {text!r} is below 8kbit, too slow to shape")
    return int(bits)


def parse_percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise FaultError(
            f"{text!r} is not a percentage: above 0 and at most 100 (20 or 20%)"
        ) from None
    if not 0 < value <= 100:
        raise FaultError(f"{text!r} is not a percentage: above 0 and at most 100 (20 or 20%)")
    return value


# -- operations ------------------------------------------------------------------------


def inject(lab: Lab, req: Request) -> Fault:
    """Cause the fault; recorded first so `down` undoes it whatever happens next."""
    kind = kind_of(req.kind)
    caps = capabilities(lab.state_dir)
    if isinstance(kind, NetemOnly) and network_target(lab, req.target, allow_vm=True).node.vm:
        caps = replace(caps, netem=True)  # the VM node's own kernel has netem
    why = kind.unavailable(caps)
    if why is not None:
        raise FaultError(f"cannot {req.kind}: {why}")
    fault = _record(lab.state_dir, req)
    try:
        undo = kind.apply(lab, fault)
    except BaseException:
        _forget(lab.state_dir, fault.id)
        raise
    # `--for` counts from when the fault took effect (an apply can take seconds when loaded)
    expires_at = time.time() + req.duration if req.duration else None
    fault = replace(fault, undo=undo, applying=False, expires_at=expires_at)
    if kind.lasting or (fault.expires_at is not None and undo):
        _update(lab.state_dir, fault)
    else:
        _forget(lab.state_dir, fault.id)  # a one-shot action: nothing stays to clear
    return fault


def clear(
    lab: Lab,
    which: Callable[[Fault], bool] = lambda _f: True,
    tearing_down: bool = False,
) -> list[Fault]:
    """Undo the faults `which` selects; returns them. A fault whose clear fails stays
    recorded, and the error is raised after the others were cleared."""
    cleared, failures = [], []
    for fault in recorded(lab.state_dir):
        if not which(fault):
            continue
        try:
            kind_of(fault.kind).clear(lab, fault, tearing_down)
        except Exception as exc:
            failures.append(f"{fault.id}: {exc}")
            continue
        _forget(lab.state_dir, fault.id)
        cleared.append(fault)
    if failures:
        raise FaultError("could not clear " + "; ".join(failures))
    return cleared


def clear_ids(lab: Lab, ids: Sequence[str]) -> list[Fault]:
    known = {f.id for f in recorded(lab.state_dir)}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise FaultError(
            f"no fault {', '.join(unknown)} in lab {lab.name}; "
            f"recorded: {', '.join(sorted(known)) or 'none'}"
        )
    return clear(lab, lambda f: f.id in ids)


def expire_due(lab: Lab, now: float | None = None) -> list[Fault]:
    """Clear the faults whose `--for` ran out (the supervisor calls this every tick)."""
    moment = time.time() if now is None else now
    return clear(
        lab, lambda f: f.expires_at is not None and not f.applying and f.expires_at <= moment
    )


def clear_for_down(lab: Lab) -> list[str]:
    """`podnet down`: undo every fault (frozen processes must be able to exit)."""
    if not (lab.state_dir / FAULTS_FILE).exists():
        return []
    removed = [f"fault {f.id}" for f in clear(lab, tearing_down=True)]
    procs.stop_all(lab.state_dir / PIDS_DIR, grace_seconds=2.0)
    return removed
