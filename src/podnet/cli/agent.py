"""`podnet agent`: run the node agent (kubelet, flannel, proxy) for one node.

Also runnable as `python -m podnet.cli.agent ARGS` (what the lab starts): the agent without
the rest of the podnet command's imports, which matters where Python is slow to start (VM
nodes run it under emulation).

What belongs here: argument parsing, entering the node's network namespace (first thing, before
any thread or socket exists, because namespaces are per thread and inherited), reading the
kubeconfig, building the `AgentContext`, and running until SIGTERM/SIGINT. Exit codes: 0 on a
clean stop, 2 for a usage or configuration problem (the message says what to fix), 1 when a
component failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import uvloop

from podnet.agent.flannel.registry import BACKENDS
from podnet.agent.proxy.registry import PROXIERS
from podnet.config import ClusterConfig
from podnet.private import private_dir

log = logging.getLogger("podnet.agent")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "agent",
        help="run the node agent (kubelet, flannel, kube-proxy) for one node",
        description="Run the node agent for one node until SIGTERM/SIGINT. Stopping it leaves "
        "pods and kernel state in place; a restart adopts them.",
    )
    p.add_argument("--kubeconfig", required=True, type=Path, help="kubeconfig of the cluster")
    p.add_argument("--node-name", required=True, help="this node's Node name (DNS-1123)")
    p.add_argument("--node-ip", required=True, help="this node's underlay (InternalIP) address")
    p.add_argument("--state-dir", required=True, type=Path, help="persistent node state")
    p.add_argument("--run-dir", required=True, type=Path, help="volatile node state")
    p.add_argument("--netns", help="enter this named network namespace first (the lab's node)")
    p.add_argument("--netns-prefix", default="podnet-", help="marker of pod sandbox netns names")
    p.add_argument(
        "--backend", choices=[*BACKENDS, "none"], default="vxlan", help="flannel backend"
    )
    p.add_argument(
        "--proxy-mode",
        choices=list(PROXIERS),
        default="iptables",
        help="how kube-proxy programs Services (default iptables)",
    )
    p.add_argument(
        "--proxy-fallback",
        action="store_true",
        help="fall back to iptables when ipvs is unavailable",
    )
    p.add_argument(
        "--kubelet-port", type=int, default=10250, help="the kubelet's HTTPS port (default 10250)"
    )
    p.add_argument(
        "--tls-cert-file",
        type=Path,
        default=None,
        help="the kubelet endpoint's serving certificate, from the cluster CA for --node-ip "
        "(`podnet node-credentials` writes it); without it the endpoint (exec, attach, "
        "port-forward, logs) is not served",
    )
    p.add_argument("--tls-private-key-file", type=Path, help="the key of --tls-cert-file")
    p.add_argument(
        "--client-ca-file",
        type=Path,
        default=None,
        help="CA of the client certificates the kubelet endpoint accepts (default: the "
        "kubeconfig's, the cluster CA, which signs the API server's)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=10249, help="kube-proxy's /metrics port (default 10249)"
    )
    p.add_argument(
        "--metrics-bind-address",
        default="127.0.0.1",
        help="address of the /metrics endpoint (kube-proxy's default: the node's loopback)",
    )
    p.add_argument(
        "--cluster-cidr",
        default=ClusterConfig().cluster_cidr,
        help="the pods' range: traffic from outside it to a ClusterIP is masqueraded",
    )
    p.add_argument(
        "--service-cidr",
        default=ClusterConfig().service_cidr,
        help="the ClusterIPs' range",
    )
    p.add_argument(
        "--node-lease-duration",
        type=int,
        default=ClusterConfig().lease_duration_seconds,
        metavar="SECONDS",
        help="the node's Lease duration; renewed every quarter of it (default: %(default)s)",
    )
    p.add_argument(
        "--endpoint-drain",
        action="store_true",
        help="publish what the proxy programmed, and send a terminating pod SIGTERM only once "
        "every node's proxy dropped its endpoint (bounded by the grace period)",
    )
    p.add_argument("--underlay-ifname", default="eth0", help="the node's underlay interface")
    p.add_argument(
        "--resolv-conf",
        type=lambda text: Path(text) if text else None,
        default=Path("/etc/resolv.conf"),
        help="the node's resolv.conf: pods with dnsPolicy Default get it, ClusterFirst pods its "
        "search domains ('' for none, as the kubelet's flag)",
    )
    p.add_argument(
        "--images-dir",
        type=Path,
        default=None,
        help="machine-wide image cache (default /var/lib/podnet/images)",
    )
    p.add_argument(
        "--backoff-base",
        type=float,
        default=10.0,
        help="first crash-loop back-off in seconds (doubles up to 5 min)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


_early_stop: list[int] = []  # signals that arrived before the event loop took over


def _note_early_stop(signum: int, _frame: object) -> None:
    _early_stop.append(signum)


def run(args: argparse.Namespace) -> int:
    # importing the agent takes a while on a busy machine: a SIGTERM meanwhile is a clean stop
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note_early_stop)
    if args.netns:
        # must precede every thread and socket: they inherit the namespace of their creator
        from podnet.kernel import netns

        try:
            netns.switch(args.netns)
        except netns.NetnsError as exc:
            print(
                f"podnet agent: {exc}; create it first (the lab does: `podnet up`)", file=sys.stderr
            )
            return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {args.node_name} %(name)s: %(message)s",
    )
    from podnet.api.client import KubeconfigError, load_kubeconfig

    try:
        server, ca, _token, _insecure = load_kubeconfig(args.kubeconfig)
        cluster = ClusterConfig(
            cluster_cidr=args.cluster_cidr,
            service_cidr=args.service_cidr,
            lease_duration_seconds=args.node_lease_duration,
            endpoint_drain=args.endpoint_drain,
        )
        tls = _kubelet_tls(args, ca)
    except (KubeconfigError, ValueError, OSError, ssl.SSLError) as exc:
        print(f"podnet agent: {exc}", file=sys.stderr)
        return 2
    log.info("API server %s (from %s)", server, args.kubeconfig)
    try:
        uvloop.run(_serve(args, tls, cluster))
    except Exception as exc:
        log.error("agent stopped on error: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


def _kubelet_tls(args: argparse.Namespace, kubeconfig_ca: bytes | None) -> ssl.SSLContext | None:
    """The kubelet endpoint's TLS settings, or None (no certificate given: not served)."""
    from podnet.agent.kubelet.authn import server_tls

    cert, key = args.tls_cert_file, args.tls_private_key_file
    if (cert is None) != (key is None):
        raise ValueError("give both --tls-cert-file and --tls-private-key-file, or neither")
    if cert is None:
        log.warning(
            "no --tls-cert-file: the kubelet endpoint (exec, attach, port-forward, logs) is not "
            "served; `podnet node-credentials` issues its certificate"
        )
        return None
    client_ca = args.client_ca_file.read_bytes() if args.client_ca_file else kubeconfig_ca
    if client_ca is None:
        raise ValueError(
            f"kubeconfig {args.kubeconfig} names no CA: give --client-ca-file (the CA of "
            "the API server's kubelet client certificate)"
        )
    return server_tls(cert, key, client_ca)


