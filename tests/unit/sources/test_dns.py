"""DnsSource: MX, addresses and TLSA turned into DnsEvidence, and what the rules make of it.

Most tests script the resolver's answers with typed records
(:class:`tests.fakes.FakeResolver`); the end-to-end ones at the bottom run the real
:class:`Resolver` over a fake nameserver serving a small zone.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from policyd.adapters.dns import FAILED_TTL, DnsAnswer, Rcode, Resolver
from policyd.core.dane import DaneKind, evaluate
from policyd.core.evidence import (
    Destination,
    DestinationForm,
    DnsEvidence,
    DnsStatus,
    MxHost,
    MxKind,
    Tlsa,
)
from policyd.settings import DnsSettings
from policyd.sources.dns import ADDRESS_LITERAL_TTL, DnsSource
from tests.fakes import FakeResolver, dns_answer, dns_failure
from tests.unit.adapters.test_dns import SOA, FakeServer, respond

NOW = 1_700_000_000.0
SHA256 = bytes(range(32))
S, I, F = DnsStatus.SECURE, DnsStatus.INSECURE, DnsStatus.FAILED  # noqa: E741


def ok(name: str, rdtype: str, *rdata: str, status: DnsStatus = S, ttl: int = 300) -> DnsAnswer:
    return dns_answer(name, rdtype, *rdata, status=status, ttl=ttl)


def nx(name: str, rdtype: str, status: DnsStatus = S, ttl: int = 900) -> DnsAnswer:
    return DnsAnswer(name, rdtype, status, Rcode.NXDOMAIN, (), name, ttl)


def fail(name: str, rdtype: str, error: str = "SERVFAIL") -> DnsAnswer:
    return dns_failure(name, rdtype, error, FAILED_TTL)


def host(
    name: str,
    addr: str = "192.0.2.1",
    status: DnsStatus = S,
    tlsa: tuple[str, ...] = (),
    ttl: int = 300,
) -> tuple[DnsAnswer, ...]:
    """A and TLSA answers for a host (AAAA left to the NODATA default)."""
    out = [ok(name, "A", addr, status=status, ttl=ttl)]
    if tlsa:
        out.append(ok(f"_25._tcp.{name}", "TLSA", *tlsa, ttl=ttl))
    return tuple(out)


TLSA_EE = f"3 1 1 {SHA256.hex()}"
DOMAIN = Destination("example.test")


async def gather(fake: FakeResolver, dest: Destination = DOMAIN, **kw: int) -> DnsEvidence:
    return await DnsSource(fake, **kw).gather(dest, NOW)


# -- the MX step ------------------------------------------------------------------------


async def test_listed_mx_sorted_by_preference() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "20 mx2.example.test.", "10 mx1.example.test."),
        *host("mx1.example.test", tlsa=(TLSA_EE,)),
        *host("mx2.example.test", "192.0.2.2", tlsa=(TLSA_EE,)),
    )
    ev = await gather(fake)
    assert (ev.mx, ev.kind, ev.error) == (S, MxKind.LISTED, "")
    assert [(h.name, h.preference) for h in ev.hosts] == [
        ("mx1.example.test", 10),
        ("mx2.example.test", 20),
    ]
    first = ev.hosts[0]
    assert first == MxHost(
        "mx1.example.test",
        10,
        S,
        ("192.0.2.1",),
        tlsa=S,
        tlsa_records=(Tlsa(3, 1, 1, SHA256),),
    )
    assert ev.fetched_at == NOW
    assert ev.expires_at == NOW + 300


async def test_duplicate_mx_names_keep_the_best_preference() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "20 mx.example.test.", "5 MX.example.test."),
        *host("mx.example.test"),
    )
    ev = await gather(fake)
    assert [(h.name, h.preference) for h in ev.hosts] == [("mx.example.test", 5)]


async def test_implicit_mx_on_nodata() -> None:
    fake = FakeResolver(ok("example.test", "MX", status=I), *host("example.test", status=I))
    ev = await gather(fake)
    assert (ev.mx, ev.kind) == (I, MxKind.IMPLICIT)
    assert [(h.name, h.preference, h.address) for h in ev.hosts] == [("example.test", 0, I)]


async def test_implicit_mx_status_is_the_nodata_status() -> None:
    fake = FakeResolver(ok("example.test", "MX"), *host("example.test", tlsa=(TLSA_EE,)))
    ev = await gather(fake)
    assert (ev.mx, ev.kind) == (S, MxKind.IMPLICIT)
    assert ev.hosts[0].tlsa is S


@pytest.mark.parametrize("status", [S, I])
async def test_null_mx(status: DnsStatus) -> None:
    fake = FakeResolver(ok("example.test", "MX", "0 .", status=status))
    ev = await gather(fake)
    assert (ev.mx, ev.kind, ev.hosts) == (status, MxKind.NULL, ())
    assert fake.asked == [("example.test", "MX")]


async def asked_when_told(fake: FakeResolver, dest: Destination = DOMAIN) -> int | None:
    """How many queries the source had asked when it said the destination takes mail
    (None: it never said so)."""
    told: list[int] = []
    await DnsSource(fake).gather(dest, NOW, lambda: told.append(len(fake.asked)))
    assert len(told) <= 1  # once at most
    return told[0] if told else None


async def test_takes_mail_is_said_after_the_mx_lookup_before_the_hosts_lookups() -> None:
    listed = FakeResolver(ok("example.test", "MX", "10 mx.example.test."), *host("mx.example.test"))
    assert await asked_when_told(listed) == 1
    assert len(listed.asked) > 1
    implicit = FakeResolver(ok("example.test", "MX"), *host("example.test"))
    assert await asked_when_told(implicit) == 1
    failed = FakeResolver(fail("example.test", "MX"))
    assert await asked_when_told(failed) == 1
    relay = FakeResolver(*host("relay.example.test"))
    bracketed = Destination("relay.example.test", 587, DestinationForm.HOST)
    assert await asked_when_told(relay, bracketed) == 0  # no MX lookup for [host]


@pytest.mark.parametrize("status", [S, I])
async def test_takes_mail_is_not_said_for_a_name_that_takes_none(status: DnsStatus) -> None:
    assert await asked_when_told(FakeResolver(nx("example.test", "MX", status))) is None
    null = FakeResolver(ok("example.test", "MX", "0 .", status=status))
    assert await asked_when_told(null) is None


async def test_null_mx_mixed_with_hosts_keeps_the_hosts() -> None:
    mx = ok("example.test", "MX", "0 .", "10 mx.example.test.")
    fake = FakeResolver(mx, *host("mx.example.test"))
    ev = await gather(fake)
    assert ev.kind is MxKind.LISTED
    assert [h.name for h in ev.hosts] == ["mx.example.test"]


@pytest.mark.parametrize("status", [S, I])
async def test_nxdomain(status: DnsStatus) -> None:
    fake = FakeResolver(nx("example.test", "MX", status))
    ev = await gather(fake)
    assert (ev.mx, ev.kind, ev.hosts, ev.error) == (status, MxKind.NXDOMAIN, (), "")
    assert ev.expires_at == NOW + 900


async def test_mx_failure() -> None:
    fake = FakeResolver(fail("example.test", "MX"))
    ev = await gather(fake)
    assert ev == DnsEvidence(
        F,
        error="MX lookup for example.test: SERVFAIL",
        fetched_at=NOW,
        expires_at=NOW + FAILED_TTL,
    )
    assert fake.asked == [("example.test", "MX")]


async def test_max_mx_hosts() -> None:
    mx = [f"{i} mx{i:02}.example.test." for i in range(20, 0, -1)]
    fake = FakeResolver(ok("example.test", "MX", *mx))
    ev = await gather(fake, max_mx_hosts=3)
    assert [h.name for h in ev.hosts] == [
        "mx01.example.test",
        "mx02.example.test",
        "mx03.example.test",
    ]
    assert {n for n, t in fake.asked if t == "A"} == {h.name for h in ev.hosts}


def test_max_mx_hosts_validates() -> None:
    with pytest.raises(ValueError):
        DnsSource(FakeResolver(), max_mx_hosts=0)


# -- addresses --------------------------------------------------------------------------


async def test_address_failure_without_addresses_fails_that_host_only() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 bad.example.test.", "20 good.example.test."),
        fail("bad.example.test", "A", "timeout"),  # AAAA: the secure NODATA default
        *host("good.example.test", tlsa=(TLSA_EE,)),
    )
    ev = await gather(fake)
    bad, good = ev.hosts
    assert bad.address is F
    assert bad.address_error == "A bad.example.test: timeout"
    assert bad.tlsa is None
    assert ("_25._tcp.bad.example.test", "TLSA") not in fake.asked
    assert good.tlsa is S
    assert ev.expires_at == NOW + FAILED_TTL
    assert evaluate(ev).kind is DaneKind.DANE_ONLY  # the failed host is skipped


@pytest.mark.parametrize(
    ("answered", "failing", "address"),
    [("A", "AAAA", "192.0.2.1"), ("AAAA", "A", "2001:db8::1")],
)
async def test_one_failed_family_leaves_an_unsigned_host_usable(
    answered: str, failing: str, address: str
) -> None:
    # The AAAA SERVFAIL of a single unsigned MX (feedback-smtp.*.amazonses.com): Postfix
    # delivers over IPv4, so the host is INSECURE with its IPv4 address, never TEMP.
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.other.test.", status=I),
        ok("mx.other.test", answered, address, status=I),
        fail("mx.other.test", failing),
    )
    ev = await gather(fake)
    (mx,) = ev.hosts
    assert (mx.address, mx.addresses, mx.tlsa) == (I, (address,), None)
    assert mx.address_error == f"{failing} mx.other.test: SERVFAIL"
    assert ("_25._tcp.mx.other.test", "TLSA") not in fake.asked
    assert ev.expires_at == NOW + FAILED_TTL  # the failed family is asked again soon
    assert evaluate(ev).kind is DaneKind.NOT_APPLICABLE


@pytest.mark.parametrize(
    ("answered", "failing", "address"),
    [("A", "AAAA", "192.0.2.1"), ("AAAA", "A", "2001:db8::1")],
)
async def test_one_failed_family_of_a_signed_host_still_gets_tlsa(
    answered: str, failing: str, address: str
) -> None:
    # The secure answer proves the host's zone is signed; TLSA sits at the host name, not
    # per family, so it is looked up and decides (Postfix does the same per address).
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        ok("mx.example.test", answered, address),
        fail("mx.example.test", failing),
        ok("_25._tcp.mx.example.test", "TLSA", TLSA_EE),
    )
    ev = await gather(fake)
    (mx,) = ev.hosts
    assert (mx.address, mx.addresses, mx.tlsa) == (S, (address,), S)
    assert mx.address_error == f"{failing} mx.example.test: SERVFAIL"
    assert evaluate(ev).kind is DaneKind.DANE_ONLY


async def test_one_failed_family_of_a_signed_host_with_failed_tlsa_is_still_skipped() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        ok("mx.example.test", "A", "192.0.2.1"),
        fail("mx.example.test", "AAAA"),
        fail("_25._tcp.mx.example.test", "TLSA"),
    )
    ev = await gather(fake)
    assert evaluate(ev).kind is DaneKind.TEMP  # never weaker because a lookup failed


@pytest.mark.parametrize("status", [S, I])
async def test_one_failed_family_and_an_empty_answer_fail_the_host(status: DnsStatus) -> None:
    # The failed family may hold the only addresses: nothing to deliver to yet.
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        ok("mx.example.test", "A", status=status),
        fail("mx.example.test", "AAAA"),
    )
    ev = await gather(fake)
    (mx,) = ev.hosts
    assert (mx.address, mx.addresses) == (F, ())
    assert evaluate(ev).kind is DaneKind.TEMP


async def test_both_address_lookups_failing_are_both_named() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        fail("mx.example.test", "A"),
        fail("mx.example.test", "AAAA", "REFUSED"),
    )
    (mx,) = (await gather(fake)).hosts
    assert mx.address_error == "A mx.example.test: SERVFAIL; AAAA mx.example.test: REFUSED"


async def test_addresses_from_a_and_aaaa() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        ok("mx.example.test", "A", "192.0.2.1"),
        ok("mx.example.test", "AAAA", "2001:db8::1"),
    )
    (mx,) = (await gather(fake)).hosts
    assert mx.addresses == ("192.0.2.1", "2001:db8::1")
    assert mx.address is S


async def test_tlsa_only_for_secure_addresses() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 signed.example.test.", "20 unsigned.other.test."),
        *host("signed.example.test", tlsa=(TLSA_EE,)),
        ok("unsigned.other.test", "A", "192.0.2.9", status=I),
        ok("unsigned.other.test", "AAAA", status=I),
    )
    ev = await gather(fake)
    signed, unsigned = ev.hosts
    assert (signed.address, signed.tlsa) == (S, S)
    assert (unsigned.address, unsigned.tlsa, unsigned.addresses) == (I, None, ("192.0.2.9",))
    assert ("_25._tcp.unsigned.other.test", "TLSA") not in fake.asked


async def test_one_insecure_address_family_makes_the_host_insecure() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        ok("mx.example.test", "A", "192.0.2.1"),
        ok("mx.example.test", "AAAA", status=I),
    )
    (mx,) = (await gather(fake)).hosts
    assert (mx.address, mx.tlsa) == (I, None)


async def test_unsigned_nxdomain_host_is_insecure_not_failed() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 gone.other.test.", "20 mx.example.test."),
        nx("gone.other.test", "A", I),
        nx("gone.other.test", "AAAA", I),
        *host("mx.example.test", tlsa=(TLSA_EE,)),
    )
    ev = await gather(fake)
    gone, mx = ev.hosts
    assert gone == MxHost("gone.other.test", 10, I)
    assert mx.tlsa is S
    assert evaluate(ev).kind is DaneKind.DANE  # not TEMP: the other host is usable


async def test_signed_nxdomain_host_is_secure_without_addresses_or_tlsa() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 gone.example.test."),
        nx("gone.example.test", "A"),
        nx("gone.example.test", "AAAA"),
    )
    (gone,) = (await gather(fake)).hosts
    assert gone == MxHost("gone.example.test", 10, S)
    assert ("_25._tcp.gone.example.test", "TLSA") not in fake.asked


# -- TLSA -------------------------------------------------------------------------------


async def test_tlsa_failure_names_the_record() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        *host("mx.example.test"),
        fail("_25._tcp.mx.example.test", "TLSA"),
    )
    (mx,) = (await gather(fake)).hosts
    assert (mx.tlsa, mx.tlsa_records) == (F, ())
    assert mx.tlsa_error == "TLSA _25._tcp.mx.example.test: SERVFAIL"


@pytest.mark.parametrize("status", [S, I])
async def test_tlsa_status_comes_from_its_answer(status: DnsStatus) -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        *host("mx.example.test"),
        ok("_25._tcp.mx.example.test", "TLSA", TLSA_EE, status=status),
    )
    (mx,) = (await gather(fake)).hosts
    assert mx.tlsa is status
    assert mx.tlsa_records == (Tlsa(3, 1, 1, SHA256),)


async def test_malformed_and_foreign_tlsa_records_do_not_crash() -> None:
    tlsa = ok("_25._tcp.mx.example.test", "TLSA", "3 1 1 00", TLSA_EE)
    stray = "not a tlsa"  # a record of another type in the answer is ignored
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        *host("mx.example.test"),
        DnsAnswer(tlsa.name, "TLSA", S, Rcode.NOERROR, (*tlsa.records, stray), tlsa.name, 300),
    )
    (mx,) = (await gather(fake)).hosts
    assert mx.tlsa_records == (Tlsa(3, 1, 1, b"\x00"), Tlsa(3, 1, 1, SHA256))
    assert [r.usable for r in mx.tlsa_records] == [False, True]


async def test_tlsa_at_the_secure_cname_expansion_first() -> None:
    expanded = dns_answer("mx.example.test", "A", "192.0.2.1", canonical="mail.hoster.test")
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        expanded,
        ok("_25._tcp.mail.hoster.test", "TLSA", TLSA_EE),
    )
    (mx,) = (await gather(fake)).hosts
    assert mx.tlsa_records == (Tlsa(3, 1, 1, SHA256),)
    assert ("_25._tcp.mx.example.test", "TLSA") not in fake.asked


async def test_tlsa_falls_back_to_the_original_name() -> None:
    expanded = dns_answer("mx.example.test", "A", "192.0.2.1", canonical="mail.hoster.test")
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test."),
        expanded,
        nx("_25._tcp.mail.hoster.test", "TLSA", ttl=120),
        ok("_25._tcp.mx.example.test", "TLSA", TLSA_EE),
    )
    ev = await gather(fake)
    assert ev.hosts[0].tlsa_records == (Tlsa(3, 1, 1, SHA256),)
    assert ev.expires_at == NOW + 120  # the first TLSA answer was used too


# -- bracketed and literal destinations -------------------------------------------------


async def test_bracketed_host_with_port() -> None:
    fake = FakeResolver(
        *host("relay.example.test"),
        ok("_587._tcp.relay.example.test", "TLSA", TLSA_EE),
    )
    ev = await gather(fake, Destination("relay.example.test", 587, DestinationForm.HOST))
    assert (ev.mx, ev.kind) == (S, MxKind.LISTED)
    (relay,) = ev.hosts
    assert (relay.name, relay.preference, relay.tlsa) == ("relay.example.test", 0, S)
    assert ("relay.example.test", "MX") not in fake.asked
    assert ("_587._tcp.relay.example.test", "TLSA") in fake.asked
    assert evaluate(ev).kind is DaneKind.DANE_ONLY


async def test_domain_with_port_uses_that_port_for_tlsa() -> None:
    fake = FakeResolver(ok("example.test", "MX", "10 mx.example.test."), *host("mx.example.test"))
    await gather(fake, Destination("example.test", 2525))
    assert ("_2525._tcp.mx.example.test", "TLSA") in fake.asked


async def test_ip_literal_needs_no_dns() -> None:
    fake = FakeResolver()
    ev = await gather(fake, Destination("192.0.2.25", form=DestinationForm.ADDRESS))
    assert fake.asked == []
    assert ev.hosts == (MxHost("192.0.2.25", 0, I, ("192.0.2.25",)),)
    assert ev.expires_at == NOW + ADDRESS_LITERAL_TTL


# -- expiry -----------------------------------------------------------------------------


async def test_expiry_is_the_shortest_ttl_used() -> None:
    fake = FakeResolver(
        ok("example.test", "MX", "10 mx.example.test.", ttl=3600),
        ok("mx.example.test", "A", "192.0.2.1", ttl=1800),
        ok("mx.example.test", "AAAA", ttl=900),
        ok("_25._tcp.mx.example.test", "TLSA", TLSA_EE, ttl=70),
    )
    assert (await gather(fake)).expires_at == NOW + 70


# -- end to end: gathered evidence through the DANE rules -------------------------------


async def test_rules_on_gathered_evidence() -> None:
    fake = FakeResolver(
        ok("all.test", "MX", "10 mx1.all.test.", "20 mx2.all.test."),
        *host("mx1.all.test", tlsa=(TLSA_EE,)),
        *host("mx2.all.test", tlsa=(TLSA_EE,)),
        ok("some.test", "MX", "10 mx1.all.test.", "20 plain.some.test."),
        *host("plain.some.test"),
        ok("broken.test", "MX", "10 mx.broken.test."),
        fail("mx.broken.test", "A"),
        fail("mxfail.test", "MX"),
        ok("unsigned.test", "MX", "10 mx1.all.test.", status=I),
        ok("nomail.test", "MX", "0 ."),
    )
    expected = {
        "all.test": DaneKind.DANE_ONLY,
        "some.test": DaneKind.DANE,
        "broken.test": DaneKind.TEMP,
        "mxfail.test": DaneKind.TEMP,
        "unsigned.test": DaneKind.DANE,  # RFC 7672 2.2.1: never dane-only
        "nomail.test": DaneKind.NO_MAIL,
    }
    for domain, kind in expected.items():
        outcome = evaluate(await gather(fake, Destination(domain)))
        assert outcome.kind is kind, (domain, outcome)


ZONE: dict[tuple[str, str], tuple[str, ...]] = {
    ("example.test.", "MX"): (
        "example.test. 3600 IN MX 10 mx1.example.test.",
        "example.test. 3600 IN MX 20 mx2.example.test.",
    ),
    ("mx1.example.test.", "A"): ("mx1.example.test. 600 IN A 192.0.2.1",),
    ("mx2.example.test.", "A"): (
        "mx2.example.test. 600 IN CNAME mail.hoster.test.",
        "mail.hoster.test. 600 IN A 192.0.2.2",
    ),
    ("_25._tcp.mx1.example.test.", "TLSA"): (f"_25._tcp.mx1.example.test. 600 IN TLSA {TLSA_EE}",),
    # TLSA by CNAME (RFC 7671 7): the chain is followed by dnspython.
    ("_25._tcp.mx2.example.test.", "TLSA"): (
        "_25._tcp.mx2.example.test. 600 IN CNAME tlsa.hoster.test.",
        f"tlsa.hoster.test. 300 IN TLSA {TLSA_EE}",
    ),
}


def zone(
    unsigned: frozenset[str] = frozenset(), servfail: frozenset[str] = frozenset()
) -> FakeServer:
    """A resolver view of ZONE: names in ``unsigned`` come without AD; ``servfail`` holds
    names, or ``"name TYPE"`` for one type only."""

    def handle(q: dns.message.QueryMessage) -> dns.message.Message:
        question = q.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        ad = name not in unsigned
        if name in servfail or f"{name} {rdtype}" in servfail:
            return respond(q, ad=False, rcode=dns.rcode.SERVFAIL)
        if (name, rdtype) in ZONE:
            return respond(q, *ZONE[(name, rdtype)], ad=ad)
        known = {n for n, _ in ZONE} | {"mail.hoster.test."}
        rcode = dns.rcode.NOERROR if name in known else dns.rcode.NXDOMAIN
        return respond(q, ad=ad, rcode=rcode, authority=(SOA,))

    return FakeServer(handle)


@pytest.mark.parametrize(
    ("unsigned", "servfail", "kind"),
    [
        (frozenset(), frozenset(), DaneKind.DANE_ONLY),
        (frozenset({"example.test."}), frozenset(), DaneKind.DANE),
        (frozenset({"mx1.example.test."}), frozenset(), DaneKind.DANE),
        # A failing host is skipped; the rest still decide (Postfix skips it too).
        (frozenset(), frozenset({"_25._tcp.mx1.example.test."}), DaneKind.DANE_ONLY),
        (frozenset(), frozenset({"mx1.example.test."}), DaneKind.DANE_ONLY),
        (frozenset(), frozenset({"mx1.example.test.", "mx2.example.test."}), DaneKind.TEMP),
        (frozenset(), frozenset({"example.test."}), DaneKind.TEMP),
        # An AAAA SERVFAIL at every host: each is used over IPv4, with its TLSA.
        (
            frozenset(),
            frozenset({"mx1.example.test. AAAA", "mx2.example.test. AAAA"}),
            DaneKind.DANE_ONLY,
        ),
    ],
)
async def test_end_to_end_through_the_real_resolver(
    unsigned: frozenset[str], servfail: frozenset[str], kind: DaneKind
) -> None:
    resolver = Resolver(DnsSettings(), servers=[zone(unsigned, servfail)])
    ev = await DnsSource(resolver).gather(DOMAIN, NOW)
    assert evaluate(ev).kind is kind, ev


async def test_end_to_end_evidence_details() -> None:
    server = zone()
    ev = await DnsSource(Resolver(DnsSettings(), servers=[server])).gather(DOMAIN, NOW)
    mx1, mx2 = ev.hosts
    assert mx1.addresses == ("192.0.2.1",)
    assert mx2.addresses == ("192.0.2.2",)
    assert mx1.tlsa_records == mx2.tlsa_records == (Tlsa(3, 1, 1, SHA256),)
    assert ev.expires_at == NOW + 300  # the TLSA behind mx2's CNAME
    # mx2's secure expansion mail.hoster.test is asked first (RFC 7672 2.2.2).
    assert server.asked.index(("_25._tcp.mail.hoster.test.", "TLSA")) < server.asked.index(
        ("_25._tcp.mx2.example.test.", "TLSA")
    )
