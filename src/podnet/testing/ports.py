"""Loopback ports for throwaway servers in tests and benchmarks.

What belongs here: `free_port`, the one way test code picks a port. The port is free when the
call returns and nothing guarantees it stays so: starters that bind it later (`ServerProcess`,
`EtcdServer`) retry with a new port when the bind loses that race.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` right now (the kernel's pick for port 0).

    Also the way to name a port that refuses connections: once the probe socket is closed,
    nothing listens there.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
