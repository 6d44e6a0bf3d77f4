"""The `podnet` command: one entry point, one sub-command module per concern.

Each module in `COMMANDS` exposes `register(subparsers)`, which adds its sub-commands and sets
`func(args) -> int` on them; the machinery a command runs (server, agent, lab) is imported
inside its `func`, not when the parser is built.
"""

from __future__ import annotations

import argparse
import sys

from podnet.cli import (
    agent,
    cni,
    demo,
    dns,
    fault,
    hollow,
    image,
    join,
    lab,
    server,
    token,
    trace,
)

COMMANDS = (
    server,  # podnet server
    agent,  # podnet agent
    lab,  # podnet up / down / status / kubeconfig
    fault,  # podnet fault
    image,  # podnet image import / list
    cni,  # podnet cni (CNI-spec plugin entry)
    demo,  # podnet demo
    dns,  # podnet dns (the coredns pods' program)
    trace,  # podnet trace / podnet graph
    token,  # podnet token create / list / delete
    join,  # podnet join / leave
    hollow,  # podnet hollow (simulated nodes for scale tests)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podnet",
        description="The Kubernetes pod network, built for real on Linux network namespaces.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
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
