"""`podnet fault`'s pure parts: what users type (durations, rates, percentages, the CLI's
requests), the registry and what this kernel can produce. (Each fault on a real lab:
tests/e2e/test_lab_faults.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.cli.main import build_parser
from podnet.lab import faults
from podnet.lab.faults import Capabilities, FaultError


def test_durations_rates_and_percentages() -> None:
    assert faults.parse_duration("30s") == 30.0
    assert faults.parse_duration("2m") == 120.0
    assert faults.parse_duration("500ms") == 0.5
    assert faults.parse_duration("1.5") == 1.5
    assert faults.parse_rate("10mbit") == 10_000_000
    assert faults.parse_rate("500kbit") == 500_000
    assert faults.parse_rate("1mbps") == 8_000_000
    assert faults.parse_percent("12.5%") == 12.5
    for bad, call in (
        ("soon", faults.parse_duration),
        ("0s", faults.parse_duration),
        ("fast", faults.parse_rate),
        ("10bit", faults.parse_rate),
        ("150", faults.parse_percent),
        ("0", faults.parse_percent),
    ):
        with pytest.raises(FaultError):
            call(bad)


def request(*argv: str) -> faults.Request:
    from podnet.cli.fault import request_from

    args = build_parser().parse_args(["fault", *argv])
    result: faults.Request = request_from(args)
    return result


@pytest.mark.parametrize(
    "argv",
    [
        ["fault", "--name", "lab7", "partition", "node2"],  # as `podnet trace --name L ...`
        ["fault", "partition", "node2", "--name", "lab7"],
        ["fault", "--name", "lab7", "kill", "agent", "node2"],
        ["fault", "kill", "--name", "lab7", "agent", "node2"],
        ["fault", "--name", "other", "list", "--name", "lab7"],  # the nearest one counts
        ["fault", "--name", "lab7", "clear", "--all"],
    ],
)
def test_the_lab_name_may_come_before_the_kind(argv: list[str]) -> None:
    """README writes `podnet fault [--name N] KIND TARGET`, and every other command takes
    `--name` right after its own name; `podnet fault --name L list` failed with "argument
    KIND: invalid choice: 'L'"."""
    args = build_parser().parse_args(argv)
    assert args.name == "lab7"


def test_the_lab_name_defaults_to_podnet() -> None:
    assert build_parser().parse_args(["fault", "list"]).name == "podnet"
    assert build_parser().parse_args(["fault", "kill", "agent", "node1"]).name == "podnet"


def test_the_cli_builds_requests() -> None:
    assert request("kill", "pod", "web/a", "--container", "c") == faults.Request(
        "kill", "pod web/a", {"container": "c"}
    )
    assert request("kill", "server", "--for", "10s") == faults.Request("kill", "server", {}, 10.0)
    assert request("stop", "node", "node2").target == "node node2"
    assert request("partition", "node1", "--from", "node2", "node3").params == {
        "from": ["node2", "node3"]
    }
    assert request("partition", "node1", "--from", "api").params == {"from": ["api"]}
    assert request("loss", "node1", "10").params == {"percent": 10.0}
    assert request("bandwidth", "default/web", "4mbit").params["rate_bps"] == 4_000_000
    delay = request("delay", "node2", "150", "--jitter", "20", "--for", "1m")
    assert (delay.params, delay.duration) == ({"ms": 150.0, "jitter": 20.0}, 60.0)
    with pytest.raises(FaultError, match="--jitter"):
        request("delay", "node2", "10", "--jitter", "20")


def test_every_kind_is_registered_and_says_what_it_needs() -> None:
    assert set(faults.KINDS) == {
        "kill", "stop", "restart", "partition", "loss", "bandwidth", "delay", "corrupt",
        "duplicate",
    }  # fmt: skip
    without, with_netem = Capabilities(netem=False), Capabilities(netem=True)
    cannot = sorted(k for k, kind in faults.KINDS.items() if kind.unavailable(without))
    assert cannot == ["corrupt", "duplicate"]
    assert "no netem" in str(faults.KINDS["corrupt"].unavailable(without))
    assert not [k for k, kind in faults.KINDS.items() if kind.unavailable(with_netem)]
    with pytest.raises(FaultError, match="unknown fault 'melt'; valid: kill, stop"):
        faults.kind_of("melt")


def test_a_vm_node_is_shaped_inside_its_guest_and_refused_for_the_rest(tmp_path: Path) -> None:
    from podnet.lab.lab import Lab
    from podnet.lab.spec import LabSpec, plan_lab

    lab = Lab(plan_lab(LabSpec(name="tfv", nodes=2, vm_nodes=1, state_root=tmp_path), 3, 40000))
    target = faults.network_target(lab, "node2", allow_vm=True)
    assert (target.netns, target.ifname) == ("vm:node2", "eth0")
    assert faults.network_target(lab, "node1").netns == "podnet-tfv-node1"
    with pytest.raises(FaultError, match=r"node2 is a VM node .* can: partition, loss, delay"):
        faults.network_target(lab, "node2")


def test_a_fault_still_being_applied_does_not_expire(tmp_path: Path) -> None:
    """`--for` counts once the fault took effect: the supervisor's expiry must not clear a
    record whose apply has not finished (its undo is not known yet)."""
    from dataclasses import replace

    from podnet.lab.lab import Lab
    from podnet.lab.spec import LabSpec, plan_lab

    lab = Lab(plan_lab(LabSpec(name="tfe", nodes=1, state_root=tmp_path), 3, 40000))
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    request = faults.Request("kill", "server", duration=2.0)
    recorded = faults._record(lab.state_dir, request)
    assert recorded.applying
    much_later = recorded.created_at + 3600
    assert faults.expire_due(lab, now=much_later) == []
    assert [f.id for f in faults.recorded(lab.state_dir)] == [recorded.id]

    faults._update(lab.state_dir, replace(recorded, applying=False))  # what inject does
    assert [f.id for f in faults.expire_due(lab, now=much_later)] == [recorded.id]
    assert faults.recorded(lab.state_dir) == []


def test_a_node_in_place_of_what_means_the_only_thing_it_can_mean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`podnet fault stop node1` answered argparse's "invalid choice: 'node1' (choose from
    'node')". `stop` can only freeze a node and `restart` only restart an agent, so a bare
    node name means that; `kill` could mean several things, so its error lists the commands."""
    assert request("stop", "node1").target == "node node1"
    assert request("stop", "node1", "--for", "20s") == faults.Request(
        "stop", "node node1", {}, 20.0
    )
    assert build_parser().parse_args(["fault", "stop", "--name", "lab7", "node1"]).name == "lab7"
    assert request("stop", "--name=lab7", "node1").target == "node node1"
    assert request("restart", "node2").target == "agent node2"
    assert request("stop", "node", "node1").target == "node node1"  # the long form still works
    kill_forms = "  podnet fault kill agent NODE\n  podnet fault kill pod NS/POD [--container C]\n"
    for argv, said in (
        (["kill", "node1"], "'node1' is not something to kill; type one of:\n" + kill_forms),
        (["kill"], "say what to kill; type one of:\n" + kill_forms),
        (["stop"], "say what to stop; type:\n  podnet fault stop [node] NODE"),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["fault", *argv])
        assert said in capsys.readouterr().err
