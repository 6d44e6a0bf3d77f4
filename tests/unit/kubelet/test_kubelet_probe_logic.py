"""Probe parsing, thresholds and the HTTP probe's wire text (pure)."""

from __future__ import annotations

import pytest

from podnet.agent.kubelet.probes import (
    ProbeCounter,
    ProbeSpec,
    parse_status_code,
    render_http_request,
    resolve_port,
)


def test_probe_defaults_and_handlers() -> None:
    assert ProbeSpec.from_spec(None) is None
    spec = ProbeSpec.from_spec({"httpGet": {"path": "/healthz", "port": "http"}})
    assert spec is not None
    assert (spec.handler, spec.path, spec.port, spec.scheme) == (
        "httpGet",
        "/healthz",
        "http",
        "HTTP",
    )
    assert (spec.initial_delay, spec.period, spec.timeout) == (0.0, 10.0, 1.0)
    assert (spec.success_threshold, spec.failure_threshold) == (1, 3)
    exec_spec = ProbeSpec.from_spec(
        {"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 2, "failureThreshold": 1}
    )
    assert exec_spec is not None and exec_spec.command == ("cat", "/tmp/ok")
    assert (exec_spec.period, exec_spec.failure_threshold) == (2.0, 1)
    tcp = ProbeSpec.from_spec({"tcpSocket": {"port": 80}, "timeoutSeconds": 3})
    assert tcp is not None and (tcp.handler, tcp.port, tcp.timeout) == ("tcpSocket", 80, 3.0)
    with pytest.raises(ValueError, match="grpc is not supported"):
        ProbeSpec.from_spec({"grpc": {"port": 9000}})


def test_named_ports() -> None:
    ports = ({"name": "http", "containerPort": 8080},)
    assert resolve_port("http", ports) == 8080
    assert resolve_port(81, ports) == 81
    assert resolve_port("82", ports) == 82
    with pytest.raises(ValueError, match="'grpc' is not a number nor a named port"):
        resolve_port("grpc", ports)


def test_thresholds() -> None:
    counter = ProbeCounter(success_threshold=2, failure_threshold=3)
    assert [counter.observe(ok) for ok in (True, True, True)] == [False, True, False]
    assert counter.outcome is True
    assert [counter.observe(ok) for ok in (False, False, True, False, False, False)] == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    assert counter.outcome is False


def test_http_request_text() -> None:
    assert render_http_request("/healthz", "10.244.0.2", 8080, [("X-Probe", "1")]) == (
        b"GET /healthz HTTP/1.1\r\nHost: 10.244.0.2:8080\r\nUser-Agent: kube-probe/1.32\r\n"
        b"Accept: */*\r\nX-Probe: 1\r\nConnection: close\r\n\r\n"
    )
    assert parse_status_code(b"HTTP/1.1 503 Service Unavailable\r\n") == 503
    with pytest.raises(ValueError, match="not an HTTP status line"):
        parse_status_code(b"SSH-2.0-OpenSSH\r\n")
