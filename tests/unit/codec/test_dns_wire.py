"""policyd.codec.dns_wire: queries as dnspython reads them, responses dnspython wrote,
fed whole, cut short and mangled: only DnsWireError escapes."""

from __future__ import annotations

import contextlib
import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.codec import dns_wire
from policyd.codec.dns_wire import DnsWireError, decode_response, encode_query, follow


def response(
    qname: str,
    qtype: str,
    *lines: str,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    ad: bool = True,
    authority: tuple[str, ...] = (),
    ede: dns.edns.EDECode | None = None,
) -> bytes:
    query = dns.message.make_query(qname, qtype, use_edns=0)
    msg = dns.message.make_response(query)
    if ad:
        msg.flags |= dns.flags.AD
    msg.set_rcode(rcode)
    for section, texts in ((msg.answer, lines), (msg.authority, authority)):
        for line in texts:
            name, ttl, _, rdtype, rdata = line.split(None, 4)
            msg.find_rrset(
                section,
                dns.name.from_text(name),
                dns.rdataclass.IN,
                dns.rdatatype.from_text(rdtype),
                create=True,
            ).add(dns.rdata.from_text("IN", rdtype, rdata), int(ttl))
    if ede is not None:
        msg.use_edns(0, 0, 1232, options=[dns.edns.EDEOption(ede, "why")])
    wire: bytes = msg.to_wire()
    return wire


def test_query_is_what_dnspython_reads() -> None:
    wire = encode_query(0x1234, "Mx.Example.TEST", dns_wire.TYPE_TLSA, 1232)
    msg = dns.message.from_wire(wire)
    assert msg.id == 0x1234
    assert msg.flags & dns.flags.RD and msg.flags & dns.flags.AD
    assert not msg.flags & dns.flags.CD
    assert msg.edns == 0 and msg.payload == 1232
    assert not msg.ednsflags & dns.flags.DO  # RFC 6840 5.7: AD alone
    assert msg.question[0].name == dns.name.from_text("mx.example.test.")
    assert msg.question[0].rdtype == dns.rdatatype.TLSA


@pytest.mark.parametrize("name", ["bücher.test", "a..b", "x" * 64 + ".test", ("a" * 60 + ".") * 5])
def test_names_that_cannot_be_sent(name: str) -> None:
    with pytest.raises(DnsWireError):
        encode_query(1, name, dns_wire.TYPE_A, 1232)


def test_records_of_each_type() -> None:
    cert = "aa" * 32
    wire = response(
        "example.test.",
        "MX",
        "example.test. 300 IN MX 10 mx.example.test.",
        "example.test. 300 IN MX 0 .",
        "a.example.test. 60 IN A 192.0.2.1",
        "a.example.test. 60 IN AAAA 2001:db8::1",
        f"_25._tcp.a.example.test. 120 IN TLSA 3 1 1 {cert}",
        '_mta-sts.example.test. 30 IN TXT "v=STSv1; " "id=1"',
    )
    r = decode_response(wire)
    assert r.authentic and not r.truncated and r.rcode == 0
    assert (r.qname, r.qtype) == ("example.test", dns_wire.TYPE_MX)
    data = {(rr.rtype, rr.data) for rr in r.answer}
    assert (dns_wire.TYPE_MX, (10, "mx.example.test")) in data
    assert (dns_wire.TYPE_MX, (0, "")) in data  # the null MX's root exchange
    assert (dns_wire.TYPE_A, "192.0.2.1") in data
    assert (dns_wire.TYPE_AAAA, "2001:db8::1") in data
    assert (dns_wire.TYPE_TLSA, (3, 1, 1, bytes.fromhex(cert))) in data
    assert (dns_wire.TYPE_TXT, (b"v=STSv1; ", b"id=1")) in data


def test_cname_chain_and_ttls() -> None:
    wire = response(
        "www.example.test.",
        "A",
        "www.example.test. 30 IN CNAME real.example.test.",
        "real.example.test. 300 IN A 192.0.2.7",
    )
    chain = follow(decode_response(wire), "www.example.test", dns_wire.TYPE_A)
    assert chain.canonical == "real.example.test"
    assert [r.data for r in chain.records] == ["192.0.2.7"]
    assert chain.ttl == 30


def test_negative_answers_take_the_soa_minimum() -> None:
    soa = "example.test. 3600 IN SOA ns.example.test. h.example.test. 1 7200 900 1209600 300"
    wire = response("gone.example.test.", "MX", rcode=dns.rcode.NXDOMAIN, authority=(soa,))
    r = decode_response(wire)
    assert r.rcode == dns.rcode.NXDOMAIN
    chain = follow(r, "gone.example.test", dns_wire.TYPE_MX)
    assert chain.records == () and chain.ttl == 300


