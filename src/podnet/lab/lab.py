"""`Lab`: a whole cluster on this machine — `podnet up`, `down`, `status` as one object.

    lab = Lab.up(LabSpec(name="demo", nodes=3))   # returns when every Node is Ready
    lab["node1"].ip, lab.kubeconfig, lab.status()
    lab.down()                                     # or Lab.load("demo").down(), or down_lab()

Division of labour (Mininet's, minus the shell): `spec` plans names and addresses,
`topology` builds the network, this module starts and watches processes and ties the steps
together with the machine-wide bookkeeping (which underlay index and port are free).

Invariants:
- The plan is saved to the state dir *before* anything is created, so every object `up`
  makes is findable by `down`, even after a crash; `down` is idempotent.
- Every process is started with `start_new_session` (Ctrl-C on `up` does not kill the lab),
  recorded with `podnet.procs.record`, and stopped only by recorded pid: the supervisor first
  (so it restarts nothing), then agents (so they do not restart containers), then the
  containers the agents recorded, then the server.
- The server and the agents are started, restarted when they die, and stopped on purpose by
  the lab's supervisor (`supervisor.py`), which `up` spawns before it plans the lab and lets
  go once the plan is saved (`prestart.py`: its imports overlap `up`'s work); this module asks
  it over its socket and starts it again (it adopts the running units) if it is gone.
- A VM node (`lab/vm.py`) is a supervisor unit too: its `agent-<node>` unit is the node's
  qemu (`podnet.lab.vmrun` execs it), whose guest runs the node's agent; stopping the unit
  powers the VM off, with its agent and pods.
- Picking the index and port happens under a machine-wide flock, so two `podnet up` at once
  never choose the same underlay subnet.
- `up` either returns a working lab or tears down everything it made and raises `LabError`
  saying why and which log file to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from podnet import procs
from podnet.agent.status import read_status
from podnet.api.meta import parse_rfc3339
from podnet.kernel import netns
from podnet.kernel.links import Netlink
from podnet.lab import dns as labdns
from podnet.lab import ha, vm
from podnet.lab import kubeconfig as kubeconfigs
from podnet.lab import supervisor as supervision
from podnet.lab.prestart import Prestarted, supervisor_argv
from podnet.lab.spec import (
    DEFAULT_STATE_ROOT,
    PLAN_FILE,
    LabError,
    LabPlan,
    LabSpec,
    NodePlan,
    load_plan,
    netns_prefix,
    pick_index,
    plan_lab,
    prefixes_overlap,
    with_new_node,
    without_node,
)
from podnet.lab.topology import build_node, build_topology, remove_topology
from podnet.private import open_private_log, private_dir

MACHINE_LOCK = Path("/run/podnet-labs.lock")
UNDERLAY_SUPERNET = ipaddress.IPv4Network("172.31.0.0/16")
DEFAULT_TIMEOUT = 90.0
LOG_TAIL_LINES = 15

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


_held = threading.local()


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Serialise lab bookkeeping (index/port choice, ~/.kube/config edits) across processes.

    Re-entrant within a thread: a second flock on a fresh descriptor would block on itself.
    """
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    MACHINE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with MACHINE_LOCK.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


def other_plans(state_root: Path, name: str) -> list[LabPlan]:
    plans = []
    if state_root.is_dir():
        for entry in sorted(state_root.iterdir()):
            if entry.name == name or not (entry / PLAN_FILE).exists():
                continue
            with contextlib.suppress(LabError):
                plan = load_plan(entry)
                if plan is not None:
                    plans.append(plan)
    return plans


def host_underlay_indexes() -> set[int]:
    """Third octets of 172.31.x.0/24 networks already on host links (anyone's)."""
    used: set[int] = set()
    with Netlink() as host:
        for address in host.addresses():
            network = address.interface.network
            if network.subnet_of(UNDERLAY_SUPERNET) or network.supernet_of(UNDERLAY_SUPERNET):
                if network.prefixlen <= 16:
                    return set(range(1, 255))
                used.update(
                    range(
                        int(network.network_address.packed[2]),
                        int(network.broadcast_address.packed[2]) + 1,
                    )
                )
    return used


