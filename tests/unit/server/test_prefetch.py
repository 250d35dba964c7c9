"""Prefetch (issue 14 point 2): a cached reply in use (hit since it was cached) is
refreshed in the background from fresh evidence when the last fraction of its life begins,
and served meanwhile; a refresh that fails never extends it. Fake clock, no sleeping: the
refresh is let run with run_ready."""

from __future__ import annotations

import asyncio
import math

import pytest

from policyd.core.evidence import DnsEvidence, DnsStatus
from policyd.core.profile import DEFAULT_PROFILES
from policyd.server import prefetch, reply_cache
from policyd.server.reply_cache import ReplyCache
from policyd.service import PolicyService, Stats
from policyd.settings import ServerSettings
from tests.fakes import SERVICE_NOW, FakeDane, FakeProbe, FakeSts, MemoryStore, plain_dns, run_ready
from tests.fakes import ServiceClock as Clock

PAYLOAD = b"postfix example.test"
TTL = 300.0  # plain_dns: the fake evidence lives this long
# Past the second over whose ticks the refreshes due in it are spread.
SPREAD = 1.05


def kept_until(cached_at: float) -> float:
    """How long a reply cached at ``cached_at`` is kept: until a whole second no later than
    its answer's expiry less one tick of the hot path's clock."""
    return float(math.floor(cached_at + TTL - reply_cache.CLOCK_TICK))


# Monotonic starts at 1000: the first reply is kept until 1299, and the last tenth of its
# life starts at 1299 - 30 = 1269.
EXPIRES = kept_until(1000.0)
DUE = EXPIRES - TTL / 10


def make(
    dane: FakeDane, fraction: float = 0.1, fresh: FakeDane | None = None, down: bool = False
) -> tuple[ReplyCache, PolicyService, Clock]:
    clock = Clock()
    svc = PolicyService(
        DEFAULT_PROFILES,
        MemoryStore(),
        dane,
        FakeSts(),
        FakeProbe(),
        lookup_budget=1.0,
        clock=clock.wall,
        dns_down=lambda: down,
        fresh_dane=fresh,
    )
    return ReplyCache(svc, monotonic=clock.monotonic, prefetch=fraction), svc, clock


async def cache_replies(cache: ReplyCache, count: int, *, in_use: bool) -> list[bytes]:
    """Cache the replies of ``count`` destinations d<i>.test (one miss each); ``in_use``:
    hit each once as well."""
    payloads = [f"postfix d{i}.test".encode() for i in range(count)]
    for payload in payloads:
        await cache.reply_for(payload)
        if in_use:
            assert cache.cached(payload) is not None
    return payloads


def at(cache: ReplyCache, clock: Clock, mono: float) -> None:
    """Move both clocks to ``mono`` on the monotonic one, ticking the hot path's clock on the
    way as the server does (after each wait it asks for), and at ``mono``."""
    wait = min(reply_cache.REFRESH_STEP, mono - clock.mono)
    while clock.mono + wait < mono:
        clock.advance(wait)
        wait = cache.tick()
    clock.advance(mono - clock.mono)
    cache.tick()


def after(cache: ReplyCache, clock: Clock, wait: float) -> float:
    """The server's next tick, ``wait`` seconds later as the last one asked; returns the
    wait this one asks for."""
    clock.advance(wait)
    return cache.tick()


async def test_a_hit_in_the_last_tenth_refreshes_once_and_the_refresh_outlives_the_old() -> None:
    dane = FakeDane()
    cache, svc, clock = make(dane)
    await cache.reply_for(PAYLOAD)
    at(cache, clock, DUE - 1)
    assert cache.cached(PAYLOAD) is not None
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (0, 1)  # not yet in the last tenth

    dane.gate = asyncio.Event()  # the refresh waits for its evidence
    at(cache, clock, DUE + 1)
    old = cache.cached(PAYLOAD)
    assert old is not None  # served from memory meanwhile
    await run_ready()
    assert cache.cached(PAYLOAD) == old  # a second hit meanwhile starts no other refresh
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (1, 2)

    dane.gate.set()
    await run_ready()
    at(cache, clock, EXPIRES + 5)  # past the old reply's expiry
    assert cache.cached(PAYLOAD) == old
    assert (dane.calls, svc.stats.lookups, svc.stats.prefetch_failed) == (2, 1, 0)
    at(cache, clock, DUE + TTL - 4)  # the refreshed one (from DUE + 1) in its last tenth
    assert cache.cached(PAYLOAD) is not None
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (2, 3)


