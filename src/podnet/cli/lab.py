"""`podnet up`, `down`, `status`, `add-node`, `kubeconfig`: the lab on this machine.

Only argument parsing and presentation (rich) live here; `podnet.lab.Lab` does the work.
Exit codes: 0 done, 1 the lab could not be built / removed / inspected (the message says
why and which log to read), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podnet.lab.prestart import WHEN_PLANNED, Prestarted
from podnet.lab.spec import BACKENDS, DEFAULT_STATE_ROOT, PROXY_MODES, LabError, LabSpec
from podnet.lab.vminit import ROOT_TRANSPORTS

if TYPE_CHECKING:
    from podnet.lab.ha import EtcdMemberState, ServerState
    from podnet.lab.lab import NodeStatus


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="podnet", help="lab name (default: podnet)")
    parser.add_argument(
        "--state-root", type=Path, default=DEFAULT_STATE_ROOT, help=argparse.SUPPRESS
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser(
        "up",
        help="create a lab cluster: underlay, node namespaces, server and agents",
        description="Create a lab cluster on this machine and wait until every node is Ready. "
        "The kubeconfig is merged into ~/.kube/config as context podnet-NAME.",
    )
    _common(up)
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default: 2)")
    up.add_argument(
        "--hollow-nodes",
        type=int,
        default=0,
        metavar="N",
        help="also N simulated nodes (API only, no kernel; `podnet hollow`) for scale",
    )
    up.add_argument(
        "--servers",
        type=int,
        default=1,
        metavar="N",
        help="API servers, each at its own underlay address, all listed for the agents to fail "
        "over between (more than one needs --etcd; docs/multi-machine.md)",
    )
    up.add_argument(
        "--etcd",
        type=int,
        default=0,
        metavar="N",
        help="run the servers on an etcd cluster of N members, each in a namespace of its own "
        "on the underlay (default: 0, server 1's SQLite)",
    )
    up.add_argument("--backend", choices=BACKENDS, default="vxlan", help="flannel backend")
    up.add_argument(
        "--proxy-mode",
        choices=PROXY_MODES,
        default="iptables",
        help="how kube-proxy programs Services (default iptables; docs/kube-proxy.md)",
    )
    up.add_argument(
        "--proxy-fallback", action="store_true", help="run iptables where ipvs is unavailable"
    )
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for Ready")
    up.add_argument(
        "--node-grace",
        type=float,
        default=LabSpec().node_grace_seconds,
        metavar="SECONDS",
        help="a node silent this long goes NotReady (Ready=Unknown) and is tainted unreachable "
        "(default: %(default)s; Kubernetes: 40)",
    )
    up.add_argument(
        "--eviction",
        type=float,
        default=LabSpec().eviction_seconds,
        metavar="SECONDS",
        help="its pods are evicted this long after (their tolerationSeconds; default: "
        "%(default)s; Kubernetes: 300)",
    )
    up.add_argument(
        "--endpoint-drain",
        action="store_true",
        help="beyond Kubernetes: a terminating pod gets SIGTERM only once every node's proxy "
        "dropped its endpoint (bounded by the grace period), so rollouts fail no request",
    )
    up.add_argument("--no-kubeconfig", action="store_true", help="do not touch ~/.kube/config")
    up.add_argument(
        "--timings",
        action="store_true",
        help="print each step's time since the start and since the step before (where the "
        "seconds of a bring-up go)",
    )
    up.add_argument(
        "--no-dns",
        action="store_true",
        help="no cluster DNS (the coredns Deployment and the kube-dns Service)",
    )
    up.add_argument(
        "--dns-upstream",
        action="append",
        default=None,
        metavar="IP",
        help="nameserver for names outside the cluster (repeatable; default: this machine's)",
    )
    up.add_argument(
        "--vm-nodes",
        type=int,
        default=0,
        metavar="K",
        help="the last K nodes boot their own kernel under qemu (Debian's, with IP_VS, netem, "
        "nft queue); the others stay namespaces",
    )
    _vm_options(up)
    up.add_argument(
        "--vm-root",
        choices=ROOT_TRANSPORTS,
        default=None,
        help="how VM nodes see the host's root (default: virtiofs when virtiofsd is installed)",
    )
    up.add_argument(
        "--vm-memory", type=int, default=1024, metavar="MIB", help="memory per VM node (MiB)"
    )
    # network only, no server or agents: for debugging the topology and for tests
    up.add_argument("--no-processes", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=run_up)

    down = subparsers.add_parser(
        "down", help="remove a lab: processes, namespaces, links, state, kubeconfig context"
    )
    _common(down)
    down.set_defaults(func=run_down)

    status = subparsers.add_parser("status", help="show a lab's nodes and their health")
    _common(status)
    status.set_defaults(func=run_status)

    add = subparsers.add_parser(
        "add-node",
        help="join one more node to a running lab (DaemonSets follow it)",
        description="Add node<N+1> to a running lab: a node namespace on its underlay and an "
        "agent; returns once the node is Ready.",
    )
    _common(add)
    add.add_argument(
        "--vm", action="store_true", help="the new node boots its own kernel under qemu"
    )
    _vm_options(add)
    add.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for Ready")
    add.set_defaults(func=run_add_node)

    remove = subparsers.add_parser(
        "remove-node",
        help="take a node out of a running lab (its pods move to the other nodes)",
        description="Take NODE out of a running lab: stop its agent, delete its Node (node "
        "lifecycle deletes its pods and their owners recreate them on the other nodes), "
        "remove its pods' processes and namespaces, its namespace and underlay veth. To move "
        "its pods gracefully first: kubectl drain NODE --ignore-daemonsets. `kubectl delete "
        "node` alone does not remove a lab node: its agent registers it again.",
    )
    _common(remove)
    remove.add_argument("node", metavar="NODE", help="the node to remove (node3)")
    remove.set_defaults(func=run_remove_node)

    mode = subparsers.add_parser(
        "proxy-mode",
        help="restart a lab's node agents in another kube-proxy mode (pods keep running)",
    )
    _common(mode)
    mode.add_argument("mode", choices=PROXY_MODES, help="the kube-proxy mode to switch to")
    mode.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for Ready")
    mode.add_argument(
        "--proxy-fallback",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run iptables where ipvs is unavailable (default: keep the lab's setting)",
    )
    mode.set_defaults(func=run_proxy_mode)

    upstream = subparsers.add_parser(
        "dns-upstream",
        help="point a lab's cluster DNS at other upstream resolvers (restarts the coredns pods)",
    )
    _common(upstream)
    upstream.add_argument(
        "upstreams", nargs="*", metavar="IP", help="nameservers (none: this machine's)"
    )
    upstream.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the restarted coredns pods to answer",
    )
    upstream.set_defaults(func=run_dns_upstream)

    supervise = subparsers.add_parser(
        "supervise",
        help="start a lab's supervisor again if it died (it adopts the running components)",
    )
    _common(supervise)
    # the supervisor process itself (what `podnet up` and this command start in the background)
    supervise.add_argument("--foreground", action="store_true", help=argparse.SUPPRESS)
    supervise.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    # started by `podnet up` before the lab is planned: wait for its word on stdin
    supervise.add_argument(WHEN_PLANNED, action="store_true", help=argparse.SUPPRESS)
    supervise.set_defaults(func=run_supervise)

    kernel = subparsers.add_parser(
        "vm-kernel",
        help="unpack Debian's kernel for VM nodes (not installed as this machine's kernel)",
        description="Fetch Debian's linux-image-amd64 with apt-get download and unpack it, "
        "with its modules, into /var/lib/podnet/vm/kernels/<release> for `podnet up "
        "--vm-nodes`; prints the kernel found when it is already there.",
    )
    kernel.set_defaults(func=run_vm_kernel)

    node_exec = subparsers.add_parser(
        "vm-exec",
        help="run a command inside a VM node (its own kernel): `podnet vm-exec node2 -- "
        "ipvsadm -Ln`",
        description="Run COMMAND as root in a VM node's root namespace, through the VM's "
        "control port, and print its output; exits with the command's exit code. (A "
        "namespace node needs no helper: `ip netns exec podnet-<lab>-<node> COMMAND`.)",
    )
    _common(node_exec)
    node_exec.add_argument("node", metavar="NODE", help="the VM node (node3)")
    node_exec.add_argument(
        "command", nargs="+", metavar="COMMAND", help="the command and its arguments, after --"
    )
    node_exec.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    node_exec.set_defaults(func=run_vm_exec)

    kubeconfig = subparsers.add_parser("kubeconfig", help="print a lab's admin kubeconfig")
    _common(kubeconfig)
    kubeconfig.set_defaults(func=run_kubeconfig)


def _vm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vm-kernel",
        type=Path,
        default=None,
        metavar="PATH",
        help="the kernel VM nodes boot: an unpacked kernel package or its boot/vmlinuz-* "
        "(default: Debian's, unpacked by scripts/install.sh)",
    )


def _fail(message: str) -> int:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return 1


def run_up(args: argparse.Namespace) -> int:
    try:
        spec = LabSpec(
            name=args.name,
            nodes=args.nodes,
            backend=args.backend,
            proxy_mode=args.proxy_mode,
            proxy_fallback=args.proxy_fallback,
            state_root=args.state_root,
            dns=not args.no_dns,
            dns_upstreams=tuple(args.dns_upstream) if args.dns_upstream is not None else None,
            node_grace_seconds=args.node_grace,
            eviction_seconds=args.eviction,
            endpoint_drain=args.endpoint_drain,
            vm_nodes=args.vm_nodes,
            vm_kernel=args.vm_kernel,
            vm_root=args.vm_root,
            vm_memory=args.vm_memory,
            hollow_nodes=args.hollow_nodes,
            servers=args.servers,
            etcd=args.etcd,
        )
    except LabError as exc:
        return _fail(str(exc))
    # the supervisor's imports (the server's, the agents') overlap this command's from here
    early = None if args.no_processes else Prestarted(spec.state_dir)
    from rich.console import Console

    from podnet.lab.lab import Lab

    console = Console(stderr=True, log_path=False)
    began = last = time.monotonic()
    try:
        with console.status(f"creating lab {spec.name}") as spinner:

            def progress(message: str) -> None:
                nonlocal last
                if args.timings:
                    now = time.monotonic()
                    message = f"+{now - began:6.2f}s ({now - last:5.2f}s) {message}"
                    last = now
                console.log(message, highlight=False)
                spinner.update(f"lab {spec.name}: {message}")

            lab = Lab.up(
                spec,
                processes=not args.no_processes,
                merge_kubeconfig=not args.no_kubeconfig,
                timeout=args.timeout,
                progress=progress,
                supervisor=early,
            )
    except LabError as exc:
        return _fail(str(exc))
    plan = lab.plan
    if args.timings:
        console.print(f"up in {time.monotonic() - began:.2f}s", highlight=False)
    console.print(
        f"[bold green]lab {plan.name} is up[/]: {len(plan.nodes)} node"
        f"{'s' if len(plan.nodes) != 1 else ''} on {plan.subnet}, "
        f"API {plan.server_url}",
        highlight=False,
    )
    if plan.user_kubeconfig:
        console.print(
            f"kubectl context [bold]{plan.context}[/] is now current ({plan.user_kubeconfig}):\n"
            f"  kubectl get nodes -o wide\n"
            f"  kubectl --context {plan.context} run web --image=nginx",
            highlight=False,
        )
    elif not args.no_processes:
        console.print(f"  kubectl --kubeconfig {lab.kubeconfig} get nodes", highlight=False)
    console.print(f"remove it with: podnet down --name {plan.name}", highlight=False)
    return 0


def run_down(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.lab import down_lab

    try:
        removed = down_lab(args.name, args.state_root)
    except LabError as exc:
        return _fail(str(exc))
    console = Console(stderr=True)
    if not removed:
        console.print(f"lab {args.name}: nothing to remove", highlight=False)
    for item in removed:
        console.print(f"removed {item}", highlight=False)
    return 0


def run_add_node(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.lab import Lab

    console = Console(stderr=True)
    try:
        lab = Lab.load(args.name, args.state_root)
        node = lab.add_node(
            vm_node=args.vm,
            vm_kernel=args.vm_kernel,
            timeout=args.timeout,
            progress=lambda m: console.log(m, highlight=False),
        )
    except LabError as exc:
        return _fail(str(exc))
    print(f"node {node.name} joined lab {lab.name} at {node.ip}")
    return 0


def run_remove_node(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.lab import Lab

    console = Console(stderr=True)
    try:
        lab = Lab.load(args.name, args.state_root)
        removed = lab.remove_node(args.node, progress=lambda m: console.log(m, highlight=False))
    except LabError as exc:
        return _fail(str(exc))
    for item in removed:
        console.print(f"removed {item}", highlight=False)
    print(f"node {args.node} left lab {lab.name}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from podnet.lab.lab import Lab, list_labs

    try:
        lab = Lab.load(args.name, args.state_root)
    except LabError as exc:
        labs = list_labs(args.state_root)
        hint = f" (labs here: {', '.join(labs)})" if labs else ""
        return _fail(f"{exc}{hint}")
    status = lab.status()
    console = Console()
    server = "[green]running[/]" if status.server_alive else "[red]not running[/]"
    console.print(
        f"lab [bold]{status.name}[/]  API {status.server_url} {server}"
        f"{_restarts(status.server_restarts)}  log {status.server_log}"
    )
    if not status.supervisor_alive:
        console.print(
            "[red]supervisor not running[/]: dead components are not restarted; "
            f"`podnet supervise --name {status.name}` starts it again"
        )
    if status.api_error:
        console.print(f"[yellow]API: {status.api_error}[/]")
    if status.servers:
        print_control_plane(console, status.servers, status.etcd, lab.plan.state_dir)
    table = Table("node", "Ready", "InternalIP", "podCIDR", "agent", "restarts", "runs in")
    for node in status.nodes:
        ready = ready_cell(node)
        where = f"VM ({lab.plan.vm_accel}, kernel {lab.plan.vm_release})" if node.vm else node.netns
        table.add_row(
            node.name,
            ready,
            node.ip,
            node.pod_cidr or "-",
            agent_cell(node),
            str(node.agent_restarts),
            where if node.netns_exists else f"[red]{where} (missing)[/]",
        )
    console.print(table)
    for node in status.nodes:
        if (note := unregistered_note(node)) is not None:
            console.print(note, highlight=False)
    if (others := other_nodes_line(status.others)) is not None:
        console.print(others, highlight=False)
    plan = lab.plan
    if plan.node_grace_seconds is not None:
        console.print(
            f"node lifecycle: Lease renewed every {(plan.lease_seconds or 0) / 4:g} s; a node "
            f"silent {plan.node_grace_seconds:g} s goes NotReady (unreachable taint, endpoints "
            f"removed); its pods are evicted {plan.eviction_seconds:g} s later",
            highlight=False,
        )
    _print_faults(console, lab)
    _print_policies(console, status.nodes)
    if status.nodes:
        patterns = {n.log.replace(f"/{n.name}/", "/<node>/") for n in status.nodes}
        console.print(f"agent logs: {' and '.join(sorted(patterns))}", highlight=False)
        if any(n.vm for n in status.nodes):
            console.print(
                f"VM nodes: serial console, qemu log and control socket in "
                f"{lab.plan.state_dir}/vms/<node>/; `podnet vm-exec --name {status.name} NODE "
                "-- COMMAND` runs a command inside one",
                highlight=False,
            )
    return 0 if status.healthy else 1


def print_control_plane(
    console: Any,
    servers: Sequence[ServerState],
    etcd: Sequence[EtcdMemberState],
    state_dir: str | Path,
) -> None:
    """Every API server and etcd member of a lab started with `up --servers S --etcd E`."""
    from rich.table import Table

    table = Table("server", "URL", "pid", "/readyz", "controllers", "restarts")
    for server in servers:
        running = server.pid is not None
        table.add_row(
            str(server.index),
            server.url,
            str(server.pid) if running else "-",
            _state(running, bool(server.ready), "ready", "not ready"),
            "[bold]leader[/]" if server.leads else ("standby" if running else "-"),
            str(server.restarts),
        )
    console.print(table)
    if not any(server.leads for server in servers):
        console.print(
            "[yellow]controllers: no running server holds their Lease[/] (one takes it over "
            "15 s after its holder stopped)"
        )
    if etcd:
        members = Table("etcd", "client URL", "pid", "health", "role", "restarts")
        for member in etcd:
            running = member.pid is not None
            role = "[bold]leader[/]" if member.leader else ("follower" if member.healthy else "-")
            members.add_row(
                str(member.index),
                member.url,
                str(member.pid) if running else "-",
                _state(running, member.healthy, "healthy", "unhealthy"),
                role,
                str(member.restarts),
            )
        console.print(members)
        console.print(
            f"etcd members in namespaces {', '.join(m.netns for m in etcd)}; from the host:\n"
            f"  etcdctl --endpoints={','.join(m.url for m in etcd)} endpoint status -w table",
            highlight=False,
            soft_wrap=True,  # a command to copy: one line at any width
        )
    logs = "server.log, server-<i>.log" + (", etcd-<i>.log" if etcd else "")
    console.print(f"control plane logs: {state_dir}/{{{logs}}}", highlight=False)


def _state(running: bool, good: bool, yes: str, no: str) -> str:
    if not running:
        return "[red]not running[/]"
    return f"[green]{yes}[/]" if good else f"[red]{no}[/]"


def _print_faults(console: Any, lab: Any) -> None:
    from podnet.lab import faults

    active = faults.recorded(lab.state_dir)
    if active:
        console.print(
            "faults: " + "; ".join(f.describe() for f in active) + " (podnet fault list)",
            highlight=False,
        )


def agent_cell(node: NodeStatus) -> str:
    """The agent column of `podnet status`: a frozen agent (`podnet fault stop node`) is
    alive by its pid but answers nothing, so it is not called alive."""
    if not node.agent_alive:
        return "[red]dead[/]"
    return "[yellow]stopped (SIGSTOP)[/]" if node.agent_stopped else "[green]alive[/]"


def ready_cell(node: NodeStatus) -> str:
    """The Ready column of `podnet status`: the Node's Ready condition as the API has it
    (True, False, or Unknown for a node gone silent), "no Node" when the API has none of
    that name (deleted), "?" when the API could not be asked."""
    if node.ready is None:
        return "?"
    if node.condition is None:
        return "[red]no Node[/]"
    color = "green" if node.condition == "True" else "red"
    return f"[{color}]{node.condition}[/]"


def unregistered_note(node: NodeStatus) -> str | None:
    """What a missing Node object means for this node of the lab, and when it comes back: its
    agent registers the Node again at its next status write (a few seconds) while it runs."""
    if node.ready is None or node.condition is not None:
        return None
    if not node.agent_alive:
        when = "when the lab's supervisor has started the agent again"
    elif node.agent_stopped:
        when = "when it is unfrozen: a fault stopped it (`podnet fault list`, `podnet fault clear`)"
    else:
        when = "within a few seconds, at its next status write"
    return (
        f"{node.name}: the API has no Node {node.name} (deleted, e.g. by `kubectl delete node "
        f"{node.name}`); its agent registers it again {when}"
    )


def other_nodes_line(others: dict[str, bool]) -> str | None:
    """The Nodes of the API that the lab did not make: `podnet join`ed machines by name, the
    simulated `hollow-*` nodes counted."""
    if not others:
        return None
    hollow = [n for n in others if n.startswith("hollow-")]
    named = [
        f"{n} ({'Ready' if ready else 'NotReady'})"
        for n, ready in others.items()
        if n not in hollow
    ]
    parts = []
    if named:
        parts.append(f"{', '.join(named)}: not made by the lab (podnet join), not watched here")
    if hollow:
        ready = sum(1 for n in hollow if others[n])
        parts.append(f"{len(hollow)} hollow nodes ({ready} Ready)")
    return "also in the API: " + "; ".join(parts)


def _restarts(count: int) -> str:
    return f" [yellow](restarted {count}x)[/]" if count else ""


def _print_policies(console: Any, nodes: Sequence[NodeStatus]) -> None:
    """Which NetworkPolicies isolate which pods, as each node's agent enforces them."""
    from rich.table import Table

    rows = [
        (node.name, entry)
        for node in nodes
        for entry in (node.policy or {}).get("selected", [])
        if isinstance(entry, dict)
    ]
    policies = max((int((n.policy or {}).get("policies") or 0) for n in nodes), default=0)
    if not rows:
        console.print(f"NetworkPolicy: {policies} policies; no pod is isolated by any")
        return
    table = Table("node", "pod", "ingress isolated by", "egress isolated by", "drops in/eg")
    for node_name, entry in rows:
        drops = entry.get("drops") or {}
        table.add_row(
            node_name,
            str(entry.get("pod")),
            ", ".join(entry.get("ingress") or []) or "-",
            ", ".join(entry.get("egress") or []) or "-",
            f"{drops.get('ingress', 0)}/{drops.get('egress', 0)}",
        )
    console.print(f"NetworkPolicy: {policies} policies")
    console.print(table)


