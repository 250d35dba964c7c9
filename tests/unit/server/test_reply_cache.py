"""policyd.server.reply_cache: request payloads in, encoded replies out, cached while the
answer holds, dropped when the service says they are stale, bounded with the service."""

from __future__ import annotations

import pytest

from policyd.codec import netstring
from policyd.codec.postfix_policy import parse
from policyd.core.evidence import DnsEvidence, DnsStatus, Override, ProbeLevel, ProbeState
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.server import reply_cache
from policyd.server.reply_cache import MAX_PAYLOADS_PER_DESTINATION, ReplyCache
from policyd.service import TEMP_ANSWER_TTL, PolicyService
from policyd.settings import DEFAULT_MAX_DESTINATIONS
from tests.fakes import SERVICE_NOW, FakeDane, FakeProbe, reply
from tests.fakes import ServiceClock as Clock
from tests.unit import test_service


def make(
    dane: FakeDane | None = None,
    probe: FakeProbe | None = None,
    cap: int = DEFAULT_MAX_DESTINATIONS,
) -> tuple[ReplyCache, PolicyService, Clock]:
    svc, clock, _ = test_service.make(dane=dane, probe=probe, cap=cap)
    return ReplyCache(svc, monotonic=clock.monotonic), svc, clock


def verifying() -> FakeProbe:
    """A probe that found example.test's MX hosts verifiable."""
    return FakeProbe({"example.test": ProbeState(ProbeLevel.VERIFY)})


async def test_miss_then_hit_from_memory() -> None:
    dane = FakeDane()
    cache, svc, _ = make(dane=dane)
    payload = b"postfix example.test"
    assert cache.cached(payload) is None
    assert reply(await cache.reply_for(payload)) == b"NOTFOUND "
    assert cache.cached(payload) == netstring.encode(b"NOTFOUND ")
    assert dane.calls == 1
    assert len(cache) == svc.cached_answers == 1
    assert svc.stats.lookups == 1
    assert svc.stats.hits == 1


FAILED = DnsEvidence(DnsStatus.FAILED, error="MX lookup for broken.test: SERVFAIL")


@pytest.mark.parametrize(
    ("name", "held"), [("example.test", 300.0), ("broken.test", TEMP_ANSWER_TTL)]
)
async def test_a_cached_reply_expires_with_its_answer(name: str, held: float) -> None:
    cache, _, clock = make(dane=FakeDane({"broken.test": FAILED}))
    payload = f"postfix {name}".encode()
    await cache.reply_for(payload)
    clock.mono += held - 1
    cache.tick()
    assert cache.cached(payload) is not None
    clock.mono += 2
    cache.tick()
    assert cache.cached(payload) is None


async def test_the_coarse_clock_never_serves_a_reply_past_its_expiry() -> None:
    """The hot path reads the clock the server ticks every CLOCK_TICK: a reply is kept one
    tick less than its answer, so a clock up to one tick behind still never serves it late."""
    cache, _, clock = make(dane=FakeDane({"broken.test": FAILED}))
    clock.mono += 0.05  # the expiry then falls just after a whole second
    payload = b"postfix broken.test"
    await cache.reply_for(payload)
    expires = clock.mono + TEMP_ANSWER_TTL
    clock.mono = expires - reply_cache.CLOCK_TICK  # the last tick before the expiry
    cache.tick()
    clock.mono = expires + 0.01  # no tick since: the coarse clock is behind
    assert cache.cached(payload) is None


async def test_policy_reply() -> None:
    cache, _, _ = make(probe=verifying())
    got = await cache.reply_for(b"postfix example.test")
    assert got == netstring.encode(b"OK verify servername=hostname")


async def test_unknown_profile_and_bad_key_are_perm() -> None:
    cache, svc, _ = make()
    assert reply(await cache.reply_for(b"nosuch example.test")).startswith(b"PERM unknown map")
    assert reply(await cache.reply_for(b"postfix exa mple")).startswith(b"PERM")
    assert reply(await cache.reply_for(b"postfix ")).startswith(b"PERM")
    assert reply(await cache.reply_for(b"no-space")).startswith(b"PERM")
    assert svc.stats.perm == 4
    assert len(cache) == 0


async def test_override_invalidates_the_cached_reply() -> None:
    cache, svc, _ = make(probe=verifying())
    payload = b"postfix example.test"
    assert reply(await cache.reply_for(payload)) == b"OK verify servername=hostname"
    await svc.set_override(Override("example.test", parse("encrypt"), author="root"))
    assert cache.cached(payload) is None
    assert reply(await cache.reply_for(payload)) == b"OK encrypt"
    assert cache.cached(payload) == netstring.encode(b"OK encrypt")
    assert await svc.delete_override("example.test")
    assert cache.cached(payload) is None
    assert reply(await cache.reply_for(payload)) == b"OK verify servername=hostname"


