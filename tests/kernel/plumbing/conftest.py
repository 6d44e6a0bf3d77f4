"""Fixtures for the plumbing kernel tests: throwaway namespaces that always go away.

Every namespace is named `pnt1-<random>` (this area's marker) and deleted in a finally, so a
failing test leaves nothing behind; links inside die with their namespace.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from podnet.kernel import netns

NewNetns = Callable[[], str]


@pytest.fixture
def new_netns() -> Iterator[NewNetns]:
    made: list[str] = []

    def make() -> str:
        name = f"pnt1-{secrets.token_hex(4)}"
        netns.create(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            netns.delete(name)
