"""`podnet fault`: break a lab on purpose and take it back (`podnet.lab.faults` does the work).

    podnet fault kill pod NS/POD [--container C] | kill agent NODE | kill server [N|leader]
                 | kill etcd N  [--for 30s]
    podnet fault stop node NODE              podnet fault restart agent NODE
    podnet fault partition NODE [--from NODE ...|--from api]
    podnet fault loss|corrupt|duplicate NODE|NS/POD PERCENT
    podnet fault bandwidth NODE|NS/POD RATE  podnet fault delay NODE|NS/POD MS [--jitter MS]
    podnet fault list                        podnet fault clear [ID ...|--all]

Only argument parsing and presentation live here. Exit codes: 0 done, 1 the fault could not be
caused or cleared (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from podnet.lab.spec import DEFAULT_STATE_ROOT, LabError


def _lab_options(parser: argparse.ArgumentParser, default: bool = False) -> None:
    """--name (and the hidden --state-root) on `fault` itself and on every level below it, so
    `podnet fault --name L partition node2` works as `podnet fault partition node2 --name L`
    does. Only `fault` holds the defaults: a level below sets them only when given (argparse
    copies a sub-parser's values over its parent's, defaults included)."""
    parser.add_argument(
        "--name",
        default="podnet" if default else argparse.SUPPRESS,
        help="lab name (default: podnet)",
    )
    parser.add_argument(
        "--state-root",
        type=Path,
        default=DEFAULT_STATE_ROOT if default else argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


class _KindParser(argparse.ArgumentParser):
    """The parser of a kind that names WHAT it acts on (`kill`, `stop`, `restart`). `podnet
    fault stop node1` is what people type: where WHAT can only be one thing (`stop node`,
    `restart agent`) a node name in its place means that thing; where it cannot (`kill`), the
    error shows the commands to type instead of argparse's "invalid choice"."""

    shorthand: str | None = None  # the WHAT a bare target stands for
    forms: tuple[str, ...] = ()  # every form of the kind, for the error

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.forms and args is not None:
            args = self._with_what(list(args))
        return super().parse_known_args(args, namespace)

    def _with_what(self, args: list[str]) -> list[str]:
        whats = self._whats()
        i = 0
        while i < len(args) and args[i].startswith("-"):  # --name L, --name=L, -h
            i += 1 if "=" in args[i] or args[i] in ("-h", "--help") else 2
        asks_help = any(a in ("-h", "--help") for a in args[:i])
        if asks_help or (i < len(args) and args[i] in whats):
            return args
        if i < len(args) and self.shorthand is not None:
            return [*args[:i], self.shorthand, *args[i:]]
        kind = self.prog.split()[-1]
        said = f"{args[i]!r} is not something to {kind}" if i < len(args) else f"say what to {kind}"
        forms = "\n  ".join(self.forms)
        self.error(f"{said}; type{' one of' if len(self.forms) > 1 else ''}:\n  {forms}")

    def _whats(self) -> set[str]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return set(action.choices)
        return set()


