"""The nft-table faults (partition, loss) on a real namespace: clearing one deletes its table.

Marks: root. One throwaway namespace (`scratch_netns`), removed even when the test fails.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, cast

import pytest

from podnet.kernel.rules import NftRunner
from podnet.lab import faults

pytestmark = pytest.mark.root


@pytest.mark.parametrize("kind", ["partition", "loss"])
def test_clear_deletes_the_faults_table(kind: str, scratch_netns: str) -> None:
    fault = faults.Fault(f"{kind}-1", kind, "node1", {}, time.time())
    undo = faults._apply_nft(cast(Any, None), scratch_netns, fault, ['post oifname "eth0" drop'])
    fault = dataclasses.replace(fault, undo=undo)
    assert f"table ip podnet-fault-{kind}-1" in NftRunner(scratch_netns).list_ruleset()
    faults.KINDS[kind].clear(cast(Any, None), fault, tearing_down=False)
    assert "podnet-fault" not in NftRunner(scratch_netns).list_ruleset()
