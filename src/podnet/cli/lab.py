"""`podnet up`, `down`, `status`, `add-node`, `kubeconfig`: the lab on this machine.

Only argument parsing and presentation (rich) live here; `podnet.lab.Lab` does the work.
Exit codes: 0 done, 1 the lab could not be built / removed / inspected (the message says
why and which log to read), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podnet.lab.spec import BACKENDS, DEFAULT_STATE_ROOT, PROXY_MODES, LabError, LabSpec

if TYPE_CHECKING:
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
    up.add_argument("--backend", choices=BACKENDS, default="vxlan", help="flannel backend")
    up.add_argument("--proxy-mode", choices=PROXY_MODES, default="iptables")
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
    add.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for Ready")
    add.set_defaults(func=run_add_node)

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
    upstream.add_argument("--timeout", type=float, default=90.0)
    upstream.set_defaults(func=run_dns_upstream)

    supervise = subparsers.add_parser(
        "supervise",
        help="start a lab's supervisor again if it died (it adopts the running components)",
    )
    _common(supervise)
    # the supervisor process itself (what `podnet up` and this command start in the background)
    supervise.add_argument("--foreground", action="store_true", help=argparse.SUPPRESS)
    supervise.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    supervise.set_defaults(func=run_supervise)

    kubeconfig = subparsers.add_parser("kubeconfig", help="print a lab's admin kubeconfig")
    _common(kubeconfig)
    kubeconfig.set_defaults(func=run_kubeconfig)


def _fail(message: str) -> int:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return 1


def run_up(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.lab import Lab

    console = Console(stderr=True, log_path=False)
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
        )
    except LabError as exc:
        return _fail(str(exc))
    try:
        with console.status(f"creating lab {spec.name}") as spinner:

            def progress(message: str) -> None:
                console.log(message, highlight=False)
                spinner.update(f"lab {spec.name}: {message}")

            lab = Lab.up(
                spec,
                processes=not args.no_processes,
                merge_kubeconfig=not args.no_kubeconfig,
                timeout=args.timeout,
                progress=progress,
            )
    except LabError as exc:
        return _fail(str(exc))
    plan = lab.plan
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
            timeout=args.timeout, progress=lambda m: console.log(m, highlight=False)
        )
    except LabError as exc:
        return _fail(str(exc))
    print(f"node {node.name} joined lab {lab.name} at {node.ip}")
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
    table = Table("node", "Ready", "InternalIP", "podCIDR", "agent", "restarts", "netns")
    for node in status.nodes:
        ready = {True: "[green]True[/]", False: "[red]False[/]", None: "?"}[node.ready]
        table.add_row(
            node.name,
            ready,
            node.ip,
            node.pod_cidr or "-",
            "[green]alive[/]" if node.agent_alive else "[red]dead[/]",
            str(node.agent_restarts),
            node.netns if node.netns_exists else f"[red]{node.netns} (missing)[/]",
        )
    console.print(table)
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
        log_pattern = status.nodes[0].log.replace(f"/{status.nodes[0].name}/", "/<node>/")
        console.print(f"agent logs: {log_pattern}", highlight=False)
    return 0 if status.healthy else 1


def _print_faults(console: Any, lab: Any) -> None:
    from podnet.lab import faults

    active = faults.recorded(lab.state_dir)
    if active:
        console.print(
            "faults: " + "; ".join(f.describe() for f in active) + " (podnet fault list)",
            highlight=False,
        )


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
    from rich.console import Console

    from podnet.lab.lab import Lab

    if args.foreground:
        from podnet.lab.supervisor import run_supervisor

        LabSpec(name=args.name, state_root=args.state_root)  # validates the name
        return run_supervisor(args.state_root / args.name, args.python)
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
