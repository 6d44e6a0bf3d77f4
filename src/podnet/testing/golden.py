"""Golden-text checks of rendered nft transactions, shared by the renderers' tests.

`assert_nft_golden(path, transactions, table)` applies the transactions to a model of the
table (`podnet.agent.proxy.trace_nftables.NftModel`), fails on any jump, goto, @set or counter
that names nothing, then compares the concatenated text with the golden file and prints the
diff and the whole output on a mismatch. With `PODNET_UPDATE_GOLDEN=1` it rewrites the file
first (review the diff before committing it).
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
    if os.environ.get("PODNET_UPDATE_GOLDEN"):
        path.write_text(result)
    want = path.read_text()
    if want != result:
        diff = "\n".join(
            difflib.unified_diff(
                want.splitlines(), result.splitlines(), str(path), "result", lineterm=""
            )
        )
        raise AssertionError(
            f"transaction differs from {path}:\n{diff}\nfull result:\n```\n{result}```"
        )
