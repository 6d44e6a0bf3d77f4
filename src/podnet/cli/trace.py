"""`podnet trace` and `podnet graph`: see the network of a lab.

Only argument parsing and presentation live here; `podnet.trace` does the work (snapshot →
planner → optional verification; graph rendering). Exit codes: 0 the packet is delivered (or
the graph is written), 1 it is dropped, rejected or refused, or `--verify` found a hop where
the kernel disagrees; 2 bad arguments (an unknown pod, service or lab says what exists).
`--verify` on a path through a VM node prints the prediction and why it is not verified; the
exit code is then the prediction's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from podnet.lab.spec import DEFAULT_STATE_ROOT

if TYPE_CHECKING:
    from podnet.trace.snapshot import Snapshot

OUTPUTS = ("text", "json", "graph")
GRAPH_OUTPUTS = ("svg", "html", "dot", "json")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = subparsers.add_parser(
        "trace",
        help="follow a packet hop by hop through a lab's kernels (and, with --verify, prove it)",
        description="Show every hop the first packet of a new connection from FROM to TO takes "
        "and the way back for its reply: routes, bridges, veths, overlay, every netfilter chain "
        "and rule, the endpoint a Service picks. Reads the lab's live state and changes nothing. "
        "FROM: a pod (ns/pod or pod) or a node. TO: a pod, svc/NAME (or svc/NS/NAME), a node "
        "(with --port: a NodePort), an IP or a DNS name.",
    )
    trace.add_argument("source", metavar="FROM", help="a pod (ns/pod or pod) or a node")
    trace.add_argument(
        "target",
        metavar="TO",
        help="a pod, svc/NAME or svc/NS/NAME, a node (with --port: a NodePort), an IP or a name",
    )
    trace.add_argument("--name", default="podnet", help="lab name (default: podnet)")
    trace.add_argument("--port", help="destination port (a number, or a Service port's name)")
    trace.add_argument(
        "--proto", choices=("tcp", "udp", "icmp"), default="tcp", help="the packet's protocol"
    )
    trace.add_argument(
        "--endpoint",
        metavar="IP[:PORT]",
        help="where a random choice (a Service's endpoint) should go; default: the first "
        "(one the path does not offer is an error that lists those it does)",
    )
    trace.add_argument(
        "-o", "--output", choices=OUTPUTS, default="text", help="output format (default text)"
    )
    trace.add_argument(
        "--verify",
        action="store_true",
        help="send a real probe from FROM with netfilter tracing on and compare hop by hop "
        "(not through VM nodes, whose kernel is in the guest: the prediction is shown, and why)",
    )
    trace.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds --verify waits for the probe's answer and the kernels' events",
    )
    trace.add_argument(
        "--snapshot", type=Path, metavar="FILE", help="trace a saved snapshot instead of a lab"
    )
    trace.add_argument(
        "--save-snapshot",
        type=Path,
        metavar="FILE",
        help="also write the lab's state (every node and pod) to FILE, to replay with --snapshot",
    )
    trace.add_argument(
        "--state-root", type=Path, default=DEFAULT_STATE_ROOT, help=argparse.SUPPRESS
    )
    trace.set_defaults(func=run_trace)

    graph = subparsers.add_parser(
        "graph",
        help="draw a lab's live topology: nodes, bridges, overlay, pods, Services",
        description="Draw the lab as it is now: each node with its bridge, overlay device and "
        "pods, the Services with arrows to the pods behind them, the underlay. SVG, an HTML "
        "page, Graphviz DOT or JSON on stdout; with --watch, a page on 127.0.0.1 that redraws "
        "itself while the cluster changes.",
    )
    graph.add_argument("--name", default="podnet", help="lab name (default: podnet)")
    graph.add_argument(
        "-o", "--output", choices=GRAPH_OUTPUTS, default="svg", help="output format (default svg)"
    )
    graph.add_argument(
        "--watch",
        action="store_true",
        help="serve a page that refreshes itself (http://127.0.0.1:PORT/) until Ctrl-C",
    )
    graph.add_argument("--port", type=int, default=8427, help="port of the --watch page")
    graph.add_argument(
        "--interval", type=float, default=2.0, help="seconds between --watch redraws"
    )
    graph.add_argument(
        "--state-root", type=Path, default=DEFAULT_STATE_ROOT, help=argparse.SUPPRESS
    )
    graph.set_defaults(func=run_graph)


def _fail(message: str, code: int = 2) -> int:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return code


def _load(args: argparse.Namespace) -> tuple[Snapshot, str]:
    """A snapshot with the cluster's objects (namespaces still to read) and its label."""
    from podnet.lab.lab import Lab
    from podnet.trace.snapshot import SnapshotError, cluster_snapshot, from_json

    if args.snapshot is not None:
        try:
            text = args.snapshot.read_text()
        except OSError as exc:
            raise SnapshotError(
                f"cannot read the snapshot {args.snapshot}: {exc.strerror}"
            ) from exc
        snap = from_json(text)
    else:
        snap = cluster_snapshot(Lab.load(args.name, args.state_root).plan)
    return snap, f"lab {snap.lab}: {snap.backend}, kube-proxy {snap.proxy_mode}"


