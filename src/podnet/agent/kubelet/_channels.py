"""Kubernetes remote-command channel framing over WebSocket (v4/v5.channel.k8s.io). Pure.

Every binary WebSocket message is one channel byte followed by the payload
(apimachinery `pkg/util/remotecommand/constants.go`, `wsstream/conn.go`):

    0 stdin   1 stdout   2 stderr   3 error/status (one metav1.Status JSON, then close 1000)
    4 resize  (tty only; JSON {"Width": w, "Height": h}, possibly several, one per line)
    255 close (v5 only; exactly [255, <channel>]: half-close that channel, e.g. stdin EOF)

v4 is v5 without the close signal (the Python client 32.x offers only v4). Text messages are
a protocol error. The exit status shapes are kubelet's (`remotecommand/exec.go`): Success, or
Failure with reason NonZeroExitCode and `details.causes[{"reason": "ExitCode", "message":
"<n>"}]`, which client-go parses into "command terminated with exit code <n>".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE = 255

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
SUPPORTED_PROTOCOLS = (V5, V4)  # preference order


class ProtocolError(ValueError):
    """A client message that breaks the channel protocol."""


@dataclass(frozen=True, slots=True)
class Frame:
    channel: int
    payload: bytes


def negotiate(offered: Iterable[str]) -> str | None:
    """The protocol to answer with: the best one we support among those offered."""
    wanted = {p.strip() for p in offered}
    for protocol in SUPPORTED_PROTOCOLS:
        if protocol in wanted:
            return protocol
    return None


def encode(channel: int, payload: bytes = b"") -> bytes:
    return bytes([channel]) + payload


def decode(message: bytes, protocol: str) -> Frame:
    if not message:
        raise ProtocolError("empty message: every message starts with a channel byte")
    channel = message[0]
    payload = message[1:]
    if channel == CLOSE:
        if protocol != V5:
            raise ProtocolError(f"channel 255 (close) is only defined in {V5}, not {protocol}")
        if len(payload) != 1:
            raise ProtocolError("a close message is exactly 2 bytes: [255, <channel>]")
    elif channel not in (STDIN, RESIZE):
        raise ProtocolError(f"clients may write channels 0 (stdin) and 4 (resize), not {channel}")
    return Frame(channel, payload)


def parse_resize(payload: bytes) -> list[tuple[int, int]]:
    """(width, height) of each resize event in the payload (one JSON object per line)."""
    sizes: list[tuple[int, int]] = []
    for line in payload.splitlines():
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            sizes.append((int(data["Width"]), int(data["Height"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"bad resize message {line!r}: {exc}") from exc
    return sizes


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_status(exit_code: int, message: str) -> dict[str, Any]:
    if exit_code == 0:
        return success_status()
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {message}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def internal_error_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }
