"""The lab as data: what `podnet up` will build, decided without touching anything.

`LabSpec` is what the user asked for (name, node count, backend, proxy mode); `plan_lab` turns
it plus two facts about the machine (a free underlay index N and a free API port P) into a
`LabPlan` naming every object the lab will own. The plan is also the lab's record: it is
written to `<state_root>/<name>/lab.json` before anything is created, so `podnet down` can
remove exactly what the lab made even after a crash. Nothing here does I/O except
`LabPlan.save`/`load_plan` (and `save`'s line in a test session's lab journal).

Naming scheme (documented like Mininet's):
- nodes are `node1` .. `nodeN`; Node objects are per cluster, so labs can reuse the names;
- node network namespaces are `podnet-<lab>-<node>`, and every pod sandbox the node's agent
  makes is `podnet-<lab>-<node>-pod-<hash>` (`NodePlan.pod_netns_prefix`), so all of them
  start with the lab's `netns_prefix` and each agent's with its own;
- the underlay is 172.31.N.0/24: host end .1 on bridge `pnb<hash(lab)>`, node i at .(10+i)
  on its `eth0`, whose host end is `pnv<hash(lab/node)>`;
- the control hosts (`--servers S --etcd E`, lab/ha.py) take the addresses below the nodes':
  server i at .i on the host end (.1-.5), etcd member i at .(5+i) (.6-.10) on `eth0` of its
  own namespace `podnet-<lab>-etcd<i>`, whose host end is `pnv<hash(lab/etcd<i>)>`
  (`LabPlan.etcd_members`);
- state under `<state_root>/<lab>/`: kubeconfig, server.log, pids/, nodes/<node>/...;
- VM nodes (`--vm-nodes K`: the last K nodes) have no namespace: their tap on the bridge is
  named like a veth (`pnv<hash(lab/node)>`), their files are under `vms/<node>/` (see
  `lab/vm.py`), and the plan records the kernel, initramfs, root transport and accelerator
  they boot with (`vm_*`, filled in by `vm.prepare`).

Invariant: two labs never share an index, a port, a link name or a namespace prefix; lab names
whose namespace prefixes overlap (`a` and `a-b`: `podnet-a-b-…` starts with `podnet-a-`) are
refused so that `down` of one can never touch the other.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from podnet.agent.flannel import registry as flannel_registry
from podnet.agent.proxy import registry as proxy_registry
from podnet.kernel import names
from podnet.private import private_dir, write_private

DEFAULT_STATE_ROOT = Path("/var/lib/podnet")
BACKENDS = tuple(flannel_registry.BACKENDS)  # the names the agents accept, from their registries
PROXY_MODES = tuple(proxy_registry.PROXIERS)
UNDERLAY_MTU = 1500
MAX_INDEX = 254
MAX_NODES = 200
# the pod network: a /24 per node from 10.244.0.0/16 (256 nodes); a lab with more nodes than
# that (hollow ones, for scale) gets the /15 or /14 starting at the same address, so its first
# 256 nodes' subnets are a normal lab's
CLUSTER_CIDR = "10.244.0.0/16"
CLUSTER_CIDRS = (CLUSTER_CIDR, "10.244.0.0/15", "10.244.0.0/14")
NODE_CIDR_MASK = 24
MAX_CLUSTER_NODES = 2 ** (NODE_CIDR_MASK - 14)  # /24 pod subnets in 10.244.0.0/14: 1,024
MAX_SERVERS = 5  # API servers / etcd members: underlay .1-.5 / .6-.10 (the nodes start at .11)
NAME_MAX = 24
MIN_VM_MEMORY = 256
MAX_VM_MEMORY = 16384
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PLAN_FILE = "lab.json"
# a test session's journal of the labs it planned (`podnet.testing.leftovers`): set in the test
# session's environment, so every process its tests start (`podnet up` too) inherits it
LAB_JOURNAL_VAR = "PODNET_TEST_LAB_JOURNAL"
FAULTS_FILE = "faults.json"  # the lab's faults (`faults.py`)


class LabError(Exception):
    """The lab could not be planned, built, inspected or removed; the message says why."""


@dataclass(frozen=True, slots=True)
class LabSpec:
    name: str = "podnet"
    nodes: int = 2
    backend: str = "vxlan"
    proxy_mode: str = "iptables"
    proxy_fallback: bool = False  # ipvs unavailable -> the agents run iptables instead
    state_root: Path = DEFAULT_STATE_ROOT
    dns: bool = True  # the coredns Deployment and the kube-dns Service (lab/dns.py)
    # node lifecycle, fast so a demo shows it: NotReady after this much Lease silence ...
    node_grace_seconds: float = 8.0
    # ... and its pods evicted (tolerationSeconds) this long after that
    eviction_seconds: float = 15.0
    endpoint_drain: bool = False  # SIGTERM only once every proxy dropped the pod (agent/drain.py)
    # the nodes' resolv.conf nameservers, where the DNS pods forward other names;
    # None: the machine's own
    dns_upstreams: tuple[str, ...] | None = None
    vm_nodes: int = 0  # how many of the nodes (the last ones) boot their own kernel
    vm_kernel: Path | None = None  # None: the newest in the cache (lab/vmkernel.py)
    vm_root: str | None = None  # virtiofs | 9p; None: virtiofs when virtiofsd is there
    vm_memory: int = 1024  # MiB per VM node
    hollow_nodes: int = 0  # simulated nodes (`podnet hollow`): API only, for scale
    servers: int = 1  # API servers (lab/ha.py); more than one needs etcd
    etcd: int = 0  # etcd members the servers share (0: server 1's SQLite)

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.name) or len(self.name) > NAME_MAX:
            raise LabError(
                f"lab name {self.name!r} is not valid: use lower-case letters, digits and '-', "
                f"starting and ending with a letter or digit, at most {NAME_MAX} characters"
            )
        if not 0.5 <= self.node_grace_seconds <= 3600 or not 0 <= self.eviction_seconds <= 86400:
            raise LabError(
                "--node-grace must be 0.5-3600 s and --eviction 0-86400 s, not "
                f"{self.node_grace_seconds} and {self.eviction_seconds}"
            )
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabError(f"--nodes must be between 1 and {MAX_NODES}, not {self.nodes}")
        if not 0 <= self.hollow_nodes <= MAX_CLUSTER_NODES - self.nodes:
            raise LabError(
                f"--hollow-nodes must be 0-{MAX_CLUSTER_NODES - self.nodes} with {self.nodes} "
                f"nodes: the lab's largest cluster CIDR, {CLUSTER_CIDRS[-1]}, has a /24 for "
                f"{MAX_CLUSTER_NODES} nodes (more hollow nodes: `podnet hollow` against a "
                "server with a larger --cluster-cidr)"
            )
        if not 1 <= self.servers <= MAX_SERVERS or not 0 <= self.etcd <= MAX_SERVERS:
            raise LabError(
                f"--servers must be 1-{MAX_SERVERS} and --etcd 0-{MAX_SERVERS}, not "
                f"{self.servers} and {self.etcd}"
            )
        if self.servers > 1 and not self.etcd:
            raise LabError(
                f"--servers {self.servers} needs --etcd N (3 survives the loss of one): "
                "several servers share an etcd store, not one server's SQLite"
            )
        if self.backend not in BACKENDS:
            raise LabError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.proxy_mode not in PROXY_MODES:
            raise LabError(
                f"unknown proxy mode {self.proxy_mode!r}; valid: {', '.join(PROXY_MODES)}"
            )
        if not 0 <= self.vm_nodes <= self.nodes:
            raise LabError(
                f"--vm-nodes must be between 0 and the number of nodes ({self.nodes}), "
                f"not {self.vm_nodes}"
            )
        if not MIN_VM_MEMORY <= self.vm_memory <= MAX_VM_MEMORY:
            raise LabError(
                f"--vm-memory must be between {MIN_VM_MEMORY} and {MAX_VM_MEMORY} MiB, "
                f"not {self.vm_memory}"
            )
        for upstream in self.dns_upstreams or ():
            try:
                ipaddress.ip_address(upstream)
            except ValueError:
                raise LabError(
                    f"--dns-upstream {upstream!r} is not an IP address (a nameserver, as in "
                    "resolv.conf)"
                ) from None

    @property
    def netns_prefix(self) -> str:
        return netns_prefix(self.name)

    @property
    def cluster_cidr(self) -> str:
        return cluster_cidr(self.nodes + self.hollow_nodes)

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name


def cluster_cidr(nodes: int) -> str:
    """The lab's pod network for `nodes` nodes (real and hollow): the smallest of
    `CLUSTER_CIDRS` with a /24 for each, so a lab of at most 256 nodes keeps 10.244.0.0/16."""
    for cidr in CLUSTER_CIDRS:
        if nodes <= 2 ** (NODE_CIDR_MASK - ipaddress.IPv4Network(cidr).prefixlen):
            return cidr
    raise LabError(f"{nodes} nodes do not fit the lab's pod network {CLUSTER_CIDRS[-1]}")


def netns_prefix(lab: str) -> str:
    return f"podnet-{lab}-"


def prefixes_overlap(lab_a: str, lab_b: str) -> bool:
    """Whether one lab's namespaces could be mistaken for the other's."""
    a, b = netns_prefix(lab_a), netns_prefix(lab_b)
    return a.startswith(b) or b.startswith(a)


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str  # the Node object's name: node1, node2, ...
    netns: str  # podnet-<lab>-<node>
    ip: str  # underlay address, 172.31.N.(10+i)
    host_veth: str  # host end of the node's eth0, a port of the underlay bridge
    state_dir: str
    run_dir: str
    kubeconfig: str
    log: str
    ifname: str = "eth0"
    vm: bool = False  # boots its own kernel under qemu (lab/vm.py); no namespace on the host

    @property
    def pod_netns_prefix(self) -> str:
        """The marker of this node's pod sandboxes: `podnet-<lab>-<node>-`.

        Each agent owns the sandboxes under its own prefix only; all nodes of a lab share
        /run/netns, so a lab-wide prefix would let one agent take another's pods for orphans.
        """
        return f"{self.netns}-"

    @property
    def kubelet_cert(self) -> str:
        """The kubelet endpoint's serving certificate, issued with `kubeconfig` (the node's
        token) by `apiserver.credentials.write_node_credentials`, beside it (a VM node's
        guest reads both from the host)."""
        return str(Path(self.kubeconfig).parent / "kubelet.crt")

    @property
    def kubelet_key(self) -> str:
        return str(Path(self.kubeconfig).parent / "kubelet.key")


@dataclass(frozen=True, slots=True)
class EtcdMemberPlan:
    """Etcd member `index` of a lab on etcd: its namespace on the underlay (lab/ha.py runs it)."""

    index: int  # 1-based
    name: str  # etcd-<i>: the member's name in the cluster, its supervisor unit and log
    netns: str  # podnet-<lab>-etcd<i>
    ip: str  # 172.31.N.(5+i)
    host_veth: str  # host end of the member's eth0, a port of the underlay bridge
    data_dir: str  # <state>/etcd/etcd-<i>
    ifname: str = "eth0"


@dataclass(frozen=True, slots=True)
class LabPlan:
    name: str
    index: int
    port: int
    backend: str
    proxy_mode: str
    state_dir: str
    bridge: str
    subnet: str  # 172.31.N.0/24
    host_ip: str  # 172.31.N.1
    nodes: tuple[NodePlan, ...]
    netns_prefix: str
    server_log: str
    server_kubeconfig: str  # written by the server: https://127.0.0.1:P
    pids_dir: str
    user_kubeconfig: str | None = None  # where the context was merged (set by `up`)
    proxy_fallback: bool = False
    mtu: int = UNDERLAY_MTU
    dns: bool = False  # plans written before cluster DNS existed have none
    dns_upstreams: tuple[str, ...] | None = None
    # node lifecycle (plans written before these existed get the server's defaults)
    node_grace_seconds: float | None = None
    eviction_seconds: float | None = None
    endpoint_drain: bool = False
    hollow_nodes: int = 0  # run by the unit `hollow` (`podnet hollow`)
    # the pod network (`cluster_cidr`: larger than 10.244.0.0/16 only with > 256 nodes)
    cluster_cidr: str = CLUSTER_CIDR
    servers: int = 1  # API servers and etcd members (lab/ha.py)
    etcd: int = 0

    @property
    def lease_seconds(self) -> int | None:
        """The nodes' Lease duration: the grace period (renewed every quarter of it)."""
        return max(2, math.ceil(self.node_grace_seconds)) if self.node_grace_seconds else None

    # what VM nodes boot (set by lab/vm.py `prepare` once the lab has a VM node)
    vm_kernel: str | None = None  # the image qemu boots
    vm_release: str | None = None
    vm_initramfs: str | None = None
    vm_root: str = "virtiofs"  # how the guest sees the host's root: virtiofs | 9p
    vm_accel: str = "tcg"  # kvm | tcg
    vm_memory: int = 1024  # MiB

    @property
    def context(self) -> str:
        return f"podnet-{self.name}"

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    @property
    def etcd_members(self) -> tuple[EtcdMemberPlan, ...]:
        """The etcd members (none on SQLite), derived from the lab's name, subnet and count."""
        subnet = ipaddress.IPv4Network(self.subnet)
        return tuple(
            EtcdMemberPlan(
                index=i,
                name=f"etcd-{i}",
                netns=f"{self.netns_prefix}etcd{i}",
                ip=str(subnet[MAX_SERVERS + i]),
                host_veth=names.ifname(names.LAB_NODE_VETH_PREFIX, f"{self.name}/etcd{i}"),
                data_dir=str(Path(self.state_dir) / "etcd" / f"etcd-{i}"),
            )
            for i in range(1, self.etcd + 1)
        )

    @property
    def host_links(self) -> tuple[str, ...]:
        """Every link the lab creates in the host namespace (veths first, the bridge last)."""
        return (
            *(n.host_veth for n in self.nodes),
            *(m.host_veth for m in self.etcd_members),
            self.bridge,
        )

    @property
    def resolv_conf(self) -> str:
        """The nodes' resolv.conf (the agents' --resolv-conf), written by `up`."""
        return str(Path(self.state_dir) / "resolv.conf")

    @property
    def server_url(self) -> str:
        return f"https://{self.host_ip}:{self.port}"

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"lab {self.name!r} has no node {name!r}")

    def with_user_kubeconfig(self, path: Path | None) -> LabPlan:
        return replace(self, user_kubeconfig=str(path) if path else None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabPlan:
        raw = json.loads(text)
        raw["nodes"] = tuple(NodePlan(**n) for n in raw["nodes"])
        if raw.get("dns_upstreams") is not None:
            raw["dns_upstreams"] = tuple(raw["dns_upstreams"])
        return cls(**raw)

    def save(self) -> Path:
        path = Path(self.state_dir) / PLAN_FILE
        private_dir(path.parent)
        write_private(path, self.to_json().encode())
        self._journal()
        return path

    def _journal(self) -> None:
        """Under a test session (`LAB_JOURNAL_VAR` set), append the lab's name and the objects
        it names to the session's journal, before `up` creates any of them: the session's
        end-of-run check fails on a leftover of its own labs, whoever else runs labs."""
        journal = os.environ.get(LAB_JOURNAL_VAR)
        if not journal:
            return
        entry = {"name": self.name, "netns_prefix": self.netns_prefix, "links": self.host_links}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:  # a lab is never refused for its test session's bookkeeping
            fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            os.write(fd, line)  # one write of an O_APPEND file: lines never interleave
        except OSError:
            pass
        finally:
            os.close(fd)


def load_plan(state_dir: Path) -> LabPlan | None:
    path = state_dir / PLAN_FILE
    try:
        return LabPlan.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        raise LabError(f"{path} is damaged ({exc}); remove the lab's objects by hand") from exc


def pick_index(used: set[int]) -> int:
    """The lowest underlay index 1..254 not in `used`."""
    for index in range(1, MAX_INDEX + 1):
        if index not in used:
            return index
    raise LabError("all 254 underlay subnets 172.31.1-254.0/24 are in use; remove a lab first")


def plan_node(
    lab: str, state: Path, subnet: ipaddress.IPv4Network, i: int, vm: bool = False
) -> NodePlan:
    """Node `i` (1-based) of lab `lab`: `node<i>` at 172.31.N.(10+i).

    A VM node's kubeconfig and agent log live in `vms/<node>/` on the host (the guest reads
    the one and writes the other through qemu); its state and run dirs are the agent's
    flags, a tmpfs inside the guest.
    """
    if not 1 <= i <= MAX_NODES:
        raise LabError(f"a lab has at most {MAX_NODES} nodes")
    node = f"node{i}"
    node_dir = state / "nodes" / node
    files = state / "vms" / node if vm else node_dir
    return NodePlan(
        name=node,
        netns=f"{netns_prefix(lab)}{node}",
        ip=str(subnet[10 + i]),
        host_veth=names.ifname(names.LAB_NODE_VETH_PREFIX, f"{lab}/{node}"),
        state_dir=str(node_dir),
        run_dir=str(node_dir / "run"),
        kubeconfig=str(files / "kubeconfig"),
        log=str(files / "agent.log"),
        vm=vm,
    )


def with_new_node(plan: LabPlan, vm: bool = False) -> tuple[LabPlan, NodePlan]:
    """The plan with one more node (`node<N+1>`), and that node."""
    taken = {n.name for n in plan.nodes}
    i = next(i for i in range(1, MAX_NODES + 2) if f"node{i}" not in taken)
    node = plan_node(plan.name, Path(plan.state_dir), ipaddress.IPv4Network(plan.subnet), i, vm)
    return replace(plan, nodes=(*plan.nodes, node)), node


def without_node(plan: LabPlan, name: str) -> tuple[LabPlan, NodePlan]:
    """The plan without node `name` (`podnet remove-node`), and that node. Refused for a
    name the lab does not have and for its last node (that is `podnet down`)."""
    node = next((n for n in plan.nodes if n.name == name), None)
    if node is None:
        nodes = ", ".join(n.name for n in plan.nodes)
        raise LabError(f"lab {plan.name} has no node {name!r}; nodes: {nodes}")
    if len(plan.nodes) == 1:
        raise LabError(
            f"{name} is the only node of lab {plan.name}; `podnet down --name {plan.name}` "
            "removes the whole lab"
        )
    return replace(plan, nodes=tuple(n for n in plan.nodes if n.name != name)), node


def plan_lab(spec: LabSpec, index: int, port: int) -> LabPlan:
    if not 1 <= index <= MAX_INDEX:
        raise LabError(f"underlay index {index} is outside 1..{MAX_INDEX}")
    subnet = ipaddress.IPv4Network(f"172.31.{index}.0/24")
    state = spec.state_dir
    first_vm = spec.nodes - spec.vm_nodes + 1
    nodes = [
        plan_node(spec.name, state, subnet, i, vm=i >= first_vm) for i in range(1, spec.nodes + 1)
    ]
    return LabPlan(
        name=spec.name,
        index=index,
        port=port,
        backend=spec.backend,
        proxy_mode=spec.proxy_mode,
        proxy_fallback=spec.proxy_fallback,
        dns=spec.dns,
        dns_upstreams=spec.dns_upstreams,
        node_grace_seconds=spec.node_grace_seconds,
        eviction_seconds=spec.eviction_seconds,
        endpoint_drain=spec.endpoint_drain,
        hollow_nodes=spec.hollow_nodes,
        cluster_cidr=spec.cluster_cidr,
        servers=spec.servers,
        etcd=spec.etcd,
        state_dir=str(state),
        bridge=names.ifname(names.LAB_BRIDGE_PREFIX, spec.name),
        subnet=str(subnet),
        host_ip=str(subnet[1]),
        nodes=tuple(nodes),
        netns_prefix=spec.netns_prefix,
        server_log=str(state / "server.log"),
        server_kubeconfig=str(state / "kubeconfig"),
        pids_dir=str(state / "pids"),
        vm_memory=spec.vm_memory,
    )


def server_argv(plan: LabPlan, python: str) -> list[str]:
    return [
        python, "-m", "podnet.cli.main", "server",
        "--state-dir", plan.state_dir,
        "--listen", f"127.0.0.1:{plan.port},{plan.host_ip}:{plan.port}",
        "--advertise-address", plan.host_ip,
        *(["--node-monitor-grace-period", str(plan.node_grace_seconds)]
          if plan.node_grace_seconds else []),
        *(["--default-unreachable-toleration-seconds", str(plan.eviction_seconds)]
          if plan.eviction_seconds else []),
        *_cluster_cidr_args(plan),
    ]  # fmt: skip


def _cluster_cidr_args(plan: LabPlan) -> list[str]:
    """`--cluster-cidr` for the server and the agents, where it is not their default."""
    return [] if plan.cluster_cidr == CLUSTER_CIDR else ["--cluster-cidr", plan.cluster_cidr]


def hollow_argv(plan: LabPlan, python: str) -> list[str]:
    return [
        python, "-m", "podnet.cli.main", "hollow",
        "--kubeconfig", plan.server_kubeconfig,
        "--count", str(plan.hollow_nodes),
        # the lab's short node grace: hollow Leases renewed as often as the agents'
        *(["--node-lease-duration", str(plan.lease_seconds)] if plan.lease_seconds else []),
    ]  # fmt: skip


def agent_argv(plan: LabPlan, node: NodePlan, python: str) -> list[str]:
    """The node's agent: in its namespace, or (a VM node) in the guest's own root namespace.
    `podnet.cli.agent` is the agent without the rest of the command's imports."""
    return [
        python, "-m", "podnet.cli.agent",
        *([] if node.vm else ["--netns", node.netns]),
        "--kubeconfig", node.kubeconfig,
        "--tls-cert-file", node.kubelet_cert,
        "--tls-private-key-file", node.kubelet_key,
        "--node-name", node.name,
        "--node-ip", node.ip,
        "--state-dir", node.state_dir,
        "--run-dir", node.run_dir,
        "--netns-prefix", node.pod_netns_prefix,
        "--backend", plan.backend,
        "--proxy-mode", plan.proxy_mode,
        "--resolv-conf", plan.resolv_conf,
        *(["--proxy-fallback"] if plan.proxy_fallback else []),
        *(["--node-lease-duration", str(plan.lease_seconds)] if plan.lease_seconds else []),
        *(["--endpoint-drain"] if plan.endpoint_drain else []),
        *_cluster_cidr_args(plan),
    ]  # fmt: skip
