"""`podnet cni`: the bridge + host-local CNI plugin as a CNI-spec executable.

A container runtime runs it with CNI_COMMAND/CNI_CONTAINERID/CNI_NETNS/CNI_IFNAME in the
environment and the network config on stdin (a binary named e.g. `podnet-bridge` in CNI_PATH
can be a two-line script `exec podnet cni`; `python -m podnet.cli.cni` is the same without the
rest of the CLI). All protocol logic is in `podnet.agent.cni.plugin`.
"""

from __future__ import annotations

import argparse
import os
import sys


def run(args: argparse.Namespace) -> int:
    return main()


def main() -> int:
    from podnet.agent.cni.plugin import run_plugin

    code, output = run_plugin(os.environ, sys.stdin.read() if not sys.stdin.isatty() else "")
    sys.stdout.write(output)
    sys.stdout.flush()
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cni",
        help="run as a CNI plugin (bridge + host-local; env CNI_COMMAND etc., config on stdin)",
        description=(
            "CNI-spec plugin: reads CNI_COMMAND (ADD, DEL, CHECK, VERSION), CNI_CONTAINERID, "
            "CNI_NETNS and CNI_IFNAME from the environment and a bridge/host-local network "
            "config on stdin; prints the result (or the error object) as JSON on stdout."
        ),
    )
    parser.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
