"""The periodic checks behind the alerts that no lookup raises by itself.

* ``resolver-not-validating``: at start and every ``[alerts] resolver_check_interval``,
  the DNSKEY records of ``resolver_check_name`` (the root by default, signed everywhere)
  must come back with the AD bit. Without it every DANE answer is silently lost, and a
  resolver that sets AD without validating cannot be told apart here: that is why policyd
  must only use a resolver on this host.
* ``sts-stale``: cached MTA-STS policies that could not be refreshed for ``[alerts]
  sts_stale_after`` (RFC 8461 3.3 asks senders to alert), checked every quarter of that
  time (between STS_CHECK_MIN and STS_CHECK_MAX).

The level-dropped and dane-temp alerts are raised by :mod:`policyd.service` as lookups
happen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, Protocol

from policyd.adapters.dns import DnsAnswer
from policyd.alerts import AlertKind, Alerts, AlertSettings
from policyd.core.evidence import DnsStatus
from policyd.sources.sts import StsSource

RESOLVER_SUBJECT: Final = "resolver"  # the episode key of the resolver alert
# Seconds between sts-stale checks: a quarter of sts_stale_after, within these bounds, so
# the alert comes at most a quarter late and a check (one pass over the cached domains)
# never runs more than once a second.
RESOLVER_RECHECK_OFF: Final = 60.0  # seconds between looks at a turned-off check's setting
STS_CHECK_MIN: Final = 1.0
STS_CHECK_MAX: Final = 60.0


class DnsQuery(Protocol):
    async def query(self, name: str, rdtype: str) -> DnsAnswer: ...


def resolver_problem(answer: DnsAnswer) -> str | None:
    """Why this answer for a signed name shows a resolver that does not validate."""
    if answer.status is DnsStatus.SECURE:
        return None
    if answer.status is DnsStatus.FAILED:
        return f"lookup failed: {answer.error}"
    return "answer without the AD bit: the resolver does not validate DNSSEC"


async def check_resolver(resolver: DnsQuery, settings: AlertSettings, alerts: Alerts) -> bool:
    """One check; opens or closes the alert episode. True when the resolver validates."""
    name = settings.resolver_check_name
    answer = await resolver.query(name, "DNSKEY")
    problem = resolver_problem(answer)
    if problem is None:
        alerts.close(AlertKind.RESOLVER, RESOLVER_SUBJECT)
        return True
    alerts.open(
        AlertKind.RESOLVER,
        RESOLVER_SUBJECT,
        f"name={name}",
        rdtype="DNSKEY",
        problem=problem,
        fix="point [dns] nameservers at a validating resolver on this host (unbound)",
    )
    return False


def check_sts(
    sts: StsSource, settings: AlertSettings, alerts: Alerts, now: float | None = None
) -> int:
    """Open an sts-stale episode per policy refreshed too long ago, close the others.
    Returns the number of stale policies."""
    if not settings.sts_stale_after:
        return 0
    now = time.time() if now is None else now
    stale = sts.unrefreshed(now, settings.sts_stale_after)
    for domain, age, error in stale:
        alerts.open(
            AlertKind.STS_STALE,
            domain,
            f"domain={domain}",
            seconds=int(age),
            error=error,
        )
    still = {domain for domain, _age, _error in stale}
    for domain in alerts.open_subjects(AlertKind.STS_STALE):
        if domain not in still:
            alerts.close(AlertKind.STS_STALE, domain)
    return len(stale)


def sts_check_interval(settings: AlertSettings) -> float:
    if not settings.sts_stale_after:
        return STS_CHECK_MAX
    return min(STS_CHECK_MAX, max(STS_CHECK_MIN, settings.sts_stale_after / 4))


async def watch_sts(sts: StsSource, settings: Callable[[], AlertSettings], alerts: Alerts) -> None:
    while True:
        await asyncio.sleep(sts_check_interval(settings()))
        check_sts(sts, settings(), alerts)


async def watch_resolver(
    resolver: DnsQuery,
    settings: Callable[[], AlertSettings],
    alerts: Alerts,
) -> None:
    """Check the resolver now (at start) and then every resolver_check_interval; an
    interval of 0 turns the checks off (a reload may turn them on again)."""
    while True:
        if settings().resolver_check_interval:
            await check_resolver(resolver, settings(), alerts)
        await asyncio.sleep(settings().resolver_check_interval or RESOLVER_RECHECK_OFF)
