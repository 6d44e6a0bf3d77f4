"""The `podnet` command: one entry point, one sub-command module per concern.

Each module in `COMMANDS` exposes `register(subparsers)`, which adds its sub-commands and sets
`func(args) -> int` on them; the machinery a command runs (server, agent, lab) is imported
inside its `func`, not when the parser is built.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = (
    "podnet.cli.server",  # podnet server
    "podnet.cli.agent",  # podnet agent
    "podnet.cli.lab",  # podnet up / down / status / kubeconfig
    "podnet.cli.image",  # podnet image import / list
    "podnet.cli.cni",  # podnet cni (CNI-spec plugin entry)
    "podnet.cli.demo",  # podnet demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podnet",
        description="The Kubernetes pod network, built for real on Linux network namespaces.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        result: int = func(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
