"""`ServerProcess` (the `podnet_server` fixture's machinery): start errors carry the server's
own message, and a server that never started stops as a no-op."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.testing.server import ServerProcess, ServerStartError


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, store="nosuchdb://x")
    with pytest.raises(ServerStartError) as raised:
        server.start()
    message = str(raised.value)
    assert "exited with 1 during startup" in message
    assert "unknown store 'nosuchdb://x'" in message  # the server's own explanation
    assert server.pid is None and not list((tmp_path / "pids").glob("*.pid"))


def test_stop_before_start_is_a_no_op(tmp_path: Path) -> None:
    assert ServerProcess(tmp_path).stop() is None
