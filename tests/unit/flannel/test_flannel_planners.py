"""The backends' planners (golden text), the host-gw reachability check, masquerade rules
(golden text) and the backend registry."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from podnet.agent.flannel.backend import ExternalInterface, FlannelError
from podnet.agent.flannel.hostgw import (
    HostRoute,
    NotOnSameSegment,
    check_direct,
    desired_host_routes,
    plan_host_routes,
    render_host_gw_plan,
)
from podnet.agent.flannel.leases import Lease, lease_from_node, own_lease_patch
from podnet.agent.flannel.masq import (
    FILTER_READ,
    NAT_READ,
    missing_jumps,
    own_lines,
    render_flannel_rules,
    rules_in_place,
)
from podnet.agent.flannel.registry import BACKENDS, get_backend
from podnet.agent.flannel.vxlan import (
    VxlanObserved,
    desired_vteps,
    plan_vxlan,
    random_mac,
    render_vxlan_plan,
)
from podnet.kernel.overlay import RouteLookup, VxlanInfo, VxlanSpec, vxlan_incompat

EXT = ExternalInterface("eth0", 2, "172.31.1.11", 1500)


def lease(name: str, index: int, backend: str = "vxlan", vni: int = 1) -> Lease:
    data: dict[str, Any] | None = (
        {"VNI": vni, "VtepMAC": f"02:00:00:00:00:0{index}"} if backend == "vxlan" else None
    )
    obj = {
        "metadata": {
            "name": name,
            "annotations": own_lease_patch(backend, data, f"172.31.1.1{index}")["metadata"][
                "annotations"
            ],
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24"},
    }
    found = lease_from_node(obj)
    assert found is not None
    return found


LEASES = [lease("node3", 3), lease("node2", 2), lease("odd", 5, backend="host-gw")]


# -- vxlan ---------------------------------------------------------------------------------


def test_flannel_vxlan_fresh_node_writes_neigh_fdb_route_per_peer_in_order() -> None:
    plan = plan_vxlan(desired_vteps(LEASES, 1), VxlanObserved({}, {}, {}))
    assert render_vxlan_plan(plan) == (
        "ip neigh replace 10.244.2.0 lladdr 02:00:00:00:00:02 dev flannel.1 nud permanent\n"
        "bridge fdb replace 02:00:00:00:00:02 dev flannel.1 dst 172.31.1.12 self permanent\n"
        "ip route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink\n"
        "ip neigh replace 10.244.3.0 lladdr 02:00:00:00:00:03 dev flannel.1 nud permanent\n"
        "bridge fdb replace 02:00:00:00:00:03 dev flannel.1 dst 172.31.1.13 self permanent\n"
        "ip route replace 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink\n"
    )


def test_flannel_vxlan_reconcile_touches_only_what_is_wrong() -> None:
    observed = VxlanObserved(
        neighbours={
            "10.244.2.0": "02:00:00:00:00:02",  # right
            "10.244.3.0": "02:00:00:00:00:99",  # stale MAC
            "10.244.9.0": "02:00:00:00:00:09",  # a node that left
        },
        fdb={
            "02:00:00:00:00:02": "172.31.1.12",
            "02:00:00:00:00:99": "172.31.1.13",
            "02:00:00:00:00:09": "172.31.1.19",
        },
        routes={
            "10.244.2.0/24": ("10.244.2.0", True),
            "10.244.3.0/24": ("10.244.3.0", True),
            "10.244.9.0/24": ("10.244.9.0", True),
        },
    )
    plan = plan_vxlan(desired_vteps(LEASES, 1), observed)
    assert render_vxlan_plan(plan) == (
        "ip route del 10.244.9.0/24 dev flannel.1\n"
        "bridge fdb del 02:00:00:00:00:09 dev flannel.1 dst 172.31.1.19 self\n"
        "bridge fdb del 02:00:00:00:00:99 dev flannel.1 dst 172.31.1.13 self\n"
        "ip neigh del 10.244.3.0 dev flannel.1\n"
        "ip neigh del 10.244.9.0 dev flannel.1\n"
        "ip neigh replace 10.244.3.0 lladdr 02:00:00:00:00:03 dev flannel.1 nud permanent\n"
        "bridge fdb replace 02:00:00:00:00:03 dev flannel.1 dst 172.31.1.13 self permanent\n"
        "ip route replace 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink\n"
    )


def test_flannel_vxlan_in_sync_means_empty_plan() -> None:
    vteps = desired_vteps(LEASES, 1)
    observed = VxlanObserved(
        {v.gateway: v.mac for v in vteps},
        {v.mac: v.public_ip for v in vteps},
        {v.subnet: (v.gateway, True) for v in vteps},
    )
    assert not plan_vxlan(vteps, observed)
    assert render_vxlan_plan(plan_vxlan(vteps, observed)) == ""


def test_flannel_vxlan_ignores_other_backends_and_vnis() -> None:
    assert [v.node for v in desired_vteps([*LEASES, lease("vni2", 7, vni=2)], 1)] == [
        "node2",
        "node3",
    ]


def test_flannel_vxlan_incompatible_device_says_why() -> None:
    spec = VxlanSpec("flannel.1", 1, "172.31.1.11", 2, 8472, False, 1450, None)
    same = VxlanInfo(
        5, "flannel.1", 1, "172.31.1.11", 2, 8472, False, 1400, "02:aa:00:00:00:01", True
    )
    assert vxlan_incompat(spec, same, "vxlan") is None  # MTU and MAC are fixed in place
    other = VxlanInfo(5, "flannel.1", 2, "172.31.1.99", 2, 4789, True, 1450, None, True)
    assert vxlan_incompat(spec, other, "vxlan") == (
        "vni: 2 vs 1; local: 172.31.1.99 vs 172.31.1.11; port: 4789 vs 8472; "
        "learning: True vs False"
    )
    assert vxlan_incompat(spec, None, "bridge") == "it is a bridge, not a vxlan device"


def test_flannel_random_mac_is_local_unicast() -> None:
    mac = random_mac()
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert len(mac) == 17


# -- host-gw -------------------------------------------------------------------------------


def test_flannel_host_gw_plan_golden() -> None:
    desired = desired_host_routes(
        [lease("a", 2, "host-gw"), lease("b", 3, "host-gw"), lease("v", 4, "vxlan")]
    )
    observed = {"10.244.3.0/24": "172.31.1.99", "10.244.8.0/24": "172.31.1.18"}
    assert render_host_gw_plan(plan_host_routes(desired, observed), "eth0") == (
        "ip route del 10.244.8.0/24 dev eth0\n"
        "ip route replace 10.244.2.0/24 via 172.31.1.12 dev eth0\n"
        "ip route replace 10.244.3.0/24 via 172.31.1.13 dev eth0\n"
    )
    in_sync = {"10.244.2.0/24": "172.31.1.12", "10.244.3.0/24": "172.31.1.13"}
    assert not plan_host_routes(desired, in_sync)


def test_flannel_host_gw_refuses_a_node_behind_a_router() -> None:
    route = HostRoute("node7", "10.244.7.0/24", "10.9.0.7")
    check_direct(route, RouteLookup("172.31.1.12", None, 2, "172.31.1.11"), EXT)  # direct: fine
    with pytest.raises(NotOnSameSegment) as err:
        check_direct(route, RouteLookup("10.9.0.7", "172.31.1.1", 2, "172.31.1.11"), EXT)
    message = str(err.value)
    assert "node node7 (10.9.0.7) is not on this node's L2 segment" in message
    assert "via gateway 172.31.1.1" in message
    with pytest.raises(NotOnSameSegment, match="not the underlay eth0"):
        check_direct(route, RouteLookup("10.9.0.7", None, 9, None), EXT)


# -- masquerade ----------------------------------------------------------------------------


def test_flannel_masquerade_and_forward_rules_golden() -> None:
    text = render_flannel_rules(
        ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24")
    )
    m = '-m comment --comment "flanneld masq"'
    f = '-m comment --comment "flanneld forward"'
    assert text == (
        "*nat\n"
        ":FLANNEL-POSTRTG - [0:0]\n"
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 {m} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 {m} -j RETURN\n"
        f"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 {m} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully\n"
        f"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {m} -j MASQUERADE --random-fully\n"
        f"-A POSTROUTING {m} -j FLANNEL-POSTRTG\n"
        "COMMIT\n"
        "*filter\n"
        ":FLANNEL-FWD - [0:0]\n"
        f"-A FLANNEL-FWD -s 10.244.0.0/16 {f} -j ACCEPT\n"
        f"-A FLANNEL-FWD -d 10.244.0.0/16 {f} -j ACCEPT\n"
        f"-A FORWARD {f} -j FLANNEL-FWD\n"
        "COMMIT\n"
    )


def test_flannel_jumps_are_added_once() -> None:
    assert missing_jumps("*nat\n-A POSTROUTING -j KUBE-POSTROUTING\n", "") == (True, True)
    text = render_flannel_rules(
        ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24")
    )
    assert missing_jumps(text, text) == (False, False)
    again = render_flannel_rules(
        ipaddress.IPv4Network("10.244.0.0/16"),
        ipaddress.IPv4Network("10.244.1.0/24"),
        add_nat_jump=False,
        add_forward_jump=False,
    )
    assert "-A POSTROUTING" not in again and "-A FORWARD" not in again


def test_flannel_rules_in_place_detects_drift() -> None:
    net, sub = ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24")
    text = render_flannel_rules(net, sub)
    nat, filt = text.split("*filter")
    assert rules_in_place(nat, "*filter" + filt, text)
    # a rule deleted by hand, a foreign rule appended, a missing jump, another pod subnet
    assert not rules_in_place(nat.replace("-j MASQUERADE --random-fully\n", "\n", 1), filt, text)
    assert not rules_in_place(nat + "-A FLANNEL-POSTRTG -j ACCEPT\n", filt, text)
    assert not rules_in_place(nat, filt.replace("-A FORWARD", "-A OTHER"), text)
    other = render_flannel_rules(net, ipaddress.IPv4Network("10.244.7.0/24"))
    assert not rules_in_place(nat, filt, other)


def test_flannel_reads_only_its_own_lines_of_a_dump_and_answers_the_same() -> None:
    net, sub = ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24")
    text = render_flannel_rules(net, sub)
    nat, filt = text.split("*filter")
    filt = "*filter" + filt
    kube = "".join(  # kube-proxy's chains around ours, as a busy node's dump has them
        f":KUBE-SEP-{i:016d} - [0:0]\n-A KUBE-SEP-{i:016d} -j DNAT --to-destination 10.244.9.9:80\n"
        for i in range(200)
    )
    nat_dump = nat.replace("*nat\n", "*nat\n-A POSTROUTING -j KUBE-POSTROUTING\n" + kube, 1)
    drifted = nat_dump.replace("-j MASQUERADE --random-fully\n", "\n", 1)
    for dump in (nat_dump, drifted, kube):
        own_nat = own_lines(dump.splitlines(), NAT_READ)
        own_filt = own_lines(filt.splitlines(), FILTER_READ)
        assert "KUBE-SEP" not in own_nat and own_nat.count("\n") <= 8
        assert rules_in_place(own_nat, own_filt, text) == rules_in_place(dump, filt, text)
        assert missing_jumps(own_nat, own_filt) == missing_jumps(dump, filt)
    assert rules_in_place(own_lines(nat_dump.splitlines(), NAT_READ), filt, text)


# -- registry ------------------------------------------------------------------------------


def test_flannel_registry_lists_valid_backends_on_unknown_name() -> None:
    assert sorted(BACKENDS) == ["host-gw", "udp", "vxlan"]
    with pytest.raises(FlannelError) as err:
        get_backend("ipsec", EXT)
    assert str(err.value) == "unknown flannel backend type 'ipsec'; valid: host-gw, udp, vxlan"
    assert type(get_backend("VXLAN", EXT)).__name__ == "VxlanBackend"


def test_flannel_lease_json_survives_round_trip() -> None:
    found = lease("x", 4)
    assert json.loads(json.dumps(dict(found.backend_data))) == {
        "VNI": 1,
        "VtepMAC": "02:00:00:00:00:04",
    }


# -- vxlan write order and rollback (recording stand-ins for the kernel adapters) ----------


class RecordingKernel:
    """Records overlay/netlink calls in order; `fail_on` makes that call raise."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on

    def _do(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_on and call.startswith(self.fail_on):
            from podnet.kernel.links import LinkError
            from podnet.kernel.overlay import OverlayError

            if call.startswith("route"):
                raise LinkError(f"{call} failed", 22)
            raise OverlayError(f"{call} failed", 22)

    def replace_neighbour(self, dev: str, ip: str, mac: str) -> None:
        self._do(f"neigh replace {ip} {mac}")

    def replace_fdb(self, dev: str, mac: str, dst: str) -> None:
        self._do(f"fdb replace {mac} {dst}")

    def delete_fdb(self, dev: str, mac: str, dst: str | None = None) -> bool:
        self._do(f"fdb del {mac} {dst}")
        return True

    def delete_neighbour(self, dev: str, ip: str) -> bool:
        self._do(f"neigh del {ip}")
        return True

    def replace_route(self, dst: str, **kwargs: Any) -> None:
        self._do(f"route replace {dst} via {kwargs['gateway']} onlink={kwargs['onlink']}")


def _write(kernel: RecordingKernel) -> None:
    from podnet.agent.flannel.config import make_config
    from podnet.agent.flannel.vxlan import VxlanNetwork

    network = VxlanNetwork("flannel.1", 1, "02:00:00:00:00:01", 1450, make_config(), None)
    vtep = desired_vteps([lease("node2", 2)], 1)[0]
    network._write(kernel, kernel, vtep)  # type: ignore[arg-type]


def test_flannel_vxlan_writes_neighbour_fdb_route_in_order() -> None:
    kernel = RecordingKernel()
    _write(kernel)
    assert kernel.calls == [
        "neigh replace 10.244.2.0 02:00:00:00:00:02",
        "fdb replace 02:00:00:00:00:02 172.31.1.12",
        "route replace 10.244.2.0/24 via 10.244.2.0 onlink=True",
    ]


@pytest.mark.parametrize(
    ("fail_on", "undo"),
    [
        ("route", ["fdb del 02:00:00:00:00:02 172.31.1.12", "neigh del 10.244.2.0"]),
        ("fdb replace", ["neigh del 10.244.2.0"]),
    ],
)
def test_flannel_vxlan_rolls_back_earlier_steps(fail_on: str, undo: list[str]) -> None:
    from podnet.kernel.links import LinkError
    from podnet.kernel.overlay import OverlayError

    kernel = RecordingKernel(fail_on)
    with pytest.raises((LinkError, OverlayError)):
        _write(kernel)
    failed_at = next(i for i, call in enumerate(kernel.calls) if call.startswith(fail_on))
    assert kernel.calls[failed_at + 1 :] == undo


def test_flannel_component_refuses_an_unknown_backend(tmp_path: Any) -> None:
    from podnet.agent.context import AgentContext
    from podnet.agent.flannel.component import FlannelComponent

    ctx = AgentContext(
        api=None,  # type: ignore[arg-type]  # never reached: construction fails first
        node_name="node1",
        node_ip="172.31.1.11",
        state_dir=tmp_path,
        run_dir=tmp_path / "run",
        backend="wireguard",
    )
    with pytest.raises(FlannelError, match="unknown flannel backend type 'wireguard'; valid: "):
        FlannelComponent(ctx)
