"""flannel's subnet.env and sandbox names (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.agent.kubelet.sandbox import parse_subnet_env, read_subnet_env, sandbox_netns_name


def test_subnet_env_parse(tmp_path: Path) -> None:
    text = (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    env = parse_subnet_env(text)
    assert (env.network, env.subnet, env.mtu, env.ipmasq) == (
        "10.244.0.0/16",
        "10.244.1.1/24",
        1450,
        True,
    )
    assert env.gso_max_segs is None
    udp = parse_subnet_env(text.replace("1450", "1472") + "PODNET_GSO_MAX_SEGS=44\n")
    assert (udp.mtu, udp.gso_max_segs) == (1472, 44)
    with pytest.raises(ValueError, match="PODNET_GSO_MAX_SEGS must be a number, not 'x'"):
        parse_subnet_env(text + "PODNET_GSO_MAX_SEGS=x\n")
    with pytest.raises(ValueError, match="FLANNEL_MTU is missing"):
        parse_subnet_env("FLANNEL_NETWORK=a\nFLANNEL_SUBNET=b\nFLANNEL_IPMASQ=false\n")
    assert read_subnet_env(tmp_path) is None
    (tmp_path / "flannel").mkdir()
    (tmp_path / "flannel" / "subnet.env").write_text(text)
    assert read_subnet_env(tmp_path) == env


def test_sandbox_netns_name_is_derived_and_marked() -> None:
    name = sandbox_netns_name("podnet-lab-", "0b6c7d3e-uid")
    assert name.startswith("podnet-lab-pod-") and len(name) == len("podnet-lab-pod-") + 12
    assert name == sandbox_netns_name("podnet-lab-", "0b6c7d3e-uid")
    assert name != sandbox_netns_name("podnet-lab-", "another-uid")
