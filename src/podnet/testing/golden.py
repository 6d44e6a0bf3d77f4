"""Golden-text checks shared by the renderers' and planners' tests.

`assert_golden_text(path, text)` compares text with a golden file and prints the diff and the
whole output on a mismatch. `assert_nft_golden(path, transactions, table)` first applies nft
transactions to a model of the table (`podnet.agent.proxy.trace_nftables.NftModel`) and fails
on any jump, goto, @set or counter that names nothing. With `PODNET_UPDATE_GOLDEN=1` both
rewrite the file first (review the diff before committing it).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

from podnet.agent.proxy.trace_nftables import NftModel, consistency_errors


def assert_nft_golden(
    path: Path, transactions: Sequence[str], table: str = "ip kube-proxy"
) -> None:
    model = NftModel(table=table)
    for tx in transactions:
        model.apply(tx)
    result = "".join(transactions)
    errors = consistency_errors(model)
    assert not errors, "inconsistent table:\n" + "\n".join(errors) + "\nfull result:\n" + result
    assert_golden_text(path, result)


def assert_golden_text(path: Path, result: str) -> None:
    if os.environ.get("PODNET_UPDATE_GOLDEN"):
        path.write_text(result)
    want = path.read_text()
    if want != result:
        diff = "\n".join(
            difflib.unified_diff(
                want.splitlines(), result.splitlines(), str(path), "result", lineterm=""
            )
        )
        raise AssertionError(f"output differs from {path}:\n{diff}\nfull result:\n```\n{result}```")
