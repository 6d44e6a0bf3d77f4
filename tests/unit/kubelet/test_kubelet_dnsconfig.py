"""A pod's resolv.conf, /etc/hosts and hostname, golden, policy by policy (dnsconfig.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from podnet.agent.kubelet.dnsconfig import PodDnsError, fit_searches, pod_dns_files
from podnet.dns.resolvconf import ResolvConf, parse_resolv_conf, read_resolv_conf

NODE = parse_resolv_conf(
    "# written by the node's DHCP client\n"
    "domain ignored.example\n"
    "search corp.example. lab.example .\n"
    "nameserver 192.0.2.53\n"
    "nameserver 192.0.2.54\n"
    "options timeout:2\n"
    "options attempts:3 timeout:1\n"
)
HEADER = (
    "# Kubernetes-managed hosts file.\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web-0", "namespace": "team-a"}, "spec": spec}


def files(p: dict[str, Any], node: ResolvConf = NODE) -> Any:
    return pod_dns_files(
        p,
        ["10.244.1.2"],
        cluster_domain="cluster.local",
        cluster_dns=["10.96.0.10"],
        node_resolv_conf=node,
    )


def test_node_resolv_conf_is_parsed_as_the_kubelet_does() -> None:
    assert (
        ResolvConf(
            nameservers=("192.0.2.53", "192.0.2.54"),
            searches=("corp.example", "lab.example"),
            options=("timeout:1", "attempts:3"),
        )
        == NODE
    )


def test_cluster_first_is_the_default() -> None:
    assert files(pod()).resolv_conf == (
        "search team-a.svc.cluster.local svc.cluster.local cluster.local corp.example "
        "lab.example\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )
    assert files(pod(dnsPolicy="ClusterFirst"), ResolvConf()).resolv_conf == (
        "search team-a.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )


def test_default_is_the_nodes_file() -> None:
    assert files(pod(dnsPolicy="Default")).resolv_conf == (
        "search corp.example lab.example\n"
        "nameserver 192.0.2.53\n"
        "nameserver 192.0.2.54\n"
        "options timeout:1 attempts:3\n"
    )


def test_host_network_pods_use_the_nodes_file_unless_cluster_first_with_host_net() -> None:
    assert files(pod(hostNetwork=True)).resolv_conf == files(pod(dnsPolicy="Default")).resolv_conf
    assert files(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")).resolv_conf == (
        files(pod()).resolv_conf
    )


def test_none_takes_only_dns_config() -> None:
    dns_config = {
        "nameservers": ["192.0.2.1"],
        "searches": ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
    }
    assert files(pod(dnsPolicy="None", dnsConfig=dns_config)).resolv_conf == (
        "search ns1.svc.cluster-domain.example my.dns.search.suffix\n"
        "nameserver 192.0.2.1\n"
        "options ndots:2 edns0\n"
    )
    assert files(pod(dnsPolicy="None")).resolv_conf == ""


def test_dns_config_is_appended_and_its_options_override() -> None:
    dns_config = {
        "nameservers": ["10.96.0.10", "192.0.2.1"],
        "searches": ["cluster.local", "extra.example"],
        "options": [{"name": "ndots", "value": "1"}, {"name": "single-request-reopen"}],
    }
    assert files(pod(dnsConfig=dns_config), ResolvConf()).resolv_conf == (
        "search team-a.svc.cluster.local svc.cluster.local cluster.local extra.example\n"
        "nameserver 10.96.0.10\n"
        "nameserver 192.0.2.1\n"
        "options ndots:1 single-request-reopen\n"
    )


def test_limits_on_nameservers_and_search_domains() -> None:
    dns_config = {"nameservers": [f"192.0.2.{i}" for i in range(1, 6)]}
    resolv = files(pod(dnsPolicy="None", dnsConfig=dns_config)).resolv_conf
    assert resolv.count("nameserver") == 3
    assert fit_searches([f"d{i}.example" for i in range(40)]) == [
        f"d{i}.example" for i in range(32)
    ]
    assert fit_searches(["a" * 254, "ok.example"]) == ["ok.example"]
    long_domains = [("x" * 200) + f".{i}" for i in range(12)]
    fitted = fit_searches(long_domains)
    assert len(" ".join(fitted)) <= 2048 and fitted == long_domains[: len(fitted)]


def test_hosts_file_and_hostname() -> None:
    plain = files(pod())
    assert plain.hostname == "web-0"
    assert plain.hosts == HEADER + "10.244.1.2\tweb-0\n"


def test_hostname_and_subdomain_give_the_pod_its_fqdn() -> None:
    named = files(pod(hostname="db-0", subdomain="db"))
    assert named.hostname == "db-0"
    assert named.hosts == HEADER + "10.244.1.2\tdb-0.db.team-a.svc.cluster.local\tdb-0\n"
    fqdn = files(pod(hostname="db-0", subdomain="db", setHostnameAsFQDN=True))
    assert fqdn.hostname == "db-0.db.team-a.svc.cluster.local"
    assert fqdn.hosts == named.hosts


def test_long_pod_names_are_cut_to_a_valid_hostname() -> None:
    long = {"metadata": {"name": "a" * 62 + "-bcd", "namespace": "default"}, "spec": {}}
    assert files(long).hostname == "a" * 62


def test_host_aliases() -> None:
    aliases = [
        {"ip": "127.0.0.1", "hostnames": ["foo.local", "bar.local"]},
        {"ip": "10.1.2.3", "hostnames": ["foo.remote"]},
    ]
    assert files(pod(hostAliases=aliases)).hosts == (
        HEADER + "10.244.1.2\tweb-0\n"
        "\n# Entries added by HostAliases.\n"
        "127.0.0.1\tfoo.local\tbar.local\n"
        "10.1.2.3\tfoo.remote\n"
    )


def test_bad_settings_are_refused_with_the_field() -> None:
    with pytest.raises(PodDnsError, match="dnsPolicy 'Sometimes'"):
        files(pod(dnsPolicy="Sometimes"))
    too_long = pod(hostname="h" * 40, subdomain="s" * 30, setHostnameAsFQDN=True)
    with pytest.raises(PodDnsError, match="setHostnameAsFQDN"):
        files(too_long)


def test_a_missing_node_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_resolv_conf(tmp_path / "absent") == ResolvConf()
    assert read_resolv_conf(None) == ResolvConf()
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.9\n")
    assert read_resolv_conf(tmp_path / "resolv.conf").nameservers == ("192.0.2.9",)
