"""The kubelet loop tests' doubles of the runtime and the sandboxes (`podnet.testing.kubelet`,
type-checked against the real seams); the API is the suite's `memory_api`."""

from __future__ import annotations

import pytest

from podnet.testing.kubelet import FakeRuntime, FakeSandboxes


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def fake_sandboxes() -> FakeSandboxes:
    return FakeSandboxes(netns_prefix="pnt5-")
