"""The DNS adapter: DNSSEC status from the AD bit, failures translated, caching, coalescing.

Real ``dns.message`` responses are served by :class:`FakeServer`, a
``dns.nameserver.Nameserver`` handed to ``Resolver(servers=...)``; dnspython's own
resolution logic runs unchanged. No packet leaves the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import dns._asyncbackend  # Backend is not re-exported by dns.asyncbackend for mypy
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.adapters import dns as dns_adapter
from policyd.adapters.dns import (
    EDNS_PAYLOAD,
    FAILED_TTL,
    DnsAnswer,
    MxRecord,
    Rcode,
    Record,
    Resolver,
)
from policyd.core.evidence import DnsStatus, Tlsa
from policyd.core.names import domain_name
from policyd.settings import (
    DEFAULT_CACHE_ENTRIES,
    DEFAULT_LIFETIME,
    DEFAULT_MAX_TTL,
    DEFAULT_MIN_TTL,
    DEFAULT_NEGATIVE_TTL_MAX,
    DEFAULT_PER_TRY,
    DnsSettings,
    DnsTimeouts,
)

Handler = Callable[[dns.message.QueryMessage], dns.message.Message]

SOA = "example.test. 3600 IN SOA ns.example.test. host.example.test. 1 7200 900 1209600 300"


def respond(
    request: dns.message.QueryMessage,
    *answer: str,
    ad: bool = True,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    authority: tuple[str, ...] = (),
    ede: dns.edns.EDECode | None = None,
) -> dns.message.Message:
    """A response to ``request`` with zone-file lines in the answer/authority sections."""
    response = dns.message.make_response(request)
    if ad:
        response.flags |= dns.flags.AD
    response.set_rcode(rcode)
    for section, lines in ((response.answer, answer), (response.authority, authority)):
        for line in lines:
            name, ttl, _, rdtype, rdata = line.split(None, 4)
            rrset = response.find_rrset(
                section,
                dns.name.from_text(name),
                dns.rdataclass.IN,
                dns.rdatatype.from_text(rdtype),
                create=True,
            )
            rrset.add(dns.rdata.from_text("IN", rdtype, rdata), int(ttl))
    if ede is not None:
        response.use_edns(0, dns.flags.DO, EDNS_PAYLOAD, options=[dns.edns.EDEOption(ede, "x")])
    return response


class FakeServer(dns.nameserver.Nameserver):
    """A nameserver that answers through ``handler`` (or raises what it raises)."""

    def __init__(self, handler: Handler) -> None:
        # Nameserver.__init__ does nothing (and is untyped): not called.
        self.handler = handler
        self.requests: list[dns.message.QueryMessage] = []
        self.gate: asyncio.Event | None = None

    def __str__(self) -> str:
        return "fake"

    def kind(self) -> str:
        return "fake"

    def is_always_max_size(self) -> bool:
        return False

    def answer_nameserver(self) -> str:
        return "192.0.2.53"

    def answer_port(self) -> int:
        return 53

    async def async_query(
        self,
        request: dns.message.QueryMessage,
        timeout: float,
        source: str | None,
        source_port: int,
        max_size: bool,
        backend: dns._asyncbackend.Backend,
        one_rr_per_rrset: bool = False,
        ignore_trailing: bool = False,
    ) -> dns.message.Message:
        self.requests.append(request)
        await self.before_answer(request, timeout)
        return self.handler(request)

    async def before_answer(self, request: dns.message.QueryMessage, timeout: float) -> None:
        """Hold the answer while ``gate`` is closed (subclasses add other behaviour)."""
        if self.gate is not None:
            await self.gate.wait()

    @property
    def asked(self) -> list[tuple[str, str]]:
        return [
            (q.question[0].name.to_text(), dns.rdatatype.to_text(q.question[0].rdtype))
            for q in self.requests
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    handler: Handler, settings: DnsSettings | None = None
) -> tuple[Resolver, FakeServer, Clock]:
    server = FakeServer(handler)
    clock = Clock()
    return Resolver(settings or DnsSettings(), clock, servers=[server]), server, clock


def a_record(ttl: int = 300, ad: bool = True) -> Handler:
    return lambda q: respond(q, f"mx.example.test. {ttl} IN A 192.0.2.1", ad=ad)


# -- status from the AD bit -------------------------------------------------------------


@pytest.mark.parametrize(("ad", "status"), [(True, DnsStatus.SECURE), (False, DnsStatus.INSECURE)])
async def test_ad_bit_gives_secure_or_insecure(ad: bool, status: DnsStatus) -> None:
    resolver, _, _ = make(a_record(ad=ad))
    answer = await resolver.query("mx.example.test", "A")
    assert answer.status is status
    assert answer.rcode is Rcode.NOERROR
    assert answer.records == ("192.0.2.1",)
    assert answer.canonical_name == "mx.example.test"
    assert answer.error == ""
    assert answer.secure is (status is DnsStatus.SECURE)
    assert not answer.failed and not answer.negative


async def test_query_asks_for_the_ad_bit_without_do() -> None:
    resolver, server, _ = make(a_record())
    await resolver.query("mx.example.test", "A")
    (request,) = server.requests
    assert request.edns == 0
    # AD alone (RFC 6840 5.7): no DO, so no RRSIG/NSEC records to parse (RFC 3225 3)
    assert not request.ednsflags & dns.flags.DO
    assert request.payload == EDNS_PAYLOAD
    assert request.flags & dns.flags.AD  # RFC 6840 5.7
    assert request.flags & dns.flags.RD
    assert not request.flags & dns.flags.CD  # the resolver must validate for us
    assert server.asked == [("mx.example.test.", "A")]


@pytest.mark.parametrize(("ad", "status"), [(True, DnsStatus.SECURE), (False, DnsStatus.INSECURE)])
async def test_nxdomain_is_an_answer_with_its_own_ad_bit(ad: bool, status: DnsStatus) -> None:
    resolver, _, _ = make(lambda q: respond(q, ad=ad, rcode=dns.rcode.NXDOMAIN, authority=(SOA,)))
    answer = await resolver.query("gone.example.test", "A")
    assert answer.status is status
    assert answer.rcode is Rcode.NXDOMAIN
    assert answer.records == ()
    assert answer.nxdomain and answer.negative and not answer.nodata
    assert answer.error == ""


@pytest.mark.parametrize(("ad", "status"), [(True, DnsStatus.SECURE), (False, DnsStatus.INSECURE)])
async def test_nodata_is_noerror_without_records(ad: bool, status: DnsStatus) -> None:
    resolver, _, _ = make(lambda q: respond(q, ad=ad, authority=(SOA,)))
    answer = await resolver.query("example.test", "MX")
    assert answer.status is status
    assert answer.rcode is Rcode.NOERROR
    assert answer.records == ()
    assert answer.nodata and answer.negative and not answer.nxdomain


async def test_nodata_ttl_comes_from_the_soa() -> None:
    resolver, _, _ = make(lambda q: respond(q, authority=(SOA,)))
    answer = await resolver.query("example.test", "MX")
    assert answer.ttl == 300  # min(SOA TTL 3600, SOA minimum 300), RFC 2308 5


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP])
async def test_error_rcodes_fail(rcode: dns.rcode.Rcode) -> None:
    resolver, server, _ = make(lambda q: respond(q, ad=False, rcode=rcode))
    answer = await resolver.query("mx.example.test", "A")
    assert answer.status is DnsStatus.FAILED
    assert answer.error == dns.rcode.to_text(rcode)
    assert answer.rcode is Rcode(dns.rcode.to_text(rcode))
    assert answer.records == ()
    assert answer.failed and not answer.negative and not answer.nxdomain
    assert len(server.requests) == 1  # a validator's SERVFAIL is not retried


async def test_servfail_with_dnssec_ede_is_reported_bogus() -> None:
    resolver, _, _ = make(
        lambda q: respond(q, ad=False, rcode=dns.rcode.SERVFAIL, ede=dns.edns.EDECode.DNSSEC_BOGUS)
    )
    answer = await resolver.query("mx.example.test", "A")
    assert answer.status is DnsStatus.FAILED
    assert answer.error.startswith("bogus (EDE 6")
    assert answer.rcode is Rcode.SERVFAIL


async def test_servfail_with_other_ede_is_plain_servfail() -> None:
    resolver, _, _ = make(
        lambda q: respond(
            q, ad=False, rcode=dns.rcode.SERVFAIL, ede=dns.edns.EDECode.NO_REACHABLE_AUTHORITY
        )
    )
    assert (await resolver.query("mx.example.test", "A")).error == "SERVFAIL"


async def test_timeout_fails() -> None:
    def silent(q: dns.message.QueryMessage) -> dns.message.Message:
        if q.question[0].name.to_text() == dns_adapter.HEALTH_NAME:
            return respond(q)  # the resolver lives: this is one slow name, not an outage
        raise dns.exception.Timeout

    # A tiny lifetime: dnspython gives up after its first back-off (0.1 s).
    fast = DnsSettings(timeout=0.001, lifetime=0.001)
    resolver, _, _ = make(silent, fast)
    answer = await resolver.query("mx.example.test", "A")
    assert answer.status is DnsStatus.FAILED
    assert answer.error == "timeout"
    assert answer.rcode is None


async def test_transport_error_fails() -> None:
    def refused(q: dns.message.QueryMessage) -> dns.message.Message:
        if q.question[0].name.to_text() == dns_adapter.HEALTH_NAME:
            return respond(q)  # one failing server path, the breaker stays closed
        raise ConnectionRefusedError(111, "Connection refused")

    resolver, _, _ = make(refused)
    answer = await resolver.query("mx.example.test", "A")
    assert answer.status is DnsStatus.FAILED
    assert answer.error.startswith("ConnectionRefusedError")


async def test_garbage_response_fails() -> None:
    # A CNAME loop: dnspython rejects the answer (ChainTooLong) and the server with it.
    def loop(q: dns.message.QueryMessage) -> dns.message.Message:
        return respond(q, "mx.example.test. 60 IN CNAME mx.example.test.")

    resolver, _, _ = make(loop)
    answer = await resolver.query("mx.example.test", "A")
    assert answer.status is DnsStatus.FAILED
    assert answer.error.startswith("ChainTooLong")


async def test_invalid_name_fails_without_a_query() -> None:
    resolver, server, _ = make(a_record())
    answer = await resolver.query("a" * 64 + ".example.test", "A")
    assert answer.status is DnsStatus.FAILED
    assert answer.error.startswith("invalid name")
    assert server.requests == []


async def test_meta_type_is_a_caller_bug() -> None:
    resolver, _, _ = make(a_record())
    with pytest.raises(ValueError, match="not a data type"):
        await resolver.query("example.test", "ANY")


async def test_no_nameservers_in_resolv_conf_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.test\n")
    monkeypatch.setattr(dns_adapter, "RESOLV_CONF", str(conf))
    answer = await Resolver(DnsSettings(), Clock()).query("mx.example.test", "A")
    assert answer.status is DnsStatus.FAILED
    assert answer.error == f"no nameservers in {conf}"


async def test_malformed_tlsa_record_does_not_spoil_the_rrset() -> None:
    # Through the wire parser: dnspython alone would reject the whole response.
    def tlsa(q: dns.message.QueryMessage) -> dns.message.Message:
        response = respond(
            q,
            "_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 00",
            "_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + "ab" * 32,
        )
        return dns.message.from_wire(response.to_wire())

    resolver, _, _ = make(tlsa)
    answer = await resolver.query("_25._tcp.mx.example.test", "TLSA")
    assert answer.status is DnsStatus.SECURE
    assert sorted(len(r.data) for r in answer.tlsa) == [1, 32]


# -- CNAME chains -----------------------------------------------------------------------


def cname_chain(q: dns.message.QueryMessage, ad: bool = True) -> dns.message.Message:
    return respond(
        q,
        "mx.example.test. 600 IN CNAME mail.hoster.test.",
        "mail.hoster.test. 120 IN A 192.0.2.7",
        ad=ad,
    )


@pytest.mark.parametrize(("ad", "status"), [(True, DnsStatus.SECURE), (False, DnsStatus.INSECURE)])
async def test_cname_chain_keeps_the_ad_bit_of_the_whole_answer(
    ad: bool, status: DnsStatus
) -> None:
    resolver, _, _ = make(lambda q: cname_chain(q, ad))
    answer = await resolver.query("mx.example.test", "A")
    assert answer.status is status
    assert answer.canonical_name == "mail.hoster.test"
    assert answer.records == ("192.0.2.7",)
    assert answer.ttl == 120  # the smallest TTL along the chain


async def test_cname_to_nxdomain() -> None:
    resolver, _, _ = make(
        lambda q: respond(
            q,
            "mx.example.test. 600 IN CNAME gone.hoster.test.",
            rcode=dns.rcode.NXDOMAIN,
            authority=("hoster.test. 600 IN SOA ns. host. 1 2 3 4 120",),
        )
    )
    answer = await resolver.query("mx.example.test", "A")
    assert answer.nxdomain
    assert answer.status is DnsStatus.SECURE
    assert answer.canonical_name == "gone.hoster.test"
    assert answer.ttl == 120


# -- caching ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "cached"), [(5, DEFAULT_MIN_TTL), (10**7, DEFAULT_MAX_TTL)])
async def test_ttl_is_clamped(ttl: int, cached: int) -> None:
    resolver, server, clock = make(a_record(ttl=ttl))
    assert (await resolver.query("mx.example.test", "A")).ttl == cached
    clock.now += cached - 1
    again = await resolver.query("mx.example.test", "A")
    assert again.ttl == 1  # what is left of the cached answer
    assert len(server.requests) == 1
    clock.now += 1
    await resolver.query("mx.example.test", "A")
    assert len(server.requests) == 2


async def test_negative_answers_are_cached_at_most_negative_ttl_max() -> None:
    long_soa = "example.test. 86400 IN SOA ns. host. 1 7200 900 1209600 86400"
    resolver, server, clock = make(
        lambda q: respond(q, rcode=dns.rcode.NXDOMAIN, authority=(long_soa,))
    )
    answer = await resolver.query("gone.example.test", "A")
    assert answer.ttl == DEFAULT_NEGATIVE_TTL_MAX
    clock.now += DEFAULT_NEGATIVE_TTL_MAX - 0.5
    await resolver.query("gone.example.test", "A")
    assert len(server.requests) == 1
    clock.now += 0.5
    await resolver.query("gone.example.test", "A")
    assert len(server.requests) == 2


async def test_failed_answers_are_cached_briefly() -> None:
    resolver, server, clock = make(lambda q: respond(q, ad=False, rcode=dns.rcode.SERVFAIL))
    assert (await resolver.query("mx.example.test", "A")).ttl == FAILED_TTL
    clock.now += FAILED_TTL - 1
    assert (await resolver.query("mx.example.test", "A")).failed
    assert len(server.requests) == 1
    clock.now += 1
    server.handler = a_record()
    assert (await resolver.query("mx.example.test", "A")).secure
    assert len(server.requests) == 2


async def test_names_are_case_and_dot_insensitive_in_the_cache() -> None:
    resolver, server, _ = make(a_record())
    await resolver.query("MX.Example.TEST.", "a")
    answer = await resolver.query("mx.example.test", "A")
    assert len(server.requests) == 1
    assert answer.rdtype == "A"


async def test_types_are_cached_apart() -> None:
    resolver, server, _ = make(lambda q: respond(q, authority=(SOA,)))
    await resolver.query("mx.example.test", "A")
    await resolver.query("mx.example.test", "AAAA")
    assert server.asked == [("mx.example.test.", "A"), ("mx.example.test.", "AAAA")]


async def test_cache_is_bounded_least_recently_used_first() -> None:
    resolver, server, _ = make(a_record(), DnsSettings(cache_entries=2))
    await resolver.query("one.example.test", "A")
    await resolver.query("two.example.test", "A")
    await resolver.query("one.example.test", "A")  # "one" is now the most recent
    await resolver.query("three.example.test", "A")  # evicts "two"
    assert resolver.cached == 2
    await resolver.query("one.example.test", "A")
    assert len(server.requests) == 3
    await resolver.query("two.example.test", "A")
    assert len(server.requests) == 4


async def test_clear_empties_the_cache() -> None:
    resolver, server, _ = make(a_record())
    await resolver.query("mx.example.test", "A")
    resolver.clear()
    assert resolver.cached == 0
    await resolver.query("mx.example.test", "A")
    assert len(server.requests) == 2


async def test_lookup_under_way_at_clear_is_not_cached() -> None:
    resolver, server, _ = make(a_record())
    server.gate = asyncio.Event()
    task = asyncio.ensure_future(resolver.query("mx.example.test", "A"))
    await asyncio.sleep(0)
    resolver.clear()
    server.gate.set()
    assert (await task).secure
    assert resolver.cached == 0


# -- coalescing -------------------------------------------------------------------------


async def test_concurrent_queries_share_one_lookup() -> None:
    resolver, server, _ = make(a_record())
    server.gate = asyncio.Event()
    first = asyncio.ensure_future(resolver.query("mx.example.test", "A"))
    second = asyncio.ensure_future(resolver.query("MX.example.test.", "A"))
    await asyncio.sleep(0)
    server.gate.set()
    one, two = await asyncio.gather(first, second)
    assert one == two
    assert len(server.requests) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    resolver, server, _ = make(a_record())
    server.gate = asyncio.Event()
    first = asyncio.ensure_future(resolver.query("mx.example.test", "A"))
    second = asyncio.ensure_future(resolver.query("mx.example.test", "A"))
    await asyncio.sleep(0)
    first.cancel()
    server.gate.set()
    assert (await second).secure
    assert first.cancelled()
    assert len(server.requests) == 1


@given(ttl=st.integers(min_value=0, max_value=2**31 - 1), negative=st.booleans())
def test_cache_ttl_stays_within_bounds(ttl: int, negative: bool) -> None:
    settings = DnsSettings(min_ttl=30, max_ttl=7200, negative_ttl_max=600)
    resolver = Resolver(settings, Clock(), servers=[FakeServer(a_record())])
    records: tuple[Record, ...] = () if negative else ("x",)
    answer = DnsAnswer("x", "A", DnsStatus.INSECURE, Rcode.NOERROR, records, "x", ttl)
    cached = resolver._cache_ttl(answer)
    assert 30 <= cached <= (600 if negative else 7200)
    if 30 <= ttl <= (600 if negative else 7200):
        assert cached == ttl


# -- values -----------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = DnsSettings()
    assert s.nameservers == ()
    assert s.port == 53
    assert s.timeouts == DnsTimeouts(DEFAULT_PER_TRY, DEFAULT_LIFETIME) == DnsTimeouts(2.0, 5.0)
    assert (s.min_ttl, s.max_ttl, s.negative_ttl_max) == (60, 86400, 900)
    assert s.cache_entries == DEFAULT_CACHE_ENTRIES == 100_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nameservers": ("not-an-address",)},
        {"port": 0},
        {"port": 65536},
        {"min_ttl": 100, "max_ttl": 10},
        {"min_ttl": -1},
        {"negative_ttl_max": -1},
        {"cache_entries": 0},
    ],
)
def test_settings_validate(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DnsSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("per_try", "lifetime"),
    [(0.0, 5.0), (2.0, 0.0), (-1.0, 5.0), (float("nan"), 5.0), (2.0, float("inf"))],
)
def test_timeouts_validate(per_try: float, lifetime: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        DnsTimeouts(per_try, lifetime)


def test_configured_nameservers_and_port_are_used() -> None:
    resolver = Resolver(DnsSettings(nameservers=("127.0.0.53", "::1"), port=5353))
    library = resolver._resolver()
    assert [str(n) for n in library.nameservers] == ["127.0.0.53", "::1"]
    assert library.port == 5353
    assert (library.timeout, library.lifetime) == (DEFAULT_PER_TRY, DEFAULT_LIFETIME)


@pytest.mark.parametrize(
    ("status", "error"),
    [(DnsStatus.FAILED, ""), (DnsStatus.SECURE, "SERVFAIL"), (DnsStatus.INSECURE, "x")],
)
def test_answer_error_iff_failed(status: DnsStatus, error: str) -> None:
    with pytest.raises(ValueError):
        DnsAnswer("x", "A", status, Rcode.NOERROR, error=error)


def test_answer_ttl_not_negative() -> None:
    with pytest.raises(ValueError):
        DnsAnswer("x", "A", DnsStatus.SECURE, Rcode.NOERROR, ttl=-1)


# -- the breaker: a dead resolver is known fast, and closes by itself ------------------------

QUICK = dns_adapter.HealthTimes(after=0.05, timeout=0.05, retry=0.05)


class MutableServer(FakeServer):
    """Silent (never responds) while ``dead``; names in ``slow`` take ``slow_for`` seconds
    to answer even when alive (a zone the resolver chases slowly)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(handler)
        self.dead = False
        self.slow: set[str] = set()
        self.slow_for = 0.3

    async def before_answer(self, request: dns.message.QueryMessage, timeout: float) -> None:
        if self.dead:
            await asyncio.sleep(timeout)
            raise dns.exception.Timeout
        if request.question[0].name.to_text() in self.slow:
            await asyncio.sleep(self.slow_for)