def _common(parser: argparse.ArgumentParser, duration: bool = True) -> None:
    _lab_options(parser)
    if duration:
        parser.add_argument(
            "--for",
            dest="duration",
            metavar="DURATION",
            help="clear the fault by itself after this long (30s, 2m, 500ms)",
        )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fault = subparsers.add_parser(
        "fault",
        help="cause a fault in a lab (kill, stop, partition, loss, bandwidth, delay) or clear it",
        description="Cause a fault in a lab and take it back. Every fault is recorded in the "
        "lab's state and removed by `podnet fault clear`, by `podnet down`, or by itself "
        "after --for.",
    )
    _lab_options(fault, default=True)
    kinds = fault.add_subparsers(
        dest="fault_kind", metavar="KIND", required=True, parser_class=_KindParser
    )

    kill = kinds.add_parser("kill", help="kill a pod's containers, an agent or the API server")
    assert isinstance(kill, _KindParser)
    kill.forms = (
        "podnet fault kill agent NODE",
        "podnet fault kill pod NS/POD [--container C]",
        "podnet fault kill server [N|leader]",
        "podnet fault kill etcd N",
    )
    _lab_options(kill)
    kill_what = kill.add_subparsers(dest="what", metavar="WHAT", required=True)
    kill_pod = kill_what.add_parser("pod", help="SIGKILL a pod's containers (NS/POD)")
    kill_pod.add_argument("target", metavar="NS/POD", help="the pod (default/web-0, or web-0)")
    kill_pod.add_argument("--container", help="only this container")
    _common(kill_pod, duration=False)
    kill_agent = kill_what.add_parser("agent", help="SIGKILL a node's agent")
    kill_agent.add_argument("target", metavar="NODE", help="the node whose agent (node2)")
    _common(kill_agent)
    kill_server = kill_what.add_parser("server", help="SIGKILL the API server")
    kill_server.add_argument(
        "target",
        nargs="?",
        default="",
        metavar="N|leader",
        help="which server of a lab with --servers (default 1; leader: the one holding the "
        "controllers' Lease)",
    )
    _common(kill_server)
    kill_etcd = kill_what.add_parser("etcd", help="SIGKILL an etcd member of a lab with --etcd")
    kill_etcd.add_argument("target", metavar="N", help="which member (1, 2, 3)")
    _common(kill_etcd)

    stop = kinds.add_parser(
        "stop",
        help="freeze a node (SIGSTOP), as a hung machine",
        usage="%(prog)s [-h] [--name NAME] [node] NODE [--for DURATION]",
        description="Freeze a node: SIGSTOP its agent and pod processes (a VM node: its qemu). "
        "`podnet fault stop node2` is short for `podnet fault stop node node2`.",
    )
    assert isinstance(stop, _KindParser)
    stop.shorthand, stop.forms = "node", ("podnet fault stop [node] NODE",)
    _lab_options(stop)
    stop_what = stop.add_subparsers(dest="what", metavar="WHAT", required=True)
    stop_node = stop_what.add_parser("node", help="freeze the node's agent and pod processes")
    stop_node.add_argument("target", metavar="NODE", help="the node to freeze (node2)")
    _common(stop_node)

    restart = kinds.add_parser(
        "restart",
        help="restart an agent (SIGTERM, start again)",
        usage="%(prog)s [-h] [--name NAME] [agent] NODE",
        description="Restart a node's agent: SIGTERM, then the lab's supervisor starts it "
        "again. `podnet fault restart node1` is short for `podnet fault restart agent node1`.",
    )
    assert isinstance(restart, _KindParser)
    restart.shorthand, restart.forms = "agent", ("podnet fault restart [agent] NODE",)
    _lab_options(restart)
    restart_what = restart.add_subparsers(dest="what", metavar="WHAT", required=True)
    restart_agent = restart_what.add_parser("agent", help="restart a node's agent")
    restart_agent.add_argument("target", metavar="NODE", help="the node whose agent (node1)")
    _common(restart_agent, duration=False)

    partition = kinds.add_parser(
        "partition", help="drop a node's underlay traffic (both ways), or only to some peers"
    )
    partition.add_argument("target", metavar="NODE", help="the node to cut off (node2)")
    partition.add_argument(
        "--from",
        dest="peers",
        nargs="+",
        metavar="NODE|api",
        help="only the traffic with these nodes, or with the API server (api)",
    )
    _common(partition)

    percent = "share of the packets, above 0 and at most 100 (20 or 20%%)"
    for name, value, what, value_help in (
        ("loss", "PERCENT", "drop that share of the target's outgoing packets", percent),
        ("corrupt", "PERCENT", "corrupt that share of its outgoing packets (needs netem)", percent),
        ("duplicate", "PERCENT", "duplicate that share of its outgoing packets (needs netem)",
         percent),
        ("bandwidth", "RATE", "limit the target's outgoing rate (10mbit, 500kbit, 1mbps)",
         "bits a second (10mbit, 500kbit, 1gbit) or bytes a second (1mbps); at least 8kbit"),
        ("delay", "MS", "delay the target's outgoing packets by MS milliseconds",
         "milliseconds, above 0 and at most 60000"),
    ):  # fmt: skip
        sub = kinds.add_parser(name, help=what)
        sub.add_argument(
            "target",
            metavar="NODE|NS/POD",
            help="a node (node2: its underlay eth0) or a pod (default/web-0: its eth0)",
        )
        sub.add_argument("value", metavar=value, help=value_help)
        if name == "delay":
            sub.add_argument(
                "--jitter",
                type=float,
                default=0.0,
                metavar="MS",
                help="vary each packet's delay by up to this much (netem jitter)",
            )
        _common(sub)

    listing = kinds.add_parser("list", help="the lab's faults and what this kernel can do")
    _common(listing, duration=False)
    clear = kinds.add_parser("clear", help="take faults back")
    clear.add_argument("ids", nargs="*", metavar="ID", help="a fault's id (loss-3), from `list`")
    clear.add_argument("--all", action="store_true", help="every fault of the lab")
    _common(clear, duration=False)
    fault.set_defaults(func=run)


