"""Kernel parameters under /proc/sys, read and written inside a chosen network namespace.

Files under /proc/sys/net belong to the network namespace of the thread that opens them, so
every access goes through `netns.call_in` (a short-lived thread inside the namespace); the
caller's own thread never switches. Keys use sysctl's dotted form ("net.ipv4.ip_forward",
"net.ipv4.conf.cni0.route_localnet"); podnet's interface names never contain dots, so the
dotted form is unambiguous.

The bridge-netfilter keys exist only when br_netfilter is in the kernel; `bridge_nf_call_iptables`
returns None in that case instead of failing, because kube-proxy must know whether traffic
between two pods on one bridge passes through iptables at all.
"""

from __future__ import annotations

from pathlib import Path

from podnet.kernel import netns as netns_ops

PROC_SYS = Path("/proc/sys")


class SysctlError(Exception):
    """A parameter could not be read or written; the message names it and the namespace."""


def key_path(key: str) -> Path:
    parts = key.split(".")
    if not all(parts) or any("/" in p for p in parts):
        raise SysctlError(f"invalid sysctl key {key!r}")
    return PROC_SYS.joinpath(*parts)


def read(key: str, netns: str | None = None) -> str:
    target = key_path(key)

    def do_read() -> str:
        try:
            return target.read_text().strip()
        except OSError as exc:
            where = f" in {netns!r}" if netns else ""
            raise SysctlError(f"cannot read {key}{where}: {exc.strerror}") from exc

    return netns_ops.call_in(netns, do_read)


def write(key: str, value: str | int, netns: str | None = None) -> None:
    """Set a parameter; writing the value it already has is a no-op."""
    target = key_path(key)
    text = str(value)

    def do_write() -> None:
        try:
            if target.read_text().strip() == text:
                return
            target.write_text(text + "\n")
        except OSError as exc:
            where = f" in {netns!r}" if netns else ""
            raise SysctlError(f"cannot set {key}={text}{where}: {exc.strerror}") from exc

    netns_ops.call_in(netns, do_write)


def enable_ip_forward(netns: str | None = None) -> None:
    write("net.ipv4.ip_forward", 1, netns)


def bridge_nf_call_iptables(netns: str | None = None) -> bool | None:
    """Whether bridged IPv4 traffic passes iptables; None when br_netfilter is absent."""
    key = "net.bridge.bridge-nf-call-iptables"
    if not netns_ops.call_in(netns, key_path(key).exists):
        return None
    return read(key, netns) == "1"