async def test_the_refresh_gathers_through_the_fresh_dns_source() -> None:
    dane, fresh = FakeDane(), FakeDane()
    cache, _, clock = make(dane, fresh=fresh)
    await cache.reply_for(PAYLOAD)
    at(cache, clock, DUE + 1)
    cache.cached(PAYLOAD)
    await run_ready()
    assert (dane.calls, fresh.calls) == (1, 1)


FAILED = DnsEvidence(DnsStatus.FAILED, error="MX lookup for example.test: SERVFAIL")


@pytest.mark.parametrize("down", [False, True], ids=["temp", "kept-through-outage"])
async def test_a_failed_refresh_leaves_the_old_expiry(down: bool) -> None:
    dane = FakeDane()
    outage = [False]
    cache, svc, clock = make(dane)
    svc._dns_down = lambda: outage[0]  # the resolver goes down after the first answer
    first = await cache.reply_for(PAYLOAD)
    dane.answers["example.test"] = FAILED
    outage[0] = down
    at(cache, clock, DUE + 1)
    assert cache.cached(PAYLOAD) == first
    await run_ready()
    assert (svc.stats.prefetched, svc.stats.prefetch_failed, dane.calls) == (1, 1, 2)
    at(cache, clock, EXPIRES - 1)
    assert cache.cached(PAYLOAD) == first  # not weakened, and no other refresh
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (1, 2)
    at(cache, clock, EXPIRES + 1)
    assert cache.cached(PAYLOAD) is None  # not extended: the slow path takes over
    await cache.reply_for(PAYLOAD)
    assert (dane.calls, svc.stats.lookups) == (3, 2)


@pytest.mark.parametrize("later", [0, 1], ids=["same-expiry", "one-second-later"])
async def test_a_refresh_that_did_not_renew_is_tried_again_later(later: int) -> None:
    """The resolver answered from its own cache (its prefetch not done yet): the evidence
    expires when the old did, give or take its TTL's rounding. A hit before the retry time
    starts nothing; one after it refreshes again, and that one outlives the old reply."""
    dane = FakeDane()
    cache, svc, clock = make(dane)
    await cache.reply_for(PAYLOAD)
    dane.answers["example.test"] = plain_dns("example.test", SERVICE_NOW + later, TTL)
    at(cache, clock, DUE + 1)
    cache.cached(PAYLOAD)
    await run_ready()
    assert (svc.stats.prefetched, svc.stats.prefetch_failed) == (1, 0)
    left = EXPIRES + later - DUE - 1
    retry_at = DUE + 1 + max(prefetch.RETRY_AFTER, left * prefetch.RETRY_SHARE)
    at(cache, clock, retry_at - 0.5)
    cache.cached(PAYLOAD)
    await run_ready()
    assert svc.stats.prefetched == 1
    dane.answers.clear()  # the resolver has renewed the records
    at(cache, clock, retry_at + 0.5)
    cache.cached(PAYLOAD)
    await run_ready()
    assert svc.stats.prefetched == 2
    at(cache, clock, EXPIRES + 5)
    assert cache.cached(PAYLOAD) is not None
    assert svc.stats.lookups == 1


async def test_refreshes_in_flight_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "MAX_REFRESHES", 2)
    dane = FakeDane()
    cache, svc, clock = make(dane)
    payloads = await cache_replies(cache, 3, in_use=False)
    dane.gate = asyncio.Event()
    at(cache, clock, DUE + 1)
    for payload in payloads:
        assert cache.cached(payload) is not None
    await run_ready()
    assert (svc.stats.prefetched, svc.stats.prefetch_skipped, dane.calls) == (2, 1, 5)
    dane.gate.set()
    await run_ready()
    assert cache.cached(payloads[2]) is not None  # room again: the skipped one's turn
    await run_ready()
    assert (svc.stats.prefetched, svc.stats.prefetch_skipped) == (3, 1)


async def test_a_reply_made_stale_during_its_refresh_is_not_brought_back() -> None:
    dane = FakeDane()
    cache, svc, clock = make(dane)
    await cache.reply_for(PAYLOAD)
    dane.gate = asyncio.Event()
    at(cache, clock, DUE + 1)
    cache.cached(PAYLOAD)
    await run_ready()
    svc.invalidate("example.test")  # an override changed, say
    dane.gate.set()
    await run_ready()
    assert cache.cached(PAYLOAD) is None


