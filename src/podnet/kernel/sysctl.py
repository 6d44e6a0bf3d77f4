"""Kernel parameters under /proc/sys, read and written inside a chosen network namespace.

Files under /proc/sys/net belong to the network namespace of the thread that opens them, so
every access goes through `netns.call_in` (a short-lived thread inside the namespace); the
caller's own thread never switches.

Keys are written as sysctl(8) reads them: the dotted form ("net.ipv4.ip_forward") or the slash
form ("net/ipv6/conf/flannel.1/accept_ra"), in which dots are part of a name. A key naming an
interface is built by `interface_key`, which always uses the slash form, so interface names
with dots (`flannel.1`, VLANs like `eth0.100`) address the right file. A key never leaves
/proc/sys: empty, "." and ".." components are refused.

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


IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL


def key_path(key: str) -> Path:
    """The file under /proc/sys a dotted or slash-form key names."""
    parts = key.split("/") if "/" in key else key.split(".")
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise SysctlError(f"invalid sysctl key {key!r}")
    return PROC_SYS.joinpath(*parts)


def interface_key(ifname: str, param: str, family: str = "ipv4") -> str:
    """The key of a per-interface parameter, e.g. ("flannel.1", "accept_ra", "ipv6") ->
    "net/ipv6/conf/flannel.1/accept_ra" (slash form: the name may contain dots)."""
    if (
        not ifname
        or len(ifname) >= IFNAMSIZ
        or ifname in (".", "..")
        or any(c in ifname for c in "/\0")
        or any(c.isspace() for c in ifname)
    ):
        raise SysctlError(f"invalid interface name {ifname!r} for a sysctl key")
    if family not in ("ipv4", "ipv6") or not param or "/" in param or "." in param:
        raise SysctlError(f"invalid per-interface sysctl {family!r} {param!r}")
    return f"net/{family}/conf/{ifname}/{param}"


def exists(key: str, netns: str | None = None) -> bool:
    """Whether the parameter exists (br_netfilter loaded, IPv6 enabled, the link present)."""
    return netns_ops.call_in(netns, key_path(key).exists)


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
    if not exists(key, netns):
        return None
    return read(key, netns) == "1"
