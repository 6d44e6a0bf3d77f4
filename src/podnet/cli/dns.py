"""`podnet dns`: run the cluster DNS server (what the `coredns` pods run) until SIGTERM/SIGINT.

What belongs here: the command line (the options of kubeadm's Corefile, flag by flag),
finding the API (a kubeconfig, else the in-cluster credentials a pod has) and the upstream
resolvers (`--upstream`, else the nameservers of `--resolv-conf`), logging, signals and the
event loop. Everything the server does lives in `podnet.dns.server`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from podnet.dns.resolvconf import DEFAULT_RESOLV_CONF

DESCRIPTION = (
    "Serve the cluster zone from the API (Services, EndpointSlices, Namespaces; Pods in "
    "verified mode) and forward other names to the upstream resolvers, as CoreDNS with "
    "kubeadm's Corefile does. Without --kubeconfig it uses the in-cluster credentials of its pod."
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dns",
        help="run the cluster DNS server (the coredns pods' program)",
        description=DESCRIPTION,
    )
    add_options(p)
    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", type=Path, help="talk to the API with this kubeconfig")
    p.add_argument(
        "--zone", default="cluster.local", help="the cluster domain (default cluster.local)"
    )
    p.add_argument(
        "--ttl", type=int, default=30, help="TTL of the zone's records (seconds; default 30)"
    )
    p.add_argument(
        "--pods",
        choices=("insecure", "verified", "disabled"),
        default="insecure",
        help="<a-b-c-d>.<ns>.pod.<zone> names: any answers its address (insecure, the default, "
        "as kubeadm's Corefile), only a live pod's (verified), or none (disabled)",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=None,
        metavar="IP[:PORT]",
        help="upstream resolver (repeatable; default: the nameservers of --resolv-conf)",
    )
    p.add_argument(
        "--resolv-conf",
        type=Path,
        default=DEFAULT_RESOLV_CONF,
        help=f"where the default upstreams come from (default {DEFAULT_RESOLV_CONF})",
    )
    p.add_argument("--address", default="0.0.0.0", help="address to listen on")
    p.add_argument("--dns-port", type=int, default=53, help="UDP and TCP port (default 53)")
    p.add_argument(
        "--health-port", type=int, default=8080, help="GET /health answers here (default 8080)"
    )
    p.add_argument(
        "--ready-port", type=int, default=8181, help="GET /ready answers here (default 8181)"
    )
    p.add_argument(
        "--metrics-port", type=int, default=9153, help="Prometheus /metrics (default 9153)"
    )
    p.add_argument(
        "--cache-ttl",
        type=int,
        default=30,
        help="longest a forwarded reply is kept (seconds; default 30)",
    )
    p.add_argument(
        "--lameduck",
        type=float,
        default=5.0,
        help="keep answering this long after SIGTERM (seconds)",
    )
    p.add_argument(
        "--local-ip",
        action="append",
        default=None,
        help="this server's own address, for NS answers (default: the pod's, from its hostname)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def main(argv: list[str] | None = None) -> int:
    """`python -m podnet.cli.dns`: the coredns image's entrypoint, without the rest of the
    `podnet` command's imports (the agent, the server, ...: about 50 MB of a DNS pod's memory)."""
    parser = argparse.ArgumentParser(prog="podnet dns", description=DESCRIPTION)
    add_options(parser)
    return run(parser.parse_args(argv))


def parse_upstream(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if sep and "." in host:
        return host, int(port)
    return text, 53


def own_addresses(hosts: Path = Path("/etc/hosts")) -> tuple[str, ...]:
    """The pod's IPs: the lines of the /etc/hosts the kubelet wrote that name this host.

    Read directly rather than resolved: a resolver would ask the upstream nameservers (the
    pod's resolv.conf is the node's) before reading the file."""
    name = socket.gethostname()
    try:
        lines = hosts.read_text().splitlines()
    except OSError:
        return ()
    found = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:] and not fields[0].startswith(("127.", "::")):
            found.append(fields[0])
    return tuple(dict.fromkeys(found))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from podnet.api.client import HttpApi, KubeconfigError
    from podnet.dns.records import DnsConfig
    from podnet.dns.server import DnsServer, ServerOptions, read_upstreams

    try:
        config = DnsConfig(
            zone=args.zone,
            ttl=args.ttl,
            pods=args.pods,
            local_ips=tuple(args.local_ip or own_addresses()),
        )
        if args.upstream:
            upstreams = tuple(parse_upstream(u) for u in args.upstream)
        else:
            upstreams = read_upstreams(args.resolv_conf.read_text())
        if args.kubeconfig:
            api = HttpApi.from_kubeconfig(args.kubeconfig, component="podnet-dns")
        else:
            api = HttpApi.in_cluster(dict(os.environ), component="podnet-dns")
    except (KubeconfigError, ValueError, OSError) as exc:
        print(f"podnet dns: {exc}", file=sys.stderr)
        return 2
    options = ServerOptions(
        config=config,
        upstreams=upstreams,
        address=args.address,
        dns_port=args.dns_port,
        health_port=args.health_port,
        ready_port=args.ready_port,
        metrics_port=args.metrics_port,
        cache_ttl=args.cache_ttl,
        lameduck=args.lameduck,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await DnsServer(api, options).run(stop)
        finally:
            await api.close()

    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except OSError as exc:
        print(f"podnet dns: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
