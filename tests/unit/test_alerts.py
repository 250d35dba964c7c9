"""Alerts: the log line and count of each kind, raised by the service (level-dropped,
dane-temp) and by the periodic checks (sts-stale, resolver-not-validating), with fakes
and a clock the tests move."""

from __future__ import annotations

import logging

import pytest

from policyd.adapters.dns import DnsAnswer, Rcode
from policyd.alerts import AlertKind, Alerts, AlertSettings
from policyd.codec.postfix_policy import parse
from policyd.core.evidence import DnsEvidence, DnsStatus, Override, ProbeLevel, ProbeState
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.server.alert_checks import check_resolver, check_sts
from policyd.server.reply_cache import ReplyCache
from policyd.service import PolicyService
from policyd.settings import StsSettings
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore, reply
from tests.fakes import ServiceClock as Clock
from tests.unit.sources.test_sts import DOMAIN, T0, FakeFetcher, FakeTxt, World, publish
from tests.unit.sources.test_sts import Clock as StsClock
from tests.unit.sources.test_sts import MemoryStore as StsStore

NOW = 1_800_000_000.0


def make(
    dane: FakeDane | None = None,
    probe: FakeProbe | None = None,
    profiles: tuple[Profile, ...] = DEFAULT_PROFILES,
    dane_temp_after: float = 0.0,
) -> tuple[PolicyService, Clock, ReplyCache]:
    clock = Clock()
    svc = PolicyService(
        profiles,
        MemoryStore(),
        dane or FakeDane(),
        FakeSts(),
        probe or FakeProbe(),
        lookup_budget=1.0,
        clock=clock.wall,
        alerts=Alerts(logging.getLogger("policyd")),
        dane_temp_after=dane_temp_after,
    )
    return svc, clock, ReplyCache(svc, monotonic=clock.monotonic)


def alerts_logged(caplog: pytest.LogCaptureFixture, kind: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"alert={kind} ")]


# -- the alert object ------------------------------------------------------------------


def test_fire_logs_one_greppable_line(caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts(logging.getLogger("policyd"))
    with caplog.at_level(logging.WARNING, logger="policyd"):
        alerts.fire(AlertKind.LEVEL_DROPPED, "destination=a.test", previous="verify", why="x y")
    assert caplog.messages == ['alert=level-dropped destination=a.test previous=verify why="x y"']
    assert caplog.records[0].levelno == logging.WARNING
    assert alerts.counts[AlertKind.LEVEL_DROPPED] == 1


def test_episode_fires_once_until_closed() -> None:
    alerts = Alerts()
    assert alerts.open(AlertKind.DANE_TEMP, "a.test", "destination=a.test")
    assert not alerts.open(AlertKind.DANE_TEMP, "a.test", "destination=a.test")
    assert alerts.active(AlertKind.DANE_TEMP) == 1
    assert alerts.close(AlertKind.DANE_TEMP, "a.test")
    assert not alerts.close(AlertKind.DANE_TEMP, "a.test")
    assert alerts.open(AlertKind.DANE_TEMP, "a.test", "destination=a.test")
    assert alerts.counts[AlertKind.DANE_TEMP] == 2


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="resolver_check_name"):
        AlertSettings(resolver_check_name="a b")


# -- level-dropped ---------------------------------------------------------------------


