"""net-conf parsing and validation (flannel's CheckNetworkConfig rules) and subnet.env text."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.agent.flannel.config import (
    NetConfigError,
    make_config,
    parse_net_conf,
    render_subnet_env,
)


def test_flannel_defaults_match_the_shipped_manifest() -> None:
    conf = parse_net_conf('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    assert str(conf.network) == "10.244.0.0/16"
    assert conf.subnet_len == 24
    # the first subnet is skipped (its base would be the network address)
    assert str(conf.subnet_min) == "10.244.1.0"
    assert str(conf.subnet_max) == "10.244.255.0"
    assert conf.backend_type == "vxlan"


def test_flannel_missing_backend_is_explicitly_vxlan() -> None:
    assert parse_net_conf('{"Network": "10.244.0.0/16"}').backend_type == "vxlan"


def test_flannel_documented_example_with_options() -> None:
    conf = parse_net_conf(
        '{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0",'
        ' "SubnetMax": "10.99.0.0", "Backend": {"Type": "udp", "Port": 7890}}'
    )
    assert (conf.subnet_len, str(conf.subnet_min), str(conf.subnet_max)) == (
        20,
        "10.10.0.0",
        "10.99.0.0",
    )
    assert conf.backend_type == "udp"
    assert conf.backend_option("port", 8285) == 7890
    assert conf.backend_option("VNI", 1) == 1


def test_flannel_small_networks_get_prefix_plus_two() -> None:
    assert make_config("10.1.0.0/24").subnet_len == 26
    assert make_config("10.1.0.0/22").subnet_len == 24


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"Network": "10.1.0.0/29"}', "minimum useful network prefix is /28"),
        ('{"Network": "10.244.0.0/16", "SubnetLen": 31}', "at most 30"),
        ('{"Network": "10.244.0.0/16", "SubnetLen": 17}', "at least four subnets"),
        ('{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}', "inside Network"),
        ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.5"}', "aligned to SubnetLen"),
        (
            '{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.3.0"}',
            "must not be above SubnetMax",
        ),
        ('{"Network": "banana"}', "Network: must be an IPv4 network"),
        ('{"SubnetLen": 24}', "Network is required"),
        ('{"Network": "10.244.0.0/16", "Bogus": 1}', "unsupported keys ['Bogus']"),
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_flannel_invalid_configs_name_the_rule(text: str, message: str) -> None:
    with pytest.raises(NetConfigError) as err:
        parse_net_conf(text)
    assert message in str(err.value)


def test_flannel_net_conf_round_trips() -> None:
    conf = make_config("10.244.0.0/16", backend_type="host-gw")
    assert parse_net_conf(conf.to_json()) == conf


def test_flannel_subnet_env_golden() -> None:
    conf = make_config()
    text = render_subnet_env(conf, ipaddress.IPv4Network("10.244.3.0/24"), 1450, True)
    assert text == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.3.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )
    off = render_subnet_env(conf, ipaddress.IPv4Network("10.244.0.0/24"), 1472, False)
    assert "FLANNEL_SUBNET=10.244.0.1/24\n" in off
    assert off.endswith("FLANNEL_IPMASQ=false\n")
    # the udp backend's line for the pods' eth0, after flannel's four
    udp = render_subnet_env(conf, ipaddress.IPv4Network("10.244.0.0/24"), 1472, False, 44)
    assert udp == off + "PODNET_GSO_MAX_SEGS=44\n"
