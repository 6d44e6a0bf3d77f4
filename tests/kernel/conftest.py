"""Fixtures the kernel tests share: `scratch_netns`, a throwaway network namespace.

Every kernel test that needs a bare namespace of its own (to load rules into, to run a reader
or a listener in) takes this one rather than making its own, so each is named the same way,
has its loopback up as a pod's has, and is removed even when the test fails.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from podnet.kernel import netns
from podnet.kernel.links import Netlink


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    """The name of a fresh network namespace with `lo` up; deleted after the test."""
    name = f"pnscratch-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        with Netlink(name) as link:
            link.set_up("lo")
        yield name
    finally:
        netns.delete(name)
