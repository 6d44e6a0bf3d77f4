"""`podnet server`: run the Kubernetes API server (with the controllers) until SIGTERM/SIGINT;
`podnet node-credentials`: issue one node agent's identity from the server's state dir.

What belongs here: the command line and process concerns (logging, event loop, signals, exit
code). Everything the server does lives in `podnet.apiserver.server`; the node credentials are
`apiserver.credentials.write_node_credentials`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import uvloop

from podnet.apiserver import DEFAULT_LISTEN, DEFAULT_WATCH_CACHE_SIZE
from podnet.config import ClusterConfig
from podnet.private import PRIVATE_UMASK
from podnet.store.base import StoreError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "server",
        help="run the Kubernetes API server (and controllers)",
        description="Serve the Kubernetes API over HTTPS on a revisioned store. On first start "
        "it creates a CA, a server certificate and a bearer token in --state-dir and writes "
        "STATE_DIR/kubeconfig for kubectl.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory for credentials, kubeconfig and the SQLite database",
    )
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite | sqlite:///path/state.db | etcd://HOST:PORT[/prefix] | memory "
        "(default: sqlite in the state dir; memory: gone when the server exits)",
    )
    parser.add_argument(
        "--listen",
        action="append",
        default=None,
        metavar="ADDR:PORT",
        help=f"address to serve on; repeatable or comma-separated (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--advertise-address",
        default=None,
        metavar="IP",
        help="address in the kubernetes Service's endpoints (default: the first "
        "non-loopback listen address, else 127.0.0.1)",
    )
    defaults = ClusterConfig()
    parser.add_argument(
        "--service-cidr",
        default=defaults.service_cidr,
        help=f"ClusterIPs are allocated from this range (default {defaults.service_cidr})",
    )
    parser.add_argument(
        "--cluster-cidr",
        default=defaults.cluster_cidr,
        help=f"pod addresses: each node's podCIDR is cut from it (default {defaults.cluster_cidr})",
    )
    parser.add_argument(
        "--node-monitor-grace-period",
        type=float,
        default=defaults.node_monitor_grace_seconds,
        metavar="SECONDS",
        help="a node whose Lease is silent this long goes Ready=Unknown and is tainted "
        "unreachable (default: %(default)s)",
    )
    parser.add_argument(
        "--default-unreachable-toleration-seconds",
        type=float,
        default=defaults.pod_eviction_timeout_seconds,
        metavar="SECONDS",
        help="the tolerationSeconds pods get for the not-ready/unreachable taints: how long "
        "their node may be unreachable before they are evicted (default: %(default)s)",
    )
    parser.add_argument(
        "--default-watch-cache-size",
        type=int,
        default=DEFAULT_WATCH_CACHE_SIZE,
        metavar="EVENTS",
        help="recent events the watch cache keeps per resource kind; a watch resumed from an "
        f"older resourceVersion gets 410 Gone and re-lists (default {DEFAULT_WATCH_CACHE_SIZE})",
    )
    parser.add_argument(
        "--no-controllers",
        action="store_true",
        help="serve the API only (no scheduler, endpoints, deployments, ...)",
    )
    parser.add_argument(
        "--share-credentials",
        action="store_true",
        help="keep the cluster's CA, admin token and token-signing key in the store, so every "
        "server started with this flag on the same store takes the same (the first one writes "
        "them; docs/multi-machine.md). Whoever can read the store can read the CA key: protect "
        "etcd",
    )
    parser.add_argument(
        "--cluster-url",
        action="append",
        default=None,
        metavar="URL",
        help="every API server of the cluster (repeatable), listed in STATE_DIR/kubeconfig so "
        "podnet's clients fail over between them (default: this server only)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="debug logs one line per request",
    )
    parser.set_defaults(func=run)

    creds = subparsers.add_parser(
        "node-credentials",
        help="issue a node agent's kubeconfig (its node token) and kubelet certificate",
        description="On the control host, from the server's --state-dir (its CA and signing "
        "key): write OUT/kubeconfig (the node's own token, user system:node:NAME, and the "
        "cluster CA), OUT/kubelet.crt and OUT/kubelet.key (the kubelet endpoint's serving "
        "certificate for --node-ip, signed by the cluster CA). Copy OUT to the node and give "
        "them to `podnet agent`.",
    )
    creds.add_argument("--state-dir", type=Path, required=True, help="the server's state dir")
    creds.add_argument("--node-name", required=True, help="the node's Node name")
    creds.add_argument(
        "--node-ip", action="append", required=True, help="the node's address (repeatable)"
    )
    creds.add_argument("--server", required=True, help="API server URL the node dials")
    creds.add_argument("--out", type=Path, required=True, help="directory to write into")
    creds.set_defaults(func=node_credentials)


def node_credentials(args: argparse.Namespace) -> int:
    from podnet.apiserver.credentials import write_node_credentials

    try:
        issued = write_node_credentials(
            args.state_dir, args.node_name, args.node_ip, args.server, args.out
        )
    except (OSError, ValueError) as exc:
        print(f"podnet node-credentials: {exc}", file=sys.stderr)
        return 1
    print(
        f"podnet agent --kubeconfig {issued.kubeconfig} --tls-cert-file {issued.cert_path} "
        f"--tls-private-key-file {issued.key_path} --node-name {args.node_name} "
        f"--node-ip {args.node_ip[0]} ..."
    )
    return 0


def run(args: argparse.Namespace) -> int:
    # imported here so the rest of the `podnet` command works even if a server dependency is
    # broken or missing
    from podnet.apiserver.server import ServerOptions, parse_listen, serve
    from podnet.apiserver.watchcache import CacheOptions

    os.umask(PRIVATE_UMASK)  # the store, its WAL, keys and logs: private to this user
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        options = ServerOptions(
            state_dir=args.state_dir,
            store_url=args.store,
            listen=parse_listen(args.listen or [DEFAULT_LISTEN]),
            advertise_address=args.advertise_address,
            config=ClusterConfig(
                service_cidr=args.service_cidr,
                cluster_cidr=args.cluster_cidr,
                node_monitor_grace_seconds=args.node_monitor_grace_period,
                pod_eviction_timeout_seconds=args.default_unreachable_toleration_seconds,
            ),
            controllers=not args.no_controllers,
            watch_cache=CacheOptions(capacity=args.default_watch_cache_size),
            share_credentials=args.share_credentials,
            cluster_urls=tuple(args.cluster_url or ()),
        )
    except ValueError as exc:
        print(f"podnet server: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, stop)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except (OSError, ValueError, StoreError) as exc:
        print(f"podnet server: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