def run_proxy_mode(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.lab import Lab

    console = Console(stderr=True, log_path=False)
    try:
        lab = Lab.load(args.name, args.state_root)
        previous = lab.plan.proxy_mode
        lab.restart_agents(
            proxy_mode=args.mode,
            proxy_fallback=args.proxy_fallback,
            timeout=args.timeout,
            progress=lambda message: console.log(message, highlight=False),
        )
    except LabError as exc:
        return _fail(str(exc))
    console.print(
        f"lab {args.name}: kube-proxy mode {previous} -> [bold]{args.mode}[/] on every node",
        highlight=False,
    )
    return 0


def run_dns_upstream(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.lab import Lab

    console = Console(stderr=True, log_path=False)
    try:
        Lab.load(args.name, args.state_root).set_dns_upstreams(
            args.upstreams or None,
            timeout=args.timeout,
            progress=lambda message: console.log(message, highlight=False),
        )
    except LabError as exc:
        return _fail(str(exc))
    return 0


def run_supervise(args: argparse.Namespace) -> int:
    if args.foreground:
        from podnet.lab.supervisor import run_supervisor

        LabSpec(name=args.name, state_root=args.state_root)  # validates the name
        return run_supervisor(args.state_root / args.name, args.python, args.when_planned)

    from rich.console import Console

    from podnet.lab.lab import Lab

    try:
        lab = Lab.load(args.name, args.state_root)
        was_running = lab.supervisor.record() is not None
        lab.ensure_supervisor()
    except LabError as exc:
        return _fail(str(exc))
    rec = lab.supervisor.record()
    state = "was already running" if was_running else "started"
    Console(stderr=True).print(
        f"lab {args.name}: supervisor {state} (pid {rec.pid if rec else '?'})", highlight=False
    )
    return 0


def run_vm_kernel(args: argparse.Namespace) -> int:
    from podnet.lab.vmkernel import KernelError, install_debian_kernel

    try:
        kernel = install_debian_kernel()
    except (KernelError, OSError) as exc:
        return _fail(f"no kernel for VM nodes: {exc}")
    print(f"kernel {kernel.release} for VM nodes: {kernel.image} (modules {kernel.modules})")
    return 0


def run_vm_exec(args: argparse.Namespace) -> int:
    from podnet.lab.lab import Lab
    from podnet.lab.vm import VmControl, VmError

    try:
        lab = Lab.load(args.name, args.state_root)
        node = lab.plan.node(args.node)
        if not node.vm:
            return _fail(
                f"{node.name} is a namespace node, not a VM: "
                f"`ip netns exec {node.netns} {' '.join(args.command)}`"
            )
        done = VmControl(lab.plan, node.name).run(args.command, timeout=args.timeout)
    except (LabError, VmError) as exc:
        return _fail(str(exc))
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


def run_kubeconfig(args: argparse.Namespace) -> int:
    from podnet.lab.lab import Lab

    try:
        lab = Lab.load(args.name, args.state_root)
        text = lab.kubeconfig.read_text()
    except LabError as exc:
        return _fail(str(exc))
    except FileNotFoundError:
        return _fail(f"lab {args.name} has no kubeconfig yet (is its server running?)")
    sys.stdout.write(text)
    return 0