async def test_prefetch_zero_refreshes_nothing() -> None:
    dane = FakeDane()
    cache, svc, clock = make(dane, fraction=0.0)
    await cache.reply_for(PAYLOAD)
    at(cache, clock, EXPIRES - 1)
    assert cache.cached(PAYLOAD) is not None
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (0, 1)
    at(cache, clock, EXPIRES + 1)
    assert cache.cached(PAYLOAD) is None


async def test_a_temp_reply_is_not_refreshed() -> None:
    dane = FakeDane({"example.test": FAILED})
    cache, svc, clock = make(dane)
    await cache.reply_for(PAYLOAD)
    at(cache, clock, clock.mono + 3.5)  # TEMP kept until 1004: in its last tenth
    assert cache.cached(PAYLOAD) is not None
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (0, 1)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan")])
def test_the_fraction_is_checked(fraction: float) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        prefetch.Prefetch(fraction, Stats(), lambda _: None)
    with pytest.raises(ValueError, match="prefetch"):
        ServerSettings(prefetch=fraction)


async def test_a_reply_in_use_is_refreshed_when_its_time_comes_without_another_hit() -> None:
    """One hit early in its life marks the reply in use: the clock tick at its refresh time
    refreshes it, and it is answered from memory past the old expiry (a destination asked
    a few times a minute, never in the last tenth, does not wait on the slow path)."""
    dane = FakeDane()
    cache, svc, clock = make(dane)
    first = await cache.reply_for(PAYLOAD)
    at(cache, clock, 1010.0)
    assert cache.cached(PAYLOAD) == first  # the one hit
    at(cache, clock, DUE - 1)
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (0, 1)  # not its time yet
    at(cache, clock, DUE + 0.5)
    await run_ready()
    at(cache, clock, DUE + SPREAD)  # no lookup now: the ticks alone (spread over a second)
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (1, 2)
    at(cache, clock, EXPIRES + 10)
    assert cache.cached(PAYLOAD) == first
    assert svc.stats.lookups == 1  # never the slow path


async def test_a_reply_nobody_hit_is_not_refreshed_and_expires() -> None:
    dane = FakeDane()
    cache, svc, clock = make(dane)
    await cache.reply_for(PAYLOAD)  # the miss that cached it is not a use of the reply
    at(cache, clock, EXPIRES - 1)
    await run_ready()
    assert (svc.stats.prefetched, dane.calls) == (0, 1)
    at(cache, clock, EXPIRES + 1)
    assert cache.cached(PAYLOAD) is None


