"""Per-namespace kernel parameters for real, including interfaces whose names have dots."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from podnet.kernel import sysctl
from podnet.kernel.links import Netlink

pytestmark = pytest.mark.root


def test_interface_names_with_dots_address_their_own_parameters(
    new_netns: Callable[[], str],
) -> None:
    ns = new_netns()
    with Netlink(ns) as nl:
        nl.ensure_bridge("br.1")  # a dotted name, like flannel.1 or a VLAN eth0.100
    key = sysctl.interface_key("br.1", "arp_notify")
    assert sysctl.exists(key, ns)
    sysctl.write(key, 1, ns)
    assert sysctl.read(key, ns) == "1"
    assert sysctl.read(sysctl.interface_key("lo", "arp_notify"), ns) == "0"  # only br.1's
    # the dotted form splits the name: the error names the key and the namespace
    with pytest.raises(
        sysctl.SysctlError, match=rf"net\.ipv4\.conf\.br\.1\.arp_notify=1 in '{ns}'"
    ):
        sysctl.write("net.ipv4.conf.br.1.arp_notify", 1, ns)
    assert not sysctl.exists(sysctl.interface_key("br.2", "arp_notify"), ns)
