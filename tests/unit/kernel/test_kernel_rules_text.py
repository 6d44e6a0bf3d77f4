"""Rule-runner pure parts: error context extraction and the recording fakes."""

from __future__ import annotations

import pytest

from podnet.kernel.rules import (
    FakeIptables,
    FakeNft,
    RuleLoadError,
    extract_lines,
    restore_timeout,
)

PAYLOAD = "\n".join(f"line {n}" for n in range(1, 11)) + "\n"


def test_extract_lines_marks_the_culprit_with_three_lines_each_side() -> None:
    assert extract_lines(PAYLOAD, 6) == (
        " 3: line 3\n 4: line 4\n 5: line 5\n>6: line 6\n 7: line 7\n 8: line 8\n 9: line 9"
    )


def test_extract_lines_clips_at_both_ends() -> None:
    assert extract_lines(PAYLOAD, 1) == ">1: line 1\n 2: line 2\n 3: line 3\n 4: line 4"
    assert extract_lines(PAYLOAD, 10).splitlines()[-1] == ">10: line 10"


def test_rule_load_error_message_has_tool_line_and_context() -> None:
    error = RuleLoadError("nft", 1, "/dev/stdin:2:1: Error: x\n", 2, extract_lines(PAYLOAD, 2))
    text = str(error)
    assert text.startswith("nft rejected the ruleset at line 2 (exit 1): /dev/stdin:2:1: Error: x")
    assert ">2: line 2" in text


def test_fake_iptables_keeps_payloads_per_table() -> None:
    fake = FakeIptables()
    fake.restore("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
    fake.restore("*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n")
    assert fake.last_payload == "*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n"
    assert "KUBE-SERVICES" in fake.save("nat")
    assert len(fake.payloads) == 2
    fake.fail_with = RuleLoadError("iptables-restore", 1, "boom", None, "")
    with pytest.raises(RuleLoadError):
        fake.restore("*nat\nCOMMIT\n")
    assert len(fake.payloads) == 2  # a failed restore changes nothing


def test_fake_iptables_takes_a_payload_in_chunks() -> None:
    fake = FakeIptables()
    fake.restore(iter(["*nat\n", ":KUBE-SERVICES - [0:0]\n", "COMMIT\n"]))
    assert fake.last_payload == "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"


def test_a_restore_timeout_grows_with_its_payload() -> None:
    """30 s for a small one; 10k Services' full sync (12 MB, 4-10 s here) gets 150 s."""
    assert restore_timeout(1000) == pytest.approx(30.0, abs=0.1)
    assert restore_timeout(12_000_000) == pytest.approx(150.0)


def test_fake_nft_tracks_transactions_and_tables() -> None:
    fake = FakeNft()
    fake.apply("add table ip kube-proxy\nflush table ip kube-proxy\n")
    assert fake.list_table("ip", "kube-proxy") is not None
    fake.delete_table("ip", "kube-proxy")
    assert fake.list_table("ip", "kube-proxy") is None
    assert len(fake.transactions) == 2
