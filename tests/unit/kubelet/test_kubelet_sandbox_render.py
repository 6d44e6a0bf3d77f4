"""Pod /etc/hosts, /etc/resolv.conf, subnet.env and sandbox names (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.agent.kubelet.sandbox import (
    kube_dns_ip,
    parse_subnet_env,
    read_subnet_env,
    render_hosts,
    render_resolv_conf,
    sandbox_netns_name,
)


def test_hosts_file_golden() -> None:
    assert render_hosts("web-0", "10.244.1.2") == (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        "10.244.1.2\tweb-0\n"
    )


def test_resolv_conf_golden() -> None:
    assert render_resolv_conf("team-a") == (
        "# podnet: cluster DNS is the kube-dns Service 10.96.0.10; no DNS server is deployed\n"
        "# yet, so names other than this pod's own (in /etc/hosts) do not resolve.\n"
        "search team-a.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )
    assert kube_dns_ip("10.96.0.0/12") == "10.96.0.10"


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
