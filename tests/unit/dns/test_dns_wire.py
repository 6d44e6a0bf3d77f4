"""The wire layer: exact response bytes, EDNS, malformed queries, the answer cache."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from podnet.dns.records import DnsConfig, Reply, answer
from podnet.dns.wire import (
    AnswerCache,
    FormatError,
    parse_query,
    render,
    render_error,
    render_format_error,
)
from podnet.testing.dns_cluster import cluster_view

CONFIG = DnsConfig()


def respond(data: bytes, *, tcp: bool = False) -> bytes:
    query = parse_query(data)
    reply = answer(cluster_view(), CONFIG, query.qname, query.qtype)
    assert isinstance(reply, Reply)
    return render(query, reply, tcp=tcp)


def query_bytes(name: str, rdtype: str = "A", qid: int = 0xBEEF, **kwargs: object) -> bytes:
    request = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    request.id = qid
    return request.to_wire()


def test_exact_bytes_of_an_a_answer() -> None:
    data = query_bytes("Web.default.svc.cluster.local")
    assert data.hex() == (
        "beef01000001000000000000"  # id, RD, one question
        "035765620764656661756c740373766307636c7573746572056c6f63616c00" + "00010001"
    )
    assert (
        respond(data).hex()
        == (
            "beef85000001000100000000"  # QR AA RD, one answer, no RA
            "035765620764656661756c740373766307636c7573746572056c6f63616c00" + "00010001"
            "c00c" + "0001" + "0001" + "0000001e" + "0004" + "0a600014"  # owner -> the question
        )
    )


def test_rd_and_cd_are_echoed_and_ra_is_never_set() -> None:
    request = dns.message.make_query("web.default.svc.cluster.local", "A")
    request.flags = dns.flags.CD  # no RD
    reply = dns.message.from_wire(respond(request.to_wire()))
    assert reply.flags == dns.flags.QR | dns.flags.AA | dns.flags.CD


def test_edns_queries_get_an_opt_record_and_their_buffer_size() -> None:
    data = query_bytes("big.default.svc.cluster.local", use_edns=0, payload=4096, want_dnssec=True)
    reply = dns.message.from_wire(respond(data))
    assert reply.edns == 0 and reply.payload == 4096
    assert reply.ednsflags & dns.flags.DO
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 40  # 4096 bytes hold all of them


def test_truncated_udp_answer_keeps_whole_records_in_order() -> None:
    reply = dns.message.from_wire(respond(query_bytes("big.default.svc.cluster.local")))
    assert reply.flags & dns.flags.TC
    addresses = [rdata.address for rdata in reply.answer[0]]
    assert addresses == [f"10.244.3.{i}" for i in range(1, len(addresses) + 1)]


def test_malformed_queries() -> None:
    with pytest.raises(FormatError) as short:
        parse_query(b"\x12\x34")
    assert render_format_error(short.value) is None  # no header: nothing to answer
    data = query_bytes("web.default.svc.cluster.local")
    with pytest.raises(FormatError) as cut:
        parse_query(data[:-3])
    formerr = render_format_error(cut.value)
    assert formerr is not None
    reply = dns.message.from_wire(formerr)
    assert reply.id == 0xBEEF and reply.rcode() == dns.rcode.FORMERR
    with pytest.raises(FormatError):
        parse_query(data + b"\x00")  # trailing bytes
    response = bytearray(data)
    response[2] |= 0x80
    with pytest.raises(FormatError):
        parse_query(bytes(response))  # a response, not a query


def test_error_replies_echo_the_question() -> None:
    query = parse_query(query_bytes("web.default.svc.cluster.local", "A"))
    reply = dns.message.from_wire(render_error(query, dns.rcode.REFUSED))
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.question[0].to_text() == "web.default.svc.cluster.local. IN A"


def test_answer_cache_patches_id_flags_and_spelling() -> None:
    cache = AnswerCache()
    first = query_bytes("web.default.svc.cluster.local", qid=1)
    cache.store(parse_query(first), respond(first), dns.rcode.NOERROR, tcp=False)
    other = query_bytes("WEB.default.svc.cluster.local", qid=2)
    hit = cache.respond(other, tcp=False)
    assert hit is not None
    assert hit[0] == respond(other)  # byte for byte what rendering it afresh gives
    assert cache.respond(other, tcp=True) is None  # per transport
    assert cache.respond(query_bytes("web.default.svc.cluster.local", "AAAA"), tcp=False) is None
    edns = query_bytes("web.default.svc.cluster.local", use_edns=0)
    assert cache.respond(edns, tcp=False) is None  # EDNS queries are always rendered
    cache.clear()
    assert cache.respond(other, tcp=False) is None


def test_answer_cache_is_bounded() -> None:
    cache = AnswerCache(max_entries=3)
    for i in range(5):
        data = query_bytes(f"n{i}.default.svc.cluster.local")
        cache.store(parse_query(data), respond(data), dns.rcode.NXDOMAIN, tcp=False)
    assert len(cache) <= 3