async def test_refreshes_beyond_the_limit_wait_and_start_as_one_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Due all at once (the tick's sweep), three replies in use with room for two: the third
    waits, without another lookup or tick, until a refresh ends."""
    monkeypatch.setattr(prefetch, "MAX_REFRESHES", 2)
    dane = FakeDane()
    cache, svc, clock = make(dane)
    payloads = await cache_replies(cache, 3, in_use=True)
    dane.gate = asyncio.Event()
    at(cache, clock, DUE + SPREAD)  # past the second they are spread over
    await run_ready()
    assert (svc.stats.prefetched, svc.stats.prefetch_skipped, dane.calls) == (2, 1, 5)
    dane.gate.set()
    await run_ready()
    assert (svc.stats.prefetched, svc.stats.prefetch_skipped, dane.calls) == (3, 1, 6)
    at(cache, clock, EXPIRES + 5)
    assert all(cache.cached(p) is not None for p in payloads)
    assert svc.stats.lookups == 3


async def test_refresh_times_of_forgotten_replies_are_dropped() -> None:
    """Each reply cached notes its refresh time; replies forgotten before it (invalidated,
    evicted) do not leave their notes to pile up."""
    dane = FakeDane()
    cache, svc, _ = make(dane)
    for round_ in range(3):
        await cache_replies(cache, 1000, in_use=False)
        for i in range(1000):
            svc.invalidate(f"d{i}.test")
        assert len(cache) == 0
        assert cache._refs <= 1000 + 2 * len(cache) + reply_cache.MIN_REFS, round_


async def test_refreshes_due_in_the_same_second_are_spread_over_its_ticks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replies cached in the same second come due in the same second; their refreshes
    start over that second's ticks, not all at the first (hits would wait behind them)."""
    monkeypatch.setattr(prefetch, "MAX_REFRESHES", 1000)
    dane = FakeDane()
    cache, svc, clock = make(dane)
    await cache_replies(cache, 50, in_use=True)
    dane.gate = asyncio.Event()  # none ends meanwhile
    at(cache, clock, DUE + 0.45)  # the first half of the second (P(none or all) ~ 1e-15)
    await run_ready()
    assert 0 < svc.stats.prefetched < 50
    at(cache, clock, DUE + SPREAD)
    await run_ready()
    assert svc.stats.prefetched == 50
    dane.gate.set()


async def test_a_tick_starts_its_refreshes_over_its_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 refreshes due in one second (a busy host's rate) start a few per step of the
    hot path's clock (REFRESH_STEP), not twenty at each tick: the hits that come meanwhile
    wait behind the refreshes started together (all at the tick, about twenty ran back to
    back). The clock ticks at each step while some wait to start."""
    monkeypatch.setattr(prefetch, "MAX_REFRESHES", 1000)
    dane = FakeDane()
    cache, svc, clock = make(dane)
    await cache_replies(cache, 200, in_use=True)
    dane.gate = asyncio.Event()  # none ends meanwhile
    at(cache, clock, DUE - 1)
    per_call: list[int] = []
    wait = cache.tick()
    while clock.mono < DUE + SPREAD:
        wait = after(cache, clock, wait)
        await run_ready()
        if svc.stats.prefetched or per_call:
            per_call.append(svc.stats.prefetched - sum(per_call))
    assert sum(per_call) == 200
    # About two a step; over 12 in one has odds of about 1e-5 (hash order over the ticks).
    assert max(per_call) <= 12, per_call
    steps_per_tick = round(reply_cache.CLOCK_TICK / reply_cache.REFRESH_STEP)
    assert len(per_call) >= 5 * steps_per_tick  # spread over the steps of most ticks
    dane.gate.set()


async def test_the_clock_ticks_fast_only_while_refreshes_start() -> None:
    """The server calls tick() again after the wait it returns: CLOCK_TICK while no refresh
    is due within one (an idle daemon wakes ten times a second), then exactly to the tick
    whose refresh is due, where it starts."""
    dane = FakeDane()
    cache, svc, clock = make(dane)
    assert cache.tick() == reply_cache.CLOCK_TICK  # nothing cached
    await cache_replies(cache, 1, in_use=True)
    at(cache, clock, DUE - 1 + 0.037)  # ticks out of phase with the tick boundaries
    waits = [cache.tick()]
    while svc.stats.prefetched == 0:
        assert clock.mono < DUE + SPREAD
        waits.append(after(cache, clock, waits[-1]))
        await run_ready()
    assert set(waits[:-2]) == {reply_cache.CLOCK_TICK}
    assert waits[-2] < reply_cache.CLOCK_TICK  # to the boundary of the refresh's tick
    ticks = clock.mono / reply_cache.CLOCK_TICK
    assert abs(ticks - round(ticks)) * reply_cache.CLOCK_TICK < reply_cache.MIN_WAIT
    assert waits[-1] == reply_cache.CLOCK_TICK  # started: nothing due any more


# The first refresh is cached at DUE + SPREAD (started on the way there, it runs at the
# run_ready that follows), the one after it at SECOND_DUE + SPREAD.
SECOND_EXPIRES = kept_until(DUE + SPREAD)
SECOND_DUE = SECOND_EXPIRES - TTL / 10
THIRD_EXPIRES = kept_until(SECOND_DUE + SPREAD)
THIRD_DUE = THIRD_EXPIRES - TTL / 10


async def refreshed_once() -> tuple[ReplyCache, PolicyService, Clock, FakeDane]:
    """A reply cached at 1000, hit once (in use), and refreshed at its time: the reply that
    refresh brought (cached at about 1270) is on probation, never hit."""
    dane = FakeDane()
    cache, svc, clock = make(dane)
    await cache.reply_for(PAYLOAD)
    at(cache, clock, 1010.0)
    assert cache.cached(PAYLOAD) is not None
    at(cache, clock, DUE + SPREAD)
    await run_ready()
    assert svc.stats.prefetched == 1
    return cache, svc, clock, dane


async def test_a_refresh_nobody_hit_is_refreshed_once_more_then_expires() -> None:
    """A destination asked a few times a TTL may see no lookup in one life: the reply that a
    refresh brought is refreshed at its time although nobody hit it (the reply before it
    was hit), once; the next one, also unhit, expires and the slow path takes over."""
    cache, svc, clock, _ = await refreshed_once()
    at(cache, clock, SECOND_DUE + SPREAD)  # no lookup in the refreshed reply's life
    await run_ready()
    assert svc.stats.prefetched == 2  # refreshed all the same
    at(cache, clock, SECOND_EXPIRES + 5)
    assert cache._answers[PAYLOAD][4] == THIRD_EXPIRES  # held on, without a hit to show it
    at(cache, clock, THIRD_DUE + SPREAD)  # again no lookup: not refreshed this time
    await run_ready()
    assert svc.stats.prefetched == 2
    at(cache, clock, THIRD_EXPIRES + 1)
    assert cache.cached(PAYLOAD) is None
    assert svc.stats.lookups == 1


async def test_a_hit_in_a_refreshed_life_keeps_the_reply_in_use() -> None:
    cache, svc, clock, _ = await refreshed_once()
    at(cache, clock, 1300.0)
    assert cache.cached(PAYLOAD) is not None  # a hit in the refreshed reply's life
    at(cache, clock, SECOND_DUE + SPREAD)
    await run_ready()
    at(cache, clock, THIRD_DUE + SPREAD)  # none in the next: still refreshed (on probation)
    await run_ready()
    assert svc.stats.prefetched == 3
    assert svc.stats.lookups == 1


async def test_a_retry_of_an_unhit_refresh_ends_the_probation() -> None:
    """The refresh on probation brings records the resolver had cached (not renewed): the
    retry is made, and what it brings is not refreshed again without a hit."""
    cache, svc, clock, dane = await refreshed_once()
    # The second refresh gets evidence that expires with the reply it replaces.
    dane.answers["example.test"] = plain_dns("example.test", SERVICE_NOW + 270, TTL)
    at(cache, clock, SECOND_DUE + SPREAD)
    await run_ready()
    assert svc.stats.prefetched == 2
    dane.answers.clear()  # renewed by the retry
    at(cache, clock, SECOND_EXPIRES - 1)  # past the retry time (at most the expiry)
    await run_ready()
    at(cache, clock, SECOND_EXPIRES - 0.5)
    await run_ready()
    assert svc.stats.prefetched == 3
    # The retry's reply, cached at SECOND_EXPIRES - 1 (started on the way there, run at the
    # run_ready that follows); never hit.
    retried_until = kept_until(SECOND_EXPIRES - 1)
    assert cache._answers[PAYLOAD][4] == retried_until
    at(cache, clock, retried_until - TTL / 10 + SPREAD)
    await run_ready()
    assert svc.stats.prefetched == 3
    at(cache, clock, retried_until + 1)
    assert cache.cached(PAYLOAD) is None


async def test_probation_is_forgotten_with_the_reply() -> None:
    dane = FakeDane()
    cache, svc, clock = make(dane)
    payloads = await cache_replies(cache, 20, in_use=True)
    at(cache, clock, DUE + SPREAD)
    await run_ready()
    assert len(cache._probation) == 20
    for i in range(10):
        svc.invalidate(f"d{i}.test")
    assert cache._probation == set(payloads[10:])
    svc.invalidate(None)
    assert not cache._probation


async def test_a_hit_during_a_refresh_on_probation_keeps_its_result() -> None:
    """The first hit of a reply on probation marks it in use while its refresh is under
    way: the refresh's reply is kept (not taken for a reply gone stale meanwhile), and is
    itself on probation, since the life it replaced was hit."""
    cache, svc, clock, dane = await refreshed_once()
    dane.gate = asyncio.Event()
    at(cache, clock, SECOND_DUE + SPREAD)
    await run_ready()
    assert svc.stats.prefetched == 2  # on probation, under way
    assert cache.cached(PAYLOAD) is not None  # the hit meanwhile
    dane.gate.set()
    await run_ready()
    assert cache._answers[PAYLOAD][4] == THIRD_EXPIRES  # the refresh's reply kept
    at(cache, clock, THIRD_DUE + SPREAD)
    await run_ready()
    assert svc.stats.prefetched == 3
    assert svc.stats.lookups == 1
