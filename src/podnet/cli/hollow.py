"""`podnet hollow`: run N hollow nodes (API only, no kernel) against a cluster, until SIGTERM.

What belongs here: the command line; the nodes themselves are `podnet.agent.hollow`.
`podnet up --hollow-nodes N` runs this as one more unit of the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "hollow",
        help="run N simulated nodes (API only) for scale tests",
        description="Register N nodes, keep their Leases fresh and report the pods bound to "
        "them Running with IPs from their podCIDRs, without touching the kernel (kubemark's "
        "hollow nodes).",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, required=True, help="kubeconfig of the cluster to join"
    )
    parser.add_argument("--count", type=int, required=True, help="number of hollow nodes")
    parser.add_argument("--prefix", default="hollow-", help="node name prefix (default hollow-)")
    parser.add_argument("--first-index", type=int, default=1, help="the first node's number")
    parser.add_argument(
        "--node-lease-duration",
        type=int,
        default=40,
        metavar="SECONDS",
        help="the nodes' Lease duration, renewed every quarter of it (default: %(default)s, "
        "as a kubelet's; it must be within the server's --node-monitor-grace-period)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from podnet.agent.hollow import HOST_IPS, HollowNodes, hollow_names
    from podnet.api.client import HttpApi, KubeconfigError

    if not 1 <= args.count <= HOST_IPS.num_addresses - 2:
        print(f"podnet hollow: --count must be 1-{HOST_IPS.num_addresses - 2}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        api = HttpApi.from_kubeconfig(args.kubeconfig, component="podnet-hollow")
    except KubeconfigError as exc:
        print(f"podnet hollow: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with api:
            names = hollow_names(args.prefix, args.count, args.first_index)
            hollow = HollowNodes(
                api, names, first_index=args.first_index,
                lease_duration=args.node_lease_duration,
                lease_renew_seconds=args.node_lease_duration / 4,
            )  # fmt: skip
            await hollow.run(stop)

    asyncio.run(main())
    return 0
