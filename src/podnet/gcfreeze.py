"""Short full garbage collections for a process with a large long-lived heap (the API server).

What belongs here: `frozen_heap`, the collector policy a server process runs under.

Why: CPython's full (generation 2) collection walks every tracked object. The API server keeps
every object of the cluster in its caches (watch window, the controllers' informers): at 1,000
Services and 3,000 pods a full collection took 200-300 ms on this machine, once per few hundred
writes, and every request in flight waited for it (benchmarks/endpoints.py: the burst p99 was
that pause). Under `frozen_heap` each full collection ends by moving its survivors into the
permanent generation (`gc.freeze()`), and so does each middle-generation collection (what
survived two young collections), so a full collection walks almost nothing: the objects that
live on are frozen young instead of being walked later in one go (50-110 ms when only full
collections froze: what a set-up had accumulated). How often collections run does not change;
the young generations still collect short-lived cycles as before.

Invariants:
- Objects freed by reference counting are freed as before (frozen or not); only garbage
  *cycles* among frozen objects (ones that outlived two young collections) wait. They are
  bounded: once the frozen heap has grown to `regrow` times what it was after the last
  collection over everything, the next full collection walks everything again
  (`gc.unfreeze()` first), so memory held by such cycles never exceeds about `regrow - 1`
  times the live heap, and that long pause comes only when the heap has doubled.
- Leaving the context removes the policy and unfreezes: the process is as before.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REGROW = 2.0
MIN_FROZEN = 100_000  # below this many objects a full collection is short anyway


class FrozenHeapPolicy:
    def __init__(self, regrow: float = REGROW, min_frozen: int = MIN_FROZEN) -> None:
        self.regrow = regrow
        self.min_frozen = min_frozen
        self.base = 0  # objects frozen right after the last collection over everything
        self.full_walks = 0  # full collections over everything (counted for tests/benchmarks)
        self.walk_pending = False  # unfrozen: the next full collection walks everything

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        generation = info.get("generation")
        if phase != "stop" or generation == 0:
            return
        if self.walk_pending:
            if generation == 2:  # this collection walked everything
                self.walk_pending = False
                self.full_walks += 1
                gc.freeze()
                self.base = gc.get_freeze_count()
            return  # a younger one: leave its survivors to the full walk
        if generation == 2 and gc.get_freeze_count() > self.regrow * max(
            self.base, self.min_frozen
        ):
            gc.unfreeze()  # the next full collection walks everything once
            self.walk_pending = True
            return
        gc.freeze()


@contextmanager
def frozen_heap(policy: FrozenHeapPolicy | None = None) -> Iterator[FrozenHeapPolicy]:
    """Run the block with `policy` (default `FrozenHeapPolicy()`) applied to every full
    collection; the heap as it is now (modules, start-up state) is frozen at once."""
    active = policy or FrozenHeapPolicy()
    gc.freeze()
    active.base = gc.get_freeze_count()
    gc.callbacks.append(active.on_gc)
    try:
        yield active
    finally:
        gc.callbacks.remove(active.on_gc)
        gc.unfreeze()
