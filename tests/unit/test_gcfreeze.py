"""`podnet.gcfreeze`: full collections walk only what survived since the last one, and garbage
cycles among frozen objects are still reclaimed once the heap has grown enough."""

from __future__ import annotations

import gc
import weakref

from podnet.gcfreeze import FrozenHeapPolicy, frozen_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[list[Node], weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return [a, b], weakref.ref(a)


def test_a_full_collection_freezes_its_survivors_and_leaving_unfreezes() -> None:
    with frozen_heap(FrozenHeapPolicy(min_frozen=10**9)):
        kept = [{"n": [i]} for i in range(1000)]
        gc.collect()
        frozen = gc.get_freeze_count()
        assert frozen >= 2000  # the new dicts and lists are frozen after the collection
        assert all(o is not kept for o in gc.get_objects(generation=2))
    assert gc.get_freeze_count() == 0
    assert kept


def test_frozen_cycles_wait_until_the_heap_has_grown_then_are_collected() -> None:
    with frozen_heap(FrozenHeapPolicy(regrow=2.0, min_frozen=1)) as policy:
        gc.collect()
        base = policy.base
        nodes, alive = cycle()
        gc.collect()  # the cycle survives (still referenced) and is frozen
        del nodes
        gc.collect()
        assert alive() is not None  # cyclic garbage among frozen objects waits
        grown = [[i] for i in range(base + 1000)]  # the frozen heap more than doubles
        gc.collect()  # freezes the growth; the frozen heap is now above regrow * base
        walks = policy.full_walks
        gc.collect()  # above the bound: unfreezes, so the next one walks everything
        gc.collect()
        assert policy.full_walks == walks + 1
        assert alive() is None
        assert grown


def test_a_middle_generation_collection_freezes_its_survivors_too() -> None:
    with frozen_heap(FrozenHeapPolicy(min_frozen=10**9)):
        before = gc.get_freeze_count()
        kept = [{"n": [i]} for i in range(1000)]
        gc.collect(1)
        assert gc.get_freeze_count() >= before + 2000
        assert gc.get_objects(generation=2) == []
    assert kept
