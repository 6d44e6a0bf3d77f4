"""iptables-restore and nft -f inside throwaway namespaces."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from podnet.kernel.rules import IptablesRunner, NftRunner, RuleLoadError

pytestmark = pytest.mark.root

CHAINS = """*filter
:PT1-TEST - [0:0]
-A PT1-TEST -p tcp --dport 80 -j ACCEPT
-A PT1-TEST -j RETURN
COMMIT
"""


def test_iptables_restore_then_save_shows_our_chain(new_netns: Callable[[], str]) -> None:
    runner = IptablesRunner(new_netns())
    runner.restore(CHAINS)
    saved = runner.save("filter")
    assert ":PT1-TEST - [0:0]" in saved
    assert "-A PT1-TEST -p tcp -m tcp --dport 80 -j ACCEPT" in saved
    # --noflush: restoring another chain keeps ours
    runner.restore("*filter\n:PT1-OTHER - [0:0]\nCOMMIT\n")
    assert ":PT1-TEST" in runner.save("filter")
    # the host's tables are untouched
    assert "PT1-TEST" not in IptablesRunner().save("filter")


def test_iptables_scan_reads_the_dump_line_by_line_as_save_gives_it(
    new_netns: Callable[[], str],
) -> None:
    runner = IptablesRunner(new_netns())
    chains = [f"PT1-C{i}" for i in range(3000)]  # a dump of ~200 KB: several pipe buffers
    runner.restore(
        "*nat\n-S\n"
        + "".join(f":{c} - [0:0]\n-A {c} -d 10.0.{i // 256}.{i % 256} -j RETURN\n"
                  for i, c in enumerate(chains))
        + "COMMIT\n"
    )  # fmt: skip

    def rules(text: str) -> list[str]:  # without the dated comment lines
        return [line for line in text.splitlines() if not line.startswith("#")]

    lines = runner.scan(list)
    assert rules("\n".join(lines)) == rules(runner.save())
    assert all("\n" not in line for line in lines)
    assert runner.scan(lambda ls: sum(1 for x in ls if x.startswith(":PT1-C")), "nat") == 3000
    # a reader that stops early: the rest is drained, the tool exits, the answer stands
    assert runner.scan(lambda ls: next(iter(ls))).startswith("#")
    with pytest.raises(RuleLoadError):
        runner.scan(list, "no-such-table")


def test_iptables_error_carries_the_lines_around_the_culprit(new_netns: Callable[[], str]) -> None:
    payload = "*filter\n:PT1-A - [0:0]\n-A PT1-A -j ACCEPT\n-A PT1-A -p tcp --bogus 80\nCOMMIT\n"
    with pytest.raises(RuleLoadError) as info:
        IptablesRunner(new_netns()).restore(payload)
    error = info.value
    assert error.line == 4
    assert "--bogus" in error.stderr
    assert ">4: -A PT1-A -p tcp --bogus 80" in error.context
    assert " 1: *filter" in error.context


def test_iptables_restore_of_chunks_loads_them_or_nothing(new_netns: Callable[[], str]) -> None:
    """A payload may come in chunks, written as they are produced: an error in a later chunk
    is reported at its line of the whole payload; a producer that fails part-way stops the
    tool before it commits, and the rules loaded before stay as they were."""
    runner = IptablesRunner(new_netns())

    def rules() -> list[str]:  # the dump without its dated comment lines
        return [line for line in runner.save("filter").splitlines() if not line.startswith("#")]

    runner.restore(iter(["*filter\n:PT1-A - [0:0]\n", "-A PT1-A -j ACCEPT\n", "COMMIT\n"]))
    before = rules()
    assert "-A PT1-A -j ACCEPT" in before
    with pytest.raises(RuleLoadError) as info:
        runner.restore(iter(["*filter\n:PT1-A - [0:0]\n", "-A PT1-A --bogus\nCOMMIT\n"]))
    assert info.value.line == 3 and ">3: -A PT1-A --bogus" in info.value.context

    def failing() -> Iterator[str]:
        yield "*filter\n:PT1-A - [0:0]\n:PT1-B - [0:0]\n"
        raise RuntimeError("the renderer failed")

    with pytest.raises(RuntimeError, match="the renderer failed"):
        runner.restore(failing())
    assert rules() == before


def test_nft_apply_list_and_idempotent_delete(new_netns: Callable[[], str]) -> None:
    runner = NftRunner(new_netns())
    assert runner.list_table("ip", "pt1test") is None
    runner.apply("table ip pt1test {\n chain c {\n  ip daddr 10.96.0.1 accept\n }\n}\n")
    listed = runner.list_table("ip", "pt1test")
    assert listed is not None and "ip daddr 10.96.0.1 accept" in listed
    runner.delete_table("ip", "pt1test")
    runner.delete_table("ip", "pt1test")
    assert runner.list_table("ip", "pt1test") is None


def test_nft_transaction_is_atomic_and_reports_the_line(
    new_netns: Callable[[], str],
) -> None:
    runner = NftRunner(new_netns())
    bad = (
        "table ip pt1test {\n chain c {\n  ip daddr 10.96.0.1 accept\n"
        "  ip daddr 10.96 accept\n }\n}\n"
    )
    with pytest.raises(RuleLoadError) as info:
        runner.apply(bad)
    assert info.value.line == 4
    assert ">4:   ip daddr 10.96 accept" in info.value.context
    assert runner.list_table("ip", "pt1test") is None
