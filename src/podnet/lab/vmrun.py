"""`python -m podnet.lab.vmrun STATE_DIR NODE`: the lab supervisor's unit of a VM node.

It writes the node's settings from the lab's plan and execs qemu (`vm.run_node`), so the
unit's recorded pid is qemu's. A module of its own so that `-m` does not run `vm`, which
the `podnet.lab` package has already imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

from podnet.lab import vm
from podnet.lab.spec import LabError


def main(argv: list[str]) -> int:
    """`python -m podnet.lab.vmrun STATE_DIR NODE` (what the lab's supervisor runs)."""
    if len(argv) != 2:
        print("usage: python -m podnet.lab.vmrun STATE_DIR NODE", file=sys.stderr)
        return 2
    try:
        vm.run_node(Path(argv[0]), argv[1], sys.executable)
    except (LabError, OSError) as exc:
        print(f"podnet: VM node {argv[1]}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
