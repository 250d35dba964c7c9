"""The evidence of a refresh (prefetch) is fresh: DNS asked again past policyd's DNS cache,
whose answers expire with the reply being refreshed; the new answers replace the cached
ones. Gatherings for a refresh are shared only among refreshes."""

from __future__ import annotations

import asyncio

from policyd.codec.destination import parse_key
from policyd.core.evidence import Destination
from policyd.gathering import Gathering
from policyd.overrides import Overrides
from policyd.sources.dns import DnsSource, FreshQueries
from tests.fakes import SERVICE_NOW, FakeDane, FakeProbe, FakeSts, MemoryStore, run_ready
from tests.unit.adapters.test_dns import a_record, make


async def test_a_fresh_query_asks_again_and_replaces_the_cached_answer() -> None:
    resolver, server, clock = make(a_record(ttl=600))
    await resolver.query("mx.example.test", "A")
    clock.now += 590
    assert (await resolver.query("mx.example.test", "A")).ttl == 10  # from the cache
    fresh = await resolver.query("mx.example.test", "A", fresh=True)
    assert (fresh.ttl, len(server.requests)) == (600, 2)
    clock.now += 100  # past the first answer's expiry: the fresh one is cached
    assert (await resolver.query("mx.example.test", "A")).ttl == 500
    assert len(server.requests) == 2


async def test_a_dns_source_over_fresh_queries_asks_every_record_again() -> None:
    resolver, server, _ = make(a_record(ttl=600))
    await resolver.query("mx.example.test", "A")
    await DnsSource(FreshQueries(resolver)).gather(parse_key("[mx.example.test]"), SERVICE_NOW)
    assert server.asked.count(("mx.example.test.", "A")) == 2


def gathering(dane: FakeDane, fresh: FakeDane) -> Gathering:
    overrides = Overrides(MemoryStore())
    return Gathering(dane, FakeSts(), FakeProbe(), overrides, lambda: SERVICE_NOW, fresh_dane=fresh)


async def test_a_refresh_does_not_join_an_ordinary_gathering() -> None:
    dane, fresh = FakeDane(gate=asyncio.Event()), FakeDane()
    g = gathering(dane, fresh)
    dest = Destination("example.test")
    ordinary = asyncio.ensure_future(g.evidence(dest))
    await run_ready()
    refresh = asyncio.ensure_future(g.evidence(dest, fresh=True))
    await run_ready()
    assert refresh.done()  # while the ordinary one still waits
    assert (dane.calls, fresh.calls) == (1, 1)
    assert dane.gate is not None
    dane.gate.set()
    await ordinary
