"""Delay packets without netem: an NFQUEUE reader that gives each queued packet its verdict late.

    python -m podnet.kernel.nfqueue QUEUE DELAY_MS [JITTER_MS]     (run inside the namespace)

Once the queue is bound it writes `bound NFQUEUE <queue>` on stdout and points stdout at stderr
(the starter reads that one line to know the delay is in effect, `lab/faults.py`); a queue it
cannot bind is one line on stderr and exit status 1.

This kernel has no `sch_netem` and no nft `queue` statement, but `iptables -j NFQUEUE` works:
the rule hands matching packets to this process over nfnetlink (NETLINK_NETFILTER, subsystem
NFQUEUE), which accepts each one `DELAY_MS` (± up to `JITTER_MS`, uniformly) after it arrived.
The rule should carry `--queue-bypass`: if this process dies, packets flow undelayed instead
of being dropped.

What belongs here: the message encoding (pure: `config_message`, `verdict_message`,
`packet_ids`, tested without a socket), `NfQueue` (the socket) and `run_delay` (the loop).
Only metadata is copied from the kernel (NFQNL_COPY_META): the payload stays there.

Invariants: every packet received gets exactly one verdict (accept); verdicts go out in due
order (with jitter, later packets may pass earlier ones, as netem's jitter reorders); the
queue holds up to `MAX_QUEUED` packets and is fail-open beyond that (NFQA_CFG_F_FAIL_OPEN).
"""

from __future__ import annotations

import errno
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from podnet.kernel import nfnetlink

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
MAX_QUEUED = 16384

_NFGENMSG = struct.Struct("!BBH")  # family, version, queue number (big-endian)


def _message(msg_type: int, queue: int, attrs: bytes, flags: int, seq: int) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    header = nfnetlink.HEADER.pack(
        nfnetlink.HEADER.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0
    )
    return header + body


def config_message(queue: int, seq: int) -> bytes:
    """Bind `queue`, copy metadata only, a long queue, fail-open when it is full."""
    flags = struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
    attrs = (
        nfnetlink.attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))
        + nfnetlink.attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
        + nfnetlink.attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", MAX_QUEUED))
        + nfnetlink.attribute(NFQA_CFG_MASK, flags)
        + nfnetlink.attribute(NFQA_CFG_FLAGS, flags)
    )
    return _message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq)


def verdict_message(queue: int, packet_id: int, verdict: int = NF_ACCEPT) -> bytes:
    attrs = nfnetlink.attribute(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    return _message(NFQNL_MSG_VERDICT, queue, attrs, NLM_F_REQUEST, 0)


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink read."""
    ids = []
    for msg_type, body in nfnetlink.messages(data):
        if msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            header = nfnetlink.attributes(body).get(NFQA_PACKET_HDR)
            if header is not None and len(header) >= 4:
                ids.append(struct.unpack_from("!I", header)[0])
    return ids


def netlink_error(data: bytes) -> int | None:
    """The (positive) errno of an NLMSG_ERROR in `data`, 0 for an ack, None if there is none."""
    for msg_type, body in nfnetlink.messages(data):
        if msg_type == NLMSG_ERROR:
            return -int(struct.unpack_from("=i", body)[0])
    return None


class BindError(OSError):
    """The kernel refused to bind the queue."""


class NfQueue:
    """One bound NFQUEUE queue of the current network namespace."""

    def __init__(self, queue: int) -> None:
        self.queue = queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind((0, 0))
        self.sock.send(config_message(queue, 1))
        code = netlink_error(self.sock.recv(65536))
        if code:
            self.sock.close()
            why = os.strerror(code)
            if code == errno.EPERM:  # the kernel's answer to both
                why += (
                    " (another process in this network namespace reads this queue, or this"
                    " one lacks CAP_NET_ADMIN)"
                )
            raise BindError(code, f"cannot bind NFQUEUE {queue}: {why}")

    def receive(self) -> list[int]:
        return packet_ids(self.sock.recv(1 << 20))

    def accept(self, packet_id: int) -> None:
        self.sock.send(verdict_message(self.queue, packet_id))

    def close(self) -> None:
        self.sock.close()


def run_delay(
    queue: int,
    delay_ms: float,
    jitter_ms: float = 0.0,
    bound: Callable[[], None] | None = None,
) -> int:
    """Accept every packet of `queue` `delay_ms` (± `jitter_ms`) after it arrived, until
    SIGTERM; `bound` is called once the queue is bound."""
    nfq = NfQueue(queue)
    if bound is not None:
        bound()
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    due: list[tuple[float, int, int]] = []  # (when, order, packet id)
    order = 0
    rng = random.Random()  # noqa: S311 - jitter, not secrets
    try:
        while not stopping:
            now = time.monotonic()
            while due and due[0][0] <= now:
                nfq.accept(heapq.heappop(due)[2])
            timeout = max(0.0, due[0][0] - now) if due else 0.5
            try:
                readable, _, _ = select.select([nfq.sock], [], [], timeout)
            except InterruptedError:
                continue
            if not readable:
                continue
            arrived = time.monotonic()
            for packet_id in nfq.receive():
                wait = delay_ms + (rng.uniform(-jitter_ms, jitter_ms) if jitter_ms else 0.0)
                order += 1
                heapq.heappush(due, (arrived + max(0.0, wait) / 1000, order, packet_id))
    finally:
        for _, _, packet_id in due:  # let what is held go on time-less, not dropped
            nfq.accept(packet_id)
        nfq.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m podnet.kernel.nfqueue QUEUE DELAY_MS [JITTER_MS]", file=sys.stderr)
        return 2
    queue = int(argv[0])

    def announce() -> None:
        sys.stdout.write(f"bound NFQUEUE {queue}\n")
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the starter stops reading

    try:
        return run_delay(queue, float(argv[1]), float(argv[2]) if len(argv) == 3 else 0.0, announce)
    except BindError as exc:
        print(f"nfqueue: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
