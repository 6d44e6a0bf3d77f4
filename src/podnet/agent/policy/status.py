"""Where a node agent says what NetworkPolicy enforces on its node, and how `podnet status`
reads it: `state_dir/policy/status.json`, written by the component after every successful
sync (atomically) with the highest resourceVersion enforced, each local pod a policy
isolates with those policies per direction, and its drop counts.

Kept apart from the component so readers (the CLI) import nothing of the agent's machinery.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATUS_FILE = Path("policy") / "status.json"  # under the agent's state_dir


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """A node agent's last written policy status (None: none written, or unreadable)."""
    try:
        found = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