def free_port(excluded: set[int]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in excluded:
            return port
    raise LabError("could not find a free TCP port for the API server")


_ERROR_MARKS = ("Traceback (most recent call last)", " ERROR ", " CRITICAL ", "cannot start")
_EXPLANATION_LINES = 40


def explain_log(path: Path) -> str:
    """The lines of a process's log that say why it stopped: from the last traceback or error
    line to the end (capped), else the last lines; an empty log is said to be empty."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return "(the log is empty: the process ended before it wrote anything)"
    start = max(0, len(lines) - LOG_TAIL_LINES)
    marked = [i for i, line in enumerate(lines) if any(m in line for m in _ERROR_MARKS)]
    if marked:
        first = marked[-1]
        # inside a traceback: show it from its "Traceback" line, and the record introducing it
        while (
            first > 0
            and "Traceback" not in lines[first]
            and lines[first - 1].startswith((" ", "Traceback"))
        ):
            first -= 1
        if first > 0 and "Traceback" in lines[first] and " ERROR " in lines[first - 1]:
            first -= 1
        start = min(start, first)
    shown = lines[start:]
    if len(shown) > _EXPLANATION_LINES:  # keep the start (what failed) and the end (why)
        half = _EXPLANATION_LINES // 2
        skipped = len(shown) - 2 * half
        shown = [*shown[:half], f"... ({skipped} lines) ...", *shown[-half:]]
    return "\n".join(shown)


# the Popen of every process this process started, for its exit status (pid -> Popen)
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def how_it_ended(rec: procs.Recorded) -> str:
    """`exit code 1`, `killed by SIGKILL`, or why the status is not known."""
    proc = _STARTED.get(rec.pid)
    if proc is None:
        return "exit status unknown: started by another podnet command"
    try:
        code = proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        return "still running, but no longer answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def exited_error(what: str, rec: procs.Recorded, log: Path) -> LabError:
    """`the API server exited (exit code 1); see LOG:` and the log lines that explain it."""
    return LabError(f"{what} exited ({how_it_ended(rec)}); see {log}:\n{explain_log(log)}")


def _reap_in_background(proc: subprocess.Popen[bytes]) -> None:
    # the lab's processes outlive `up`; while this process lives, reap them when they exit
    # so a stopped process does not linger as a zombie that still looks alive
    _STARTED[proc.pid] = proc
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def issue_node_credentials(plan: LabPlan, node: NodePlan) -> None:
    """The node's own identity, as kubeadm join gives it: a kubeconfig with its node token
    (`system:node:<name>`, held to the Node authorizer) and the kubelet endpoint's serving
    certificate for its address, both issued from the server's state dir."""
    from podnet.apiserver.credentials import write_node_credentials

    issued = write_node_credentials(
        Path(plan.state_dir),
        node.name,
        [node.ip],
        plan.server_url,
        Path(node.kubeconfig).parent,
        servers=ha.server_urls(plan) if plan.servers > 1 else (),
    )
    assert str(issued.kubeconfig) == node.kubeconfig and str(issued.cert_path) == node.kubelet_cert


def start_recorded(argv: list[str], log_path: Path, pids_dir: Path, label: str) -> procs.Recorded:
    private_dir(log_path.parent)
    with open_private_log(log_path) as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    # recorded before anything can wait for it: a command that fails at once (bad flags, a
    # crash on start) may have exited already on a busy machine; as an unreaped child it is
    # still a zombie with its start time, so it is recorded and `exited_error` reports how
    # it ended, instead of a ProcessLookupError once the reaper thread has collected it
    rec = procs.record(pids_dir, label, proc.pid, own_child=True)
    _reap_in_background(proc)
    return rec


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    ip: str
    netns: str
    netns_exists: bool
    agent_alive: bool
    ready: bool | None  # None: the API could not be asked
    pod_cidr: str | None
    log: str
    policy: dict[str, Any] | None = None  # the agent's NetworkPolicy status file
    agent_restarts: int = 0  # by the lab's supervisor since `up`
    vm: bool = False  # netns_exists then means "its VM is running"
    agent_stopped: bool = False  # alive but SIGSTOPped (`podnet fault stop node`)
    # the Ready condition's status as the API has it ("True", "False", "Unknown"); None when
    # the API has no Node of this name (deleted: `kubectl delete node`) or could not be asked
    condition: str | None = None


@dataclass(frozen=True, slots=True)
class LabStatus:
    name: str
    server_url: str
    server_alive: bool
    server_log: str
    nodes: tuple[NodeStatus, ...]
    api_error: str | None
    supervisor_alive: bool = False
    server_restarts: int = 0
    # a lab of several servers or on etcd (`up --servers S --etcd E`): every one of them
    servers: tuple[ha.ServerState, ...] = ()
    etcd: tuple[ha.EtcdMemberState, ...] = ()
    # Nodes in the API that are no node of the lab's plan (hollow nodes, joined machines):
    # name -> Ready
    others: dict[str, bool] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return (
            self.supervisor_alive
            and self.server_alive
            and all(n.agent_alive and not n.agent_stopped and n.ready for n in self.nodes)
            and all(s.ready for s in self.servers)
            and all(m.healthy for m in self.etcd)
        )


def _node_ready(node: dict[str, Any], since: float | None = None) -> bool:
    """Ready=True, and (with `since`, a wall-clock time) posted by an agent started after it."""
    for condition in node.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == "Ready":
            if condition.get("status") != "True":
                return False
            if since is None:
                return True
            stamp = parse_rfc3339(condition.get("lastHeartbeatTime"))
            if stamp is None:
                return False
            # heartbeats have one-second resolution
            return stamp.timestamp() >= int(since)
    return False


def _ready_condition(node: dict[str, Any]) -> str:
    """The Ready condition's status ("True", "False", "Unknown"); "Unknown" before the kubelet
    posted one, as kubectl's NotReady does."""
    for condition in node.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status") or "Unknown")
    return "Unknown"


async def _list_nodes(kubeconfig: Path) -> dict[str, dict[str, Any]]:
    from podnet.api.client import HttpApi

    api = HttpApi.from_kubeconfig(kubeconfig, component="podnet-lab")
    try:
        listed = await api.list("nodes")
    finally:
        await api.close()
    return {n["metadata"]["name"]: n for n in listed.get("items", [])}


async def _watch_nodes(
    kubeconfig: Path,
    nodes: dict[str, dict[str, Any]],
    check: Callable[[], None],
    ready: Callable[[dict[str, dict[str, Any]]], set[str]],
    deadline: float,
    late: Callable[[str], LabError],
    progress: Progress,
    wanted: int,
) -> None:
    """Follow the Nodes into `nodes` (list, then watch; again after a failure) until
    `ready(nodes)` holds `wanted` names; `check()` (raises if a process died) at least every
    0.1 s; `late(why)` past the deadline. Reports each new count through `progress`."""
    from podnet.api.client import HttpApi

    api = HttpApi.from_kubeconfig(kubeconfig, component="podnet-lab")
    changed = asyncio.Event()
    failure = ""
    stopping = asyncio.Event()

    async def follow() -> None:
        nonlocal failure
        while not stopping.is_set():
            try:
                listed = await api.list("nodes")
                nodes.clear()
                nodes.update({n["metadata"]["name"]: n for n in listed.get("items", [])})
                changed.set()
                if stopping.is_set():  # no request is started once the session is closing
                    return
                version = (listed.get("metadata") or {}).get("resourceVersion")
                async for event in api.watch("nodes", resource_version=version):
                    obj = event.get("object") or {}
                    name = str((obj.get("metadata") or {}).get("name") or "")
                    if event.get("type") == "DELETED":
                        nodes.pop(name, None)
                    elif event.get("type") in ("ADDED", "MODIFIED") and name:
                        nodes[name] = obj
                    changed.set()
            except Exception as exc:  # the API is reachable by now: list and watch again
                failure = f" (following the nodes failed: {exc})"
            await asyncio.sleep(0.1)

    follower = asyncio.create_task(follow())
    last_seen = ""
    try:
        while True:
            changed.clear()
            check()
            count = len(ready(nodes))
            seen = f"{count}/{wanted} nodes Ready"
            if seen != last_seen:
                progress(seen)
                last_seen = seen
            if count == wanted:
                return
            if time.monotonic() > deadline:
                raise late(failure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.1)
    finally:
        # close the watch's connection through the session first, which waits for its TLS
        # shutdown: a connection dropped by cancelling the request mid-stream would finish
        # closing after this event loop ended, and leak its socket. The follower starts no
        # request once `stopping` is set, so no connection is opened while or after it closes
        stopping.set()
        await api.close()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


IPVS_PROC_FILE = Path("/proc/net/ip_vs")  # as `agent/proxy/ipvs.py` probes it


def refuse_ipvs_here(
    nodes: Sequence[NodePlan],
    mode: str,
    fallback: bool,
    available: Callable[[], bool] | None = None,
) -> None:
    """ipvs on a namespace node runs on this machine's kernel: without IP_VS there its agent
    stops at start (`IpvsUnavailable`), and every node goes NotReady. Refused before anything
    is built or restarted. A VM node boots a kernel of its own, which has IP_VS."""
    if mode != "ipvs" or fallback:
        return
    shared = [n.name for n in nodes if not n.vm]
    if not shared or (available or IPVS_PROC_FILE.exists)():
        return
    raise LabError(
        "proxy mode 'ipvs' needs the kernel's IP Virtual Server support (CONFIG_IP_VS, module "
        f"ip_vs), and this machine's kernel, which {', '.join(shared)} run on, has none "
        f"({IPVS_PROC_FILE} is missing). Use nftables or iptables, add --proxy-fallback (they "
        "then run iptables), or give the lab VM nodes (podnet up --vm-nodes K), whose kernel "
        "has it"
    )


class Lab:
    """One lab cluster, addressed by name; behaves like a mapping of node name -> NodePlan."""

    def __init__(self, plan: LabPlan) -> None:
        self.plan = plan

    # Mininet-style access ------------------------------------------------------------

    def __getitem__(self, node: str) -> NodePlan:
        return self.plan.node(node)

    def __iter__(self) -> Iterator[str]:
        return iter(n.name for n in self.plan.nodes)

    def __contains__(self, node: object) -> bool:
        return any(n.name == node for n in self.plan.nodes)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (https://127.0.0.1:P), written by the server."""
        return Path(self.plan.server_kubeconfig)

    @property
    def state_dir(self) -> Path:
        return Path(self.plan.state_dir)

    # lifecycle -----------------------------------------------------------------------

    @classmethod
    def load(cls, name: str, state_root: Path = DEFAULT_STATE_ROOT) -> Lab:
        plan = load_plan(state_root / name)
        if plan is None:
            raise LabError(f"there is no lab named {name!r} (no {state_root / name / PLAN_FILE})")
        return cls(plan)

    @classmethod
    def up(
        cls,
        spec: LabSpec,
        *,
        processes: bool = True,
        merge_kubeconfig: bool = True,
        user_kubeconfig: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        progress: Progress = _quiet,
        python: str = sys.executable,
        supervisor: Prestarted | None = None,
    ) -> Lab:
        """Build the lab; with `processes`, start server and agents and wait for Ready nodes.

        `supervisor`: the lab's supervisor, spawned by the caller before it imported this
        module (`podnet up`); else one is spawned here, before the lab is planned."""
        if not processes and supervisor is not None:
            supervisor.call_off()  # a lab without processes has no supervisor
            supervisor = None
        if processes and supervisor is None:
            supervisor = Prestarted(spec.state_dir, python)
        try:
            return cls._up(spec, processes, merge_kubeconfig, user_kubeconfig, timeout, progress,
                           python, supervisor)  # fmt: skip
        finally:
            if supervisor is not None:
                supervisor.call_off()  # unless the lab took it on (then this does nothing)

    @classmethod
    def _up(
        cls,
        spec: LabSpec,
        processes: bool,
        merge_kubeconfig: bool,
        user_kubeconfig: Path | None,
        timeout: float,
        progress: Progress,
        python: str,
        supervisor: Prestarted | None,
    ) -> Lab:
        state_dir = spec.state_dir
        kernel = vm.check_host(spec.vm_kernel) if spec.vm_nodes else None
        with machine_lock():
            if (state_dir / PLAN_FILE).exists():
                raise LabError(
                    f"lab {spec.name!r} already exists: see `podnet status --name {spec.name}`, "
                    f"or remove it with `podnet down --name {spec.name}`"
                )
            others = other_plans(spec.state_root, spec.name)
            for other in others:
                if prefixes_overlap(other.name, spec.name):
                    raise LabError(
                        f"lab name {spec.name!r} clashes with existing lab {other.name!r}: "
                        f"namespaces {netns_prefix(spec.name)}* and {other.netns_prefix}* "
                        "overlap; choose a name that is not a prefix of the other"
                    )
            leftovers = netns.list_names(spec.netns_prefix)
            if leftovers:
                raise LabError(
                    f"network namespaces {', '.join(leftovers[:3])}... already exist for lab "
                    f"{spec.name!r}; remove them with `podnet down --name {spec.name}`"
                )
            used = {p.index for p in others} | host_underlay_indexes()
            index = pick_index(used)
            port = free_port({p.port for p in others})
            target = user_kubeconfig or kubeconfigs.user_kubeconfig_path()
            plan = plan_lab(spec, index, port).with_user_kubeconfig(
                target if merge_kubeconfig and processes else None
            )
            if processes:
                refuse_ipvs_here(plan.nodes, plan.proxy_mode, plan.proxy_fallback)
            if state_dir.exists():
                if any(state_dir.iterdir()):
                    raise LabError(
                        f"{state_dir} exists and is not a lab's state (no {PLAN_FILE}); "
                        "choose another lab name or remove that directory yourself"
                    )
                state_dir.rmdir()
            plan.save()
            lab = cls(plan)
            try:
                if supervisor is not None:  # it imports the units' modules meanwhile
                    lab._take_on(supervisor, python)
                if kernel is not None:
                    lab.plan = plan = vm.prepare(plan, kernel, progress, spec.vm_root)
                    plan.save()
                progress(
                    f"underlay {plan.subnet} on {plan.bridge}, node namespaces {plan.netns_prefix}*"
                )
                build_topology(plan)
                progress(f"network built: {len(plan.nodes)} node namespaces on {plan.bridge}")
            except BaseException as exc:
                lab.down()
                raise LabError(f"building the lab network failed: {exc}") from exc
        if not processes:
            return lab
        try:
            lab._start_processes(timeout, progress, python)
            if plan.user_kubeconfig:
                with machine_lock():  # other labs edit the same file
                    kubeconfigs.merge_into_file(
                        lab.kubeconfig, Path(plan.user_kubeconfig), plan.context
                    )
        except BaseException as exc:
            lab.down()
            if isinstance(exc, LabError | KeyboardInterrupt):
                raise
            raise LabError(f"starting lab {spec.name!r} failed: {exc}") from exc
        return lab

    def api_get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One object from the lab's API (a clear LabError if it is missing or unreachable)."""
        from podnet.api.client import HttpApi
        from podnet.api.errors import ApiError

        async def get() -> dict[str, Any]:
            api = HttpApi.from_kubeconfig(self.kubeconfig, component="podnet-lab")
            try:
                return await api.get(resource, name, namespace)
            finally:
                await api.close()

        try:
            return asyncio.run(get())
        except ApiError as exc:
            where = f"{namespace}/{name}" if namespace else name
            raise LabError(f"{resource} {where} in lab {self.name}: {exc}") from exc
        except OSError as exc:
            raise LabError(f"the API of lab {self.name} does not answer: {exc}") from exc

    # supervision -----------------------------------------------------------------------

    @property
    def supervisor(self) -> supervision.SupervisorClient:
        return supervision.SupervisorClient(self.state_dir)

    def ensure_supervisor(
        self, deadline: float | None = None, python: str = sys.executable
    ) -> supervision.SupervisorClient:
        """The lab's supervisor, started (it adopts whatever runs) if it is not running."""
        client = self.supervisor
        started = client.record() or self._launch_supervisor(python)
        client.wait_ready(
            deadline if deadline is not None else time.monotonic() + 10.0,
            lambda: procs.is_alive(started),
        )
        return client

    def _take_on(self, supervisor: Prestarted, python: str) -> procs.Recorded:
        """The prestarted supervisor becomes this lab's (recorded, then told to go); if it
        died meanwhile, a new one is launched."""
        pid = supervisor.pid
        try:
            rec = procs.record(Path(self.plan.pids_dir), supervision.LABEL, pid)
        except ProcessLookupError:
            supervisor.call_off()
            return self._launch_supervisor(python)
        _reap_in_background(supervisor.go())
        return rec

    def _launch_supervisor(self, python: str) -> procs.Recorded:
        return start_recorded(
            supervisor_argv(self.state_dir, python),
            self.state_dir / supervision.LOG_NAME,
            Path(self.plan.pids_dir),
            supervision.LABEL,
        )

    def _unit_record(self, label: str) -> procs.Recorded:
        for rec in procs.recorded(Path(self.plan.pids_dir)):
            if rec.label == label:
                return rec
        raise LabError(f"the supervisor did not record {label} in {self.plan.pids_dir}")

    def _exited(self, what: str, label: str, log: Path) -> LabError:
        """`<what> exited (killed by SIGKILL); see LOG:` and the log lines that explain it; the
        supervisor started the process, so it knows how it ended."""
        how = None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # the supervisor notes the exit within a moment
            unit = self.supervisor.saved_status().get("units", {}).get(label) or {}
            if unit.get("last_exit"):
                how = str(unit["last_exit"])
                break
            time.sleep(0.05)
        return LabError(
            f"{what} exited ({how or 'how is not known'}); see {log}:\n{explain_log(log)}"
        )

    def _start_processes(self, timeout: float, progress: Progress, python: str) -> None:
        plan = self.plan
        deadline = time.monotonic() + timeout
        labdns.write_resolv_conf(Path(plan.state_dir), plan.dns_upstreams)
        client = self.ensure_supervisor(deadline, python)
        if plan.etcd:
            ha.add_server_addresses(plan)
            progress(f"starting {plan.etcd} etcd members")
            client.start(*ha.etcd_labels(plan))
            ha.wait_for_etcd(plan, deadline)
        progress(f"starting the API server on {plan.host_ip}:{plan.port}")
        client.start("server", *ha.extra_server_labels(plan))
        server = self._unit_record("server")
        self._wait_for_server(server, deadline)
        for index, label in enumerate(ha.extra_server_labels(plan), start=2):
            self._wait_for_server(
                self._unit_record(label), deadline, ha.server_dir(plan, index) / "kubeconfig"
            )
        for node in plan.nodes:
            self._write_node_files(node)
        self._start_agents(server, deadline, timeout, progress, python)
        if plan.hollow_nodes:
            self._start_hollow(deadline, timeout, progress, python)
        if plan.dns:
            self._start_dns(deadline, timeout, progress)

    def _write_node_files(self, node: NodePlan) -> None:
        """The node's directory and credentials (a VM node's under `vms/<node>/`)."""
        node_dir = Path(node.kubeconfig).parent
        private_dir(node_dir.parent)
        private_dir(node_dir)
        issue_node_credentials(self.plan, node)

    def _start_hollow(
        self, deadline: float, timeout: float, progress: Progress, python: str
    ) -> None:
        """Start the hollow nodes (`podnet hollow`) and wait until every one is Ready."""
        count = self.plan.hollow_nodes
        self.ensure_supervisor(deadline, python).start(supervision.HOLLOW)
        unit = self._unit_record(supervision.HOLLOW)
        log = supervision.unit_log(self.plan, supervision.HOLLOW)
        progress(f"started {count} hollow nodes; waiting for them to be Ready")
        while True:
            if not procs.is_alive(unit):
                raise self._exited("the hollow nodes", supervision.HOLLOW, log)
            with contextlib.suppress(Exception):  # the API answers; keep polling briefly
                nodes = asyncio.run(_list_nodes(self.kubeconfig))
                ready = sum(
                    1 for n, obj in nodes.items() if n.startswith("hollow-") and _node_ready(obj)
                )
                if ready >= count:
                    return
            if time.monotonic() > deadline:
                raise LabError(
                    f"{count} hollow nodes were not Ready within {timeout:.0f} s; see {log}"
                )
            time.sleep(0.5)

    def _start_dns(self, deadline: float, timeout: float, progress: Progress) -> None:
        """Install the coredns Deployment and kube-dns Service; return once DNS answers."""
        from podnet.api.client import HttpApi
        from podnet.config import ClusterConfig

        cluster = ClusterConfig()
        server = cluster.dns_service_ip

        async def install() -> None:
            api = HttpApi.from_kubeconfig(self.kubeconfig, component="podnet-lab")
            try:
                await labdns.install(api, server, cluster.cluster_domain)
            finally:
                await api.close()

        asyncio.run(install())
        progress(
            f"cluster DNS: {labdns.REPLICAS} coredns pods behind {server}; waiting for answers"
        )
        self._wait_for_dns(deadline, timeout)
        progress(f"cluster DNS answers on {server}")
        warning = labdns.upstream_warning(
            self.plan.name,
            labdns.read_upstreams(Path(self.plan.state_dir)),
            labdns.is_local_address,
            labdns.host_forwards(),
        )
        if warning is not None:
            progress(warning)

    def _wait_for_dns(self, deadline: float, timeout: float) -> None:
        from podnet.config import ClusterConfig

        cluster = ClusterConfig()
        asked = next((n for n in self.plan.nodes if not n.vm), None)
        began = time.monotonic()
        try:
            if asked is None:  # every node is a VM: ask from the first one
                vm.wait_until_dns_answers(
                    self.plan, self.plan.nodes[0], cluster.dns_service_ip,
                    f"{labdns.PROBE_NAME}.{cluster.cluster_domain}",
                    cluster.kubernetes_service_ip, deadline,
                )  # fmt: skip
            else:
                labdns.wait_until_answers(
                    asked.netns,
                    cluster.dns_service_ip,
                    cluster.cluster_domain,
                    cluster.kubernetes_service_ip,
                    deadline,
                )
        except TimeoutError as exc:
            waited = time.monotonic() - began
            raise LabError(
                f"{exc} within {timeout:.0f} s ({waited:.0f} s of them asking it); "
                f"{self._dns_state()}; see `kubectl -n kube-system get pods -o wide` "
                f"and `kubectl -n kube-system logs deploy/coredns`"
            ) from None

    def _dns_state(self) -> str:
        """`labdns.describe_state` of what the API has now, or why it could not be read."""
        from podnet.api.client import HttpApi

        async def read() -> tuple[list[Any], list[Any]]:
            api = HttpApi.from_kubeconfig(self.kubeconfig, component="podnet-lab")
            try:
                selector = ",".join(f"{k}={v}" for k, v in labdns.LABELS.items())
                pods = await api.list("pods", labdns.NAMESPACE, label_selector=selector)
                slices = await api.list(
                    "endpointslices",
                    labdns.NAMESPACE,
                    label_selector=f"kubernetes.io/service-name={labdns.SERVICE}",
                )
            finally:
                await api.close()
            return pods.get("items") or [], slices.get("items") or []

        async def bounded() -> tuple[list[Any], list[Any]]:
            async with asyncio.timeout(10):
                return await read()

        try:
            pods, slices = asyncio.run(bounded())
        except Exception as exc:  # the API may be what failed: say so, keep the DNS error
            return f"the coredns pods could not be read ({type(exc).__name__}: {exc})"
        return labdns.describe_state(pods, slices)

    def set_dns_upstreams(
        self,
        upstreams: Sequence[str] | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        progress: Progress = _quiet,
    ) -> None:
        """Point the cluster DNS at other upstream resolvers (None: the machine's): rewrite the
        nodes' resolv.conf and roll the coredns pods, which read it when they start."""
        plan = self.plan
        if not plan.dns:
            raise LabError(f"lab {plan.name!r} runs without cluster DNS (podnet up --no-dns)")
        chosen = tuple(upstreams) if upstreams is not None else None
        LabSpec(name=plan.name, dns_upstreams=chosen)  # validates the addresses
        self.plan = replace(plan, dns_upstreams=chosen)
        self.plan.save()
        labdns.write_resolv_conf(self.state_dir, chosen)
        deadline = time.monotonic() + timeout

        async def roll() -> None:
            from podnet.api.client import HttpApi

            api = HttpApi.from_kubeconfig(self.kubeconfig, component="podnet-lab")
            try:
                generation = await labdns.restart(api)
                while True:
                    deployment = await api.get("deployments", labdns.DEPLOYMENT, labdns.NAMESPACE)
                    if labdns.rolled_out(deployment, generation):
                        return
                    if time.monotonic() > deadline:
                        raise LabError(
                            f"the coredns pods were not replaced within {timeout:.0f} s; see "
                            "`kubectl -n kube-system get pods -o wide`"
                        )
                    await asyncio.sleep(0.2)
            finally:
                await api.close()

        progress("restarting the coredns pods with the new upstreams")
        asyncio.run(roll())
        self._wait_for_dns(deadline, timeout)
        progress(f"cluster DNS forwards to {', '.join(chosen or ()) or 'the machine'}")

    def _start_agents(
        self,
        server: procs.Recorded,
        deadline: float,
        timeout: float,
        progress: Progress,
        python: str,
        only: tuple[NodePlan, ...] | None = None,
    ) -> None:
        """Start the agents of `only` (default: every node; a VM node's agent is its VM) and
        wait until they are Ready."""
        started = time.time()
        starting = self.plan.nodes if only is None else only
        self.ensure_supervisor(deadline, python).start(*(f"agent-{n.name}" for n in starting))
        watched = {node.name: self._unit_record(f"agent-{node.name}") for node in starting}
        vms = sum(n.vm for n in starting)
        progress(
            f"started {len(starting) - vms} agents and {vms} VM nodes; waiting for nodes to be "
            "Ready"
            if vms
            else f"started {len(starting)} agents; waiting for nodes to be Ready"
        )
        self._wait_ready(server, watched, started, deadline, timeout, progress)

    def _wait_ready(
        self,
        server: procs.Recorded,
        watched: dict[str, procs.Recorded],
        started: float,
        deadline: float,
        timeout: float,
        progress: Progress,
    ) -> None:
        """Until every node in `watched` reports Ready from an agent started after `started`
        (a list of the nodes, then a watch: no poll interval between Ready and returning);
        fails as soon as the server or a watched process exits."""
        plan = self.plan

        def check() -> None:
            if not procs.is_alive(server):
                raise self._exited("the API server", "server", Path(plan.server_log))
            for name, process in watched.items():
                if not procs.is_alive(process):
                    node = plan.node(name)
                    what = f"the VM of {name}" if node.vm else f"the agent of {name}"
                    raise self._exited(what, f"agent-{name}", _exit_log(plan, node))

        def ready(nodes: dict[str, dict[str, Any]]) -> set[str]:
            return {n for n, obj in nodes.items() if n in watched and _node_ready(obj, started)}

        def late(why: str) -> LabError:
            missing = sorted(set(watched) - ready(nodes_seen))
            logs = ", ".join(_logs(plan, plan.node(n)) for n in missing)
            return LabError(
                f"nodes {', '.join(missing)} were not Ready within {timeout:.0f} s{why}; see {logs}"
            )

        nodes_seen: dict[str, dict[str, Any]] = {}
        asyncio.run(
            _watch_nodes(self.kubeconfig, nodes_seen, check, ready, deadline, late, progress,
                         len(watched))
        )  # fmt: skip

    def add_node(
        self,
        *,
        vm_node: bool = False,
        vm_kernel: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        progress: Progress = _quiet,
        python: str = sys.executable,
    ) -> NodePlan:
        """Join one more node (`node<N+1>`) to the running lab: its namespace (or, with
        `vm_node`, its VM) on the underlay, its agent; returns once the Node is Ready. The
        plan is saved first, so `down` removes the node whatever happens after."""
        pids = Path(self.plan.pids_dir)
        server = next((r for r in procs.recorded(pids) if r.label == "server"), None)
        if server is None or not procs.is_alive(server):
            raise LabError(f"the API server of lab {self.plan.name!r} is not running")
        plan = load_plan(self.state_dir) or self.plan
        kernel = None
        if vm_node and (plan.vm_kernel is None or vm_kernel is not None):
            kernel = vm.check_host(vm_kernel)  # before anything is made
        with machine_lock():
            self.plan, node = with_new_node(load_plan(self.state_dir) or self.plan, vm=vm_node)
            self.plan.save()
            if kernel is not None:
                self.plan = vm.prepare(self.plan, kernel, progress)
                self.plan.save()
            where = f"a VM ({self.plan.vm_accel})" if node.vm else f"namespace {node.netns}"
            progress(f"{node.name}: {where} at {node.ip}")
            build_node(self.plan, node)
        self._write_node_files(node)
        deadline = time.monotonic() + timeout
        self._start_agents(server, deadline, timeout, progress, python, only=(node,))
        return node

    def remove_node(self, name: str, *, progress: Progress = _quiet) -> list[str]:
        """Take node `name` out of the running lab, as an admin retires a machine (`kubectl
        drain` first moves its pods gracefully): its agent stops first, so it cannot register
        the Node again; then the Node is deleted (node lifecycle deletes the pods bound to it
        and their owners recreate them elsewhere); its containers, pod namespaces, namespace,
        underlay veth and files go (a VM node: its qemu, virtiofsd, tap and `vms/<node>`), and
        the plan forgets it. Returns what was removed."""
        from podnet.lab import faults

        plan, node = without_node(load_plan(self.state_dir) or self.plan, name)
        active = faults.recorded(self.state_dir)
        if active:
            raise LabError(
                f"faults are in place in lab {plan.name} ({', '.join(f.id for f in active)}); "
                f"clear them first: podnet fault clear --all --name {plan.name}"
            )
        removed: list[str] = []
        with machine_lock():
            self.ensure_supervisor().stop(f"agent-{name}")  # a VM node's: its qemu
            progress(f"{name}: {'VM' if node.vm else 'agent'} stopped")
            if self._delete_node_object(name):
                removed.append(f"Node {name} (its pods are deleted and recreated elsewhere)")
                progress(f"{name}: Node deleted")
            containers = procs.stop_all(Path(node.state_dir))
            if containers:
                removed.append(f"processes: {containers} of the node's pods")
            for pod_ns in netns.list_names(f"{node.netns}-"):
                if netns.delete(pod_ns):
                    removed.append(f"netns {pod_ns}")
            with Netlink() as host:
                if host.delete_link(node.host_veth):
                    removed.append(f"link {node.host_veth}")
            if netns.delete(node.netns):
                removed.append(f"netns {node.netns}")
            self.plan = plan
            self.plan.save()
            for rec in procs.recorded(Path(plan.pids_dir)):
                if rec.label in (f"agent-{name}", f"virtiofsd-{name}"):
                    procs.stop(rec)  # the VM's virtiofsd exits with it; in case it did not
                    procs.forget(rec)
            for directory in (Path(node.state_dir), vm.VmPaths.of(plan.state_dir, name).vm_dir):
                if directory.is_dir():
                    shutil.rmtree(directory)
                    removed.append(f"state {directory}")
        return removed

    def _delete_node_object(self, name: str) -> bool:
        """Delete the Node `name` (False: there was none)."""
        from podnet.api.client import HttpApi
        from podnet.api.errors import ApiError

        async def delete() -> bool:
            api = HttpApi.from_kubeconfig(self.kubeconfig, component="podnet-lab")
            try:
                await api.delete("nodes", name)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                return False
            finally:
                await api.close()
            return True

        try:
            return asyncio.run(delete())
        except ApiError as exc:
            raise LabError(f"could not delete Node {name} in lab {self.name}: {exc}") from exc
        except OSError as exc:
            raise LabError(f"the API of lab {self.name} does not answer: {exc}") from exc

    def restart_agents(
        self,
        *,
        proxy_mode: str | None = None,
        proxy_fallback: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        progress: Progress = _quiet,
        python: str = sys.executable,
    ) -> None:
        """Restart every node agent, optionally in another kube-proxy mode.

        Pods keep running (the agent adopts its containers) and the kernel state the agent
        leaves in place keeps traffic flowing; the agent removes the old mode's rules when it
        starts in a new one. The mode is recorded in the lab's plan.
        """
        plan = self.plan
        if proxy_mode is not None:
            LabSpec(name=plan.name, proxy_mode=proxy_mode)  # validates the mode name
            fallback = plan.proxy_fallback if proxy_fallback is None else proxy_fallback
            refuse_ipvs_here(plan.nodes, proxy_mode, fallback)  # before any agent stops
        server = next((r for r in procs.recorded(Path(plan.pids_dir)) if r.label == "server"), None)
        if server is None or not procs.is_alive(server):
            raise LabError(
                f"the API server of lab {plan.name!r} is not running; "
                f"recreate the lab with `podnet down --name {plan.name}` and `podnet up`"
            )
        client = self.ensure_supervisor(python=python)
        agents = [f"agent-{n.name}" for n in plan.nodes]
        stopped = sum(
            1 for a in agents if (client.status()["units"].get(a) or {}).get("pid") is not None
        )
        client.stop(*agents)
        progress(f"stopped {stopped} agents")
        wanted = replace(
            plan,
            proxy_mode=plan.proxy_mode if proxy_mode is None else proxy_mode,
            proxy_fallback=plan.proxy_fallback if proxy_fallback is None else proxy_fallback,
        )
        if wanted != plan:
            self.plan = wanted
            self.plan.save()
        self._start_agents(server, time.monotonic() + timeout, timeout, progress, python)

    def restart_server(
        self,
        *,
        down_for: float = 0.0,
        timeout: float = DEFAULT_TIMEOUT,
        python: str = sys.executable,
    ) -> procs.Recorded:
        """Stop the API server (SIGTERM, as systemd would), wait `down_for` seconds and start it
        again on the same state; returns once it answers. Agents and pods keep running and
        reconnect by themselves."""
        client = self.ensure_supervisor(python=python)
        client.stop("server")
        time.sleep(down_for)
        client.start("server")
        server = self._unit_record("server")
        self._wait_for_server(server, time.monotonic() + timeout)
        return server

    def _wait_for_server(
        self, server: procs.Recorded, deadline: float, kubeconfig: Path | None = None
    ) -> None:
        """Until the server answers through `kubeconfig` (default: the lab's), which it writes."""
        kubeconfig = kubeconfig or self.kubeconfig
        log = supervision.unit_log(self.plan, server.label)
        what = "the API server" if server.label == "server" else f"API {server.label}"
        while True:
            if not procs.is_alive(server):
                raise self._exited(what, server.label, log)
            if kubeconfig.exists():
                try:
                    asyncio.run(_list_nodes(kubeconfig))
                    return
                except Exception as exc:
                    failure = str(exc)
            else:
                failure = f"{kubeconfig} not written yet"
            if time.monotonic() > deadline:
                raise LabError(f"{what} did not answer in time ({failure}); see {log}")
            time.sleep(0.05)

    def down(self) -> list[str]:
        return down_lab(self.name, Path(self.plan.state_dir).parent)

    def status(self) -> LabStatus:
        plan = self.plan
        recorded = {r.label: r for r in procs.recorded(Path(plan.pids_dir))}
        server = recorded.get("server")
        server_alive = server is not None and procs.is_alive(server)
        supervisor = recorded.get(supervision.LABEL)
        units = self.supervisor.saved_status().get("units") or {}

        def restarts(label: str) -> int:
            return int((units.get(label) or {}).get("restarts") or 0)

        nodes_obj: dict[str, dict[str, Any]] = {}
        api_error: str | None = None
        several = plan.servers > 1 or plan.etcd > 0
        if server_alive or plan.servers > 1:  # clients fail over to the other servers
            try:
                nodes_obj = asyncio.run(_list_nodes(self.kubeconfig))
            except Exception as exc:
                api_error = str(exc) or type(exc).__name__
        else:
            api_error = "the API server is not running"
        control: tuple[tuple[ha.ServerState, ...], tuple[ha.EtcdMemberState, ...]] = ((), ())
        if several:
            alive = {label: r.pid for label, r in recorded.items() if procs.is_alive(r)}
            control = ha.control_plane(
                plan, alive, restarts, self._controllers_holder(api_error), self._ca()
            )
        out = []
        for node in plan.nodes:
            obj = nodes_obj.get(node.name)
            agent = recorded.get(f"agent-{node.name}")  # a VM node's: its qemu
            agent_alive = agent is not None and procs.is_alive(agent)
            running = agent_alive if node.vm else netns.exists(node.netns)
            out.append(
                NodeStatus(
                    name=node.name,
                    ip=node.ip,
                    netns=node.netns,
                    netns_exists=running,
                    agent_alive=agent_alive,
                    ready=None if api_error else (obj is not None and _node_ready(obj)),
                    pod_cidr=(obj or {}).get("spec", {}).get("podCIDR"),
                    log=node.log,
                    policy=None if node.vm else read_status(Path(node.state_dir), "policy"),
                    agent_restarts=restarts(f"agent-{node.name}"),
                    vm=node.vm,
                    agent_stopped=agent_alive and agent is not None and procs.is_stopped(agent),
                    condition=None if obj is None else _ready_condition(obj),
                )
            )
        return LabStatus(
            plan.name,
            plan.server_url,
            server_alive,
            plan.server_log,
            tuple(out),
            api_error,
            supervisor_alive=supervisor is not None and procs.is_alive(supervisor),
            server_restarts=restarts("server"),
            servers=control[0],
            etcd=control[1],
            others={
                n: _node_ready(obj)
                for n, obj in sorted(nodes_obj.items())
                if n not in {node.name for node in plan.nodes}
            },
        )

    def _controllers_holder(self, api_error: str | None) -> str | None:
        """The controllers' Lease's holderIdentity (None: the API cannot tell now)."""
        from podnet.controllers.leaderelection import LEASE_NAME, LEASE_NAMESPACE

        if api_error is not None:
            return None
        try:
            lease = self.api_get("leases", LEASE_NAME, LEASE_NAMESPACE)
        except LabError:
            return None
        return str((lease.get("spec") or {}).get("holderIdentity") or "") or None

    def _ca(self) -> bytes | None:
        """The cluster CA, to verify the servers by (None: no kubeconfig yet; nothing is
        trusted then and every server shows as not ready)."""
        from podnet.api.client import KubeconfigError, load_kubeconfig

        try:
            return load_kubeconfig(self.kubeconfig)[1]
        except KubeconfigError:
            return None


def _logs(plan: LabPlan, node: NodePlan) -> str:
    if node.vm:
        return f"{node.log} and {vm.VmPaths.of(plan.state_dir, node.name).console_log}"
    return node.log


def _exit_log(plan: LabPlan, node: NodePlan) -> Path:
    """The log that says why a node's agent unit ended: a VM node's serial console."""
    return vm.VmPaths.of(plan.state_dir, node.name).console_log if node.vm else Path(node.log)


def _stop_labelled(pids_dir: Path, want: Callable[[str], bool]) -> int:
    stopped = 0
    for rec in procs.recorded(pids_dir):
        if want(rec.label):
            stopped += procs.is_alive(rec)
            procs.stop(rec)
    return stopped


def down_lab(name: str, state_root: Path = DEFAULT_STATE_ROOT) -> list[str]:
    """Remove everything lab `name` made; returns a description of what was removed.

    Works from the record on disk, so it also cleans up after a crashed `up`, and again
    after a completed `down` (then it removes nothing).
    """
    LabSpec(name=name, state_root=state_root)  # validates the name before using it in paths
    state_dir = state_root / name
    plan = load_plan(state_dir)  # None: no record (crash before it was written, or gone)
    removed: list[str] = []
    pids = state_dir / "pids"
    if plan is not None:  # frozen processes must be able to exit; helpers go too
        from podnet.lab import faults

        try:
            removed += faults.clear_for_down(Lab(plan))
        except LabError as exc:
            removed.append(f"(faults not all cleared: {exc})")
    # the supervisor first: it would restart what the next lines stop
    supervisor = _stop_labelled(pids, lambda label: label == supervision.LABEL)
    agents = _stop_labelled(pids, lambda label: label.startswith("agent-"))
    containers = procs.stop_all(state_dir / "nodes") + procs.stop_all(state_dir / "fault-pids")
    # the servers (all at once) before the etcd members: a server going down writes to its
    # store (its Leases), and with the store gone first it would wait out the grace period;
    # then the members one by one (SIGTERMed together, etcd 3.4's leader waits ~7 s for a
    # leadership transfer no member can take; one by one they exit in ~0.1 s in all)
    server = procs.stop_together(
        [r for r in procs.recorded(pids) if not r.label.startswith(ha.ETCD_LABEL)]
    )
    members = _stop_labelled(pids, lambda label: True)
    if supervisor + agents + containers + server + members:
        removed.append(
            f"processes: {supervisor} supervisor, {agents} agents, {containers} others, "
            f"{server} server" + (f", {members} etcd members" if members else "")
        )
    others = tuple(p.netns_prefix for p in other_plans(state_root, name))
    if plan is None:
        plan = plan_lab(LabSpec(name=name, nodes=1, state_root=state_root), 1, 1)
    removed += remove_topology(plan, others)
    target = Path(plan.user_kubeconfig) if plan.user_kubeconfig else None
    if target is not None:
        with machine_lock():  # other labs edit the same file
            if kubeconfigs.remove_from_file(target, plan.context):
                removed.append(f"kubeconfig context {plan.context} in {target}")
    if (state_dir / PLAN_FILE).exists():
        shutil.rmtree(state_dir)
        removed.append(f"state {state_dir}")
    elif state_dir.is_dir() and not any(state_dir.iterdir()):
        state_dir.rmdir()
    return removed


def list_labs(state_root: Path = DEFAULT_STATE_ROOT) -> list[str]:
    if not state_root.is_dir():
        return []
    return sorted(p.name for p in state_root.iterdir() if (p / PLAN_FILE).exists())