async def _serve(
    args: argparse.Namespace, tls: ssl.SSLContext | None, cluster: ClusterConfig
) -> None:
    from podnet.agent.context import AgentContext
    from podnet.agent.main import run_agent
    from podnet.api.client import HttpApi

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    agent_pid = os.getpid()

    def on_signal(signum: int, _frame: object) -> None:
        # pyroute2 forks helper children (sockets in other namespaces) and SIGTERMs them; a
        # forked child shares the loop's wakeup socket, so loop.add_signal_handler would
        # take the child's SIGTERM for ours and stop the agent. A plain handler runs in the
        # process that got the signal, and the pid check ignores forked copies.
        if os.getpid() == agent_pid:
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if _early_stop:
        return
    private_dir(args.state_dir)
    private_dir(args.run_dir)
    api = HttpApi.from_kubeconfig(args.kubeconfig, component="podnet-agent")
    try:
        ctx = AgentContext(
            api=api,
            node_name=args.node_name,
            node_ip=args.node_ip,
            state_dir=args.state_dir,
            run_dir=args.run_dir,
            netns_prefix=args.netns_prefix,
            cluster=cluster,
            backend=args.backend,
            proxy_mode=args.proxy_mode,
            proxy_fallback=args.proxy_fallback,
            kubelet_port=args.kubelet_port,
            kubelet_tls=tls,
            metrics_port=args.metrics_port,
            metrics_address=args.metrics_bind_address,
            underlay_ifname=args.underlay_ifname,
            resolv_conf=args.resolv_conf,
        )
        await run_agent(ctx, stop, backoff_base=args.backoff_base, images_dir=args.images_dir)
    finally:
        await api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podnet")
    register(parser.add_subparsers())
    args = parser.parse_args(["agent", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