def _fail(message: str) -> int:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return 1


def request_from(args: argparse.Namespace) -> Any:
    """The `faults.Request` the arguments describe (values parsed and checked)."""
    from podnet.lab import faults

    kind = args.fault_kind
    duration = faults.parse_duration(args.duration) if getattr(args, "duration", None) else None
    params: dict[str, Any] = {}
    if kind in ("kill", "stop", "restart"):
        target = f"{args.what} {args.target}" if args.target else args.what
        if getattr(args, "container", None):
            params["container"] = args.container
    else:
        target = args.target
    if kind == "partition":
        params["from"] = args.peers or []
    elif kind in ("loss", "corrupt", "duplicate"):
        params["percent"] = faults.parse_percent(args.value)
    elif kind == "bandwidth":
        params["rate"] = args.value
        params["rate_bps"] = faults.parse_rate(args.value)
    elif kind == "delay":
        try:
            ms = float(args.value)
        except ValueError:
            raise faults.FaultError(f"delay {args.value!r} is not milliseconds") from None
        if not 0 < ms <= 60_000 or not 0 <= args.jitter <= ms:
            raise faults.FaultError("delay must be in (0, 60000] ms and --jitter in [0, delay]")
        params["ms"] = ms
        params["jitter"] = args.jitter
    return faults.Request(kind, target, params, duration)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab import faults
    from podnet.lab.lab import Lab

    console = Console(stderr=True)
    try:
        lab = Lab.load(args.name, args.state_root)
        if args.fault_kind == "list":
            print_faults(Console(), lab)
            return 0
        if args.fault_kind == "clear":
            if not args.all and not args.ids:
                return _fail("name the faults to clear (podnet fault list), or --all")
            cleared = faults.clear(lab) if args.all else faults.clear_ids(lab, args.ids)
            for fault in cleared:
                console.print(f"cleared {fault.describe()}", highlight=False)
            if not cleared:
                console.print(f"lab {lab.name}: no faults to clear", highlight=False)
            return 0
        fault = faults.inject(lab, request_from(args))
    except LabError as exc:
        return _fail(str(exc))
    until = (
        f" until {time.strftime('%H:%M:%S', time.localtime(fault.expires_at))}"
        if fault.expires_at
        else ""
    )
    if faults.kind_of(fault.kind).lasting or fault.expires_at:
        console.print(
            f"{fault.describe()}{until}; take it back with: podnet fault clear {fault.id}"
            + (f" --name {lab.name}" if lab.name != "podnet" else ""),
            highlight=False,
        )
    else:
        console.print(f"done: {fault.kind} {fault.target}", highlight=False)
    return 0


def print_faults(console: Any, lab: Any) -> None:
    from rich.table import Table

    from podnet.lab import faults

    caps = faults.capabilities(lab.state_dir)
    recorded = faults.recorded(lab.state_dir)
    if recorded:
        table = Table("id", "fault", "target", "parameters", "since", "until")
        for fault in recorded:
            params = ", ".join(
                f"{k}={v}" for k, v in fault.params.items() if k != "rate_bps" and v not in ([], "")
            )
            table.add_row(
                fault.id,
                fault.kind,
                fault.target,
                params or "-",
                time.strftime("%H:%M:%S", time.localtime(fault.created_at)),
                time.strftime("%H:%M:%S", time.localtime(fault.expires_at))
                if fault.expires_at
                else "cleared by hand",
            )
        console.print(table)
    else:
        console.print(f"lab {lab.name}: no faults")
    missing = [k.name for k in faults.KINDS.values() if k.unavailable(caps) is not None]
    delay = "netem" if caps.netem else "NFQUEUE"
    console.print(
        f"this kernel: netem {'yes' if caps.netem else 'no'}; delay via {delay}"
        + (f"; cannot: {', '.join(missing)} (needs netem)" if missing else ""),
        highlight=False,
    )
