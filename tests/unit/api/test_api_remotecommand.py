"""The Kubernetes remote-command channel framing and exit statuses."""

from __future__ import annotations

import pytest

from podnet.api import remotecommand as ch


def test_negotiation_prefers_v5_and_accepts_v4_only_clients() -> None:
    assert ch.negotiate(["v4.channel.k8s.io", "v5.channel.k8s.io"]) == ch.V5
    assert ch.negotiate([" v4.channel.k8s.io"]) == ch.V4
    assert ch.negotiate(["channel.k8s.io", "base64.channel.k8s.io"]) is None


def test_frames_encode_and_decode() -> None:
    assert ch.encode(ch.STDOUT, b"hi") == b"\x01hi"
    assert ch.encode(ch.STDERR) == b"\x02"
    assert ch.decode(b"\x00input", ch.V5) == ch.Frame(0, b"input")
    assert ch.decode(b"\xff\x00", ch.V5) == ch.Frame(255, b"\x00")
    assert ch.decode(b'\x04{"Width":80,"Height":24}', ch.V4).channel == ch.RESIZE


@pytest.mark.parametrize(
    ("message", "protocol", "complaint"),
    [
        (b"", ch.V5, "empty"),
        (b"\xff\x00", ch.V4, "only defined in v5"),
        (b"\xff\x00\x01", ch.V5, "exactly 2 bytes"),
        (b"\x01out", ch.V5, "not 1"),
    ],
)
def test_protocol_errors(message: bytes, protocol: str, complaint: str) -> None:
    with pytest.raises(ch.ProtocolError) as info:
        ch.decode(message, protocol)
    assert complaint in str(info.value)


def test_resize_payloads() -> None:
    payload = b'{"Width":80,"Height":24}\n{"Width":120,"Height":40}\n'
    assert ch.parse_resize(payload) == [(80, 24), (120, 40)]
    with pytest.raises(ch.ProtocolError):
        ch.parse_resize(b'{"Width":80}')


def test_exit_statuses_are_kubelets() -> None:
    assert ch.exit_status(0, "ignored") == {"metadata": {}, "status": "Success"}
    assert ch.exit_status(3, "error executing command [false], exit code 3") == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command "
        "[false], exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    assert ch.internal_error_status("boom")["reason"] == "InternalError"
