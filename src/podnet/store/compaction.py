"""When to compact: a pure planner shared by every store driver's automatic compactor.

What belongs here: the retention policy and the decision "compact up to which revision now",
from samples of (time, current revision). No I/O; drivers call `CompactionPlanner.observe`
from their own loop and apply the answer with `Store.compact`.

Invariants:
- History newer than `retention_seconds` is never compacted (kube-apiserver keeps 5 minutes,
  so a client that re-watches within that window resumes without a 410).
- At least `retained_revisions` revisions are always kept, however old.
- The planned revision never goes backwards.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    interval_seconds: float = 60.0
    """How often the automatic compactor runs; 0 disables it."""
    retention_seconds: float = 300.0
    """Keep at least this much history."""
    retained_revisions: int = 1_000
    """...and at least this many revisions, whichever is more."""

    def __post_init__(self) -> None:
        if self.interval_seconds < 0 or self.retention_seconds < 0 or self.retained_revisions < 0:
            raise ValueError(f"compaction policy values must not be negative: {self}")


@dataclass(slots=True)
class CompactionPlanner:
    policy: CompactionPolicy
    _samples: deque[tuple[float, int]] = field(default_factory=deque)
    _planned: int = 0

    def observe(self, now: float, current_revision: int) -> int | None:
        """Record the store's revision at `now`; return a revision to compact to, or None."""
        self._samples.append((now, current_revision))
        horizon = now - self.policy.retention_seconds
        old_enough = 0
        while self._samples and self._samples[0][0] <= horizon:
            old_enough = self._samples.popleft()[1]
        target = min(old_enough, current_revision - self.policy.retained_revisions)
        if target <= self._planned:
            return None
        self._planned = target
        return target
