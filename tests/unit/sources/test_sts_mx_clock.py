"""policyd.sources.sts: an enforce policy matching no current MX is checked for a new one
at once (rfc review D16), and a stepped wall clock does not age cached policies (security
review L8). The fakes and the ``w`` fixture are test_sts.py's."""

from __future__ import annotations

import logging

import pytest

from policyd.adapters.https import FetchError
from policyd.core.evidence import StsMode
from policyd.settings import StsSettings
from policyd.sources.clock_steps import STEP_TOLERANCE, ClockSteps
from policyd.sources.sts import MX_MISMATCH_RECHECK, StsSource
from tests.fakes import dns_answer
from tests.unit.sources.test_sts import (
    DOMAIN,
    TXT_NAME,
    Clock,
    World,
    make_source,
    policy_body,
    publish,
    w,
)

__all__ = ["w"]  # the fixture, imported for the tests below

MOVED = dns_answer(DOMAIN, "MX", "10 mx.example.net.")


async def cached_then_moved(w: World, new_id: str) -> None:
    """A policy for mx.example.com cached at T0; then the domain moves its mail to
    mx.example.net and publishes a policy for it under ``new_id``."""
    publish(w, "id1")
    assert (await w.source.evidence(DOMAIN)).policy is not None
    w.txt.mx[DOMAIN] = MOVED
    publish(w, new_id, policy_body(mx="mx.example.net"))
    w.txt.names.clear()
    w.fetcher.calls.clear()


async def test_mx_mismatch_rechecks_at_once(w: World, caplog: pytest.LogCaptureFixture) -> None:
    await cached_then_moved(w, "id2")
    caplog.set_level(logging.INFO, "test.sts")
    w.clock.advance(MX_MISMATCH_RECHECK)  # far before the hourly TXT check
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None and ev.policy.mx == ("mx.example.com",)  # old one, at once
    await w.source.wait_idle()
    assert w.txt.names == [TXT_NAME] and w.fetcher.calls == [DOMAIN]
    new = w.source.cached(DOMAIN, w.clock.now).policy
    assert new is not None and (new.policy_id, new.mx) == ("id2", ("mx.example.net",))
    assert (
        "example.com: mta-sts: no MX host (mx.example.net) matches the cached policy "
        "id=id1 mx=mx.example.com: checking for a new policy now" in caplog.messages
    )


async def test_mx_mismatch_fetches_even_with_the_same_id(w: World) -> None:
    # The owner changed the policy but not the id (Snawoot#109, #113).
    await cached_then_moved(w, "id1")
    w.clock.advance(MX_MISMATCH_RECHECK)
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    new = w.source.cached(DOMAIN, w.clock.now).policy
    assert new is not None and new.mx == ("mx.example.net",)


async def test_mx_mismatch_recheck_is_rate_limited_and_never_weakens(w: World) -> None:
    await cached_then_moved(w, "id1")
    w.fetcher.bodies[DOMAIN] = FetchError(DOMAIN, "HTTP 503")
    for _ in range(3):
        w.clock.advance(MX_MISMATCH_RECHECK / 3)
        ev = await w.source.evidence(DOMAIN)
        await w.source.wait_idle()
        # The cached policy answers throughout, the failed fetch changes nothing.
        assert ev.policy is not None and ev.policy.mx == ("mx.example.com",)
    assert w.fetcher.calls == [DOMAIN]  # once per MX_MISMATCH_RECHECK
    w.clock.advance(MX_MISMATCH_RECHECK)
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    assert w.fetcher.calls == [DOMAIN, DOMAIN]
    assert w.source.cached(DOMAIN, w.clock.now).policy is not None


async def test_matching_mx_or_testing_mode_asks_nothing_more(w: World) -> None:
    publish(w, "id1")
    await w.source.evidence(DOMAIN)
    w.txt.names.clear()
    w.clock.advance(MX_MISMATCH_RECHECK)
    await w.source.evidence(DOMAIN)  # mx.example.com still the MX
    await w.source.wait_idle()
    assert w.txt.names == [] and w.fetcher.calls == [DOMAIN]
    w.source.forget(DOMAIN)
    publish(w, "id9", policy_body(mode="testing"))
    await w.source.evidence(DOMAIN)
    w.txt.mx[DOMAIN] = MOVED
    mx_asked = len(w.txt.mx_names)
    w.clock.advance(MX_MISMATCH_RECHECK)
    await w.source.evidence(DOMAIN)  # testing: no enforcement to fail, no check
    await w.source.wait_idle()
    assert len(w.txt.mx_names) == mx_asked


# -- wall-clock steps ---------------------------------------------------------------------