def breaker(handler: Handler) -> tuple[Resolver, MutableServer]:
    server = MutableServer(handler)
    return Resolver(DnsSettings(), Clock(), servers=[server], health=QUICK), server


async def test_dead_resolver_fails_lookups_fast_once_known() -> None:
    resolver, server = breaker(a_record())
    server.dead = True
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    first = await resolver.query("a.example.test", "A")
    # after + timeout (0.1 s), not the 5 s lifetime
    assert loop.time() - t0 < 1.0
    assert first.failed and first.error == dns_adapter.NOT_ANSWERING
    assert resolver.down
    asked = len(server.requests)
    t0 = loop.time()
    second = await resolver.query("b.example.test", "A")
    assert loop.time() - t0 < 0.01  # known outage: no query sent, no wait
    assert second.failed and second.error == dns_adapter.NOT_ANSWERING
    assert len(server.requests) - asked <= 1  # at most one health check meanwhile


async def test_breaker_keeps_cached_answers_and_closes_by_itself() -> None:
    resolver, server = breaker(a_record())
    assert not (await resolver.query("mx.example.test", "A")).failed
    server.dead = True
    assert (await resolver.query("other.example.test", "A")).failed
    assert resolver.down
    kept = await resolver.query("mx.example.test", "A")  # cached before the outage
    assert not kept.failed
    server.dead = False
    for _ in range(100):  # the health check retries every 0.05 s
        if not resolver.down:
            break
        await asyncio.sleep(0.01)
    assert not resolver.down
    assert not (await resolver.query("other.example.test", "A")).failed
    assert ("localhost.", "A") in server.asked


