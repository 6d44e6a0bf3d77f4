"""The remote-command protocols of exec and attach: WebSocket channels and SPDY stream types.

Pure (no I/O); shared by the API server (which speaks every version clients use) and the
kubelet endpoint (which the API server always talks v5 to).

WebSocket (apimachinery `pkg/util/remotecommand`, `wsstream/conn.go`): every binary message is
one channel byte and the payload:

    0 stdin   1 stdout   2 stderr   3 error/status   4 resize (tty only; JSON
    {"Width": w, "Height": h}, one object per line)   255 close (v5 only; exactly
    [255, <channel>]: half-close that channel, e.g. stdin EOF)

- `v5.channel.k8s.io` (kubectl >= 1.30), `v4.channel.k8s.io` (the Python client; v5 without
  the close signal): channel 3 carries one `metav1.Status` JSON, then the socket closes 1000.
- `channel.k8s.io` (v1): as v4, but channel 3 carries only the text of a failure.
- `*.base64.channel.k8s.io` (browsers): text messages, the channel as an ASCII digit and the
  payload base64-encoded.
- The Python client writes str data as *text* messages on binary protocols (`"\\x00ls\\n"`);
  the channel is then the first character's code point, the payload the rest in UTF-8.

SPDY (`X-Stream-Protocol-Version` v5, v4, v3, v2, `channel.k8s.io`): one SPDY stream per
channel, named by the `streamType` header (error, stdin, stdout, stderr, resize). The error
stream carries the JSON Status in v4/v5, failure text otherwise; resize exists from v3; v5
over SPDY is v4 (the close signal is a WebSocket matter, SPDY has half-close).

Exit statuses are kubelet's (`remotecommand/exec.go`): Success, or Failure with reason
NonZeroExitCode and `details.causes[{"reason": "ExitCode", "message": "<n>"}]`, which
client-go turns into "command terminated with exit code <n>".
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# An agent that refuses an exec or attach before the upgrade (no such container, not running)
# answers a Status, and repeats it, as compact JSON, in this header: the API server's WebSocket
# client (aiohttp) drops the body of a failed handshake and keeps only its status and headers.
REFUSAL_HEADER = "X-Podnet-Status"

STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE = 255

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V1 = "channel.k8s.io"
V1_BASE64 = "base64.channel.k8s.io"
WEBSOCKET_PROTOCOLS = (V5, V4, V4_BASE64, V1, V1_BASE64)  # preference order
SUPPORTED_PROTOCOLS = (V5, V4)  # what the kubelet endpoint speaks (to the API server)

SPDY_V3 = "v3.channel.k8s.io"
SPDY_V2 = "v2.channel.k8s.io"
SPDY_PROTOCOLS = (V5, V4, SPDY_V3, SPDY_V2, V1)
STREAM_TYPE_HEADER = "streamtype"
STREAM_TYPES = {
    "stdin": STDIN,
    "stdout": STDOUT,
    "stderr": STDERR,
    "error": ERROR,
    "resize": RESIZE,
}


class ProtocolError(ValueError):
    """A client message that breaks the channel protocol."""


@dataclass(frozen=True, slots=True)
class Frame:
    channel: int
    payload: bytes


def negotiate(offered: Iterable[str], supported: Iterable[str] = SUPPORTED_PROTOCOLS) -> str | None:
    """The protocol to answer with: the first we support, in our order of preference."""
    wanted = {p.strip() for p in offered}
    return next((p for p in supported if p in wanted), None)


def negotiate_in_client_order(offered: Iterable[str], supported: Iterable[str]) -> str | None:
    """httpstream's rule for SPDY: the client's first protocol that the server supports."""
    ours = set(supported)
    return next((p.strip() for p in offered if p.strip() in ours), None)


def is_base64(protocol: str) -> bool:
    return protocol in (V4_BASE64, V1_BASE64)


def structured_status(protocol: str) -> bool:
    """Does the error channel carry a JSON Status (v4, v5) rather than failure text?"""
    return protocol in (V5, V4, V4_BASE64)


def encode(channel: int, payload: bytes = b"") -> bytes:
    return bytes([channel]) + payload


def encode_text(channel: int, payload: bytes) -> str:
    """A base64-protocol message."""
    return chr(ord("0") + channel) + base64.b64encode(payload).decode("ascii")


def decode(message: bytes, protocol: str) -> Frame:
    """A client's binary message."""
    if not message:
        raise ProtocolError("empty message: every message starts with a channel byte")
    return _check(Frame(message[0], bytes(message[1:])), protocol)


def decode_text(message: str, protocol: str) -> Frame:
    """A client's text message: base64 protocols, or the Python client's str writes."""
    if not message:
        raise ProtocolError("empty message: every message starts with a channel")
    if is_base64(protocol):
        channel = ord(message[0]) - ord("0")
        try:
            payload = base64.b64decode(message[1:], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"a base64 message does not decode: {exc}") from None
        return _check(Frame(channel, payload), protocol)
    return _check(Frame(ord(message[0]), message[1:].encode()), protocol)


def _check(frame: Frame, protocol: str) -> Frame:
    if frame.channel == CLOSE:
        if protocol != V5:
            raise ProtocolError(f"channel 255 (close) is only defined in {V5}, not {protocol}")
        if len(frame.payload) != 1:
            raise ProtocolError("a close message is exactly 2 bytes: [255, <channel>]")
    elif frame.channel not in (STDIN, RESIZE):
        raise ProtocolError(
            f"clients may write channels 0 (stdin) and 4 (resize), not {frame.channel}"
        )
    return frame


def parse_resize(payload: bytes) -> list[tuple[int, int]]:
    """(width, height) of each resize event in the payload (one JSON object per line)."""
    sizes: list[tuple[int, int]] = []
    decoder = json.JSONDecoder()
    text = payload.decode(errors="replace")
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return sizes
        try:
            data, pos = decoder.raw_decode(text, pos)
            sizes.append((int(data["Width"]), int(data["Height"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"bad resize message {text[pos:][:80]!r}: {exc}") from exc


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


def status_for_protocol(status_json: bytes, protocol: str) -> bytes:
    """What the error channel/stream carries for `protocol`, given the kubelet's v4/v5 JSON
    Status: the JSON itself, or (v1 to v3) the failure message only, nothing on success."""
    if structured_status(protocol):
        return status_json
    try:
        status = json.loads(status_json)
    except ValueError:
        return status_json
    if not isinstance(status, dict) or status.get("status") == "Success":
        return b""
    return str(status.get("message") or "command failed").encode()