async def test_level_dropped_after_probe_confirms(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeProbe({"example.test": ProbeState(ProbeLevel.VERIFY)})
    svc, _, cache = make(probe=probe)
    payload = b"postfix example.test"
    with caplog.at_level(logging.WARNING, logger="policyd"):
        assert reply(await cache.reply_for(payload)) == b"OK verify servername=hostname"
        # Damping held a weaker result back: the level in force is unchanged, no alert.
        probe.states["example.test"] = ProbeState(
            ProbeLevel.VERIFY, pending=ProbeLevel.ENCRYPT, pending_count=1
        )
        svc.invalidate(None)
        assert reply(await cache.reply_for(payload)) == b"OK verify servername=hostname"
        assert alerts_logged(caplog, "level-dropped") == []
        # Confirmed: the level drops, and that is the alert.
        probe.states["example.test"] = ProbeState(ProbeLevel.ENCRYPT)
        svc.invalidate(None)
        assert reply(await cache.reply_for(payload)) == b"OK encrypt"
    (line,) = alerts_logged(caplog, "level-dropped")
    assert line.startswith(
        "alert=level-dropped destination=example.test profile=postfix "
        "previous=verify,servername=hostname level=encrypt reason="
    )
    assert svc.alerts.counts[AlertKind.LEVEL_DROPPED] == 1


async def test_stronger_level_and_override_raise_no_alert(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = FakeProbe({"example.test": ProbeState(ProbeLevel.ENCRYPT)})
    svc, _, cache = make(probe=probe)
    payload = b"postfix example.test"
    with caplog.at_level(logging.WARNING, logger="policyd"):
        await cache.reply_for(payload)
        probe.states["example.test"] = ProbeState(ProbeLevel.VERIFY)
        svc.invalidate(None)
        assert reply(await cache.reply_for(payload)) == b"OK verify servername=hostname"
        await svc.set_override(Override("example.test", parse("may"), author="root"))
        assert reply(await cache.reply_for(payload)) == b"OK may"
    assert alerts_logged(caplog, "level-dropped") == []


# -- dane-temp -------------------------------------------------------------------------

FAILED = DnsEvidence(DnsStatus.FAILED, error="MX lookup for broken.test: SERVFAIL")


async def test_dane_temp_after_the_set_time(caplog: pytest.LogCaptureFixture) -> None:
    dane = FakeDane({"broken.test": FAILED})
    svc, clock, cache = make(dane=dane, dane_temp_after=600.0)
    payload = b"postfix broken.test"
    with caplog.at_level(logging.WARNING, logger="policyd"):
        assert reply(await cache.reply_for(payload)).startswith(b"TEMP")
        clock.advance(599)
        await cache.reply_for(payload)
        assert alerts_logged(caplog, "dane-temp") == []
        clock.advance(1)
        await cache.reply_for(payload)
        clock.advance(60)
        await cache.reply_for(payload)  # the same episode: logged once
    (line,) = alerts_logged(caplog, "dane-temp")
    assert line.startswith("alert=dane-temp destination=broken.test seconds=600 reason=")
    assert svc.alerts.active(AlertKind.DANE_TEMP) == 1
    # It recovers: the episode closes, and a new one would alert again.
    del dane.answers["broken.test"]
    clock.advance(10)
    assert reply(await cache.reply_for(payload)) == b"NOTFOUND "
    assert svc.alerts.active(AlertKind.DANE_TEMP) == 0


async def test_dane_temp_off_by_zero(caplog: pytest.LogCaptureFixture) -> None:
    _, clock, cache = make(dane=FakeDane({"broken.test": FAILED}), dane_temp_after=0.0)
    with caplog.at_level(logging.WARNING, logger="policyd"):
        await cache.reply_for(b"postfix broken.test")
        clock.advance(100_000)
        await cache.reply_for(b"postfix broken.test")
    assert alerts_logged(caplog, "dane-temp") == []


# -- sts-stale -------------------------------------------------------------------------


def sts_world() -> World:
    world = World(StsClock(), StsStore(), FakeTxt(), FakeFetcher(), None, [])  # type: ignore[arg-type]
    world.restart()
    return world


async def test_sts_stale_when_refresh_fails_too_long(caplog: pytest.LogCaptureFixture) -> None:
    w = sts_world()
    publish(w, "id1")
    assert (await w.source.evidence(DOMAIN)).policy is not None
    alerts = Alerts(logging.getLogger("policyd"))
    settings = AlertSettings(sts_stale_after=2 * 86400.0)
    # The policy server goes away; the refresh due after a day fails.
    del w.fetcher.bodies[DOMAIN]
    w.clock.advance(86400 + 1)
    await w.source.refresh_due()
    await w.source.wait_idle()
    with caplog.at_level(logging.WARNING, logger="policyd"):
        assert check_sts(w.source, settings, alerts, w.clock()) == 0
        w.clock.advance(86400)
        await w.source.refresh_due()
        await w.source.wait_idle()
        assert check_sts(w.source, settings, alerts, w.clock()) == 1
        assert check_sts(w.source, settings, alerts, w.clock()) == 1  # still the same episode
    (line,) = alerts_logged(caplog, "sts-stale")
    assert line.startswith(f"alert=sts-stale domain={DOMAIN} seconds=")
    assert "policy fetch failed" in line
    assert w.source.counters.refresh_failures >= 1
    # The server is back: the next refresh succeeds and the episode closes.
    publish(w, "id1")
    w.clock.advance(StsSettings().retry_after_failure)
    await w.source.refresh_due()
    await w.source.wait_idle()
    assert check_sts(w.source, settings, alerts, w.clock()) == 0
    assert alerts.active(AlertKind.STS_STALE) == 0


# -- resolver-not-validating -----------------------------------------------------------


class FakeResolver:
    def __init__(self, status: DnsStatus) -> None:
        self.status = status
        self.asked: list[tuple[str, str]] = []

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.asked.append((name, rdtype))
        error = "SERVFAIL" if self.status is DnsStatus.FAILED else ""
        return DnsAnswer(name, rdtype, self.status, Rcode.NOERROR, error=error)


@pytest.mark.parametrize(
    ("status", "problem"),
    [(DnsStatus.INSECURE, "without the AD bit"), (DnsStatus.FAILED, "lookup failed: SERVFAIL")],
)
async def test_resolver_not_validating(
    caplog: pytest.LogCaptureFixture, status: DnsStatus, problem: str
) -> None:
    resolver = FakeResolver(status)
    alerts = Alerts(logging.getLogger("policyd"))
    with caplog.at_level(logging.WARNING, logger="policyd"):
        assert not await check_resolver(resolver, AlertSettings(), alerts)
        assert not await check_resolver(resolver, AlertSettings(), alerts)
    assert resolver.asked == [(".", "DNSKEY"), (".", "DNSKEY")]
    (line,) = alerts_logged(caplog, "resolver-not-validating")
    assert line.startswith("alert=resolver-not-validating name=. rdtype=DNSKEY problem=")
    assert problem in line
    resolver.status = DnsStatus.SECURE
    assert await check_resolver(resolver, AlertSettings(), alerts)
    assert alerts.active(AlertKind.RESOLVER) == 0


def test_sts_world_clock_starts_at_t0() -> None:
    assert sts_world().clock() == T0