class Elapsed:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def stepped_world(w: World) -> tuple[StsSource, Elapsed]:
    elapsed = Elapsed()
    return make_source(w, elapsed=elapsed), elapsed


def advance(clock: Clock, elapsed: Elapsed, seconds: float) -> None:
    clock.advance(seconds)
    elapsed.now += seconds


async def test_forward_wall_step_does_not_expire_policies(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    source, elapsed = stepped_world(w)
    publish(w, "id1", policy_body(max_age=86400))
    assert (await source.evidence(DOMAIN)).policy is not None
    advance(w.clock, elapsed, 60)
    w.clock.advance(30 * 86400)  # bad NTP: a month ahead in no time
    w.txt.set(DOMAIN, dns_answer(TXT_NAME, "TXT"))  # nothing to replace it with
    policy = source.cached(DOMAIN, w.clock.now).policy
    assert policy is not None and policy.mode is StsMode.ENFORCE
    assert policy.expires_at - w.clock.now == 86400 - 60  # its real age
    assert "wall clock stepped by +2592000 seconds" in caplog.text
    # ... and it still lapses at max_age in real time.
    advance(w.clock, elapsed, 86400 - 60)
    assert source.cached(DOMAIN, w.clock.now).policy is None


async def test_backward_wall_step_never_serves_past_max_age(w: World) -> None:
    source, elapsed = stepped_world(w)
    publish(w, "id1", policy_body(max_age=86400))
    assert (await source.evidence(DOMAIN)).policy is not None
    w.clock.advance(-7 * 86400)  # a week back
    advance(w.clock, elapsed, 86400 - 1)
    assert source.cached(DOMAIN, w.clock.now).policy is not None
    advance(w.clock, elapsed, 1)
    assert source.cached(DOMAIN, w.clock.now).policy is None


def test_clock_steps_tolerance() -> None:
    wall = Clock()
    elapsed = Elapsed()
    steps = ClockSteps(wall, elapsed)
    wall.advance(STEP_TOLERANCE)  # a leap second, a slow read: no step
    assert steps.step() == 0.0
    wall.advance(100)
    assert steps.step() == 100 + STEP_TOLERANCE
    assert steps.step() == 0.0  # found once
    elapsed.now += 500  # time passing is no step
    wall.advance(500)
    assert steps.step() == 0.0


# -- [sts] refresh_without_txt (review D15) -----------------------------------------------


def without_txt(w: World, on: bool) -> StsSource:
    return w.restart(StsSettings(refresh_without_txt=on))


@pytest.mark.parametrize("on", [False, True], ids=["rfc-default", "refresh_without_txt"])
async def test_deleted_txt_record_and_a_policy_still_served(w: World, on: bool) -> None:
    source = without_txt(w, on)
    publish(w, "id1", policy_body(max_age=86400))
    assert (await source.evidence(DOMAIN)).policy is not None
    w.txt.set(DOMAIN, dns_answer(TXT_NAME, "TXT"))  # deleted by accident
    w.fetcher.calls.clear()
    w.clock.advance(86400 / 2)  # stale: half its max_age
    await source.evidence(DOMAIN)
    await source.wait_idle()
    kept = source.cached(DOMAIN, w.clock.now).policy
    assert kept is not None and kept.policy_id == "id1"
    if on:  # refetched under its own id: lives on
        assert w.fetcher.calls == [DOMAIN] and kept.fetched_at == w.clock.now
        w.clock.advance(86400 / 2)
        assert source.cached(DOMAIN, w.clock.now).policy is not None
    else:  # RFC 8461: kept unrefreshed, lapses at max_age
        assert w.fetcher.calls == []
        w.clock.advance(86400 / 2)
        assert source.cached(DOMAIN, w.clock.now).policy is None


async def test_refresh_without_txt_fetches_only_when_stale_and_mode_none_removes(
    w: World,
) -> None:
    source = without_txt(w, True)
    publish(w, "id1", policy_body(max_age=86400))
    await source.evidence(DOMAIN)
    w.txt.set(DOMAIN, dns_answer(TXT_NAME, "TXT"))
    w.fetcher.calls.clear()
    w.clock.advance(StsSettings().recheck_interval)  # a TXT check, nothing stale
    await source.evidence(DOMAIN)
    await source.wait_idle()
    assert w.fetcher.calls == []
    w.fetcher.bodies[DOMAIN] = policy_body(mode="none")
    w.clock.advance(86400 / 2)
    await source.evidence(DOMAIN)
    await source.wait_idle()
    assert w.fetcher.calls == [DOMAIN]
    assert source.cached(DOMAIN, w.clock.now).policy is None