def test_the_shortest_soa_is_read_a_shorter_one_is_an_error() -> None:
    soa = "example.test. 3600 IN SOA . . 1 7200 900 1209600 60"  # two root names: 22 bytes
    wire = response("gone.example.test.", "MX", rcode=dns.rcode.NXDOMAIN, authority=(soa,))
    assert follow(decode_response(wire), "gone.example.test", dns_wire.TYPE_MX).ttl == 60
    # The same record with its RDLENGTH cut to 21 and one byte of the message dropped.
    at = wire.index(b"\x00\x06\x00\x01") + 8  # SOA type and class, then the TTL
    assert wire[at : at + 2] == b"\x00\x16"
    short = wire[:at] + b"\x00\x15" + wire[at + 2 : at + 3] + wire[at + 4 :]
    with pytest.raises(DnsWireError, match="bad SOA"):
        decode_response(short)


@given(st.binary(min_size=4, max_size=4))
def test_an_address_reads_as_ipaddress_writes_it(raw: bytes) -> None:
    wire = response("a.example.test.", "A", f"a.example.test. 60 IN A {ipaddress.IPv4Address(raw)}")
    assert [rr.data for rr in decode_response(wire).answer] == [str(ipaddress.IPv4Address(raw))]


def test_extended_dns_error_is_read() -> None:
    wire = response(
        "bogus.test.",
        "MX",
        rcode=dns.rcode.SERVFAIL,
        ad=False,
        ede=dns.edns.EDECode.DNSSEC_BOGUS,
    )
    r = decode_response(wire)
    assert r.rcode == dns.rcode.SERVFAIL and not r.authentic
    assert r.ede == ((int(dns.edns.EDECode.DNSSEC_BOGUS), "why"),)


def test_compression_loop_is_an_error() -> None:
    wire = bytearray(response("a.test.", "A", "a.test. 60 IN A 192.0.2.1"))
    # point the answer's owner name at itself
    at = wire.index(b"\xc0\x0c")
    wire[at : at + 2] = bytes([0xC0 | (at >> 8), at & 0xFF])
    with pytest.raises(DnsWireError):
        decode_response(bytes(wire))


def test_a_query_is_not_a_response() -> None:
    with pytest.raises(DnsWireError):
        decode_response(encode_query(1, "a.test", dns_wire.TYPE_A, 1232))


GOOD = response(
    "example.test.",
    "MX",
    "example.test. 300 IN MX 10 mx.example.test.",
    "mx.example.test. 60 IN A 192.0.2.1",
    f"_25._tcp.mx.example.test. 120 IN TLSA 3 1 1 {'bb' * 32}",
    authority=("example.test. 3600 IN SOA ns.example.test. h.example.test. 1 2 3 4 300",),
)


@pytest.mark.parametrize("cut", range(len(GOOD)))
def test_every_truncation_is_an_error_not_a_crash(cut: int) -> None:
    with contextlib.suppress(DnsWireError):
        decode_response(GOOD[:cut])


@given(st.binary(max_size=600))
def test_only_the_protocol_error_escapes(data: bytes) -> None:
    with contextlib.suppress(DnsWireError):
        decode_response(data)


@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255))
def test_one_mangled_byte_never_crashes(at: int, value: int) -> None:
    wire = bytearray(GOOD)
    wire[at] = value
    try:
        r = decode_response(bytes(wire))
        follow(r, "example.test", dns_wire.TYPE_MX)
    except DnsWireError:
        pass


def _below_question(qname: str, label: bytes) -> bytes:
    """A response whose one A record is owned by ``label`` + a pointer to the question."""
    header = bytes.fromhex("1234 8180 0001 0001 0000 0000")
    question = dns_wire.encode_name(qname) + bytes.fromhex("0001 0001")
    owner = bytes([len(label)]) + label + b"\xc0\x0c"
    return header + question + owner + bytes.fromhex("0001 0001 0000003c 0004 7f000001")


def test_owner_names_through_the_question_name() -> None:
    # The question's name is read once and reused where a pointer leads to it.
    got = decode_response(_below_question("Example.TEST", b"Sub"))
    assert got.qname == "example.test"
    assert [(r.name, r.data) for r in got.answer] == [("sub.example.test", "127.0.0.1")]


def test_name_too_long_through_a_pointer_to_the_question() -> None:
    long_name = ".".join(["a" * 60] * 4)  # 245 octets in wire form
    with pytest.raises(DnsWireError, match="name too long"):
        decode_response(_below_question(long_name, b"x" * 20))
    decode_response(_below_question(long_name, b"x" * 8))  # 254 octets: fine
