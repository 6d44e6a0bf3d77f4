"""The `podnet` command: one entry point, one sub-command module per concern.

Each module in `COMMANDS` exposes `register(subparsers)`, which adds its sub-commands and sets
`func(args) -> int` on them; the machinery a command runs (server, agent, lab) is imported
inside its `func`, not when the parser is built.

Only the chosen command's module is imported (`podnet up` needs neither the agent's nor the
token commands' libraries, and every one of them costs start-up time); `COMMANDS` names each
module's sub-commands for that, and a unit test holds the names to what `register` adds. A
command line without a known sub-command (`podnet`, `podnet --help`, a typo) builds the whole
parser, so help and argparse's "invalid choice" list every command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# module (under podnet.cli) -> the sub-commands its register() adds, in `podnet --help` order
COMMANDS: dict[str, tuple[str, ...]] = {
    "server": ("server", "node-credentials"),
    "agent": ("agent",),
    "lab": (
        "up",
        "down",
        "status",
        "add-node",
        "remove-node",
        "proxy-mode",
        "dns-upstream",
        "supervise",
        "vm-kernel",
        "vm-exec",
        "kubeconfig",
    ),
    "fault": ("fault",),
    "image": ("image",),  # podnet image import / list
    "cni": ("cni",),  # the CNI-spec plugin entry
    "demo": ("demo",),
    "dns": ("dns",),  # the coredns pods' program
    "trace": ("trace", "graph"),
    "token": ("token",),  # podnet token create / list / delete
    "join": ("join", "leave"),
    "hollow": ("hollow",),  # simulated nodes for scale tests
}


def chosen_module(argv: Sequence[str]) -> str | None:
    """The module of the sub-command `argv` names (its first argument that is not an option:
    `podnet` itself takes none but -h), or None."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return next((m for m, names in COMMANDS.items() if first in names), None)


def build_parser(modules: Sequence[str] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podnet",
        description="The Kubernetes pod network, built for real on Linux network namespaces.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"podnet.cli.{name}").register(sub)
    return parser


def chosen_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The innermost sub-command's parser that parsed `args` (`podnet fault kill agent`'s)."""
    while True:
        action = next(
            (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        chosen = getattr(args, action.dest, None) if action is not None else None
        if action is None or chosen not in action.choices:
            return parser
        parser = action.choices[chosen]


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    module = chosen_module(args_in)
    parser = build_parser(tuple(COMMANDS) if module is None else (module,))
    args, extra = parser.parse_known_args(args_in)
    if extra:  # what parse_args does, but from the sub-command, whose usage lists its options
        chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
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
