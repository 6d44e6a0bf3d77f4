"""BridgeConfig validation, upstream netconf parsing, result JSON per version, and the plugin
protocol for the commands that need no kernel (VERSION, errors, DEL without a netns)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podnet.agent.cni import BridgeConfig, CniError, parse_netconf
from podnet.agent.cni.bridge import masq_chain, render_masq_add, render_masq_del
from podnet.agent.cni.hostlocal import AddressRange, HostLocal
from podnet.agent.cni.plugin import run_plugin
from podnet.agent.cni.result import CniDns, CniInterface, CniIp, CniResult, CniRoute


def test_bridge_config_defaults_and_derived_values(tmp_path: Path) -> None:
    conf = BridgeConfig(subnet="10.244.1.0/24", data_dir=tmp_path)
    assert (conf.name, conf.bridge, conf.mtu, conf.gso_max_segs) == ("cbr0", "cni0", 1500, None)
    assert conf.hairpin_mode and conf.is_default_gateway and not conf.ip_masq
    assert conf.gateway_cidr == "10.244.1.1/24"
    assert conf.store_dir == tmp_path / "cbr0"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"subnet": "10.244.1.1/24"}, "subnet must be an IPv4 network address"),
        ({"subnet": "10.244.1.0/31"}, "too small"),
        ({"gateway": "10.9.0.1"}, "gateway must be inside subnet 10.244.1.0/24"),
        ({"mtu": 20}, "mtu must be between 68 and 65535"),
        ({"gso_max_segs": 0}, "gso_max_segs must be between 1 and 65535"),
        ({"gso_max_segs": 65536}, "gso_max_segs must be between 1 and 65535"),
        ({"routes": ("10.244.0.0/99",)}, "routes must be IPv4 networks"),
        ({"bridge": "a/b"}, "invalid interface name"),
        ({"name": "bad name"}, "name must be"),
    ],
)
def test_bridge_config_rejects_bad_values_naming_the_field(
    changes: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"subnet": "10.244.1.0/24", **changes}
    with pytest.raises(CniError, match=message) as info:
        BridgeConfig(**fields)  # type: ignore[arg-type]
    assert info.value.code == 7


def test_parse_netconf_flannel_delegate_shape() -> None:
    conf = parse_netconf(
        {
            "cniVersion": "0.3.1",
            "name": "cbr0",
            "type": "bridge",
            "hairpinMode": True,
            "isDefaultGateway": True,
            "isGateway": True,
            "ipMasq": False,
            "mtu": 1450,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.1.0/24"}]],
                "routes": [{"dst": "10.244.0.0/16"}],
                "dataDir": "/tmp/x",
            },
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
        }
    )
    assert conf == BridgeConfig(
        subnet="10.244.1.0/24",
        mtu=1450,
        routes=("10.244.0.0/16",),
        data_dir=Path("/tmp/x"),
        dns_nameservers=("10.96.0.10",),
        dns_search=("default.svc.cluster.local",),
    )


def test_parse_netconf_upstream_defaults_and_legacy_subnet() -> None:
    conf = parse_netconf({"name": "n", "ipam": {"subnet": "10.1.0.0/16", "gateway": "10.1.0.254"}})
    assert not conf.hairpin_mode and not conf.is_default_gateway and not conf.is_gateway
    assert str(conf.gateway_address) == "10.1.0.254"
    with_default = parse_netconf(
        {"ipam": {"subnet": "10.1.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]}}
    )
    assert with_default.is_default_gateway and with_default.routes == ()


@pytest.mark.parametrize(
    ("conf", "code"),
    [
        ({}, 7),
        ({"ipam": {"type": "dhcp"}}, 2),
        ({"ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]}}, 2),
        ({"ipam": {"subnet": "10.1.0.0/24"}, "vlan": 5}, 2),
        (
            {"ipam": {"subnet": "10.1.0.0/24", "routes": [{"dst": "1.0.0.0/8", "gw": "10.1.0.9"}]}},
            2,
        ),
        ({"ipam": {"subnet": "10.1.0.0/24"}, "hairpinMode": "yes"}, 7),
    ],
)
def test_parse_netconf_errors_have_spec_codes(conf: dict[str, object], code: int) -> None:
    with pytest.raises(CniError) as info:
        parse_netconf(conf)
    assert info.value.code == code


RESULT = CniResult(
    interfaces=(
        CniInterface("cni0", "aa:aa:aa:aa:aa:aa"),
        CniInterface("veth0123abcd", "bb:bb:bb:bb:bb:bb"),
        CniInterface("eth0", "cc:cc:cc:cc:cc:cc", sandbox="/run/netns/p"),
    ),
    ips=(CniIp("10.244.1.2/24", "10.244.1.1", interface=2),),
    routes=(CniRoute("10.244.0.0/16"), CniRoute("0.0.0.0/0", "10.244.1.1")),
    dns=CniDns(nameservers=("10.96.0.10",)),
)


def test_result_json_1_0_0_golden() -> None:
    assert RESULT.to_json("1.0.0") == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
            {"name": "veth0123abcd", "mac": "bb:bb:bb:bb:bb:bb"},
            {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/p"},
        ],
        "ips": [{"interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}],
        "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }
    assert RESULT.pod_ip == "10.244.1.2"


def test_result_json_0_3_1_has_ip_versions() -> None:
    assert RESULT.to_json("0.3.1")["ips"][0]["version"] == "4"
    with pytest.raises(ValueError, match="unsupported CNI version"):
        RESULT.to_json("0.2.0")


def test_masq_rules_golden(tmp_path: Path) -> None:
    conf = BridgeConfig(subnet="10.244.1.0/24", data_dir=tmp_path, ip_masq=True)
    chain = masq_chain(conf, "ctr1")
    assert chain.startswith("CNI-") and len(chain) <= 28
    comment = '-m comment --comment "name: cbr0 id: ctr1"'
    assert render_masq_add(conf, "ctr1", "10.244.1.2") == (
        f"*nat\n:{chain} - [0:0]\n"
        f"-A {chain} -d 10.244.1.0/24 {comment} -j ACCEPT\n"
        f"-A {chain} ! -d 224.0.0.0/4 {comment} -j MASQUERADE\n"
        f"-A POSTROUTING -s 10.244.1.2/32 {comment} -j {chain}\n"
        "COMMIT\n"
    )
    assert render_masq_del(conf, "ctr1", "10.244.1.2") == (
        f"*nat\n-D POSTROUTING -s 10.244.1.2/32 {comment} -j {chain}\n"
        f"-F {chain}\n-X {chain}\nCOMMIT\n"
    )


def _conf(tmp_path: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "podnet-bridge",
            "ipam": {"subnet": "10.244.3.0/24", "dataDir": str(tmp_path)},
        }
    )


def test_plugin_del_without_netns_releases_the_address(tmp_path: Path) -> None:
    hl = HostLocal(tmp_path / "cbr0", AddressRange.from_subnet("10.244.3.0/24"))
    hl.allocate("ctr9", "eth0")
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "ctr9", "CNI_IFNAME": "eth0"}
    assert run_plugin(env, _conf(tmp_path)) == (0, "")
    assert run_plugin(env, _conf(tmp_path)) == (0, "")
    assert hl.allocated() == {}


@pytest.mark.parametrize(
    ("env", "stdin", "code", "msg"),
    [
        ({"CNI_COMMAND": "BOGUS"}, "{}", 4, "unknown CNI_COMMAND: BOGUS"),
        ({}, "{}", 4, "unknown CNI_COMMAND: (unset)"),
        (
            {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"},
            '{"cniVersion": "1.0.0", "type": "macvlan"}',
            7,
            "this plugin handles type podnet-bridge or bridge",
        ),
        (
            {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "bad id", "CNI_IFNAME": "eth0"},
            None,
            4,
            "invalid container id: use letters, digits, '_', '.' and '-'",
        ),
        (
            {
                "CNI_COMMAND": "CHECK",
                "CNI_CONTAINERID": "c",
                "CNI_IFNAME": "eth0",
                "CNI_NETNS": "/run/netns/x",
            },
            '{"cniVersion": "0.3.1", "type": "bridge", "ipam": {"subnet": "10.1.0.0/24"}}',
            1,
            "config version 0.3.1 does not allow CHECK",
        ),
    ],
)
def test_plugin_errors(
    tmp_path: Path, env: dict[str, str], stdin: str | None, code: int, msg: str
) -> None:
    exit_code, out = run_plugin(env, stdin if stdin is not None else _conf(tmp_path))
    assert exit_code == 1
    error = json.loads(out)
    assert (error["code"], error["msg"]) == (code, msg)
    assert error["cniVersion"] in ("1.0.0", "0.3.1", "1.1.0")
