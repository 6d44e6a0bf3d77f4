"""Golden answers of the cluster zone, record by record (records.answer + wire.render).

Each test asks one question of the fixed cluster in `podnet.testing.dns_cluster` and compares
the whole response — rcode, flags, every section — as dnspython prints it after parsing the
bytes the server would send. The expected texts are what CoreDNS's kubernetes plugin answers
(kubeadm's Corefile: `pods insecure`, `ttl 30`, reverse zones falling through).
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from podnet.dns.cluster import ClusterView
from podnet.dns.records import FORWARD, DnsConfig, Reply, answer, complete
from podnet.dns.wire import parse_query, render
from podnet.testing.dns_cluster import cluster_view, endpoint_slice, namespace, service

CONFIG = DnsConfig(local_ips=("10.244.1.2",))
SOA = (
    "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
    "1700000000 7200 1800 86400 30"
)


def ask(
    name: str,
    rdtype: str,
    *,
    view: ClusterView | None = None,
    config: DnsConfig = CONFIG,
    tcp: bool = False,
    upstream: list[dns.rrset.RRset] | None = None,
) -> str:
    """The response as text (without the random id), or FORWARD."""
    request = dns.message.make_query(name, rdtype)
    query = parse_query(request.to_wire())
    reply = answer(view or cluster_view(), config, query.qname, query.qtype)
    if not isinstance(reply, Reply):
        return repr(reply)
    reply = complete(reply, upstream, truncated=False)
    text = dns.message.from_wire(render(query, reply, tcp=tcp)).to_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("id "))


def expect(rcode: str, question: str, answer: str = "", authority: str = "", extra: str = "",
           flags: str = "QR AA RD") -> str:  # fmt: skip
    parts = [f"opcode QUERY\nrcode {rcode}\nflags {flags}\n;QUESTION\n{question}\n;ANSWER"]
    parts += [answer] if answer else []
    parts += [";AUTHORITY"] + ([authority] if authority else [])
    parts += [";ADDITIONAL"] + ([extra] if extra else [])
    return "\n".join(parts)


# -- A ---------------------------------------------------------------------------------------


def test_cluster_ip_service_a() -> None:
    assert ask("web.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "web.default.svc.cluster.local. IN A",
        "web.default.svc.cluster.local. 30 IN A 10.96.0.20",
    )


def test_names_are_case_insensitive_and_the_answer_keeps_the_askers_spelling() -> None:
    assert ask("WEB.Default.SVC.cluster.LOCAL", "A") == expect(
        "NOERROR",
        "WEB.Default.SVC.cluster.LOCAL. IN A",
        "WEB.Default.SVC.cluster.LOCAL. 30 IN A 10.96.0.20",
    )


def test_headless_service_a_is_every_ready_endpoint() -> None:
    # 10.244.1.7 is not ready; 10.244.2.6 has no `ready` condition, which counts as ready
    assert ask("db.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "db.default.svc.cluster.local. IN A",
        "db.default.svc.cluster.local. 30 IN A 10.244.1.5\n"
        "db.default.svc.cluster.local. 30 IN A 10.244.2.6",
    )


def test_endpoint_by_hostname_and_by_dashed_ip() -> None:
    assert ask("db-0.db.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "db-0.db.default.svc.cluster.local. IN A",
        "db-0.db.default.svc.cluster.local. 30 IN A 10.244.1.5",
    )
    assert ask("10-244-2-6.db.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "10-244-2-6.db.default.svc.cluster.local. IN A",
        "10-244-2-6.db.default.svc.cluster.local. 30 IN A 10.244.2.6",
    )


def test_endpoint_names_exist_for_cluster_ip_services_too() -> None:
    assert ask("10-244-1-10.web.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "10-244-1-10.web.default.svc.cluster.local. IN A",
        "10-244-1-10.web.default.svc.cluster.local. 30 IN A 10.244.1.10",
    )


def test_a_slice_without_ports_still_gives_addresses() -> None:
    assert ask("portless.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "portless.default.svc.cluster.local. IN A",
        "portless.default.svc.cluster.local. 30 IN A 10.244.2.9",
    )


def test_a_of_a_port_name_narrows_to_that_port() -> None:
    assert ask("_http._tcp.web.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "_http._tcp.web.default.svc.cluster.local. IN A",
        "_http._tcp.web.default.svc.cluster.local. 30 IN A 10.96.0.20",
    )
    assert ask("_http._udp.web.default.svc.cluster.local", "A") == expect(
        "NXDOMAIN", "_http._udp.web.default.svc.cluster.local. IN A", authority=SOA
    )


# -- negative answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "nope.default.svc.cluster.local",  # no such service
        "web.nons.svc.cluster.local",  # no such namespace
        "nons.svc.cluster.local",  # the namespace of `<ns>.svc` must exist
        "web.default.cluster.local",  # `default` is neither svc nor pod
        "x.cluster.local",
        "nope.db.default.svc.cluster.local",  # no such endpoint
        "10-244-1-7.db.default.svc.cluster.local",  # not ready
        "a.b.c.web.default.svc.cluster.local",  # too many labels
        "web.default.svc.cluster.local.default.svc.cluster.local",  # the search path's misses
        "dns-version.cluster.local",  # only TXT there
    ],
)
def test_names_that_do_not_exist_are_nxdomain_with_the_soa(name: str) -> None:
    assert ask(name, "A") == expect("NXDOMAIN", f"{name}. IN A", authority=SOA)


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("web.default.svc.cluster.local", "AAAA"),  # an IPv4 service
        ("db.default.svc.cluster.local", "AAAA"),
        ("default.svc.cluster.local", "A"),  # a namespace exists as a name
        ("svc.cluster.local", "A"),
        ("pod.cluster.local", "A"),
        ("cluster.local", "A"),  # the apex
        ("web.default.svc.cluster.local", "TXT"),  # TXT is only dns-version
        ("nope.default.svc.cluster.local", "TXT"),  # ... even for absent names (as CoreDNS)
        ("web.default.svc.cluster.local", "MX"),
        ("web.default.svc.cluster.local", "SOA"),  # SOA only at the apex
        ("web.default.svc.cluster.local", "NS"),
        ("web.default.svc.cluster.local", "CNAME"),
        ("web.default.svc.cluster.local", "HTTPS"),
        ("portless.default.svc.cluster.local", "SRV"),  # no port, no SRV
    ],
)
def test_names_that_exist_without_the_type_are_nodata_with_the_soa(name: str, rdtype: str) -> None:
    assert ask(name, rdtype) == expect("NOERROR", f"{name}. IN {rdtype}", authority=SOA)


def test_other_types_of_absent_names_are_nxdomain() -> None:
    assert ask("nope.default.svc.cluster.local", "HTTPS") == expect(
        "NXDOMAIN", "nope.default.svc.cluster.local. IN HTTPS", authority=SOA
    )
    assert ask("nope.default.svc.cluster.local", "SRV") == expect(
        "NXDOMAIN", "nope.default.svc.cluster.local. IN SRV", authority=SOA
    )


def test_servfail_until_every_resource_had_its_first_list() -> None:
    view = ClusterView()
    view.replace("services", [service("default", "web", "10.96.0.20", [("http", 80, "TCP")])])
    view.replace("namespaces", [namespace("default")])
    assert not view.synced
    assert ask("nope.default.svc.cluster.local", "A", view=view) == expect(
        "SERVFAIL",
        "nope.default.svc.cluster.local. IN A",
        authority="cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
        "0 7200 1800 86400 30",
    )
    view.replace("endpointslices", [])
    assert ask("nope.default.svc.cluster.local", "A", view=view).startswith(
        "opcode QUERY\nrcode NXDOMAIN"
    )


def test_a_service_with_no_ready_endpoints_is_nxdomain_when_headless() -> None:
    view = ClusterView.of(
        [service("default", "db", "None", [("mysql", 3306, "TCP")])],
        [endpoint_slice("default", "db", [("10.244.1.7", None, False)], [("mysql", 3306, "TCP")])],
        [namespace("default")],
    )
    assert ask("db.default.svc.cluster.local", "A", view=view).startswith(
        "opcode QUERY\nrcode NXDOMAIN"
    )


# -- SRV ---------------------------------------------------------------------------------------


def test_srv_of_a_named_port() -> None:
    assert ask("_http._tcp.web.default.svc.cluster.local", "SRV") == expect(
        "NOERROR",
        "_http._tcp.web.default.svc.cluster.local. IN SRV",
        "_http._tcp.web.default.svc.cluster.local. 30 IN SRV 0 100 80 "
        "web.default.svc.cluster.local.",
        extra="web.default.svc.cluster.local. 30 IN A 10.96.0.20",
    )


def test_srv_of_the_bare_service_name_lists_every_port_with_the_weight_shared() -> None:
    assert ask("web.default.svc.cluster.local", "SRV") == expect(
        "NOERROR",
        "web.default.svc.cluster.local. IN SRV",
        "web.default.svc.cluster.local. 30 IN SRV 0 50 80 web.default.svc.cluster.local.\n"
        "web.default.svc.cluster.local. 30 IN SRV 0 50 9100 web.default.svc.cluster.local.",
        extra="web.default.svc.cluster.local. 30 IN A 10.96.0.20",
    )


def test_unnamed_ports_answer_only_the_bare_name() -> None:
    assert ask("plain.default.svc.cluster.local", "SRV") == expect(
        "NOERROR",
        "plain.default.svc.cluster.local. IN SRV",
        "plain.default.svc.cluster.local. 30 IN SRV 0 100 8080 plain.default.svc.cluster.local.",
        extra="plain.default.svc.cluster.local. 30 IN A 10.96.0.30",
    )
    assert ask("_http._tcp.plain.default.svc.cluster.local", "SRV").startswith(
        "opcode QUERY\nrcode NXDOMAIN"
    )


def test_headless_srv_is_one_per_endpoint_with_its_address() -> None:
    assert ask("_mysql._tcp.db.default.svc.cluster.local", "SRV") == expect(
        "NOERROR",
        "_mysql._tcp.db.default.svc.cluster.local. IN SRV",
        "_mysql._tcp.db.default.svc.cluster.local. 30 IN SRV 0 50 3306 "
        "db-0.db.default.svc.cluster.local.\n"
        "_mysql._tcp.db.default.svc.cluster.local. 30 IN SRV 0 50 3306 "
        "10-244-2-6.db.default.svc.cluster.local.",
        extra="db-0.db.default.svc.cluster.local. 30 IN A 10.244.1.5\n"
        "10-244-2-6.db.default.svc.cluster.local. 30 IN A 10.244.2.6",
    )


def test_udp_port_names() -> None:
    assert ask("_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV") == expect(
        "NOERROR",
        "_dns._udp.kube-dns.kube-system.svc.cluster.local. IN SRV",
        "_dns._udp.kube-dns.kube-system.svc.cluster.local. 30 IN SRV 0 100 53 "
        "kube-dns.kube-system.svc.cluster.local.",
        extra="kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10",
    )


# -- ExternalName ----------------------------------------------------------------------------


def test_external_name_is_a_cname_followed_upstream() -> None:
    upstream = [dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.80")]
    assert ask("ext.default.svc.cluster.local", "A", upstream=upstream) == expect(
        "NOERROR",
        "ext.default.svc.cluster.local. IN A",
        "ext.default.svc.cluster.local. 30 IN CNAME www.example.com.\n"
        "www.example.com. 300 IN A 192.0.2.80",
    )


def test_external_name_whose_upstream_lookup_fails_is_nodata() -> None:
    assert ask("ext.default.svc.cluster.local", "A", upstream=None) == expect(
        "NOERROR", "ext.default.svc.cluster.local. IN A", authority=SOA
    )


def test_external_name_cname_question() -> None:
    assert ask("ext.default.svc.cluster.local", "CNAME") == expect(
        "NOERROR",
        "ext.default.svc.cluster.local. IN CNAME",
        "ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",
    )


def test_external_name_inside_the_zone_is_resolved_in_the_zone() -> None:
    assert ask("alias.default.svc.cluster.local", "A") == expect(
        "NOERROR",
        "alias.default.svc.cluster.local. IN A",
        "alias.default.svc.cluster.local. 30 IN CNAME web.default.svc.cluster.local.\n"
        "web.default.svc.cluster.local. 30 IN A 10.96.0.20",
    )


def test_external_name_has_no_srv_and_no_endpoints() -> None:
    assert ask("ext.default.svc.cluster.local", "SRV") == expect(
        "NOERROR", "ext.default.svc.cluster.local. IN SRV", authority=SOA
    )
    assert ask("x.ext.default.svc.cluster.local", "A").startswith("opcode QUERY\nrcode NXDOMAIN")


# -- PTR -------------------------------------------------------------------------------------


def test_ptr_of_a_cluster_ip() -> None:
    assert ask("20.0.96.10.in-addr.arpa", "PTR") == expect(
        "NOERROR",
        "20.0.96.10.in-addr.arpa. IN PTR",
        "20.0.96.10.in-addr.arpa. 30 IN PTR web.default.svc.cluster.local.",
    )


def test_ptr_of_endpoint_ips() -> None:
    assert ask("5.1.244.10.in-addr.arpa", "PTR") == expect(
        "NOERROR",
        "5.1.244.10.in-addr.arpa. IN PTR",
        "5.1.244.10.in-addr.arpa. 30 IN PTR db-0.db.default.svc.cluster.local.",
    )
    assert ask("6.2.244.10.in-addr.arpa", "PTR") == expect(
        "NOERROR",
        "6.2.244.10.in-addr.arpa. IN PTR",
        "6.2.244.10.in-addr.arpa. 30 IN PTR 10-244-2-6.db.default.svc.cluster.local.",
    )


def test_unknown_reverse_names_fall_through_to_the_upstreams() -> None:
    assert ask("9.9.9.9.in-addr.arpa", "PTR") == "FORWARD"
    assert ask("7.1.244.10.in-addr.arpa", "PTR") == "FORWARD"  # a not-ready endpoint
    assert ask("96.10.in-addr.arpa", "PTR") == "FORWARD"


def test_names_outside_the_zones_are_forwarded() -> None:
    assert answer(cluster_view(), CONFIG, "example.com.", dns.rdatatype.A) is FORWARD
    assert answer(cluster_view(), CONFIG, "web.", dns.rdatatype.A) is FORWARD
    assert answer(cluster_view(), CONFIG, "xcluster.local.", dns.rdatatype.A) is FORWARD


def test_ptr_of_a_zone_name_is_nodata() -> None:
    assert ask("web.default.svc.cluster.local", "PTR") == expect(
        "NOERROR", "web.default.svc.cluster.local. IN PTR", authority=SOA
    )


# -- pods ------------------------------------------------------------------------------------


def test_pod_records_insecure() -> None:
    assert ask("10-244-9-9.default.pod.cluster.local", "A") == expect(
        "NOERROR",
        "10-244-9-9.default.pod.cluster.local. IN A",
        "10-244-9-9.default.pod.cluster.local. 30 IN A 10.244.9.9",
    )
    for name in ("10-244-9-9.nons.pod.cluster.local", "abc.default.pod.cluster.local"):
        assert ask(name, "A") == expect("NXDOMAIN", f"{name}. IN A", authority=SOA)


def test_pod_records_verified() -> None:
    view = cluster_view(pods=True)
    verified = DnsConfig(pods="verified")
    assert ask("10-244-2-8.default.pod.cluster.local", "A", view=view, config=verified) == expect(
        "NOERROR",
        "10-244-2-8.default.pod.cluster.local. IN A",
        "10-244-2-8.default.pod.cluster.local. 30 IN A 10.244.2.8",
    )
    for name in (
        "10-244-9-9.default.pod.cluster.local",  # no such pod
        "10-244-2-8.team-a.pod.cluster.local",  # another namespace's pod
        "10-244-2-4.default.pod.cluster.local",  # a Succeeded pod
    ):
        assert ask(name, "A", view=view, config=verified) == expect(
            "NXDOMAIN", f"{name}. IN A", authority=SOA
        )


def test_pod_records_disabled() -> None:
    assert ask(
        "10-244-9-9.default.pod.cluster.local", "A", config=DnsConfig(pods="disabled")
    ).startswith("opcode QUERY\nrcode NXDOMAIN")


# -- the zone itself -------------------------------------------------------------------------


def test_dns_version_txt() -> None:
    assert ask("dns-version.cluster.local", "TXT") == expect(
        "NOERROR",
        "dns-version.cluster.local. IN TXT",
        'dns-version.cluster.local. 28800 IN TXT "1.1.0"',
    )


def test_soa_at_the_apex() -> None:
    assert ask("cluster.local", "SOA") == expect("NOERROR", "cluster.local. IN SOA", SOA)


def test_ns_at_the_apex_is_the_dns_service() -> None:
    assert ask("cluster.local", "NS") == expect(
        "NOERROR",
        "cluster.local. IN NS",
        "cluster.local. 30 IN NS kube-dns.kube-system.svc.cluster.local.",
        extra="kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10",
    )
    assert ask("ns.dns.cluster.local", "A") == expect(
        "NOERROR", "ns.dns.cluster.local. IN A", "ns.dns.cluster.local. 30 IN A 10.96.0.10"
    )


def test_zone_transfers_are_refused() -> None:
    assert ask("cluster.local", "AXFR", tcp=True) == expect(
        "REFUSED", "cluster.local. IN AXFR", flags="QR RD"
    )


def test_zone_and_ttl_are_configurable() -> None:
    config = DnsConfig(zone="corp.example", ttl=5)
    assert ask("web.default.svc.corp.example", "A", config=config) == expect(
        "NOERROR",
        "web.default.svc.corp.example. IN A",
        "web.default.svc.corp.example. 5 IN A 10.96.0.20",
    )
    assert ask("web.default.svc.cluster.local", "A", config=config) == "FORWARD"


# -- size ------------------------------------------------------------------------------------


def test_udp_answers_are_truncated_to_512_bytes_and_tcp_answers_are_whole() -> None:
    udp = dns.message.from_wire(_wire("big.default.svc.cluster.local", "A", tcp=False))
    tcp = dns.message.from_wire(_wire("big.default.svc.cluster.local", "A", tcp=True))
    assert udp.flags & dns.flags.TC and not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 40
    assert 0 < len(udp.answer[0]) < 40
    assert len(_wire("big.default.svc.cluster.local", "A", tcp=False)) <= 512


def _wire(name: str, rdtype: str, *, tcp: bool) -> bytes:
    query = parse_query(dns.message.make_query(name, rdtype).to_wire())
    reply = answer(cluster_view(), CONFIG, query.qname, query.qtype)
    assert isinstance(reply, Reply)
    assert reply.rcode == dns.rcode.NOERROR
    return render(query, reply, tcp=tcp)
