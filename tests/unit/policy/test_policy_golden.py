"""Golden text of the rendered NetworkPolicy table for a table of policies (every case of the
Netpol model at once), and of the element-diff transaction a label change gives. The helper
first applies the text to a model of the table and checks that every jump, goto, @set and
counter it names exists; on a mismatch it prints the whole output."""

from __future__ import annotations

from pathlib import Path

from podnet.agent.policy.model import build_view
from podnet.agent.policy.nftables import PolicyConfig, PolicyTable, diff_script, render_policy_table
from podnet.testing.golden import assert_nft_golden
from podnet.testing.netpol import CASES, Step, World

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, transactions: list[str]) -> None:
    assert_nft_golden(GOLDEN / name, transactions, table="inet podnet-policy")


def every_case() -> World:
    world = World()
    for case in CASES:
        for step in case.steps:
            world.step(step)
    return world


def render(world: World, cfg: PolicyConfig) -> PolicyTable:
    view = build_view(world.pods.values(), world.namespaces.values(), world.policies)
    return render_policy_table(view, "node-1", cfg)


def test_table_for_every_case_with_logging() -> None:
    assert_golden("policy_table.nft", [render(every_case(), PolicyConfig(log=True)).script()])


def test_label_change_is_an_element_diff() -> None:
    world = every_case()
    before = render(world, PolicyConfig())
    world.step(
        Step(pod_labels={"y/a": {"role": "client"}}, namespace_labels={"y": {"trusted": "yes"}})
    )
    after = render(world, PolicyConfig())
    text = diff_script(before, after)
    assert text is not None
    assert_golden("policy_diff_label_change.nft", [before.script(), text])


def test_table_with_the_userspace_proxy() -> None:
    world = every_case()
    view = build_view(world.pods.values(), world.namespaces.values(), world.policies)
    cfg = PolicyConfig(
        userspace_proxy=True, gateway="10.244.1.1", pod_network="10.244.0.0/16", log=True
    )
    table = render_policy_table(view, "node-1", cfg, ["10.244.2.1"], world.service_backends())
    assert_golden("policy_table_userspace.nft", [table.script()])