async def test_expired_override_is_no_longer_served() -> None:
    cache, svc, clock = make()
    payload = b"postfix example.test"
    await svc.set_override(Override("example.test", parse("encrypt"), expires_at=SERVICE_NOW + 60))
    assert reply(await cache.reply_for(payload)) == b"OK encrypt"
    clock.advance(61)
    cache.tick()
    assert cache.cached(payload) is None
    assert reply(await cache.reply_for(payload)) == b"NOTFOUND "


async def test_policy_too_long_for_a_reply_is_sent_temp() -> None:
    from policyd.core.types import Policy, TlsLevel

    huge = Policy(TlsLevel.SECURE, tuple(f"mx{i:05d}.example.test" for i in range(5000)))
    cache, svc, _ = make()
    await svc.set_override(Override("example.test", huge))
    got = reply(await cache.reply_for(b"postfix example.test"))
    assert got.startswith(b"TEMP policy not sent: reply of ")
    assert b"exceeds the socketmap limit of 100000" in got
    assert svc.counters.temp == 1


async def test_temp_is_counted() -> None:
    cache, svc, _ = make(dane=FakeDane({"broken.test": FAILED}))
    assert reply(await cache.reply_for(b"postfix broken.test")).startswith(b"TEMP MX lookup")
    assert svc.counters.temp == 1
    assert svc.counters.misses == 0


async def test_dry_run_tells_notfound_and_counts_what_it_would_answer() -> None:
    cache, svc, _ = make(probe=verifying())
    svc.set_profiles((*DEFAULT_PROFILES, Profile("trial", dry_run=True)))
    assert reply(await cache.reply_for(b"trial example.test")) == b"NOTFOUND "
    assert cache.cached(b"trial example.test") == netstring.encode(b"NOTFOUND ")
    # answers count what Postfix was told, from the slow path and from memory
    assert svc.counters.answers.items() == [(("trial", "NOTFOUND"), 2)]
    assert svc.counters.dry_run.items() == [(("trial", "verify"), 1)]


async def test_flush_forgets_cached_replies() -> None:
    cache, svc, _ = make()
    await cache.reply_for(b"postfix example.test")
    await cache.reply_for(b"postfix other.test")
    await svc.flush("example.test")
    assert cache.cached(b"postfix example.test") is None
    assert cache.cached(b"postfix other.test") is not None
    await svc.flush(None)
    assert cache.cached(b"postfix other.test") is None
    assert len(cache) == 0
    assert svc.cached_destinations == 0


async def test_new_profiles_drop_every_cached_reply() -> None:
    cache, svc, _ = make()
    await cache.reply_for(b"postfix example.test")
    svc.set_profiles(DEFAULT_PROFILES)
    assert cache.cached(b"postfix example.test") is None
    assert svc.cached_destinations == 1  # still held: its latest verdict


async def test_hits_are_sampled_for_the_latency_histogram() -> None:
    cache, svc, _ = make()
    payload = b"postfix example.test"
    await cache.reply_for(payload)
    for _ in range(reply_cache.HOT_SAMPLE_EVERY * 2):
        assert cache.cached(payload) is not None
    assert svc.counters.hot.count == 2
    assert svc.stats.hits == reply_cache.HOT_SAMPLE_EVERY * 2


# -- a bound on destinations in memory, least recently used evicted ---------------------------


async def test_destinations_in_memory_are_capped_lru() -> None:
    dane = FakeDane()
    cache, svc, _ = make(dane=dane, cap=3)
    for name in ("a", "b", "c"):
        await cache.reply_for(f"postfix {name}.test".encode())
    assert cache.cached(b"postfix a.test") is not None  # a is now the most recent
    await cache.reply_for(b"postfix d.test")  # evicts b, the least recently used
    assert cache.cached(b"postfix b.test") is None
    for name in ("a", "c", "d"):
        assert cache.cached(f"postfix {name}.test".encode()) is not None
    assert svc.evicted == 1
    assert len(svc.remembered()) == 3
    assert ("postfix", "b.test") not in svc.remembered()
    # an evicted destination comes back from the slow path, with fresh evidence
    calls = dane.calls
    assert reply(await cache.reply_for(b"postfix b.test")) == b"NOTFOUND "
    assert dane.calls == calls + 1


async def test_payloads_per_destination_are_bounded() -> None:
    cache, svc, _ = make(cap=10)
    spellings = [f"postfix {'Example.Test'[:i].upper()}{'example.test'[i:]}" for i in range(12)]
    for text in spellings:
        await cache.reply_for(text.encode())
    assert svc.cached_answers <= MAX_PAYLOADS_PER_DESTINATION


@pytest.mark.parametrize("payload", [b"postfix example.test", b"strict example.test"])
async def test_replies_are_shared_between_destinations(payload: bytes) -> None:
    cache, _, _ = make()
    await cache.reply_for(payload)
    await cache.reply_for(payload.replace(b"example", b"other"))
    first = cache.cached(payload)
    second = cache.cached(payload.replace(b"example", b"other"))
    assert first is not None
    assert first is second  # one bytes object for every destination told NOTFOUND
