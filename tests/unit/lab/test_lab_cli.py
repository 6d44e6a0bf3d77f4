"""The `podnet` command imports only the chosen sub-command's module: `COMMANDS` names what
each module registers, a known sub-command builds a parser of its module alone, anything else
(no command, `--help`, a typo) the whole one; and the light commands' start-up leaves the
heavy libraries (netlink, the API client, etcd, TLS) unimported."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from podnet.cli.main import COMMANDS, build_parser, chosen_module, main


@pytest.mark.parametrize("module", list(COMMANDS))
def test_commands_names_what_each_module_registers(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(f"podnet.cli.{module}").register(sub)
    assert tuple(sub.choices) == COMMANDS[module]


def test_the_first_positional_argument_chooses_the_module() -> None:
    assert chosen_module(["up", "--nodes", "3"]) == "lab"
    assert chosen_module(["--help"]) is None
    assert chosen_module([]) is None
    assert chosen_module(["upp"]) is None
    assert chosen_module(["node-credentials", "--help"]) == "server"


def test_without_a_known_command_every_command_is_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 2
    listed = capsys.readouterr().out
    assert all(name in listed for names in COMMANDS.values() for name in names)
    with pytest.raises(SystemExit):
        main(["upp"])
    assert "invalid choice: 'upp'" in capsys.readouterr().err
    only_lab = build_parser(("lab",))
    assert only_lab.parse_args(["down", "--name", "x"]).command == "down"


HEAVY = ("pyroute2", "aiohttp", "aetcd", "grpc", "cryptography", "podnet.lab.lab", "rich")
PROBE = """
import json, sys
from podnet.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] if not m.startswith("podnet") else m
                         for m in sys.modules})))
"""


@pytest.mark.parametrize("argv", [["up", "--help"], ["down", "--help"], ["server", "--help"]])
def test_a_commands_start_imports_no_heavy_library(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True
    )
    imported = set(json.loads(done.stdout.splitlines()[-1]))
    assert not imported & set(HEAVY)


def _options_without_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help(sub, f"{path} {name}")
        elif action.help is None:
            named = action.option_strings[-1] if action.option_strings else action.metavar
            missing.append(f"{path} {named or action.dest}")
    return missing


def test_every_option_says_what_it_does() -> None:
    """`podnet dns --help` listed --pods, --resolv-conf and the ports bare: a learner could not
    tell what `--pods verified` changes. Every option of every command carries a help line, and
    so does every positional argument (`podnet fault loss --help` showed PERCENT alone, without
    saying whether 0.2 or 20 is a fifth; 21 positionals were bare)."""
    assert _options_without_help(build_parser(), "podnet") == []


def test_status_calls_a_frozen_agent_stopped_not_alive() -> None:
    from podnet.cli.lab import agent_cell
    from podnet.lab.lab import NodeStatus

    node = NodeStatus("node1", "172.31.1.11", "ns", True, True, False, None, "log")
    assert agent_cell(node) == "[green]alive[/]"
    assert agent_cell(replace(node, agent_stopped=True)) == "[yellow]stopped (SIGSTOP)[/]"
    assert agent_cell(replace(node, agent_alive=False)) == "[red]dead[/]"


def test_status_says_a_deleted_node_has_no_node_object() -> None:
    """`kubectl delete node node3` while node3's agent was frozen: status said Ready "False",
    as for a node that reports NotReady. The Ready column now shows the condition the API
    has (True, False, Unknown) and "no Node" when there is none, with a line saying when the
    agent registers it again."""
    from podnet.cli.lab import ready_cell, unregistered_note
    from podnet.lab.lab import NodeStatus

    node = NodeStatus("node3", "172.31.1.13", "ns", True, True, True, "10.244.2.0/24", "log")
    assert ready_cell(replace(node, condition="True")) == "[green]True[/]"
    assert ready_cell(replace(node, ready=False, condition="Unknown")) == "[red]Unknown[/]"
    assert ready_cell(replace(node, ready=False, condition="False")) == "[red]False[/]"
    assert unregistered_note(replace(node, condition="True")) is None
    assert ready_cell(replace(node, ready=None)) == "?"
    assert unregistered_note(replace(node, ready=None)) is None

    gone = replace(node, ready=False, pod_cidr=None, condition=None)
    assert ready_cell(gone) == "[red]no Node[/]"
    assert unregistered_note(gone) == (
        "node3: the API has no Node node3 (deleted, e.g. by `kubectl delete node node3`); "
        "its agent registers it again within a few seconds, at its next status write"
    )
    frozen = unregistered_note(replace(gone, agent_stopped=True))
    assert frozen is not None and frozen.endswith(
        "when it is unfrozen: a fault stopped it (`podnet fault list`, `podnet fault clear`)"
    )
    dead = unregistered_note(replace(gone, agent_alive=False))
    assert dead is not None and dead.endswith(
        "when the lab's supervisor has started the agent again"
    )


def test_the_ready_condition_is_read_as_the_api_has_it() -> None:
    from podnet.lab.lab import _ready_condition

    def node(*conditions: dict[str, str]) -> dict[str, object]:
        return {"status": {"conditions": list(conditions)}}

    assert _ready_condition(node({"type": "Ready", "status": "True"})) == "True"
    assert _ready_condition(node({"type": "Ready", "status": "Unknown"})) == "Unknown"
    assert _ready_condition(node({"type": "MemoryPressure", "status": "False"})) == "Unknown"
    assert _ready_condition({"metadata": {"name": "x"}}) == "Unknown"


def test_an_unknown_option_is_reported_by_its_sub_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`podnet leave --run-dir X` answered with the top parser's usage, "usage: podnet [-h]
    COMMAND ...", and "podnet: error: unrecognized arguments": nothing showed what `leave`
    does take. The innermost sub-command now reports it, with its own usage line."""
    for argv, usage, said in (
        (["leave", "--run-dir", "/x"], "usage: podnet leave [-h] [--state-dir STATE_DIR]",
         "podnet leave: error: unrecognized arguments: --run-dir /x"),
        (["fault", "kill", "agent", "node1", "extra"], "usage: podnet fault kill agent [-h]",
         "podnet fault kill agent: error: unrecognized arguments: extra"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.startswith(usage) and said in err


def test_status_names_the_nodes_the_lab_did_not_make() -> None:
    """A machine `podnet join`ed to a lab was Ready in `kubectl get nodes` and absent from
    `podnet status`, which listed only the lab's own nodes (and called the lab healthy)."""
    from podnet.cli.lab import other_nodes_line

    assert other_nodes_line({}) is None
    assert other_nodes_line({"m1": True, "m2": False}) == (
        "also in the API: m1 (Ready), m2 (NotReady): not made by the lab (podnet join), "
        "not watched here"
    )
    hollow = {f"hollow-{i}": i != 3 for i in range(5)}
    assert other_nodes_line({**hollow, "m1": True}) == (
        "also in the API: m1 (Ready): not made by the lab (podnet join), not watched here; "
        "5 hollow nodes (4 Ready)"
    )
