"""Links, addresses and routes through `Netlink`, in throwaway namespaces."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from podnet.kernel.links import LinkError, Netlink

pytestmark = pytest.mark.root


def test_ensure_bridge_is_idempotent_and_pins_mtu(new_netns: Callable[[], str]) -> None:
    with Netlink(new_netns()) as nl:
        first = nl.ensure_bridge("pt1br", mtu=1450)
        again = nl.ensure_bridge("pt1br", mtu=1450)
        assert first == again
        assert (first.kind, first.mtu, first.up) == ("bridge", 1450, True)
        assert nl.ensure_bridge("pt1br", mtu=1400).mtu == 1400


def test_ensure_bridge_rebuilds_a_link_of_another_kind(new_netns: Callable[[], str]) -> None:
    with Netlink(new_netns()) as nl:
        nl.create_veth("pt1br", "pt1peer")
        rebuilt = nl.ensure_bridge("pt1br")
        assert rebuilt.kind == "bridge"
        assert nl.link("pt1peer") is None  # the old veth went with its peer


def test_veth_into_another_namespace_as_a_bridge_port(new_netns: Callable[[], str]) -> None:
    node, pod = new_netns(), new_netns()
    with Netlink(node) as host:
        host.ensure_bridge("pt1br")
        veth = host.create_veth("pt1v0", "eth0", peer_netns=f"/run/netns/{pod}", mtu=1400)
        host.set_master("pt1v0", "pt1br")
        host.set_hairpin("pt1v0", True)
        host.set_up("pt1v0")
        port = host.require("pt1v0")
        assert port.master == host.require("pt1br").index
        assert host.hairpin("pt1v0") is True
        assert veth.mtu == 1400
        with Netlink(pod) as inside:
            eth0 = inside.require("eth0")
            assert (eth0.kind, eth0.mtu) == ("veth", 1400)
            inside.set_up("eth0")
            assert inside.wait_running("eth0").running
            # deleting one end removes the pair
            assert inside.delete_link("eth0") is True
            assert inside.delete_link("eth0") is False
        assert host.link("pt1v0") is None


def test_addresses_and_routes(new_netns: Callable[[], str]) -> None:
    with Netlink(new_netns()) as nl:
        nl.create_veth("pt1a", "pt1b")
        nl.set_up("pt1a")
        nl.set_up("pt1b")
        assert nl.ensure_address("pt1a", "10.77.0.2/24") is True
        assert nl.ensure_address("pt1a", "10.77.0.2/24") is False
        assert [a.cidr for a in nl.addresses("pt1a")] == ["10.77.0.2/24"]

        nl.replace_route("default", gateway="10.77.0.1")
        nl.replace_route("10.99.0.0/16", gateway="10.99.0.0", dev="pt1b", onlink=True)
        nl.replace_route("10.88.0.0/16", dev="pt1b")
        routes = {r.dst: r for r in nl.routes()}
        assert routes["0.0.0.0/0"].gateway == "10.77.0.1"
        assert routes["10.99.0.0/16"].onlink
        assert routes["10.99.0.0/16"].oif == nl.require("pt1b").index
        assert routes["10.88.0.0/16"].gateway is None
        assert routes["10.77.0.0/24"].src == "10.77.0.2"  # the kernel's connected route

        # replace moves the route instead of failing with EEXIST
        nl.replace_route("10.88.0.0/16", dev="pt1a")
        assert {r.dst: r for r in nl.routes()}["10.88.0.0/16"].oif == nl.require("pt1a").index
        assert nl.delete_route("10.88.0.0/16") is True
        assert nl.delete_route("10.88.0.0/16") is False

        assert nl.flush_addresses("pt1a") == 1
        assert nl.addresses("pt1a") == []


def test_many_addresses_go_in_batches_and_keep_what_is_there(new_netns: Callable[[], str]) -> None:
    many = [f"10.97.{i // 256}.{i % 256}/32" for i in range(600)]  # three batches
    with Netlink(new_netns()) as nl:
        assert nl.ensure_address("lo", many[300], "lo:pt1") is True
        assert nl.add_addresses("lo", many, "lo:pt1") == 600  # one was there: no error
        assert sorted(a.cidr for a in nl.labelled_addresses("lo:pt1")) == sorted(many)
        assert nl.add_addresses("lo", many, "lo:pt1") == 600  # again: nothing changes
        assert len(nl.labelled_addresses("lo:pt1")) == 600

        with pytest.raises(LinkError, match=r"2 refused \(10\.98\.0\.1/32, 10\.98\.0\.2/32\)"):
            nl.add_addresses("lo", ["10.98.0.1/32", "10.98.0.2/32"], "lo:a-label-too-long")

        gone = [*many[:400], "10.99.0.1/32"]  # one never was there: skipped
        assert nl.delete_addresses("lo", gone) == 400
        assert sorted(a.cidr for a in nl.labelled_addresses("lo:pt1")) == sorted(many[400:])
        assert nl.delete_addresses("pt1nope", many) == 0


def test_errors_name_the_object(new_netns: Callable[[], str]) -> None:
    with Netlink(new_netns()) as nl:
        with pytest.raises(LinkError, match="'pt1nope' does not exist"):
            nl.set_up("pt1nope")
        nl.create_veth("pt1a", "pt1b")
        with pytest.raises(LinkError, match="creating veth pt1a") as info:
            nl.create_veth("pt1a", "pt1c")
        assert info.value.errno is not None
