"""Root qdiscs of one interface (rtnetlink through pyroute2): how `podnet fault` shapes traffic.

What belongs here: `set_tbf` (a token bucket: the bandwidth fault), `set_netem` (delay, jitter,
loss, corruption, duplication, where the kernel has `sch_netem`), `clear_root` (back to the
kernel's default) and `netem_available`, the probe `podnet fault` runs once. Callers pass a
namespace, an interface name and plain numbers; no pyroute2 message leaves this module.

Invariants: each call replaces the interface's root qdisc as a whole (a fault owns the root
while it lasts); `clear_root` on an interface without one of ours is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import secrets

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from podnet.kernel import netns as netns_mod

TC_H_ROOT = 0xFFFFFFFF


class QdiscError(Exception):
    """A qdisc could not be set or removed; the message names the interface and the reason."""


def _ipr(netns: str | None) -> IPRoute:
    return NetNS(netns) if netns else IPRoute()


def _index(ipr: IPRoute, ifname: str, where: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise QdiscError(f"no interface {ifname} in {where}")
    return int(found[0])


def set_tbf(netns: str | None, ifname: str, rate_bps: int, burst_bytes: int | None = None) -> None:
    """Limit `ifname`'s egress to `rate_bps` bits a second (tbf, 50 ms of queue)."""
    where = f"network namespace {netns}" if netns else "this namespace"
    burst = burst_bytes or max(rate_bps // 8 // 100, 16 * 1024)  # 10 ms of data, >= 16 KiB
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname, where)
        try:
            ipr.tc("replace", "tbf", index, 0x10000, rate=f"{rate_bps}bit", burst=burst,
                   latency="50ms")  # fmt: skip
        except NetlinkError as exc:
            raise QdiscError(f"tbf on {ifname} in {where}: {exc}") from exc


def set_netem(
    netns: str | None,
    ifname: str,
    *,
    delay_ms: float = 0.0,
    jitter_ms: float = 0.0,
    loss_percent: float = 0.0,
    corrupt_percent: float = 0.0,
    duplicate_percent: float = 0.0,
) -> None:
    where = f"network namespace {netns}" if netns else "this namespace"
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname, where)
        options: dict[str, float] = {}
        if delay_ms:
            options["delay"] = int(delay_ms * 1000)  # microseconds
        if jitter_ms:
            options["jitter"] = int(jitter_ms * 1000)
        if loss_percent:
            options["loss"] = loss_percent
        if corrupt_percent:
            options["corrupt"] = corrupt_percent
        if duplicate_percent:
            options["duplicate"] = duplicate_percent
        try:
            ipr.tc("replace", "netem", index, 0x10000, **options)
        except NetlinkError as exc:
            raise QdiscError(f"netem on {ifname} in {where}: {exc}") from exc


def clear_root(netns: str | None, ifname: str) -> None:
    """Remove the root qdisc (the kernel puts its default back)."""
    if netns and not netns_mod.exists(netns):
        return  # the namespace is gone, and the qdisc with it
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return
        try:
            ipr.tc("del", index=found[0], handle=0x10000, parent=TC_H_ROOT)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise QdiscError(f"removing the root qdisc of {ifname}: {exc}") from exc


def netem_available() -> bool:
    """Whether this kernel has `sch_netem`: try it on the loopback of a throwaway namespace."""
    name = f"pnq-probe-{secrets.token_hex(4)}"
    netns_mod.create(name)
    try:
        with NetNS(name) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            try:
                ipr.tc("add", "netem", lo, 0x10000, delay=1000)
            except NetlinkError:
                return False
            with contextlib.suppress(NetlinkError):
                ipr.tc("del", index=lo, handle=0x10000)
            return True
    finally:
        netns_mod.delete(name)