async def test_slow_zone_on_a_live_resolver_keeps_the_breaker_closed() -> None:
    resolver, server = breaker(a_record())
    server.slow = {"slow.example.test."}
    answer = await resolver.query("slow.example.test", "A")  # 0.3 s > after (0.05 s)
    assert not answer.failed
    assert not resolver.down
    assert ("localhost.", "A") in server.asked  # it was suspected, and checked


async def test_refused_resolver_opens_the_breaker_at_once() -> None:
    def refuse(request: dns.message.QueryMessage) -> dns.message.Message:
        raise ConnectionRefusedError

    resolver, _ = breaker(refuse)
    answer = await resolver.query("a.example.test", "A")
    assert answer.failed
    for _ in range(50):
        if resolver.down:
            break
        await asyncio.sleep(0.01)
    assert resolver.down


def test_health_times_must_be_positive() -> None:
    with pytest.raises(ValueError, match="after"):
        dns_adapter.HealthTimes(after=0)


# -- typed records (the library path; test_dns_udp covers the UDP path) -------------------

TXT_LINES = (
    '_mta-sts.example.test. 300 IN TXT "v=STSv1; " "id=abc"',
    '_mta-sts.example.test. 300 IN TXT "v=spf1 -all"',
    '_mta-sts.example.test. 300 IN TXT "id=\\255"',
)
MX_LINES = (
    "example.test. 300 IN MX 10 MX.Example.Test.",
    "example.test. 300 IN MX 0 .",
    "example.test. 300 IN MX 20 bad\\032name.example.test.",
)


async def test_txt_strings_are_joined_and_decoded() -> None:
    # Character-strings are concatenated (RFC 8461 3.1); what is not UTF-8 is replaced,
    # so it can only fail the record grammar, never the lookup.
    resolver, _, _ = make(lambda q: respond(q, *TXT_LINES))
    answer = await resolver.query("_mta-sts.example.test", "TXT")
    assert sorted(answer.texts) == ["id=\ufffd", "v=STSv1; id=abc", "v=spf1 -all"]


async def test_mx_records_are_typed_null_mx_kept_bad_names_left_out() -> None:
    resolver, _, _ = make(lambda q: respond(q, *MX_LINES))
    answer = await resolver.query("example.test", "MX")
    assert sorted(answer.mx, key=lambda r: r.preference) == [
        MxRecord(0, None),
        MxRecord(10, domain_name("mx.example.test")),
    ]


async def test_tlsa_records_are_typed() -> None:
    line = "_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + "ab" * 32
    resolver, _, _ = make(lambda q: respond(q, line))
    answer = await resolver.query("_25._tcp.mx.example.test", "TLSA")
    assert answer.tlsa == (Tlsa(3, 1, 1, bytes.fromhex("ab" * 32)),)
    assert answer.records == answer.tlsa