def _unused_endpoint(args: argparse.Namespace, candidates: tuple[object, ...]) -> None:
    """Say on stderr that --endpoint had nothing to choose on this path (pod to pod, ...)."""
    if args.endpoint and not candidates:
        from rich.console import Console

        Console(stderr=True).print(
            f"[bold yellow]note:[/] --endpoint {args.endpoint} is not used: nothing on this "
            "path chooses an endpoint",
            highlight=False,
        )


def run_trace(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.spec import LabError
    from podnet.trace.plan import EndpointError, plan_trace
    from podnet.trace.render import render_trace, trace_to_dict
    from podnet.trace.resolve import ResolveError, pods_involved, resolve_probe
    from podnet.trace.snapshot import SnapshotError, capture_snapshot, to_json

    if args.timeout <= 0:
        return _fail(f"--timeout must be a positive number of seconds, not {args.timeout}")
    try:
        snap, label = _load(args)
        probe = resolve_probe(snap, args.source, args.target, args.port, args.proto)
        if args.snapshot is None:
            # a saved snapshot holds every pod, so it can replay any trace of the lab
            everything = args.save_snapshot or args.output == "graph"
            wanted = None if everything else pods_involved(snap, args.source, probe)
            snap = capture_snapshot(snap, wanted)
    except (LabError, ResolveError) as exc:
        return _fail(str(exc))
    except (SnapshotError, OSError) as exc:
        return _fail(str(exc), 1)
    if args.save_snapshot is not None:
        args.save_snapshot.write_text(to_json(snap))
    lab = {"name": snap.lab, "backend": snap.backend, "proxyMode": snap.proxy_mode}
    if args.output == "graph":
        from podnet.trace.graph import build_graph, render_svg

        try:
            trace = plan_trace(snap, probe, args.endpoint)
        except EndpointError as exc:
            return _fail(str(exc))
        sys.stdout.write(render_svg(build_graph(snap, trace)))
        return 0 if trace.outcome == "delivered" else 1
    if args.verify:
        if args.snapshot is not None:
            return _fail("--verify sends a real probe: it needs a lab, not --snapshot")
        from podnet.kernel.nftrace import TraceError
        from podnet.kernel.rules import RuleLoadError
        from podnet.trace.render import render_verification, verification_to_dict
        from podnet.trace.verify import NotVerifiable, verify_trace

        try:
            verification = verify_trace(snap, probe, args.endpoint, args.timeout)
        except EndpointError as exc:
            return _fail(str(exc))
        except NotVerifiable as exc:  # the prediction stands; say why it is not checked
            trace = exc.trace
            if args.output == "json":
                doc = trace_to_dict(trace, lab) | {
                    "verification": {"available": False, "reason": exc.reason}
                }
                sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            else:
                render_trace(trace, Console(), label)
                Console(stderr=True).print(f"[bold yellow]not verified:[/] {exc.reason}")
            return 0 if trace.outcome == "delivered" else 1
        except (TraceError, RuleLoadError) as exc:
            return _fail(f"the probe could not be traced: {exc}", 1)
        except KeyboardInterrupt:
            return _fail("interrupted; the probe's trace tables were removed", 130)
        trace = verification.trace
        _unused_endpoint(args, trace.candidates)
        if args.output == "json":
            doc = trace_to_dict(trace, lab) | {"verification": verification_to_dict(verification)}
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            console = Console()
            render_trace(trace, console, label)
            render_verification(verification, console)
        return 0 if trace.outcome == "delivered" and verification.agree else 1
    try:
        trace = plan_trace(snap, probe, args.endpoint)
    except EndpointError as exc:
        return _fail(str(exc))
    except ValueError as exc:  # a rule form the walkers do not know: say which, no traceback
        return _fail(f"podnet trace cannot follow this packet: {exc}", 1)
    _unused_endpoint(args, trace.candidates)
    if args.output == "json":
        sys.stdout.write(json.dumps(trace_to_dict(trace, lab), indent=2) + "\n")
    else:
        render_trace(trace, Console(), label)
    return 0 if trace.outcome == "delivered" else 1


def run_graph(args: argparse.Namespace) -> int:
    from podnet.lab.lab import Lab
    from podnet.lab.spec import LabError
    from podnet.trace.snapshot import SnapshotError

    try:
        plan = Lab.load(args.name, args.state_root).plan
    except LabError as exc:
        return _fail(str(exc))
    if args.watch:
        from podnet.trace.serve import serve_graph

        if not 0 < args.port < 65536:
            return _fail(f"--port {args.port} is not a port")
        try:
            return serve_graph(plan, args.port, args.interval)
        except OSError as exc:
            return _fail(f"cannot serve on 127.0.0.1:{args.port}: {exc.strerror or exc}", 1)
    try:
        sys.stdout.write(graph_text(plan, args.output))
    except SnapshotError as exc:
        return _fail(str(exc), 1)
    return 0


def graph_text(plan: object, output: str) -> str:
    """The lab's picture now, in one of GRAPH_OUTPUTS."""
    from podnet.trace.graph import (
        build_graph,
        graph_to_dict,
        render_dot,
        render_html,
        render_svg,
    )
    from podnet.trace.snapshot import capture_snapshot, cluster_snapshot

    graph = build_graph(capture_snapshot(cluster_snapshot(plan), None, rules=False))
    if output == "json":
        return json.dumps(graph_to_dict(graph), indent=2) + "\n"
    if output == "dot":
        return render_dot(graph)
    svg = render_svg(graph)
    return render_html(svg, graph) if output == "html" else svg
