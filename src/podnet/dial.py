"""Connecting a non-blocking socket from the event loop without the loop's resolver.

What belongs here: `connect`, the one dial the agent's loops use for sockets they made
themselves (the userspace relay's dials to endpoints, the kubelet's probes and its port
server's dials into a pod's namespace), where `loop.sock_connect` would do.

Why not `loop.sock_connect`: uvloop's asks getaddrinfo for the address without a socket type,
and its numeric fast path needs one, so every dial, even to a numeric pod address, went
through libuv's thread pool: a worker thread woken and a completion handed back (218 µs per
relayed connection on loopback, session 10). Here a numeric address is a non-blocking
connect and one writable wait; a name still goes through the loop's resolver.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket


def _numeric(sock: socket.socket, host: str) -> bool:
    try:
        socket.inet_pton(sock.family, host)
    except OSError:
        return False
    return True


async def connect(sock: socket.socket, address: tuple[str, int]) -> None:
    """`loop.sock_connect(sock, address)` for a non-blocking TCP socket; an OSError (its
    errno's subclass: ConnectionRefusedError, ...) when the connection fails."""
    if not _numeric(sock, address[0]):
        await asyncio.get_running_loop().sock_connect(sock, address)
        return
    err = sock.connect_ex(address)
    if err == 0:
        return
    if err != errno.EINPROGRESS:
        raise OSError(err, os.strerror(err))
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def writable() -> None:
        if not connected.done():  # a cancelled dial's future stays cancelled
            connected.set_result(None)

    loop.add_writer(fd, writable)
    try:
        await connected
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
