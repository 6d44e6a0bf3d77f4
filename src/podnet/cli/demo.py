"""`podnet demo`: tell the explainer's story on a live lab (see `podnet.demo.story`)."""

from __future__ import annotations

import argparse
import os

from rich.console import Console

from podnet.lab.spec import BACKENDS, PROXY_MODES


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="bring up a 2-node lab and walk through how Kubernetes networking works",
        description="Brings up a 2-node lab and tells the story of the Kubernetes pod network "
        "step by step, showing each real command and its output, then removes the lab.",
    )
    demo.add_argument("--name", default="demo", help="lab name (default: demo)")
    demo.add_argument("--backend", choices=BACKENDS, default="vxlan", help="flannel backend")
    demo.add_argument(
        "--proxy-mode",
        choices=PROXY_MODES,
        default="iptables",
        help="how kube-proxy programs Services (default iptables)",
    )
    demo.add_argument("--step", action="store_true", help="wait for Enter between steps")
    demo.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from podnet.demo.story import DemoOptions, run_demo

    if os.geteuid() != 0:
        print("podnet demo: run as root (the lab creates network namespaces)")
        return 1
    options = DemoOptions(
        name=args.name,
        backend=args.backend,
        proxy_mode=args.proxy_mode,
        step=args.step,
        keep=args.keep,
    )
    return run_demo(options, Console())
